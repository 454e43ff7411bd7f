"""Advantage estimators: GAE over tokens, REINFORCE++ returns, and RLOO / GRPO / Dr. GRPO baselines.

Token tensors are laid out (B, T) over *response* positions, right-padded: ``mask[b, t] = 1`` for
real response tokens. Rewards are the shaped per-token rewards (score at the last real token,
−β·KL on every token); values are the critic's V(s_t) at each response position.

Sequence baselines take one scalar per sample, ``scores`` (B,), ordered prompt-major with
``group_size`` consecutive samples per prompt: [p0s0, p0s1, …, p0s(K−1), p1s0, …].

`ADVANTAGE_ESTIMATORS` maps each ``ppo.advantage_estimator`` name to one function of one
signature, ``(rewards, values, mask, *, gamma, lam, group_size) -> (advantages, returns)``, with the
facts about it (`AdvantageEstimator`: whether it needs a critic, how many samples per prompt), so
the config and the trainer select an estimator by name once and never branch on it. Only ``gae``
uses the critic (``values``); the others return zero returns (there is no value target).

Example::

    >>> r = torch.tensor([[0.0, 1.0]]); v = torch.zeros(1, 2); m = torch.ones(1, 2)
    >>> gae(r, v, m, gamma=1.0, lam=1.0)[0]
    tensor([[1., 1.]])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation, vectorised over time.

        δ_t = r_t + γ · V_{t+1} · m_{t+1} − V_t          (V after the last real token is 0: terminal)
        A_t = Σ_{l ≥ 0} (γλ)^l · δ_{t+l} · m_{t+l}
        R_t = A_t + V_t                                   (the critic's regression target)

    The sum is one matrix product with the upper-triangular discount matrix D[t, s] = (γλ)^(s−t),
    which replaces the Python loop over T of the reference implementation (`gae_loop`) and
    equals it (a test checks parity). Advantages and returns are 0 at padded positions.

    Args:
        rewards: per-token rewards r_t.
        values: critic values V(s_t).
        mask: 1 for real response tokens.
        gamma: discount γ ∈ [0, 1].
        lam: GAE λ ∈ [0, 1].

    Returns:
        (advantages, returns), both (B, T) float32.

    Shapes: rewards, values, mask (B, T) → (B, T), (B, T).

    References: Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized
    Advantage Estimation", eq. 16.
    """
    rewards, values, m = rewards.float(), values.float(), mask.float()
    t = rewards.shape[-1]
    values = values * m
    next_values = torch.cat([values[:, 1:], values.new_zeros(values.shape[0], 1)], dim=1)
    deltas = (rewards + gamma * next_values - values) * m
    idx = torch.arange(t, device=rewards.device)
    lag = (idx.view(1, t) - idx.view(t, 1)).float()  # lag[t, s] = s − t
    discount = torch.where(lag >= 0, torch.pow(torch.tensor(gamma * lam, device=rewards.device), lag.clamp(min=0)),
                           torch.zeros((), device=rewards.device))
    advantages = (deltas @ discount.T) * m
    returns = (advantages + values) * m
    return advantages, returns


def gae_loop(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Reference GAE: the textbook backward recursion A_t = δ_t + γλ·A_{t+1}, one step at a time.

    Same definitions, inputs and outputs as `gae`; kept to test the vectorised form against.

    Shapes: rewards, values, mask (B, T) → (B, T), (B, T).
    """
    rewards, values, m = rewards.float(), values.float(), mask.float()
    values = values * m
    b, t = rewards.shape
    advantages = torch.zeros_like(rewards)
    last = torch.zeros(b, dtype=rewards.dtype, device=rewards.device)
    for i in reversed(range(t)):
        next_value = values[:, i + 1] if i + 1 < t else torch.zeros_like(last)
        delta = (rewards[:, i] + gamma * next_value - values[:, i]) * m[:, i]
        last = delta + gamma * lam * last
        advantages[:, i] = last
    advantages = advantages * m
    return advantages, (advantages + values) * m


def _grouped(scores: Tensor, group_size: int) -> Tensor:
    if group_size < 2:
        raise ValueError(f"group_size={group_size}: a per-prompt baseline needs at least 2 samples per prompt")
    if scores.ndim != 1 or scores.shape[0] % group_size:
        raise ValueError(
            f"scores of shape {tuple(scores.shape)} cannot be split into groups of {group_size}; "
            "pass a 1-D tensor whose length is a multiple of group_size"
        )
    return scores.float().view(-1, group_size)


def rloo_advantages(scores: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out: each sample's baseline is the mean of the other K − 1 samples.

        A_i = r_i − 1/(K−1) · Σ_{j ≠ i} r_j   =  K/(K−1) · (r_i − mean_j r_j)

    Shapes: scores (B,) with B = G·K → (B,).

    References: Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!";
    Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for RLHF".
    """
    g = _grouped(scores, group_size)
    k = group_size
    baseline = (g.sum(dim=1, keepdim=True) - g) / (k - 1)
    return (g - baseline).reshape(-1)


def group_normalized_advantages(scores: Tensor, group_size: int, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """Group-normalised advantages: centre by the prompt's mean, optionally divide by its std.

        A_i = (r_i − mean_g r) / (std_g r + eps)     (std unbiased; ``scale=False`` drops the division)

    Shapes: scores (B,) with B = G·K → (B,).

    References: Shao et al. 2024, "DeepSeekMath" (GRPO), eq. 3 outcome supervision.
    """
    g = _grouped(scores, group_size)
    centred = g - g.mean(dim=1, keepdim=True)
    if scale:
        denom = g.std(dim=1, keepdim=True) + eps
        # A constant group carries no preference between its samples: advantage 0, never 0/0.
        centred = torch.where(denom > 0, centred / denom.clamp(min=torch.finfo(g.dtype).tiny), torch.zeros_like(centred))
    return centred.reshape(-1)


def reinforce_pp_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """REINFORCE++ token advantages before normalisation: the discounted return-to-go, no critic.

        G_t = Σ_{s ≥ t} γ^(s−t) · r_s · m_s

    With per-token rewards r_s = −β·KL_s (+ the score at the last real token), G_t is the score
    minus β times the KL still to come, as in Hu et al. (2025, eq. 7); the paper then normalises
    G over the whole global batch (``ppo.whiten_advantages``, on by default), not per prompt.
    Equal to `gae` with V ≡ 0 and λ = 1.

    Shapes: rewards, mask (B, T) → (B, T).

    References: Hu et al. 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large
    Language Models" (arXiv 2501.03262); OpenRLHF's ``advantage_estimator: reinforce``.
    """
    return gae(rewards, torch.zeros_like(rewards, dtype=torch.float32), mask, gamma, 1.0)[0]


def _sequence(baseline: Callable[[Tensor, int], Tensor]):
    """Lift a per-sample baseline over sequence returns Σ_t r_t into a table entry (broadcast over tokens)."""

    def estimator(rewards: Tensor, values: Tensor | None, mask: Tensor, *, gamma: float, lam: float,
                  group_size: int) -> tuple[Tensor, Tensor]:
        seq = baseline(rewards.float().sum(1), group_size)  # sequence return: score − β·Σ KL
        m = mask.float()
        return seq.unsqueeze(1) * m, torch.zeros_like(m)

    estimator.__doc__ = f"Table entry: `{baseline.__name__}` of each sequence's return, on every real token."
    return estimator


def _gae(rewards: Tensor, values: Tensor | None, mask: Tensor, *, gamma: float, lam: float,
         group_size: int) -> tuple[Tensor, Tensor]:
    if values is None:
        raise ValueError("advantage_estimator='gae' needs critic values")
    return gae(rewards, values, mask, gamma, lam)


def _reinforce_pp(rewards: Tensor, values: Tensor | None, mask: Tensor, *, gamma: float, lam: float,
                  group_size: int) -> tuple[Tensor, Tensor]:
    return reinforce_pp_returns(rewards, mask, gamma), torch.zeros_like(mask, dtype=torch.float32)


def dr_grpo_advantages(scores: Tensor, group_size: int) -> Tensor:
    """Dr. GRPO: centre by the prompt's mean, without GRPO's division by the group's std.

        A_i = r_i − mean_g r

    Dividing by std_g up-weights prompts whose samples barely differ (too easy or too hard), a
    difficulty bias; Dr. GRPO also drops GRPO's per-response length normalisation, which rewardlab's
    token-mean loss over the minibatch never had.

    Shapes: scores (B,) with B = G·K → (B,).

    References: Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective"
    (arXiv 2503.20783), §3.2.
    """
    return group_normalized_advantages(scores, group_size, scale=False)


@dataclass(frozen=True)
class AdvantageEstimator:
    """A table entry: the estimator and the facts the config and trainer need about it.

    Attributes:
        fn: ``(rewards, values, mask, *, gamma, lam, group_size) -> (advantages, returns)``.
        needs_critic: it reads critic values (and trains the critic on its returns).
        min_group_size: the fewest samples per prompt it is defined for (a per-prompt baseline needs 2).
    """

    fn: Callable[..., tuple[Tensor, Tensor]]
    needs_critic: bool = False
    min_group_size: int = 1

    def __call__(self, rewards: Tensor, values: Tensor | None, mask: Tensor, *, gamma: float, lam: float,
                 group_size: int) -> tuple[Tensor, Tensor]:
        return self.fn(rewards, values, mask, gamma=gamma, lam=lam, group_size=group_size)


ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "gae": AdvantageEstimator(_gae, needs_critic=True),
    "reinforce_pp": AdvantageEstimator(_reinforce_pp),
    "rloo": AdvantageEstimator(_sequence(rloo_advantages), min_group_size=2),
    "group": AdvantageEstimator(_sequence(group_normalized_advantages), min_group_size=2),
    "dr_grpo": AdvantageEstimator(_sequence(dr_grpo_advantages), min_group_size=2),
}
"""Estimators by ``ppo.advantage_estimator`` name, with what each needs (a critic, groups per prompt)."""
