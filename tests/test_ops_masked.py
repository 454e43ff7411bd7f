import math

import torch

from rewardlab.ops.masked import last_true_index, masked_mean, masked_sum, masked_var, masked_whiten

X = torch.tensor([[1.0, 2.0, 100.0], [3.0, -50.0, 6.0]])
M = torch.tensor([[1, 1, 0], [1, 0, 1]])
# real values: 1, 2, 3, 6 → sum 12, mean 3, Σ(x−μ)² = 4+1+0+9 = 14


def test_sum_and_mean_ignore_padding():
    assert masked_sum(X, M).item() == 12.0
    assert masked_mean(X, M).item() == 3.0
    assert torch.equal(masked_mean(X, M, dim=1), torch.tensor([1.5, 4.5]))


def test_mean_of_empty_row_is_zero_not_nan():
    out = masked_mean(torch.ones(2, 3), torch.tensor([[0, 0, 0], [1, 1, 1]]), dim=1)
    assert torch.equal(out, torch.tensor([0.0, 1.0]))


def test_var_unbiased_and_biased():
    assert math.isclose(masked_var(X, M).item(), 14 / 3, rel_tol=1e-6)
    assert math.isclose(masked_var(X, M, unbiased=False).item(), 14 / 4, rel_tol=1e-6)


def test_whiten_hand_values():
    out = masked_whiten(X, M)
    std = math.sqrt(14 / 3)
    expected = torch.tensor([[(1 - 3) / std, (2 - 3) / std, 0.0], [0.0, 0.0, (6 - 3) / std]])
    expected[1, 0] = 0.0  # x=3 is the mean
    assert torch.allclose(out, expected, atol=1e-6)
    kept = masked_whiten(X, M, shift_mean=False)
    assert torch.allclose(kept, (expected + 3.0) * M, atol=1e-6)


def test_whiten_constant_is_finite():
    out = masked_whiten(torch.full((2, 3), 7.0), torch.ones(2, 3))
    assert torch.isfinite(out).all() and out.abs().max() == 0


def test_last_true_index_any_padding_side():
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]])
    assert last_true_index(mask).tolist() == [1, 3, -1, 2]


def test_pad_rows_left_and_right():
    from rewardlab.ops.masked import pad_rows

    ids, mask = pad_rows([[5, 6, 7], [8], []], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]] and mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    ids, mask = pad_rows([[5, 6, 7], [8]], pad_id=9, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
