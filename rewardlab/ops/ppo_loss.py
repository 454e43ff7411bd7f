"""PPO's clipped surrogate policy loss and clipped value loss, over masked response tokens.

Both return ``(loss, stats)``: a scalar loss to minimise and a dict of detached scalar tensors
for logging. Pure functions of tensors.

Example::

    >>> lp = torch.zeros(1, 2); adv = torch.ones(1, 2); m = torch.ones(1, 2)
    >>> policy_loss(lp, lp, adv, m, cliprange=0.2)[0]     # ratio 1 → −mean(A)
    tensor(-1.)
"""

from __future__ import annotations

import torch
from torch import Tensor

from rewardlab.ops.masked import masked_mean


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, cliprange: float,
    dual_clip: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate objective, negated to be minimised; optionally dual-clipped.

        ρ_t = exp(log π_θ(y_t) − log π_old(y_t))
        ℓ_t = max(−A_t · ρ_t, −A_t · clip(ρ_t, 1 − ε, 1 + ε))
        ℓ_t ← min(ℓ_t, −c · A_t)   where A_t < 0             (dual clip, c > 1)
        L = mean_t ℓ_t

    (the mean is over real tokens of the whole minibatch). For a negative advantage the clipped
    objective is unbounded in ρ; the dual clip caps it at c·|A|, so a token whose probability rose
    far above π_old's cannot dominate the minibatch (Ye et al. 2020).

    Args:
        dual_clip: c > 1, or None for plain PPO.

    Returns:
        (loss, stats) with stats ``clipfrac`` (fraction of tokens where the clipped term is
        the active one), ``approxkl`` (½·mean (log ρ)², an estimate of KL(π_old ‖ π_θ)),
        ``ratio`` (mean ρ) and, with ``dual_clip``, ``dual_clipfrac`` (tokens capped at c·|A|).

    Shapes: logprobs, old_logprobs, advantages, mask (B, T) → scalar, dict of scalars.

    References: Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7; Ye et al.
    2020, "Mastering Complex Control in MOBA Games with Deep Reinforcement Learning", eq. 5.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    per_token = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip={dual_clip} must be > 1")
        capped = (advantages < 0) & (per_token > -dual_clip * advantages)
        per_token = torch.where(capped, -dual_clip * advantages, per_token)
    loss = masked_mean(per_token, mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
            "ratio": masked_mean(ratio, mask),
        }
        if dual_clip is not None:
            stats["dual_clipfrac"] = masked_mean(capped.float(), mask)
    return loss, stats


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, cliprange_value: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss: the new value may not move further than ε_v from the rollout's value.

        V^clip_t = clip(V_t, V_old,t − ε_v, V_old,t + ε_v)
        L_V = ½ · mean_t max((V_t − R_t)², (V^clip_t − R_t)²)

    V^clip is written as a clamp of V itself (as TRL 1.10 does), not as V_old + clip(V − V_old):
    the latter differs from V by a rounding error where no clipping happens, and that error alone
    made the clipped term "larger" on about half the unclipped tokens.

    Returns:
        (loss, stats) with stats ``clipfrac`` (fraction of tokens where the clipped error is
        strictly the larger, i.e. where the clip is active in the loss; equal to TRL 1.10's
        ``val/clipfrac``) and ``error`` (mean squared error of the unclipped values).

    Shapes: values, old_values, returns, mask (B, T) → scalar, dict of scalars.

    References: the value clipping of OpenAI baselines' PPO2, as described in Huang et al.
    (2022, "The 37 implementation details of PPO", detail 9).
    """
    clipped_values = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    err_unclipped = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err_unclipped, err_clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((err_clipped > err_unclipped).float(), mask),
            "error": masked_mean(err_unclipped, mask),
        }
    return loss, stats
