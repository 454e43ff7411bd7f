"""Pure tensor maths of RLHF — imports torch only (a test enforces it).

masked      masked mean / var / whiten, last real token index, padding rows of token ids
logprobs    logits → token logprobs, entropy
linear      a wide linear layer (an LM head) in slices of its rows: F.linear's numbers, faster on CPU
kl          k1 / k2 / k3 per-token estimators; fixed and adaptive (Ziegler) β controllers
advantages  GAE, REINFORCE++ returns, RLOO / GRPO / Dr. GRPO baselines; ADVANTAGE_ESTIMATORS by name
penalties   sequence-level penalties (missing EOS, DAPO's soft overlong penalty)
shaping     the score and the KL penalty placed on the response tokens
ppo_loss    clipped (and dual-clipped) policy loss, clipped value loss → (loss, stats)
"""

from rewardlab.ops.advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageEstimator,
    dr_grpo_advantages,
    gae,
    gae_loop,
    group_normalized_advantages,
    reinforce_pp_returns,
    rloo_advantages,
)
from rewardlab.ops.kl import (
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_per_token,
)
from rewardlab.ops.linear import sliced_linear
from rewardlab.ops.logprobs import entropy_from_logits, logprobs_and_entropy, logprobs_from_logits
from rewardlab.ops.masked import last_true_index, masked_mean, masked_sum, masked_var, masked_whiten, pad_rows
from rewardlab.ops.penalties import overlong_penalty, sequence_penalties
from rewardlab.ops.ppo_loss import policy_loss, value_loss
from rewardlab.ops.shaping import shape_rewards

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "AdvantageEstimator",
    "FixedKLController",
    "dr_grpo_advantages",
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
    "overlong_penalty",
    "pad_rows",
    "policy_loss",
    "reinforce_pp_returns",
    "rloo_advantages",
    "sequence_penalties",
    "shape_rewards",
    "sliced_linear",
    "value_loss",
]
