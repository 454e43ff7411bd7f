"""TRL's ``PPOTrainer`` arguments, read into a rewardlab run: each model an object or a name.

TRL 1.10 took ``PPOTrainer(args, processing_class, model, ref_model, reward_model, train_dataset,
value_model=None, eval_dataset=None, peft_config=None)``. `trl_models` turns those into what
`rewardlab.ppo.trainer.PPOTrainer` builds a run from: names (a folder or a Hub name) become
config paths, so they load, resolve and are recorded as a config's paths do; objects stay
objects. A ``transformers`` sequence-classification reward model is wrapped in a `RewardModel`
that reads its heads under ``reward.reward_semantics`` (or its rewardlab metadata); a 2-logit
head with neither is refused by the pipeline with the usual message. A peft ``LoraConfig``
becomes ``models.use_peft`` with its rank, α and target modules.

Example::

    cfg, given = trl_models(cfg, model="Qwen/Qwen2.5-0.5B-Instruct", reward_model=rm_object,
                            processing_class=tokenizer, peft_config=LoraConfig(r=8))
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from rewardlab.errors import RewardlabError
from rewardlab.ppo.config import PPOConfig


@dataclass
class GivenModels:
    """The objects passed in (None where the config's path loads the model)."""

    policy: Any = None
    ref_policy: Any = None
    critic: Any = None
    reward_model: Any = None  # a RewardModel-like object or a list of them
    tokenizer: Any = None


def trl_models(cfg: PPOConfig, *, model: Any = None, ref_model: Any = None, reward_model: Any = None,
               value_model: Any = None, processing_class: Any = None, peft_config: Any = None) -> tuple[PPOConfig, GivenModels]:
    """(the config with every named model as a path and ``peft_config`` applied, the model objects)."""
    models: dict[str, Any] = {}
    given = GivenModels(tokenizer=processing_class)
    for value, path_field, attr in ((model, "sft_model_path", "policy"), (ref_model, "ref_model_path", "ref_policy"),
                                    (value_model, "value_model_path", "critic")):
        if isinstance(value, (str, os.PathLike)):
            models[path_field] = os.fspath(value)
        elif value is not None:
            setattr(given, attr, value)
    if isinstance(reward_model, (str, os.PathLike)):
        models["reward_model_path"] = os.fspath(reward_model)
    elif isinstance(reward_model, (list, tuple)) and reward_model and all(
            isinstance(r, (str, os.PathLike)) for r in reward_model):
        models["reward_model_paths"] = [os.fspath(r) for r in reward_model]
    elif reward_model is not None:
        items = reward_model if isinstance(reward_model, (list, tuple)) else [reward_model]
        wrapped = [as_reward_model(r, cfg, processing_class) for r in items]
        given.reward_model = wrapped if isinstance(reward_model, (list, tuple)) else wrapped[0]
    if peft_config is not None:
        models.update(lora_fields(peft_config))
    if models:
        fields = dataclasses.asdict(cfg.models) | models
        cfg = dataclasses.replace(cfg, models=type(cfg.models)(**fields))
    return cfg, given


def lora_fields(peft_config: Any) -> dict[str, Any]:
    """``models`` fields for a peft ``LoraConfig`` (TRL's ``peft_config``); anything rewardlab's LoRA cannot do is refused."""
    if type(peft_config).__name__ != "LoraConfig":
        raise RewardlabError(f"peft_config={type(peft_config).__name__} is not a peft LoraConfig; rewardlab trains LoRA "
                             "adapters only (models.use_peft)")
    if getattr(peft_config, "lora_dropout", 0.0):
        raise RewardlabError(
            f"peft_config.lora_dropout={peft_config.lora_dropout}: rewardlab's LoRA has no dropout, because sampling "
            "and the update must be the same function (a dropout mask would make π_old ≠ π_θ at step 0); set it to 0")
    targets = peft_config.target_modules
    if isinstance(targets, str):
        raise RewardlabError(f"peft_config.target_modules={targets!r}: give a list of module names (e.g. "
                             "['q_proj', 'v_proj']), or None for peft's default for the architecture")
    return {"use_peft": True, "lora_r": int(peft_config.r), "lora_alpha": int(peft_config.lora_alpha),
            "lora_target_modules": sorted(targets) if targets else []}


def as_reward_model(model: Any, cfg: PPOConfig, processing_class: Any = None) -> Any:
    """A reward model object for the reward side: a `RewardModel`-like object as it is; a ``transformers``
    sequence-classification model wrapped, with its own folder's tokenizer when it has one, else
    ``processing_class`` (TRL 1.10 scored with the policy's tokenizer too)."""
    if hasattr(model, "score_policy_ids"):
        return model
    from transformers import PreTrainedModel

    from rewardlab.reward.scoring import RewardModel

    if not isinstance(model, PreTrainedModel) or not type(model).__name__.endswith("ForSequenceClassification"):
        raise RewardlabError(
            f"reward_model={type(model).__name__} is neither a rewardlab RewardModel, a transformers "
            "*ForSequenceClassification model, nor a model folder or Hub name; pass one of those")
    tokenizer = _own_tokenizer(model) or processing_class
    if tokenizer is None:
        raise RewardlabError("reward_model is a transformers model whose folder has no tokenizer, and no "
                             "processing_class was given; pass processing_class= (its tokenizer) or a RewardModel")
    vocab = getattr(model.config.get_text_config(), "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise RewardlabError(f"reward_model has {vocab} token embeddings but its tokenizer has {len(tokenizer)} "
                             "tokens: pass the reward model's own tokenizer in a RewardModel")
    r = cfg.reward
    return RewardModel(model, tokenizer, semantics=r.reward_semantics, batch_size=r.score_batch_size)


def _own_tokenizer(model: Any) -> Any:
    """The tokenizer saved with a model loaded from a folder or a Hub name (its cached snapshot), else None."""
    from rewardlab.local import TOKENIZER_FILES, as_hub_name, model_folder

    name = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
    if not name:
        return None
    if not os.path.isdir(name):
        if as_hub_name(name) is None:
            return None
        try:
            name = model_folder(name, "reward_model")  # the snapshot transformers loaded it from
        except RewardlabError:
            return None
    if not any(os.path.isfile(os.path.join(name, f)) for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)
