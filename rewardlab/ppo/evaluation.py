"""Evaluation during training: the policy against the reference policy on the evaluation prompts.

The evaluation prompts are ``eval_dataset`` (Python), else the ``data.dataset_test_split`` split, else a
held-out ``data.eval_fraction`` of the training prompts (`rewardlab.ppo.prompts.eval_prompt_rows`). The
trainer evaluates after every ``run.eval_steps`` updates and after the last (``eval_steps: 0``: after the
last only), and before the first with ``run.eval_before_train``. Each time it samples one response per
prompt from the policy and one from the reference policy, both with the samples' fixed seed per prompt
(`rewardlab.ppo.samples.SAMPLES_STREAM`; the same seed for both, so before training the two agree and
the win rate is exactly 0.5), scores them with the reward side's state frozen, and logs `eval_metrics`
under ``eval/`` at that update's step, with the first ``run.num_sample_prompts`` rows as a table.

    eval/score       mean pipeline score (penalties included; stateful transforms not updated)
    eval/raw_reward  mean raw reward-model reading (`proxy_reading`)
    eval/kl          mean Σ_t log π(y_t) − log π_ref(y_t) over the policy's samples (k1, summed)
    eval/length      mean response length (tokens)
    eval/eos_rate    fraction of responses that ended with a stop token
    eval/win_rate    fraction of prompts whose policy sample the reward model reads above the reference
                     policy's (ties count ½; prompts where either reading is NaN are left out)

Example::

    metrics = eval_metrics(policy_samples, reference_samples)   # two ScoredSamples of the same prompts
"""

from __future__ import annotations

import torch
from torch import Tensor

from rewardlab.errors import RewardlabError
from rewardlab.ppo.samples import ScoredSamples

__all__ = ["eval_metrics", "evaluates_after", "win_rate"]


def win_rate(policy: Tensor, reference: Tensor) -> float:
    """Fraction of rows where ``policy`` > ``reference``, ties counting ½; rows with a NaN on either side
    are left out (NaN when none is left).

    Shapes: (B,), (B,) → a number.
    """
    if policy.shape != reference.shape:
        raise RewardlabError(f"win_rate: {tuple(policy.shape)} policy readings against {tuple(reference.shape)} "
                             "reference readings; give one of each per prompt")
    a, b = policy.double(), reference.double()
    both = torch.isfinite(a) & torch.isfinite(b)
    if not bool(both.any()):
        return float("nan")
    a, b = a[both], b[both]
    return ((a > b).double() + 0.5 * (a == b).double()).mean().item()


def eval_metrics(policy: ScoredSamples, reference: ScoredSamples) -> dict[str, float]:
    """The ``eval/`` metrics of the policy's samples against the reference policy's on the same prompts
    (see the module docstring). Means over prompts; NaN readings are left out of ``eval/raw_reward``."""
    if len(policy) != len(reference):
        raise RewardlabError(f"eval_metrics: {len(policy)} policy samples but {len(reference)} reference samples; "
                             "give one of each per prompt")
    proxy = policy.proxy.double()
    finite = torch.isfinite(proxy)
    kl = policy.kl if policy.kl is not None else torch.full((len(policy),), float("nan"))
    return {
        "eval/score": policy.scores.double().mean().item(),
        "eval/raw_reward": proxy[finite].mean().item() if bool(finite.any()) else float("nan"),
        "eval/kl": kl.double().mean().item(),
        "eval/length": policy.lengths.double().mean().item(),
        "eval/eos_rate": policy.finished.double().mean().item(),
        "eval/win_rate": win_rate(policy.proxy, reference.proxy),
    }


def evaluates_after(update: int, *, eval_steps: int, num_updates: int) -> bool:
    """Whether the trainer evaluates after ``update`` updates: every ``eval_steps`` (0: never in between) and
    after the last."""
    return update == num_updates or (eval_steps > 0 and update % eval_steps == 0)
