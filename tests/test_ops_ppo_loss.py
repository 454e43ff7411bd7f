import math

import pytest
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
    with pytest.raises(ValueError, match="dual_clip=1.0"):
        policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), torch.ones(1, 1), 0.2, dual_clip=1.0)


def _trl_value_clipfrac(values, old_values, returns, mask, eps):
    """TRL 1.10's val/clipfrac (trl/experimental/ppo/ppo_trainer.py): clamp V itself, count strict >."""
    clipped = torch.clamp(values, old_values - eps, old_values + eps)
    losses1, losses2 = (values - returns) ** 2, (clipped - returns) ** 2
    return ((losses2 > losses1).double() * mask.double()).sum() / mask.double().sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_value_clipfrac_equals_trl_formula(dtype):
    gen = torch.Generator().manual_seed(0)
    shape = (32, 64)
    old = 0.1 * torch.randn(shape, generator=gen)  # an early critic: values near 0, moves of the same size
    values = (old + 0.1 * torch.randn(shape, generator=gen)).to(dtype)
    old, returns = old.to(dtype), torch.randn(shape, generator=gen).to(dtype)
    mask = (torch.rand(shape, generator=gen) > 0.2).to(dtype)
    _, stats = value_loss(values, old, returns, mask, cliprange_value=0.2)
    trl = _trl_value_clipfrac(values, old, returns, mask, 0.2)
    assert math.isclose(stats["clipfrac"].item(), trl.item(), rel_tol=1e-6 if dtype == torch.float32 else 1e-2)
    if dtype == torch.bfloat16:
        # The former V_old + clamp(V − V_old) differs from V by a rounding where nothing is clipped, and
        # the strict > counted about half of those tokens: well above TRL's fraction in bf16.
        old_form = old + torch.clamp(values - old, -0.2, 0.2)
        over = ((((old_form - returns) ** 2 > (values - returns) ** 2).double() * mask.double()).sum() / mask.double().sum()).item()
        assert over > 1.3 * trl.item()
