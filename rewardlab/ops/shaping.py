"""Reward shaping: the sequence score and the KL penalty placed on the response tokens.

Example::

    >>> rewards, non_score = shape_rewards(torch.tensor([1.0]), torch.tensor([[0.1, 0.2]]),
    ...                                    torch.tensor([[1, 1]]), beta=0.5, kl_in_reward=True)
    >>> rewards
    tensor([[-0.0500,  0.9000]])
"""

from __future__ import annotations

import torch
from torch import Tensor

from rewardlab.ops.masked import last_true_index


def shape_rewards(scores: Tensor, kl: Tensor, mask: Tensor, *, beta: float, kl_in_reward: bool) -> tuple[Tensor, Tensor]:
    """Per-token rewards: −β·KL_t on every response token, plus the sequence score at the last real token.

        r_t = −β · KL_t + [t = last real token] · s        (``kl_in_reward``)
        r_t =             [t = last real token] · s        (KL as a loss term instead)

    This is Ziegler et al. 2019's reward, R(x, y) = r(x, y) − β log(π(y|x) / π_ref(y|x)), spread over
    the tokens as in TRL 1.10 and Ouyang et al. 2022: the reward model scores the whole sequence,
    the KL is paid where each token is sampled.

    Args:
        scores: s, the sequence scores after the reward pipeline and penalties.
        kl: the per-token KL estimate (0 on padding).
        mask: 1 on real response tokens (right-padded).
        beta: β ≥ 0.
        kl_in_reward: False when the KL is a loss term (``kl.kl_penalty: loss``).

    Returns:
        (rewards (B, T), non_score_rewards (B,) = Σ_t −β·KL_t, or 0).

    Shapes: scores (B,), kl (B, T), mask (B, T) → (B, T), (B,).

    References: Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", eq. 2.
    """
    rewards = -beta * kl if kl_in_reward else torch.zeros_like(kl)
    non_score_rewards = rewards.sum(1)
    last = last_true_index(mask).clamp(min=0)
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores
    return rewards, non_score_rewards
