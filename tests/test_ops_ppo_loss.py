import math

import torch

from rewardlab.ops.ppo_loss import policy_loss, value_loss


def test_policy_loss_hand_values():
    # ratios e^0.5≈1.649 (A=+1 → clipped at 1.2), e^-0.5≈0.607 (A=+1 → unclipped min),
    # e^0.5 with A=−1 → max(−(−1)·1.649, 1.2) = 1.649 unclipped; padded token ignored.
    old = torch.zeros(1, 4)
    new = torch.tensor([[0.5, -0.5, 0.5, 3.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0, 100.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    loss, stats = policy_loss(new, old, adv, m, cliprange=0.2)
    e = math.exp(0.5)
    expected = (-1.2 + -math.exp(-0.5) + e) / 3
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    assert math.isclose(stats["clipfrac"].item(), 1 / 3, rel_tol=1e-6)
    assert math.isclose(stats["approxkl"].item(), 0.5 * 0.25, rel_tol=1e-6)
    assert math.isclose(stats["ratio"].item(), (2 * e + math.exp(-0.5)) / 3, rel_tol=1e-6)


def test_policy_loss_gradient_zero_when_clipped():
    new = torch.tensor([[0.5]], requires_grad=True)
    loss, _ = policy_loss(new, torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2)
    loss.backward()
    assert new.grad.item() == 0.0


def test_value_loss_hand_values():
    old = torch.tensor([[0.0, 0.0, 0.0]])
    new = torch.tensor([[1.0, 0.1, -1.0]])
    ret = torch.tensor([[2.0, 0.0, 5.0]])
    m = torch.tensor([[1, 1, 0]])
    loss, stats = value_loss(new, old, ret, m, cliprange_value=0.2)
    # tok0: unclipped (1−2)²=1, clipped (0.2−2)²=3.24 → 3.24; tok1: (0.1)²=0.01 both → 0.01
    assert math.isclose(loss.item(), 0.5 * (3.24 + 0.01) / 2, rel_tol=1e-6)
    assert math.isclose(stats["clipfrac"].item(), 0.5, rel_tol=1e-6)
    assert math.isclose(stats["error"].item(), (1 + 0.01) / 2, rel_tol=1e-6)


def test_dual_clip_caps_negative_advantages_only():
    # ratio e^2 ≈ 7.39: with A = −1 plain PPO's term is 7.39; the dual clip c = 3 caps it at 3.
    # With A = +1 the term is −1.2 (clipped), untouched; a modest ratio with A = −1 is untouched too.
    old = torch.zeros(1, 3)
    new = torch.tensor([[2.0, 2.0, 0.1]])
    adv = torch.tensor([[-1.0, 1.0, -1.0]])
    m = torch.ones(1, 3)
    plain, _ = policy_loss(new, old, adv, m, cliprange=0.2)
    loss, stats = policy_loss(new, old, adv, m, cliprange=0.2, dual_clip=3.0)
    e = math.exp(0.1)
    assert math.isclose(plain.item(), (math.exp(2.0) - 1.2 + max(e, 0.9)) / 3, rel_tol=1e-6)
    assert math.isclose(loss.item(), (3.0 - 1.2 + max(e, 0.9)) / 3, rel_tol=1e-6)
    assert math.isclose(stats["dual_clipfrac"].item(), 1 / 3, rel_tol=1e-6)
    # no gradient flows through a capped token
    new.requires_grad_(True)
    policy_loss(new, old, adv, m, cliprange=0.2, dual_clip=3.0)[0].backward()
    assert new.grad[0, 0] == 0 and new.grad[0, 2] != 0


def test_dual_clip_must_exceed_one():
    import pytest

    with pytest.raises(ValueError, match="dual_clip=1.0"):
        policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2, dual_clip=1.0)
