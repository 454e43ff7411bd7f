import math

import torch

from rewardlab.ops.logprobs import entropy_from_logits, logprobs_and_entropy, logprobs_from_logits


def test_logprobs_hand_values():
    logits = torch.tensor([[[0.0, math.log(3.0)], [2.0, 2.0]]])  # p = (1/4, 3/4), (1/2, 1/2)
    tokens = torch.tensor([[1, 0]])
    out = logprobs_from_logits(logits, tokens)
    assert torch.allclose(out, torch.tensor([[math.log(0.75), math.log(0.5)]]), atol=1e-6)


def test_logprobs_temperature():
    logits = torch.tensor([[[0.0, 2.0 * math.log(3.0)]]])  # /2 → (0, log 3) → p = (1/4, 3/4)
    out = logprobs_from_logits(logits, torch.tensor([[0]]), temperature=2.0)
    assert math.isclose(out.item(), math.log(0.25), rel_tol=1e-6)


def test_logprobs_match_log_softmax_gather():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    tokens = torch.randint(0, 11, (3, 5), generator=g)
    ref = torch.log_softmax(logits / 0.7, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(logprobs_from_logits(logits, tokens, 0.7), ref, atol=1e-5)


def test_entropy_hand_values():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e4, -1e4]]])
    h = entropy_from_logits(logits)
    expected_second = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert torch.allclose(h, torch.tensor([[math.log(4.0), expected_second]]), atol=1e-5)


def test_logprobs_and_entropy_equal_the_separate_functions():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 6, 13, generator=g) * 3
    tokens = torch.randint(0, 13, (2, 6), generator=g)
    for temp in (1.0, 0.6):
        lp, h = logprobs_and_entropy(logits, tokens, temp)
        torch.testing.assert_close(lp, logprobs_from_logits(logits, tokens, temp), rtol=0, atol=1e-6)
        torch.testing.assert_close(h, entropy_from_logits(logits, temp), rtol=0, atol=1e-5)
