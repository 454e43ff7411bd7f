"""Convert a TRL 1.10 ``PPOConfig`` (YAML/JSON) into the equivalent rewardlab PPO config.

TRL removed its PPOTrainer after 1.10 (``trl.experimental.ppo``). Its config is a flat mapping of
PPO fields, the ``transformers.TrainingArguments`` fields it inherits, and — in the YAML files its
example script read — ``ScriptArguments`` (dataset) and ``ModelConfig`` fields. `migrate_trl_ppo`
maps each to a rewardlab field (same name where the concept is the same), converts the few whose
units differ, fills in TRL's defaults for fields the file leaves out (so the migrated run does what
the TRL run did, not what rewardlab's defaults would), and lists what has no equivalent and why::

    m = migrate_trl_ppo(read_trl_config("trl_ppo.yaml"))
    print(m.table())                 # TRL name → rewardlab name, value; unmapped fields with reasons
    save_migrated(m, "ppo.yaml")     # then: rewardlab ppo --config ppo.yaml

The reward: TRL 1.10 read a reward model's single logit at the last response token, untransformed.
The migrated config states that explicitly, ``reward_pipeline: raw`` (for a 1-output model), so a
centred or shaped reading is a visible, deliberate change (see docs/reward-calculation.md).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rewardlab.atomic import write_text
from rewardlab.errors import RewardlabError
from rewardlab.ppo.config import PPOConfig

__all__ = ["Migration", "Row", "migrate_trl_ppo", "read_trl_config", "save_migrated"]

Status = Literal["mapped", "converted", "default", "unmapped", "attention"]

# TRL 1.10 defaults (trl/experimental/ppo/ppo_config.py, trl/trainer/base_config.py, and the
# transformers.TrainingArguments fields they inherit) for every field that has a rewardlab equivalent.
TRL_DEFAULTS: dict[str, Any] = {
    "sft_model_path": "EleutherAI/pythia-160m",
    "reward_model_path": "EleutherAI/pythia-160m",
    "response_length": 53,
    "temperature": 0.7,
    "stop_token": None,
    "stop_token_id": None,
    "missing_eos_penalty": None,
    "kl_coef": 0.05,
    "kl_estimator": "k1",
    "num_ppo_epochs": 4,
    "num_mini_batches": 1,
    "cliprange": 0.2,
    "cliprange_value": 0.2,
    "vf_coef": 0.1,
    "gamma": 1.0,
    "lam": 0.95,
    "whiten_rewards": False,
    "learning_rate": 3e-6,
    "lr_scheduler_type": "linear",
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
    "max_grad_norm": 1.0,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "local_rollout_forward_batch_size": 64,
    "seed": 42,
    "output_dir": "trainer_output",
    "report_to": "none",
    "bf16": None,
    "fp16": False,
    "gradient_checkpointing": True,  # TrainingArguments says False; TRL's PPOConfig turned it on
    "trust_remote_code": False,
}

# TRL 1.10 ModelConfig defaults (trl/trainer/model_config.py) for the LoRA fields rewardlab maps.
MODEL_CONFIG_DEFAULTS: dict[str, Any] = {"use_peft": False, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05}

# Fields TRL 1.10's PPOTrainer computed at start and wrote over (never inputs).
_DERIVED = ("world_size", "num_total_batches", "micro_batch_size", "local_batch_size", "batch_size",
            "local_mini_batch_size", "mini_batch_size")

# Fields with no rewardlab equivalent, with the reason shown to the user.
NO_EQUIVALENT: dict[str, str] = {
    "num_sample_generations": "set run.sample_steps (updates between samples tables; unset: about 10 per run, as TRL's default)",
    "ds3_gather_for_generation": "DeepSpeed ZeRO-3 is set in the accelerate config (examples/accelerate/)",
    "model_adapter_name": "multi-adapter PEFT policies are not supported by `rewardlab ppo` in this version",
    "ref_adapter_name": "multi-adapter PEFT policies are not supported by `rewardlab ppo` in this version",
    "push_to_hub": "rewardlab does not upload; push run.output_dir/policy yourself",
    "hub_model_id": "rewardlab does not upload; push run.output_dir/policy yourself",
    "hub_strategy": "rewardlab does not upload",
    "hub_token": "rewardlab does not upload",
    "hub_private_repo": "rewardlab does not upload",
    "dataset_num_proc": "prompts are tokenised in the main process",
    "num_train_epochs": "rewardlab counts training in episodes (run.total_episodes)",
    "gradient_checkpointing_kwargs": "rewardlab always checkpoints non-reentrant (torch's recommended form; same "
                                     "numbers)",
    "logging_dir": "trackers write under run.output_dir",
    "logging_first_step": "metrics are written every run.logging_steps updates",
    "logging_strategy": "metrics are written every run.logging_steps updates",
    "save_strategy": "checkpoints every run.save_steps updates (0: at the end only)",
    "save_only_model": "checkpoints always hold everything needed to resume",
    "eval_strategy": "TRL's PPO evaluation only generated sample tables (run.sample_steps); rewardlab evaluates every "
                     "run.eval_steps updates",
    "eval_steps": "TRL's PPO evaluation only generated sample tables (run.sample_steps); rewardlab's run.eval_steps "
                  "computes eval/ metrics and counts updates: set it yourself",
    "per_device_eval_batch_size": "evaluation is batched by optim.local_rollout_forward_batch_size",
    "dataset_streaming": "prompts are loaded in memory",
    "ignore_bias_buffers": "a DDP workaround TRL's scripts applied; not needed",
    "model_name_or_path": "TRL's example script loaded only the tokenizer from it; rewardlab takes the tokenizer "
                          "from models.sft_model_path",
    "lora_dropout": "rewardlab's LoRA has no dropout (sampling and update must be the same function)",
    "load_in_8bit": "quantised policies are not supported",
    "load_in_4bit": "quantised policies are not supported",
    "optim": "rewardlab uses torch AdamW (optim.adam_* fields)",
    "use_cpu": "device placement comes from accelerate (CPU when no GPU is visible)",
    "disable_tqdm": "see run.progress_bar",
    "dataloader_num_workers": "prompts are batched in the main process",
    "remove_unused_columns": "only data.prompt_column is read",
}
_NO_EQUIVALENT_PREFIXES = {
    "lora_": "this LoRA option is not configurable (models.lora_r, lora_alpha, lora_target_modules are)",
    "bnb_": "quantised policies are not supported",
    "use_bnb": "quantised policies are not supported",
    "use_rslora": "rsLoRA is not configurable (plain LoRA scaling α / r)",
    "use_dora": "DoRA is not configurable (plain LoRA)",
    "deepspeed": "DeepSpeed is set in the accelerate config (examples/accelerate/)",
    "fsdp": "FSDP is set in the accelerate config (examples/accelerate/)",
}

# Dropped fields that change memory use or numerical precision: marked (!) when set to anything but "off".
MEMORY_OR_PRECISION = ("gradient_checkpointing", "gradient_checkpointing_kwargs", "dtype", "torch_dtype",
                       "attn_implementation", "load_in_8bit", "load_in_4bit", "bnb_4bit_quant_type",
                       "use_bnb_nested_quant", "bnb_4bit_quant_storage", "tf32", "optim", "deepspeed", "fsdp",
                       "fsdp_config", "half_precision_backend", "ds3_gather_for_generation", "torch_compile",
                       "use_liger_kernel")
_OFF_VALUES = (None, False, "", "no", "none", "float32", "fp32", "adamw_torch", "adamw_torch_fused", [], {})

_SCRIPT_ARGUMENTS = ("dataset_name", "dataset_config", "dataset_train_split", "dataset_test_split",
                     "dataset_streaming", "ignore_bias_buffers")
_MODEL_CONFIG = ("model_name_or_path", "model_revision", "dtype", "torch_dtype", "attn_implementation", "use_peft",
                 "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules", "lora_target_parameters",
                 "lora_modules_to_save", "lora_task_type", "use_rslora", "use_dora", "load_in_8bit", "load_in_4bit",
                 "bnb_4bit_quant_type", "use_bnb_nested_quant", "bnb_4bit_quant_storage", "trust_remote_code")
PPO_FIELDS = ("dataset_num_proc", "num_mini_batches", "total_episodes", "local_rollout_forward_batch_size",
               "num_sample_generations", "response_length", "stop_token", "stop_token_id", "temperature",
               "missing_eos_penalty", "sft_model_path", "world_size", "num_total_batches", "micro_batch_size",
               "local_batch_size", "batch_size", "local_mini_batch_size", "mini_batch_size", "push_to_hub",
               "reward_model_path", "model_adapter_name", "ref_adapter_name", "num_ppo_epochs", "whiten_rewards",
               "kl_coef", "kl_estimator", "cliprange", "vf_coef", "cliprange_value", "gamma", "lam",
               "ds3_gather_for_generation")


@dataclass(frozen=True)
class Row:
    """One line of the migration table.

    Attributes:
        trl_name: the TRL field.
        trl_value: its value in the file, or TRL's default (status "default").
        rewardlab_name: ``section.field`` it maps to, or None.
        value: the value written to the rewardlab config.
        status: mapped (same value), converted (units differ), default (TRL default filled in),
            unmapped (no equivalent), attention (mapped or not, but needs a decision).
        note: why it was converted, or why there is no equivalent.
    """

    trl_name: str
    trl_value: Any
    rewardlab_name: str | None
    value: Any
    status: Status
    note: str = ""


@dataclass
class Migration:
    """The migrated config (nested sections) and the table of what mapped."""

    config: dict[str, dict[str, Any]]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def rewardlab_config(self) -> PPOConfig:
        """The migrated config, validated."""
        return PPOConfig.from_dict(self.config)

    @property
    def attention(self) -> list[Row]:
        return [r for r in self.rows if r.status == "attention"]

    def table(self) -> str:
        """A plain-text table: mapped fields first, then fields with no equivalent, then notes."""
        def fmt(v: Any) -> str:
            return "null" if v is None else json.dumps(v) if isinstance(v, (str, list, bool)) else str(v)

        mapped = [r for r in self.rows if r.rewardlab_name is not None]
        other = [r for r in self.rows if r.rewardlab_name is None]
        lines = []
        if mapped:
            w1 = max(len(r.trl_name) for r in mapped)
            w2 = max(len(r.rewardlab_name or "") for r in mapped)
            lines.append(f"{'TRL 1.10':<{w1}}  {'rewardlab':<{w2}}  value")
            for r in mapped:
                tag = {"mapped": "", "default": "  (TRL default)", "converted": f"  (TRL: {fmt(r.trl_value)})",
                       "attention": "  (!)"}.get(r.status, "")
                lines.append(f"{r.trl_name:<{w1}}  {r.rewardlab_name:<{w2}}  {fmt(r.value)}{tag}")
                if r.note and r.status in ("converted", "attention"):
                    lines.append(f"{'':<{w1}}  {'':<{w2}}    {r.note}")
        if other:
            lines.append("")
            lines.append("no rewardlab equivalent:")
            w1 = max(len(r.trl_name) for r in other)
            for r in other:
                mark = "(!) " if r.status == "attention" else ""
                lines.append(f"  {r.trl_name:<{w1}}  = {fmt(r.trl_value)}: {mark}{r.note}")
        if self.notes:
            lines.append("")
            lines.append("notes:")
            lines.extend(f"  - {n}" for n in self.notes)
        return "\n".join(lines)

    def to_yaml(self, source: str | None = None) -> str:
        """The migrated config as YAML, with a header naming the source and what needs attention."""
        import yaml

        head = [f"# rewardlab PPO config migrated from TRL 1.10 {source or 'PPOConfig'} by `rewardlab migrate-trl-ppo`."]
        head.append("# Run it with: rewardlab ppo --config THIS_FILE")
        for r in self.attention:
            head.append(f"# CHECK {r.trl_name}: {r.note}")
        body = yaml.safe_dump(self.config, sort_keys=False)
        return "\n".join(head) + "\n" + body


def read_trl_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TRL config file (YAML or JSON) into a flat mapping.

    YAML is read as YAML 1.2 reads numbers (`rewardlab.yamlconf`): ``learning_rate: 3e-6`` is a float.
    TRL accepted it too: its ``TrlParser`` turned YAML values into argparse defaults, which argparse
    converts with the field's type (trl/scripts/utils.py, ``set_defaults_with_config``).
    """
    from rewardlab.yamlconf import load_yaml_file

    p = Path(path)
    if not p.is_file():
        raise RewardlabError(f"TRL config {str(path)!r} does not exist; pass the YAML/JSON file you gave TRL")
    if p.suffix == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise RewardlabError(f"{path}: not valid JSON: {err}; fix the syntax there") from None
    else:
        data = load_yaml_file(p, what="TRL config")
    if not isinstance(data, dict):
        raise RewardlabError(f"{path}: a TRL config is a mapping of field names to values; got {type(data).__name__}")
    return data


def _known_fields() -> set[str]:
    from transformers import TrainingArguments

    return ({f.name for f in dataclasses.fields(TrainingArguments)} | set(PPO_FIELDS) | set(_SCRIPT_ARGUMENTS)
            | set(_MODEL_CONFIG) | set(TRL_DEFAULTS) | set(NO_EQUIVALENT) | set(MODEL_CONFIG_DEFAULTS))


def _reward_num_labels(path: Any) -> int | None:
    """Outputs of a local reward model folder, read with ``AutoConfig`` as transformers reads them.

    transformers 5 leaves ``num_labels`` / ``id2label`` out of ``config.json`` when they hold its
    default (2 labels), so counting keys in the file would read a 2-label model as 1 output. None
    when ``path`` is not a local folder with a config (nothing is downloaded).
    """
    cfg = Path(str(path)) / "config.json"
    if path is None or not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise RewardlabError(f"{cfg}: not a readable config.json ({err}); pass --reward-num-labels N") from None
    if isinstance(data, dict) and "model_type" in data:
        from transformers import AutoConfig

        try:
            return int(AutoConfig.from_pretrained(str(path), local_files_only=True).num_labels)
        except (OSError, ValueError, KeyError) as err:
            raise RewardlabError(f"{cfg}: transformers cannot read this config ({err}); pass --reward-num-labels N") from None
    # No model_type (not loadable by AutoConfig): count the labels the file lists.
    if isinstance(data, dict) and "num_labels" in data:
        return int(data["num_labels"])
    labels = data.get("id2label") if isinstance(data, dict) else None
    return len(labels) if isinstance(labels, dict) else None


def migrate_trl_ppo(trl: dict[str, Any], *, reward_num_labels: int | None = None) -> Migration:
    """Map a TRL 1.10 PPOConfig mapping to a rewardlab PPO config.

    Args:
        trl: the TRL fields (as in the YAML/JSON file given to TRL's PPO script).
        reward_num_labels: outputs of the reward model; default: read from ``reward_model_path`` when
            it is a local folder (TRL 1.10 could only use 1-output models).

    Returns:
        A `Migration`: ``config`` (nested rewardlab sections, validated), ``rows``, ``notes``.

    Raises:
        RewardlabError: unknown field names (with suggestions), values TRL itself would refuse, or a
            migrated config that fails rewardlab's validation.
    """
    known = _known_fields()
    unknown = [k for k in trl if k not in known]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, sorted(known), n=2)
            hints.append(f"{k!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
        raise RewardlabError(
            f"not TRL 1.10 PPOConfig / TrainingArguments / ScriptArguments / ModelConfig fields: {', '.join(hints)}; "
            "fix or remove them (TRL's parser would have refused them too)"
        )
    m = _Migrator(trl)
    m.run(reward_num_labels)
    migration = Migration(config=m.config, rows=m.rows, notes=m.notes)
    migration.rewardlab_config()  # validate now, with rewardlab's messages
    return migration


class _Migrator:
    """Field-by-field conversion; `run` fills `config`, `rows` and `notes`."""

    def __init__(self, trl: dict[str, Any]) -> None:
        self.trl = trl
        self.config: dict[str, dict[str, Any]] = {}
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.done: set[str] = set()

    def get(self, name: str) -> tuple[Any, bool]:
        """(value, from_file): the file's value or TRL's default."""
        if name in self.trl:
            return self.trl[name], True
        return TRL_DEFAULTS.get(name, MODEL_CONFIG_DEFAULTS.get(name)), False

    def put(self, trl_name: str, target: str, value: Any = None, *, convert: Callable[[Any], Any] | None = None,
            note: str = "", attention: bool = False, only_if_given: bool = False) -> None:
        trl_value, given = self.get(trl_name)
        self.done.add(trl_name)
        if only_if_given and not given:
            return
        new = value if value is not None else (convert(trl_value) if convert else trl_value)
        section, leaf = target.split(".")
        self.config.setdefault(section, {})[leaf] = new
        if attention:
            status: Status = "attention"
        elif new != trl_value:
            status = "converted"
        else:
            status = "mapped" if given else "default"
        self.rows.append(Row(trl_name, trl_value, target, new, status, note))

    def skip(self, trl_name: str, note: str, *, attention: bool = False) -> None:
        self.done.add(trl_name)
        if trl_name in self.trl:
            self.rows.append(Row(trl_name, self.trl[trl_name], None, None, "attention" if attention else "unmapped", note))

    def run(self, reward_num_labels: int | None) -> None:
        t = self.trl
        # -- models ---------------------------------------------------------------------------
        revision, given = self.get("model_revision")
        self.done.add("model_revision")
        at = f"@{revision}" if given and revision not in (None, "main") else ""
        self.put("sft_model_path", "models.sft_model_path", convert=lambda v: v if v is None or not at else f"{v}{at}",
                 note=f"model_revision={revision!r} written as '{at}' after the Hub name" if at else "")
        self.put("reward_model_path", "models.reward_model_path")
        self.put("trust_remote_code", "models.trust_remote_code", only_if_given=True)
        self.notes.append("the critic starts from reward_model_path, as in TRL's example script "
                          "(models.value_model_path overrides it)")
        self._lora()
        # -- the reward reading ------------------------------------------------------------------
        labels = reward_num_labels if reward_num_labels is not None else _reward_num_labels(self.get("reward_model_path")[0])
        self.done.add("reward_pipeline")
        if labels is None or labels == 1:
            self.config.setdefault("reward", {})["reward_pipeline"] = "raw"
            self.rows.append(Row("(reward reading)", "logits[..., 0]", "reward.reward_pipeline", "raw", "converted",
                                 "TRL 1.10 used the single logit at the last response token, untransformed; "
                                 "'raw' keeps that. A centred reading such as 'center|lsc(q=0.5)' is usually "
                                 "better: see docs/reward-calculation.md"))
        else:
            self.rows.append(Row("(reward reading)", "logits[..., 0]", None, None, "attention",
                                 f"the reward model has {labels} outputs; TRL 1.10 could only run 1-output models. "
                                 "Choose a head reading: set reward.reward_pipeline (e.g. 'mean' for Bradley-Terry "
                                 "heads, 'logodds' for a classifier) and reward.reward_semantics"))
        # -- generation -------------------------------------------------------------------------
        self.put("response_length", "generation.response_length")
        self.put("temperature", "generation.temperature")
        stop_token, _ = self.get("stop_token")
        stop_id, _ = self.get("stop_token_id")
        if stop_token is not None and stop_id is not None:
            raise RewardlabError(f"stop_token={stop_token!r} and stop_token_id={stop_id!r} are mutually exclusive in "
                                 "TRL 1.10; keep one")
        penalty, _ = self.get("missing_eos_penalty")
        self.put("missing_eos_penalty", "reward.missing_eos_penalty")
        if penalty is not None and stop_token is None and stop_id is None:
            self.done.add("stop_token")
            self.config["generation"]["stop_token"] = "eos"
            self.rows.append(Row("stop_token", None, "generation.stop_token", "eos", "attention",
                                 "TRL 1.10 applied missing_eos_penalty without truncating after EOS; rewardlab needs "
                                 "a stop token for the penalty, so 'eos' is set (responses end at their first EOS)"))
        else:
            self.put("stop_token", "generation.stop_token")
        self.put("stop_token_id", "generation.stop_token_id")
        # TRL sampled with top_k=0, top_p=1.0: rewardlab's defaults, nothing to write.
        # -- KL -------------------------------------------------------------------------------------
        self.put("kl_coef", "kl.kl_coef")
        self.put("kl_estimator", "kl.kl_estimator")
        # -- PPO ------------------------------------------------------------------------------------
        for name in ("num_ppo_epochs", "num_mini_batches", "cliprange", "cliprange_value", "vf_coef", "gamma", "lam",
                     "whiten_rewards"):
            self.put(name, f"ppo.{name}")
        # -- batch sizes: rewardlab uses TRL 1.10's arithmetic (batch = per_device × accum × world, split into
        # num_mini_batches), so the fields map as they are unless a minibatch is not whole micro-batches.
        per_device, _ = self.get("per_device_train_batch_size")
        accum, _ = self.get("gradient_accumulation_steps")
        minis, _ = self.get("num_mini_batches")
        local = per_device * accum
        if local % minis:
            raise RewardlabError(
                f"per_device_train_batch_size × gradient_accumulation_steps = {per_device}×{accum} = {local} is not a "
                f"multiple of num_mini_batches={minis}; TRL 1.10 refused this too"
            )
        mini = local // minis
        if mini % per_device == 0 or mini < per_device:
            self.put("per_device_train_batch_size", "optim.per_device_train_batch_size")
            self.put("gradient_accumulation_steps", "optim.gradient_accumulation_steps")
        else:
            self.put("per_device_train_batch_size", "optim.per_device_train_batch_size", mini,
                     note=f"a minibatch of {mini} episodes per device, as one micro-batch (TRL's {accum} micro-batches "
                          f"of {per_device} do not split evenly into {minis} minibatches)")
            self.put("gradient_accumulation_steps", "optim.gradient_accumulation_steps", minis,
                     note=f"{minis} micro-batches of {mini}: the same {local} episodes per device and update")
        if minis > 1:
            self.notes.append(f"stock TRL 1.10 stepped the optimiser once per PPO epoch whatever num_mini_batches was "
                              f"(its accelerate accumulation spanned all {accum} micro-batches); rewardlab steps once "
                              f"per minibatch ({minis} per epoch), as PPO intends")
        for name in _DERIVED:
            self.skip(name, "TRL 1.10 computed it at start, overwriting the file's value; rewardlab derives it too")
        self.put("local_rollout_forward_batch_size", "optim.local_rollout_forward_batch_size")
        # -- optimiser ------------------------------------------------------------------------------
        for name in ("learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm"):
            self.put(name, f"optim.{name}")
        sched, _ = self.get("lr_scheduler_type")
        if sched in ("linear", "cosine", "constant"):
            self.put("lr_scheduler_type", "optim.lr_scheduler_type")
        else:
            self.skip("lr_scheduler_type", f"rewardlab schedules are linear, cosine or constant; {sched!r} is not "
                      "available (the migrated config uses rewardlab's 'linear')", attention=True)
        self.skip("lr_scheduler_kwargs", "schedule options are not configurable")
        warmup, _ = self.get("warmup_steps")
        if isinstance(warmup, float) and 0 < warmup < 1:
            self.skip("warmup_steps", f"a warm-up ratio ({warmup}) needs the number of updates; set optim.warmup_steps "
                      "to ratio × updates", attention=True)
        else:
            self.put("warmup_steps", "optim.warmup_steps", convert=int)  # both count updates
        ratio = t.get("warmup_ratio")
        if ratio:
            self.skip("warmup_ratio", f"set optim.warmup_steps (in updates) to {ratio} × the number of updates",
                      attention=True)
        else:
            self.skip("warmup_ratio", "not set")
        # -- run ----------------------------------------------------------------------------------------
        episodes, given = self.get("total_episodes")
        self.done.add("total_episodes")
        if episodes is not None:
            self.put("total_episodes", "run.total_episodes")
        else:
            epochs = t.get("num_train_epochs", 3.0)
            self.rows.append(Row("total_episodes", None, "run.total_episodes", None, "attention",
                                 f"TRL 1.10 used num_train_epochs ({epochs}) × the training set's rows; set "
                                 "run.total_episodes to that number (rewardlab's default is 1024)"))
        self.put("seed", "run.seed")
        self.put("output_dir", "run.output_dir", convert=lambda d: d if d is not None else "trainer_output")
        self._report_to()
        self._precision()
        self._steps("logging_steps", "run.logging_steps")
        self._steps("save_steps", "run.save_steps")
        self.put("save_total_limit", "run.save_total_limit", only_if_given=True)
        self.put("run_name", "run.run_name", only_if_given=True)
        # -- data -----------------------------------------------------------------------------------------
        self.put("dataset_name", "data.dataset_name", only_if_given=True)
        self.put("dataset_train_split", "data.dataset_train_split", only_if_given=True)
        self.put("dataset_test_split", "data.dataset_test_split", only_if_given=True,
                 note="TRL's script drew its sample tables from this split; rewardlab draws them from it too and "
                      "evaluates on it at the end (every run.eval_steps updates when set)")
        self.put("dataset_config", "data.dataset_config", only_if_given=True)
        if "dataset_name" in t:
            self.notes.append("TRL's example script held out the last 100 prompts for evaluation; rewardlab trains "
                              "on the whole split unless told otherwise (data.eval_fraction, data.dataset_test_split)")
        tok_path, sft = t.get("model_name_or_path"), self.get("sft_model_path")[0]
        if tok_path is not None and tok_path != sft:
            self.skip("model_name_or_path", f"TRL's example script took the tokenizer from here; rewardlab takes it "
                      f"from models.sft_model_path ({sft!r}): make sure the two tokenizers are the same",
                      attention=True)
        self._memory()
        # -- everything else ----------------------------------------------------------------------------
        for name in t:
            if name in self.done:
                continue
            reason = NO_EQUIVALENT.get(name) or next(
                (r for p, r in _NO_EQUIVALENT_PREFIXES.items() if name.startswith(p)), None)
            value = t[name]
            changes = (name in MEMORY_OR_PRECISION or name.startswith(("bnb_", "fsdp", "deepspeed"))) and not (
                isinstance(value, (str, bool, type(None), list, dict)) and value in _OFF_VALUES)
            self.skip(name, reason or "a transformers.TrainingArguments option rewardlab's PPO does not use",
                      attention=changes or (name.startswith(("lora_", "use_rslora", "use_dora")) and bool(t.get("use_peft"))
                                            and value not in (None, False, [], "")))

    def _lora(self) -> None:
        """TRL's ModelConfig LoRA fields → models.use_peft / lora_r / lora_alpha / lora_target_modules."""
        t = self.trl
        use_peft = bool(t.get("use_peft", False))
        self.put("use_peft", "models.use_peft", use_peft, only_if_given=True)
        if not use_peft:
            for name in ("lora_r", "lora_alpha", "lora_target_modules", "lora_dropout"):
                if name in t:
                    self.skip(name, "use_peft is off (TRL ignored it too)")
            return
        # TRL's ModelConfig defaults (trl/trainer/model_config.py): r=16, alpha=32, dropout 0.05, targets None.
        self.put("lora_r", "models.lora_r")
        self.put("lora_alpha", "models.lora_alpha")
        targets = t.get("lora_target_modules")
        if isinstance(targets, str):
            if targets == "all-linear":
                self.skip("lora_target_modules", "'all-linear' is not available: list the module names "
                          "(models.lora_target_modules); peft's default for the architecture is used", attention=True)
                targets = None
            else:
                targets = [targets]
        if targets:
            self.put("lora_target_modules", "models.lora_target_modules", list(targets))
        dropout, _ = self.get("lora_dropout")
        self.done.add("lora_dropout")
        if dropout:
            self.rows.append(Row("lora_dropout", dropout, None, None, "attention",
                                 f"TRL trained its adapters with dropout {dropout}; " + NO_EQUIVALENT["lora_dropout"]))

    def _memory(self) -> None:
        """TRL's gradient_checkpointing (on by default in its PPOConfig), dtype / torch_dtype and
        attn_implementation → models.gradient_checkpointing, models.dtype, models.attn_implementation."""
        t = self.trl
        self.put("gradient_checkpointing", "models.gradient_checkpointing", convert=bool,
                 note="" if "gradient_checkpointing" in t else "TRL 1.10's PPOConfig default")
        for name in ("dtype", "torch_dtype"):
            value = t.get(name)
            if name not in t or value is None:
                continue
            if value in ("auto", "bfloat16", "float32"):
                self.put(name, "models.dtype")
            elif value == "float16":
                self.put(name, "models.dtype", "bfloat16", attention=True,
                         note="rewardlab does not train float16 weights (AdamW underflows without loss scaling)")
            else:
                self.skip(name, f"unknown dtype {value!r}: models.dtype is auto, float32 or bfloat16", attention=True)
        attn = t.get("attn_implementation")
        if attn in ("sdpa", "eager", "flash_attention_2", "flash_attention_3"):
            self.put("attn_implementation", "models.attn_implementation")
        elif attn is not None:
            self.skip("attn_implementation", f"{attn!r} is not available: models.attn_implementation is sdpa, eager, "
                      "flash_attention_2 or flash_attention_3", attention=True)

    def _report_to(self) -> None:
        from rewardlab.tracking import TRACKERS as supported

        value, _ = self.get("report_to")
        names = [value] if isinstance(value, str) else list(value or [])
        names = [n for n in names if n not in ("none", None)]
        if "all" in names:
            names = sorted(supported)
        dropped = [n for n in names if n not in supported]
        kept = [n for n in names if n in supported]
        self.put("report_to", "run.report_to", kept,
                 note=f"rewardlab writes to mlflow, tensorboard, trackio or wandb; dropped {dropped}" if dropped else "",
                 attention=bool(dropped))

    def _precision(self) -> None:
        bf16, _ = self.get("bf16")
        fp16, _ = self.get("fp16")
        self.done.update({"bf16", "fp16"})
        if fp16:
            self.put("fp16", "run.mixed_precision", "fp16", note="fp16 autocast with loss scaling over float32 "
                     "weights, as TRL's fp16=true")
        elif bf16 is False:
            self.put("bf16", "run.mixed_precision", "no", note="bf16=false: full precision")
        elif bf16 is True:
            self.put("bf16", "run.mixed_precision", "bf16", note="bf16 autocast, as TRL's bf16=true")
        else:
            # TRL 1.10 turned bf16 on whenever fp16 was off.
            self.put("bf16", "run.mixed_precision", "auto", note="TRL's bf16 (on unless fp16): 'auto' = bf16 on GPU, "
                     "fp32 on CPU")

    def _steps(self, name: str, target: str) -> None:
        value = self.trl.get(name)
        self.done.add(name)
        if value is None:
            return  # TRL's default only sets logging/checkpoint frequency: rewardlab's own default is kept
        if isinstance(value, float) and not value.is_integer():
            self.skip(name, f"{name}={value} is a fraction of the run; set {target} in updates", attention=True)
            return
        self.put(name, target, convert=lambda v: int(v) if math.isfinite(v) else v)


def save_migrated(migration: Migration, path: str | os.PathLike[str], *, source: str | None = None) -> None:
    """Write the migrated YAML atomically (temp file in the same folder, then rename)."""
    write_text(path, migration.to_yaml(source))
