import pytest
import torch

from rewardlab.ops.advantages import gae, gae_loop, group_normalized_advantages, rloo_advantages


def test_gae_hand_values():
    # one sequence of 3 real tokens + 1 pad; γ = 0.9, λ = 0.5
    r = torch.tensor([[0.0, 0.0, 1.0, 5.0]])
    v = torch.tensor([[0.5, 0.2, 0.4, 9.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    d2 = 1.0 + 0.9 * 0.0 - 0.4           # terminal: next value 0 (pad ignored)
    d1 = 0.0 + 0.9 * 0.4 - 0.2
    d0 = 0.0 + 0.9 * 0.2 - 0.5
    a2 = d2
    a1 = d1 + 0.45 * a2
    a0 = d0 + 0.45 * a1
    adv, ret = gae(r, v, m, gamma=0.9, lam=0.5)
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2, 0.0]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[a0 + 0.5, a1 + 0.2, a2 + 0.4, 0.0]]), atol=1e-6)


def test_gae_gamma_lam_one_is_reward_to_go_minus_value():
    r = torch.tensor([[1.0, 2.0, 3.0]])
    v = torch.tensor([[1.0, 1.0, 1.0]])
    m = torch.ones(1, 3)
    adv, ret = gae(r, v, m, 1.0, 1.0)
    assert torch.allclose(ret, torch.tensor([[6.0, 5.0, 3.0]]))
    assert torch.allclose(adv, torch.tensor([[5.0, 4.0, 2.0]]))


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (0.5, 0.0), (1.0, 1.0)])
def test_gae_vectorised_equals_loop(gamma, lam):
    g = torch.Generator().manual_seed(1)
    b, t = 6, 17
    r, v = torch.randn(b, t, generator=g), torch.randn(b, t, generator=g)
    lengths = torch.tensor([17, 1, 5, 0, 12, 16])
    m = (torch.arange(t).view(1, t) < lengths.view(b, 1)).long()
    a1, r1 = gae(r, v, m, gamma, lam)
    a2, r2 = gae_loop(r, v, m, gamma, lam)
    assert torch.allclose(a1, a2, atol=1e-5) and torch.allclose(r1, r2, atol=1e-5)
    assert (a1[m == 0] == 0).all()


def test_rloo_hand_values():
    s = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 4.0])
    # group 0: baselines (2+6)/2, (1+6)/2, (1+2)/2
    out = rloo_advantages(s, 3)
    assert torch.allclose(out, torch.tensor([1 - 4.0, 2 - 3.5, 6 - 1.5, 0 - 2.0, 0 - 2.0, 4 - 0.0]))


def test_group_normalized_hand_values():
    s = torch.tensor([1.0, 3.0, 10.0, 10.0])
    out = group_normalized_advantages(s, 2, eps=0.0)
    std = torch.tensor([1.0, 3.0]).std().item()
    assert torch.allclose(out[:2], torch.tensor([-1.0 / std, 1.0 / std]))
    assert torch.equal(out[2:], torch.zeros(2))  # constant group: 0, not NaN (eps)
    assert torch.allclose(group_normalized_advantages(s, 2, scale=False), torch.tensor([-1.0, 1.0, 0.0, 0.0]))


def test_group_errors():
    with pytest.raises(ValueError, match="multiple of group_size"):
        rloo_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="at least 2"):
        group_normalized_advantages(torch.zeros(4), 1)


def test_reinforce_pp_is_the_discounted_return_to_go():
    from rewardlab.ops.advantages import reinforce_pp_returns

    # −β·KL on each token, score 2.0 on the last real token; γ = 0.5; one pad
    r = torch.tensor([[-0.1, -0.2, 2.0 - 0.3, 7.0]])
    m = torch.tensor([[1, 1, 1, 0]])
    g2 = 1.7
    g1 = -0.2 + 0.5 * g2
    g0 = -0.1 + 0.5 * g1
    torch.testing.assert_close(reinforce_pp_returns(r, m, gamma=0.5), torch.tensor([[g0, g1, g2, 0.0]]))


def test_dr_grpo_centres_without_the_std():
    from rewardlab.ops.advantages import dr_grpo_advantages

    s = torch.tensor([1.0, 3.0, 10.0, 10.0, 10.5, 9.5])  # groups of 3: means 14/3 and 10
    expected = torch.tensor([1 - 14 / 3, 3 - 14 / 3, 10 - 14 / 3, 0.0, 0.5, -0.5])
    torch.testing.assert_close(dr_grpo_advantages(s, 3), expected)
    # GRPO divides by each group's std, so the nearly-constant second group is blown up relative to the first
    grpo = group_normalized_advantages(s, 3)
    assert grpo[4] / grpo[2] > 0.5 / (10 - 14 / 3) * 4


def test_the_estimator_table_has_one_signature():
    from rewardlab.ops.advantages import ADVANTAGE_ESTIMATORS

    r = torch.tensor([[0.0, 1.0], [0.0, 3.0], [0.0, 2.0], [0.0, 6.0]])
    v, m = torch.zeros(4, 2), torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0]])
    for name, fn in ADVANTAGE_ESTIMATORS.items():
        adv, ret = fn(r, v, m, gamma=1.0, lam=0.95, group_size=2)
        assert adv.shape == ret.shape == (4, 2), name
        assert torch.all(adv[m == 0] == 0), name
    # rloo on sequence returns [1, 3 | 2, 0]: ±(3 − 1) and ±(2 − 0), broadcast over real tokens
    adv, _ = ADVANTAGE_ESTIMATORS["rloo"](r * m, v, m, gamma=1.0, lam=1.0, group_size=2)
    torch.testing.assert_close(adv, torch.tensor([[-2.0, -2.0], [2.0, 2.0], [2.0, 2.0], [-2.0, 0.0]]))
    with pytest.raises(ValueError, match="critic"):
        ADVANTAGE_ESTIMATORS["gae"](r, None, m, gamma=1.0, lam=1.0, group_size=2)


def test_the_table_says_what_each_estimator_needs():
    from rewardlab.ops.advantages import ADVANTAGE_ESTIMATORS

    assert [n for n, e in ADVANTAGE_ESTIMATORS.items() if e.needs_critic] == ["gae"]
    assert {n: e.min_group_size for n, e in ADVANTAGE_ESTIMATORS.items()} == {
        "gae": 1, "reinforce_pp": 1, "rloo": 2, "group": 2, "dr_grpo": 2}
