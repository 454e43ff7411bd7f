"""rewardlab: RLHF with PPO against learned reward models, with the reward calculation explicit.

The public API (imported lazily, so ``import rewardlab`` stays light)::

    from rewardlab import RewardModel, RewardPipeline
    rm = RewardModel.from_pretrained("path/to/rm", semantics="bradley_terry")
    pipe = RewardPipeline.from_spec("mean|center|lsc(q=0.5)", semantics=rm.semantics)
    out = pipe(rm.score_texts(prompts, responses), ref=ref_logits)

    # reward models and rule functions as terms of one reward (what PPO, TRL's GRPO/RLOO and `score` use)
    side = RewardSide.from_spec("0.7*[rm:mean|lsc(q=0.5)] + 0.3*[fn:correct]", [rm], functions=[correct])
    side(Samples(prompts, responses, columns={"answer": answers}, group_ids=groups)).scores
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "RewardModel": "rewardlab.reward.scoring",
    "RewardPipeline": "rewardlab.reward.pipeline",
    "PipelineOutput": "rewardlab.reward.pipeline",
    "parse_spec": "rewardlab.reward.pipeline",
    "RewardSide": "rewardlab.reward.side",
    "Samples": "rewardlab.reward.side",
    "ReferenceRewards": "rewardlab.reward.baselines",
    "prompt_key": "rewardlab.reward.baselines",
    "STRATEGIES": "rewardlab.reward.strategies",
    "strategy_spec": "rewardlab.reward.strategies",
    "RewardModelMetadata": "rewardlab.reward.metadata",
    "read_metadata": "rewardlab.reward.metadata",
    "write_metadata": "rewardlab.reward.metadata",
    "RewardlabError": "rewardlab.errors",
    "PPOConfig": "rewardlab.ppo.config",
    "load_config": "rewardlab.ppo.config",
    "PPOTrainer": "rewardlab.ppo.trainer",
    "RewardTrainingConfig": "rewardlab.reward_model.config",
    "train_reward_model": "rewardlab.reward_model.train",
    "evaluate_reward_model": "rewardlab.reward_model.evaluate",
    "inspect_reward_model": "rewardlab.reward_model.inspect",
    "run_study": "rewardlab.study.run",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rewardlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
