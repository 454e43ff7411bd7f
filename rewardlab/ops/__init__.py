"""Pure tensor maths of RLHF — imports torch only (a test enforces it).

masked      masked mean / var / whiten, last real token index
logprobs    logits → token logprobs, entropy
kl          k1 / k2 / k3 per-token estimators; fixed and adaptive (Ziegler) β controllers
advantages  GAE → (advantages, returns); RLOO and group-normalised baselines
ppo_loss    clipped policy and value losses → (loss, stats)
"""

from rewardlab.ops.advantages import gae, gae_loop, group_normalized_advantages, rloo_advantages
from rewardlab.ops.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_per_token,
)
from rewardlab.ops.logprobs import entropy_from_logits, logprobs_and_entropy, logprobs_from_logits
from rewardlab.ops.masked import last_true_index, masked_mean, masked_sum, masked_var, masked_whiten
from rewardlab.ops.ppo_loss import policy_loss, value_loss

__all__ = [
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "FixedKLController",
    "entropy_from_logits",
    "gae",
    "gae_loop",
    "group_normalized_advantages",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_per_token",
    "last_true_index",
    "logprobs_and_entropy",
    "logprobs_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "policy_loss",
    "rloo_advantages",
    "value_loss",
]
