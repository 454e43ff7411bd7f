"""Reward-model losses against hand computations (plain `math`, three pairs)."""

import math

import pytest
import torch

from rewardlab.reward_model.loss import (
    bradley_terry_loss,
    centering_penalty,
    classifier_loss,
    preference_accuracy,
    reward_model_loss,
)

R_C = [1.0, 0.5, -0.2]
R_R = [0.0, 1.0, -1.2]
MARGIN = [0.5, 0.0, 1.0]


def nls(x: float) -> float:
    """−log σ(x), by hand."""
    return math.log1p(math.exp(-x))


def col(values):
    return torch.tensor(values).unsqueeze(-1)  # (3, 1): one head


def test_plain_bradley_terry_matches_hand_computation():
    expected = sum(nls(c - r) for c, r in zip(R_C, R_R, strict=True)) / 3
    assert bradley_terry_loss(col(R_C), col(R_R)).item() == pytest.approx(expected, rel=1e-6)


def test_margin_shifts_the_difference():
    expected = sum(nls(c - r - m) for c, r, m in zip(R_C, R_R, MARGIN, strict=True)) / 3  # d = [0.5, -0.5, 0]
    got = bradley_terry_loss(col(R_C), col(R_R), torch.tensor(MARGIN)).item()
    assert got == pytest.approx(expected, rel=1e-6)
    assert got == pytest.approx((nls(0.5) + nls(-0.5) + math.log(2)) / 3, rel=1e-6)
    # A margin of zero changes nothing.
    assert bradley_terry_loss(col(R_C), col(R_R), torch.zeros(3)).item() == pytest.approx(
        bradley_terry_loss(col(R_C), col(R_R)).item())


def test_centring_adds_coef_times_mean_square_of_sums():
    penalty = sum((c + r) ** 2 for c, r in zip(R_C, R_R, strict=True)) / 3  # (1 + 2.25 + 1.96) / 3
    assert penalty == pytest.approx(5.21 / 3)
    assert centering_penalty(col(R_C), col(R_R)).item() == pytest.approx(penalty, rel=1e-6)
    base = sum(nls(c - r - m) for c, r, m in zip(R_C, R_R, MARGIN, strict=True)) / 3
    got = reward_model_loss(col(R_C), col(R_R), torch.tensor(MARGIN), center_coef=0.1).item()
    assert got == pytest.approx(base + 0.1 * penalty, rel=1e-6)


def test_label_smoothing_mixes_both_directions():
    eps = 0.1
    expected = sum((1 - eps) * nls(c - r) + eps * nls(r - c) for c, r in zip(R_C, R_R, strict=True)) / 3
    got = bradley_terry_loss(col(R_C), col(R_R), label_smoothing=eps).item()
    assert got == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        bradley_terry_loss(col(R_C), col(R_R), label_smoothing=0.5)


def test_heads_are_averaged():
    # Head 1 is head 0 shifted by a constant per response pair member: same differences, same loss;
    # a second head with other differences averages in.
    chosen = torch.tensor([[1.0, 3.0], [0.5, 0.0], [-0.2, 2.0]])
    rejected = torch.tensor([[0.0, 0.0], [1.0, 2.0], [-1.2, 2.0]])
    per_head = [sum(nls(chosen[i, h].item() - rejected[i, h].item()) for i in range(3)) / 3 for h in range(2)]
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(sum(per_head) / 2, rel=1e-6)


def test_classifier_loss_is_cross_entropy():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    expected = (nls(2.0) + nls(1.0) + math.log(2)) / 3  # 2-class CE = −log σ(l_y − l_other)
    assert classifier_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_accuracy_counts_ties_as_half():
    assert preference_accuracy(torch.tensor([1.0, 0.0, 2.0, 5.0]), torch.tensor([0.0, 1.0, 2.0, 4.0])).item() == 0.625


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(B, H\)"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(3))
