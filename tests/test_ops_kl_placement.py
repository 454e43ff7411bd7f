"""Where the KL goes, checked exactly on the closed-form bandit (no sampling noise).

On-policy, "k1 in the reward" and "k2 as a loss" give the exact gradient of
E_π[u] − β·KL(π ‖ π_ref); "k3 as a loss" gives the gradient of the *reverse* KL instead (biased).
Expectations over π are sums over the bandit's enumerable responses, with π's weights detached —
exactly what sampling from π and averaging would estimate.
"""

import torch

from rewardlab.ops.kl import kl_k1, kl_k2, kl_k3
from rewardlab.study.tasks.bandit import BanditTask

BETA = 0.3


def _world():
    world = BanditTask(n_prompts=4, n_responses=16).build(seed=0)
    ref_logp = torch.log(torch.as_tensor(world.pi0, dtype=torch.float64))
    gold = torch.as_tensor(world.gold, dtype=torch.float64)
    # a policy that has moved away from π_ref
    theta = (ref_logp + 0.7 * torch.randn(ref_logp.shape, generator=torch.Generator().manual_seed(1),
                                          dtype=torch.float64)).requires_grad_(True)
    return theta, ref_logp, gold


def _grad(objective, theta):
    (g,) = torch.autograd.grad(objective, theta)
    return g


def _exact(theta, ref_logp, gold):
    """∇_θ of E_π[u] − β·KL(π ‖ π_ref), differentiated through the exact objective."""
    logp = torch.log_softmax(theta, -1)
    p = logp.exp()
    return _grad((p * gold).sum() - BETA * (p * (logp - ref_logp)).sum(), theta)


def _policy_gradient(theta, ref_logp, gold, estimator, placement):
    """The surrogate PPO differentiates at π_θ = π_old, in expectation over y ~ π (weights detached)."""
    logp = torch.log_softmax(theta, -1)
    w = logp.exp().detach()
    if placement == "reward":  # the penalty is part of the (constant) return
        ret = (gold - BETA * estimator(logp, ref_logp)).detach()
        return _grad((w * logp * ret).sum(), theta)
    return _grad((w * logp * gold).sum() - BETA * (w * estimator(logp, ref_logp)).sum(), theta)


def test_k1_in_the_reward_and_k2_as_a_loss_give_the_exact_gradient():
    theta, ref_logp, gold = _world()
    exact = _exact(theta, ref_logp, gold)
    torch.testing.assert_close(_policy_gradient(theta, ref_logp, gold, kl_k1, "reward"), exact)
    torch.testing.assert_close(_policy_gradient(theta, ref_logp, gold, kl_k2, "loss"), exact)


def test_k3_as_a_loss_follows_the_reverse_kl():
    theta, ref_logp, gold = _world()
    exact = _exact(theta, ref_logp, gold)
    k3 = _policy_gradient(theta, ref_logp, gold, kl_k3, "loss")
    assert (k3 - exact).norm() > 0.05 * exact.norm()  # biased
    # its KL part is exactly ∇ KL(π_ref ‖ π) = Σ_y (π − π_ref) ∇log π
    reverse = _grad((ref_logp.exp() * (ref_logp - torch.log_softmax(theta, -1))).sum(), theta)
    logp = torch.log_softmax(theta, -1)
    task = _grad((logp.exp().detach() * logp * gold).sum(), theta)
    torch.testing.assert_close(k3, task - BETA * reverse)
