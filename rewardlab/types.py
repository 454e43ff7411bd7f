"""Typed containers passed between the steps of a PPO iteration (see DESIGN.md, "One PPO iteration").

Shapes: B = episodes in this process's batch, Tq = padded prompt length (left-padded),
T = response_length (responses right-padded after their stop token), H = reward heads, K =
reference samples per prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class Rollout:
    """What the policy generated, and the per-token quantities of the rollout policy."""

    query_ids: Tensor        # (B, Tq) int64, left-padded prompt ids
    query_mask: Tensor       # (B, Tq) int64, 1 on real prompt tokens
    response_ids: Tensor     # (B, T) int64, pad id after the stop token
    response_mask: Tensor    # (B, T) int64, 1 on real response tokens (stop token included)
    contains_stop: Tensor    # (B,) bool, the response ended with the stop/EOS token
    logprobs: Tensor         # (B, T) float32, log π_old(y_t) at the sampling temperature
    ref_logprobs: Tensor     # (B, T) float32, log π_ref(y_t)
    values: Tensor           # (B, T) float32, critic V(s_t) before token t (zeros without a critic)
    prompt_keys: list[str]   # B prompt keys (rewardlab.reward.baselines.prompt_key of the prompt ids)

    def select(self, idx: Tensor) -> Rollout:
        """The rows ``idx`` of every tensor field (a minibatch)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = v[idx] if isinstance(v, torch.Tensor) else [v[i] for i in idx.tolist()]
        return Rollout(**out)


@dataclass
class ScoredRollout:
    """Rewards and advantages of a rollout: what the PPO update consumes."""

    raw_logits: Tensor       # (B, H) float32, reward-model outputs (or rule-based scores as H = 1)
    scores: Tensor           # (B,) float32, the pipeline's reward, after the missing-EOS penalty
    kl_k1: Tensor            # (B, T) float32, per-token k1 = log π_old − log π_ref (0 on padding)
    kl_k3: Tensor            # (B, T) float32, per-token k3 (0 on padding)
    non_score_rewards: Tensor  # (B,) float32, −β·Σ_t KL_t (0 when the KL is a loss term instead)
    rewards: Tensor          # (B, T) float32, shaped: −β·KL_t, plus the score at the last real token
    advantages: Tensor       # (B, T) float32, after whitening when enabled
    returns: Tensor          # (B, T) float32, value targets (advantages + values before whitening)
