"""Reward models: train (Bradley-Terry or classifier), evaluate, and inspect.

    from rewardlab.reward_model import RewardTrainingConfig, train_reward_model, inspect_reward_model
    result = train_reward_model(RewardTrainingConfig(model="base", train_file="prefs.jsonl", output_dir="runs/rm"))
    report = inspect_reward_model("runs/rm", preferences="eval.jsonl")
    report.recommended_spec       # e.g. "mean|lsc(q=0.5)"

Modules: `data` (files → checked, tokenised pairs), `loss` (pure BT / cross-entropy maths),
`train` (the accelerate loop), `evaluate` (accuracy per reading, calibration, temperature),
`inspect` (head semantics and the recommended pipeline). Heavy libraries (transformers,
accelerate, datasets, matplotlib) are imported only when a function needs them.
"""

from rewardlab.reward_model.evaluate import (
    EvaluationReport,
    evaluate_pairs,
    evaluate_reward_model,
    expected_calibration_error,
    fit_temperature,
)
from rewardlab.reward_model.inspect import InspectionReport, inspect_reward_model
from rewardlab.reward_model.loss import (
    bradley_terry_loss,
    centering_penalty,
    classifier_loss,
    reward_model_loss,
)
from rewardlab.reward_model.train import RewardTrainingConfig, TrainResult, train_reward_model

__all__ = [
    "EvaluationReport",
    "InspectionReport",
    "RewardTrainingConfig",
    "TrainResult",
    "bradley_terry_loss",
    "centering_penalty",
    "classifier_loss",
    "evaluate_pairs",
    "evaluate_reward_model",
    "expected_calibration_error",
    "fit_temperature",
    "inspect_reward_model",
    "reward_model_loss",
    "train_reward_model",
]
