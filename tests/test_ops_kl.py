import math

import pytest
import torch

from rewardlab.ops.kl import AdaptiveKLController, FixedKLController, kl_k1, kl_k2, kl_k3, kl_per_token

LP = torch.tensor([[-1.0, -2.0, -0.5]])
REF = torch.tensor([[-1.5, -2.0, 0.0]])  # log r = ref − lp = (−0.5, 0, 0.5)


def test_estimators_hand_values():
    assert torch.allclose(kl_k1(LP, REF), torch.tensor([[0.5, 0.0, -0.5]]))
    assert torch.allclose(kl_k2(LP, REF), torch.tensor([[0.125, 0.0, 0.125]]))
    k3 = [math.exp(-0.5) - 1 + 0.5, 0.0, math.exp(0.5) - 1 - 0.5]
    assert torch.allclose(kl_k3(LP, REF), torch.tensor([k3]), atol=1e-7)
    assert torch.equal(kl_per_token(LP, REF, "k3"), kl_k3(LP, REF))


def test_k1_and_k3_unbiased_on_samples():
    # KL(p‖q) for two categoricals, estimated from samples of p.
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.3, 0.3, 0.4])
    true_kl = (p * (p / q).log()).sum().item()
    g = torch.Generator().manual_seed(0)
    y = torch.multinomial(p, 200_000, replacement=True, generator=g)
    lp, ref = p.log()[y], q.log()[y]
    assert abs(kl_k1(lp, ref).mean().item() - true_kl) < 0.01
    assert abs(kl_k3(lp, ref).mean().item() - true_kl) < 0.01
    assert (kl_k3(lp, ref) >= 0).all()


def test_unknown_estimator():
    with pytest.raises(ValueError, match="k4"):
        kl_per_token(LP, REF, "k4")


def test_fixed_controller():
    c = FixedKLController(0.05)
    c.update(100.0, 64)
    assert c.value == 0.05
    d = FixedKLController(1.0)
    d.load_state_dict(c.state_dict())
    assert d.value == 0.05


def test_adaptive_controller_hand_values():
    c = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    c.update(9.0, 1000)   # e = clip(0.5) = 0.2 → β·(1 + 0.2·0.1)
    assert math.isclose(c.value, 0.1 * 1.02)
    c.update(5.4, 1000)   # e = −0.1 → ·(1 − 0.01)
    assert math.isclose(c.value, 0.1 * 1.02 * 0.99)
    d = AdaptiveKLController(1.0, 1.0, 1.0)
    d.load_state_dict(c.state_dict())
    assert (d.value, d.target, d.horizon) == (c.value, 6.0, 10_000)
