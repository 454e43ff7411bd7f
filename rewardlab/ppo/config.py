"""PPO configuration: nested, typed, validated before any model loads, frozen, saved with each run.

Sections group one concern each (models, data, generation, reward, kl, ppo, optim, run, alarm). Field
names follow TRL 1.10's ``PPOConfig`` wherever the concept is the same (``kl_coef``,
``cliprange``, ``vf_coef``, ``response_length``, ``num_mini_batches``, ``total_episodes`` …), so a
TRL user can copy values across. Every field carries a one-line doc that becomes ``--help``.

YAML accepts nested sections or flat TRL-style keys (``cliprange: 0.1`` finds ``ppo.cliprange``)::

    models: {sft_model_path: runs/sft, reward_model_path: runs/rm}
    reward: {reward_pipeline: "mean|center(q=0.5)|logsigmoid"}
    kl_coef: 0.05

Example::

    cfg = load_config("examples/ppo_tiny.yaml", overrides=["ppo.cliprange=0.1", "seed=3"])
    sizes = cfg.sizes(world_size=1)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from rewardlab.atomic import write_text
from rewardlab.errors import RewardlabError
from rewardlab.yamlconf import check_type


def _f(default: Any, help: str) -> Any:
    """A dataclass field with its one-line doc (shown by ``rewardlab ppo --help``)."""
    return field(default=default, metadata={"help": help})


class _Section:
    """Base of the config sections: however a section is built (YAML, flags, Python), every field is
    type-checked (ints widen to floats, lists become tuples) and range-checked on creation."""

    def __post_init__(self) -> None:
        name = _SECTION_NAMES[type(self)]
        for f in fields(self):  # type: ignore[arg-type]
            value = check_type(f"{name}.{f.name}", getattr(self, f.name), _hints(type(self))[f.name])
            object.__setattr__(self, f.name, value)  # frozen: normalise in place, once
        _RANGES[name](self)


@dataclass(frozen=True)
class ModelsConfig(_Section):
    sft_model_path: str | None = _f(None, "policy initialisation (HF folder); also the reference policy")
    reward_model_path: str | None = _f(None, "reward model (AutoModelForSequenceClassification folder)")
    reward_model_paths: tuple[str, ...] = _f(
        (), "several reward models instead of reward_model_path: one per term of a combined reward_pipeline, "
            "or stacked as the heads of one model for a one-term pipeline (an ensemble read by min/mean/uwo)")
    value_model_path: str | None = _f(None, "critic initialisation; default: the (first) reward model, else sft_model_path")
    ref_model_path: str | None = _f(None, "reference policy; default: sft_model_path")
    trust_remote_code: bool = _f(False, "allow custom model code from model folders (off: safer)")
    critic: Literal["model", "policy_head", "adapter"] = _f(
        "model", "'model': a separate value model (value_model_path); 'policy_head': a linear value head on the policy; "
                 "'adapter' (with use_peft): a second LoRA adapter on the policy's base plus a value head")
    fast_gelu: bool = _f(True, "swap GPT-2's 8-op tanh GELU (gelu_new) for torch's one-kernel gelu(approximate='tanh') "
                         "in every model of the run: same formula, ~2e-7 apart, faster")
    lm_head_slice: int = _f(
        1024, "on CPU, compute the policy's and reference's LM head in slices of this many vocabulary rows "
              "(0: one matmul; ≥ 64; used for vocabularies over 4 slices): bitwise the same logits and gradients, "
              "faster with MKL")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _f(
        "float32", "weights' dtype of the trained models (policy, critic: the optimiser's master weights; 'auto': as "
                   "saved); float16 is refused for them: keep float32 and set run.mixed_precision to fp16 or bf16")
    ref_dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = _f(
        None, "the frozen reference policy's weights (None: bfloat16 on a GPU under bf16/fp16 mixed precision, "
              "else models.dtype)")
    reward_dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = _f(
        None, "the frozen reward models' weights (None: as ref_dtype's default)")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flash_attention_3"] = _f(
        "sdpa", "attention kernel of every model (flash attention needs the flash_attn package and CUDA)")
    gradient_checkpointing: bool = _f(
        False, "recompute the policy's and critic's activations in the backward pass (non-reentrant): less memory, "
               "about one more forward of time")
    use_peft: bool = _f(False, "train LoRA adapters on policy and critic instead of all weights (needs peft); the "
                        "reference policy is then the policy's base with the adapter disabled (no second copy)")
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA scaling α (the update is scaled by α / r)")
    lora_target_modules: tuple[str, ...] = _f((), "modules to adapt (empty: peft's default for the architecture)")


@dataclass(frozen=True)
class DataConfig(_Section):
    dataset_name: str | None = _f(
        None, "prompts: a Hugging Face Hub dataset (org/name), a local .jsonl/.json/.csv/.parquet/.arrow file, a "
              "save_to_disk folder or a dataset folder (TRL's dataset_name; `dataset` is accepted too)")
    dataset_config: str | None = _f(None, "the dataset's configuration (subset) name, e.g. 'main' for gsm8k")
    dataset_train_split: str = _f("train", "split to train on (TRL's dataset_train_split; `dataset_split` is "
                                  "accepted too)")
    dataset_test_split: str | None = _f(
        None, "split of dataset_name whose prompts evaluate the policy during training (TRL's dataset_test_split; "
              "an eval_dataset passed in Python wins)")
    eval_fraction: float = _f(0.0, "hold out this fraction of the training prompts for evaluation when there is "
                              "no dataset_test_split or eval_dataset (0: none)")
    prompt_column: str = _f("prompt", "column with the prompt text, or a list of chat messages")
    max_prompt_length: int | None = _f(None, "drop prompts longer than this many tokens, with a printed count "
                                       "(None: keep all)")


@dataclass(frozen=True)
class GenerationConfig(_Section):
    response_length: int = _f(53, "number of new tokens generated per response")
    temperature: float = _f(0.7, "sampling temperature; logprobs use the same temperature")
    top_k: int = _f(0, "top-k sampling (0: off)")
    top_p: float = _f(1.0, "nucleus sampling (1.0: off)")
    stop_token: Literal["eos"] | None = _f(
        None, "'eos': a response ends at the tokenizer's EOS or any end-of-turn token of the policy's generation "
              "config (a chat model's <|im_end|>, <|eot_id|>); None: only stop_token_id(s) end it")
    stop_token_id: int | None = _f(None, "a token id that ends a response (TRL 1.10's; see stop_token_ids)")
    stop_token_ids: tuple[int, ...] = _f((), "token ids that end a response, besides stop_token and stop_token_id")
    backend: Literal["hf", "vllm"] = _f(
        "hf", "rollout engine: 'hf' (transformers generate, layout-independent seeded sampling) or 'vllm' (a colocated "
              "vLLM engine per process, weights synced after every update; needs vllm, see docs/ppo.md)")
    vllm_gpu_memory_utilization: float = _f(0.3, "backend=vllm on GPU: the share of GPU memory vLLM may take for "
                                            "weights and KV cache (the rest is training's)")
    vllm_kvcache_gib: int = _f(1, "backend=vllm on CPU: vLLM's KV cache in GiB (VLLM_CPU_KVCACHE_SPACE)")
    vllm_dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = _f(
        None, "backend=vllm: the engine's weights (None: bfloat16 on a GPU, the policy's dtype on CPU)")
    vllm_enforce_eager: bool | None = _f(None, "backend=vllm: no CUDA graphs (None: CUDA graphs on a GPU, eager on "
                                         "CPU)")
    vllm_sleep: bool = _f(False, "backend=vllm on GPU: free vLLM's weights and KV cache during the update (sleep "
                          "level 2; the weight sync brings them back); no-op on CPU")


@dataclass(frozen=True)
class RewardConfig(_Section):
    reward_pipeline: str = _f(
        "mean", "reward pipeline spec, e.g. 'mean|center(q=0.5)|logsigmoid', or terms naming what they read: "
                "'0.7*[rm:mean|lsc(q=0.5)] + 0.3*[fn:my_rules:correct]' (docs/pipeline.md)")
    reward_semantics: Literal["bradley_terry", "classifier"] | None = _f(
        None, "head semantics of the reward model (None: read from its metadata)")
    reward_fn: str | None = _f(
        None, "a rule function 'module:function' (TRL's reward_funcs signature: prompts, completions, dataset columns "
              "by name → scores, None where it does not apply): a term of weight 1 beside the reward model, or the "
              "whole reward without one; several rules: name them in reward_pipeline (fn:module:function)")
    allow_untrained_head: bool = _f(False, "accept a reward folder whose score head is not in its weights "
                                    "(transformers initialises it at random; off: refused)")
    allow_semantics_mismatch: bool = _f(False, "keep reward_semantics even when the heads' measured correlation "
                                        "contradicts it (off: refused; see `rewardlab inspect`)")
    num_reference_samples: int = _f(4, "K reference-policy samples per prompt for centred pipelines")
    missing_eos_penalty: float | None = _f(None, "subtract this from the score of responses without EOS")
    overlong_buffer_len: int | None = _f(
        None, "DAPO's soft overlong penalty: the last N tokens of response_length where the score falls linearly "
              "to −overlong_penalty_factor (None: off)")
    overlong_penalty_factor: float = _f(1.0, "the overlong penalty at response_length (with overlong_buffer_len)")
    score_batch_size: int = _f(32, "reward-model micro-batch size")


@dataclass(frozen=True)
class KLConfig(_Section):
    kl_coef: float = _f(0.05, "β: weight of the KL penalty (initial β when adaptive)")
    kl_estimator: Literal["k1", "k2", "k3"] = _f(
        "k1", "per-token KL estimator of the penalty: k1 = log π/π_ref, k2 = ½(log π/π_ref)², k3 = r − 1 − log r "
              "(k1 and k3 are always logged); k1 in the reward and k2 in the loss give the exact KL gradient")
    kl_penalty: Literal["reward", "loss"] = _f("reward", "'reward': −β·KL per token in the reward; 'loss': β·KL in the loss")
    adaptive_kl: bool = _f(False, "adapt β to track target_kl (Ziegler et al. 2019)")
    target_kl: float = _f(6.0, "adaptive β: target KL per sequence (nats)")
    kl_horizon: int = _f(10000, "adaptive β: horizon in episodes")


@dataclass(frozen=True)
class PPOHyperConfig(_Section):
    num_ppo_epochs: int = _f(4, "passes over each rollout batch")
    num_mini_batches: int = _f(1, "minibatches per epoch (one optimiser step each)")
    cliprange: float = _f(0.2, "policy ratio clip ε")
    cliprange_value: float = _f(0.2, "value clip ε_v")
    vf_coef: float = _f(0.1, "value-loss weight")
    entropy_coef: float = _f(0.0, "entropy bonus weight (0: off)")
    gamma: float = _f(1.0, "discount γ")
    lam: float = _f(0.95, "GAE λ")
    whiten_rewards: bool = _f(False, "whiten per-token rewards before GAE")
    whiten_advantages: bool = _f(True, "whiten advantages over real tokens")
    advantage_estimator: Literal["gae", "reinforce_pp", "rloo", "group", "dr_grpo"] = _f(
        "gae", "'gae' (critic); 'reinforce_pp' (return-to-go, batch-whitened); per-prompt baselines 'rloo', "
               "'group' (GRPO: centred and divided by the group's std), 'dr_grpo' (centred only)")
    dual_clip: float | None = _f(None, "dual-clip PPO: cap the loss of negative-advantage tokens at c·|A| (c > 1; "
                                 "None: off)")
    critic_warmup_updates: int = _f(0, "updates at the start during which only the critic trains (the policy is "
                                    "frozen while the value function catches up)")
    num_samples_per_prompt: int = _f(1, "responses per prompt in one batch (≥ 2 for rloo / group)")


@dataclass(frozen=True)
class OptimConfig(_Section):
    learning_rate: float = _f(3e-6, "AdamW learning rate of the policy (and of the critic, unless critic_learning_rate)")
    critic_learning_rate: float | None = _f(None, "AdamW learning rate of the critic or value head (None: learning_rate)")
    lr_scheduler_type: Literal["linear", "cosine", "constant"] = _f("linear", "LR schedule over all optimiser steps")
    warmup_steps: int = _f(0, "linear warm-up over this many updates (as in TRL 1.10, whose scheduler stepped once per update)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    adam_beta1: float = _f(0.9, "AdamW β1")
    adam_beta2: float = _f(0.999, "AdamW β2")
    adam_epsilon: float = _f(1e-8, "AdamW ε")
    max_grad_norm: float | None = _f(1.0, "clip the gradient norm (None: off)")
    per_device_train_batch_size: int = _f(8, "micro-batch size per device in the update (TRL's default)")
    gradient_accumulation_steps: int | None = _f(
        None, "micro-batches per device in one update's batch, as in TRL 1.10; each of the num_mini_batches "
              "minibatches takes its share of them per optimiser step (None: derived from batch_size, else 1)")
    batch_size: int | None = _f(None, "episodes per update across devices (None: per_device·accum·world, TRL 1.10's)")
    local_rollout_forward_batch_size: int = _f(64, "micro-batch for rollout forward passes and generation")


@dataclass(frozen=True)
class RunConfig(_Section):
    output_dir: str = _f("runs/ppo", "where the policy, checkpoints, config and metrics go (one run per folder: "
                         "see docs/runs.md)")
    overwrite_output_dir: bool = _f(False, "replace the run already in output_dir (its files are deleted once this "
                                    "run's first checkpoint or final output is complete)")
    total_episodes: int = _f(1024, "episodes (responses) to train on")
    seed: int = _f(0, "seed for sampling, data order and initialisation")
    save_steps: int = _f(0, "checkpoint every N updates (0: only at the end)")
    save_total_limit: int | None = _f(
        2, "checkpoints kept, oldest pruned first (None: all); the one the over-optimisation alarm points back to "
           "is kept as well while the alarm is on")
    logging_steps: int = _f(1, "write metrics every N updates (a log line each, in the run's train.log too)")
    sample_steps: int | None = _f(
        None, "every N updates, generate for a fixed set of num_sample_prompts prompts and log them with their "
              "rewards (samples.jsonl, a table; None: about 10 times per run, as TRL's num_sample_generations; 0: off)")
    num_sample_prompts: int = _f(4, "prompts in each samples table")
    eval_steps: int = _f(0, "evaluate on the evaluation prompts every N updates (0: at the end only, when there "
                         "are evaluation prompts)")
    eval_before_train: bool = _f(False, "also evaluate the starting policy, before the first update")
    report_to: tuple[str, ...] = _f((), "trackers: mlflow, tensorboard, trackio, wandb (empty: JSONL only)")
    project: str | None = _f(None, "trackers' project (wandb, trackio) or experiment (mlflow); None: 'rewardlab'")
    run_name: str | None = _f(None, "trackers' run name; None: the output folder's name")
    device: Literal["auto", "cpu", "cuda"] = _f(
        "auto", "'auto': the GPU(s) accelerate sees, else the CPU; 'cpu': the CPU even where a GPU is visible; "
                "'cuda': refuse to start without one (choose GPUs with CUDA_VISIBLE_DEVICES / accelerate launch)")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = _f(
        "auto", "autocast of the trained models over float32 master weights: 'auto': bf16 on GPU, none on CPU; "
                "'fp16' adds loss scaling")
    save_dtype: Literal["float32", "bfloat16", "float16"] | None = _f(
        None, "dtype of the final policy/ written for deployment (None: as trained); checkpoints keep full precision")
    merge_adapter: bool = _f(False, "with models.use_peft: also write policy_merged/, the adapter merged into its "
                             "base, a full model for transformers and vLLM")
    progress_bar: bool = _f(True, "on a terminal, a rich progress bar with ETA (off a terminal, or false: a log line "
                                  "per logging step)")


@dataclass(frozen=True)
class AlarmConfig(_Section):
    early_stop: bool = _f(False, "stop before optimising on the first rollout that raises the over-optimisation alarm "
                          "and keep the policy that produced it (off: the alarm is only logged)")
    smoothing: float = _f(0.5, "alarm: EMA weight of the previous value for proxy, √KL, reward std and length")
    warmup_updates: int = _f(2, "alarm: rollouts whose proxy-per-√KL slopes only set the reference slope")
    min_kl_growth: float = _f(0.1, "alarm: the returns signal counts only while smoothed √KL grows by this fraction "
                              "per update (a run whose KL has settled is converged, not over-optimising)")
    returns_threshold: float | None = _f(0.5, "alarm level of diminishing returns: the proxy gain per √KL has fallen "
                                         "this fraction below its best (None: signal off)")
    variance_threshold: float | None = _f(0.8, "alarm level of the on-policy reward std's fall from its first value "
                                          "(None: off)")
    length_threshold: float | None = _f(0.5, "alarm level of the relative drift of the mean response length (None: off)")
    saturation_threshold: float | None = _f(0.5, "alarm level of the reward's saturated fraction (None: off)")
    disagreement_threshold: float | None = _f(0.5, "alarm level of 1 − correlation between the reward model's heads "
                                              "(None: off)")
    uncertainty_threshold: float | None = _f(0.5, "alarm level of the relative rise of the heads' spread on the policy's "
                                             "samples over reference samples (multi-head models, ensembles; None: off)")


SECTIONS: dict[str, type] = {
    "models": ModelsConfig, "data": DataConfig, "generation": GenerationConfig, "reward": RewardConfig,
    "kl": KLConfig, "ppo": PPOHyperConfig, "optim": OptimConfig, "run": RunConfig, "alarm": AlarmConfig,
}
_SECTION_NAMES: dict[type, str] = {cls: name for name, cls in SECTIONS.items()}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The resolved field annotations of a section (cached: resolving them is slow)."""
    return typing.get_type_hints(cls)


@dataclass(frozen=True)
class Sizes:
    """Batch sizes derived once from the config and the world size (TRL 1.10's arithmetic)."""

    world_size: int
    batch_size: int                 # episodes per update, all processes
    local_batch_size: int           # episodes per update, this process
    local_mini_batch_size: int      # episodes per optimiser step, this process
    gradient_accumulation_steps: int  # micro-batches per optimiser step (config's accumulation / num_mini_batches)
    local_prompts_per_update: int   # distinct prompts per update, this process
    num_updates: int                # ceil(total_episodes / batch_size)


@dataclass(frozen=True, init=False)
class PPOConfig:
    """The whole PPO run, validated on creation.

    Built as TRL's ``PPOConfig`` is, from flat field names (``PPOConfig(learning_rate=1e-6,
    output_dir="runs/x")``; TRL's ``bf16``/``fp16`` and a ``report_to`` string are read too), from
    sections (``PPOConfig(kl=KLConfig(kl_coef=0.1))``), or both; or from YAML with `load_config`.
    """

    models: ModelsConfig
    data: DataConfig
    generation: GenerationConfig
    reward: RewardConfig
    kl: KLConfig
    ppo: PPOHyperConfig
    optim: OptimConfig
    run: RunConfig
    alarm: AlarmConfig

    def __init__(self, models: ModelsConfig | None = None, data: DataConfig | None = None,
                 generation: GenerationConfig | None = None, reward: RewardConfig | None = None,
                 kl: KLConfig | None = None, ppo: PPOHyperConfig | None = None, optim: OptimConfig | None = None,
                 run: RunConfig | None = None, alarm: AlarmConfig | None = None, **fields_: Any) -> None:
        given = {"models": models, "data": data, "generation": generation, "reward": reward, "kl": kl, "ppo": ppo,
                 "optim": optim, "run": run, "alarm": alarm}
        nested: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for key, value in fields_.items():
            _put(nested, key, value)
        for name, cls in SECTIONS.items():
            section = given[name]
            if section is None:
                section = cls(**nested[name])
            elif nested[name] and isinstance(section, cls):
                section = dataclasses.replace(section, **nested[name])
            object.__setattr__(self, name, section)
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["run"]["report_to"] = list(self.run.report_to)
        out["models"]["lora_target_modules"] = list(self.models.lora_target_modules)
        out["models"]["reward_model_paths"] = list(self.models.reward_model_paths)
        out["generation"]["stop_token_ids"] = list(self.generation.stop_token_ids)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None = None) -> PPOConfig:
        """Build from nested sections and/or flat leaf names, type-checking every value."""
        nested: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for key, value in (data or {}).items():
            if key in SECTIONS and isinstance(value, dict):
                for leaf, v in value.items():
                    _put(nested, f"{key}.{leaf}", v)
            else:
                _put(nested, key, value)
        return cls(**{name: SECTIONS[name](**values) for name, values in nested.items()})

    def replace(self, overrides: list[str]) -> PPOConfig:
        """A new config with ``key=value`` overrides (YAML-parsed values) applied, validated."""
        data = self.to_dict()
        for section, leaf, value in _parse_overrides(overrides):
            data[section][leaf] = value
        return PPOConfig.from_dict(data)

    def sizes(self, world_size: int | None = None) -> Sizes:
        """Derived batch sizes; raises when they do not divide exactly."""
        if world_size is None:
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
        return _derive_sizes(self, world_size)


def _parse_overrides(overrides: list[str]) -> list[tuple[str, str, Any]]:
    """``["ppo.cliprange=0.1", "seed=3"]`` → [(section, leaf, YAML-parsed value), …]."""
    from rewardlab.yamlconf import load_yaml

    out = []
    for item in overrides:
        if "=" not in item:
            raise RewardlabError(f"override {item!r} is not key=value; e.g. --set ppo.cliprange=0.1")
        key, raw = item.split("=", 1)
        section, leaf = _resolve(key.strip())
        out.append((section, leaf, load_yaml(raw, source=f"--set {key.strip()}=")))
    return out


def _leaf_index() -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            index.setdefault(f.name, []).append(section)
    return index


_TRAINING_ARGUMENTS = {  # the `transformers.TrainingArguments` fields TRL PPO configs commonly carry
    "tf32", "num_train_epochs", "max_steps", "eval_strategy", "save_strategy", "logging_strategy",
    "gradient_checkpointing", "overwrite_output_dir", "push_to_hub", "hub_model_id", "warmup_ratio", "optim",
    "dataloader_num_workers", "run_name", "logging_dir", "save_total_limit", "per_device_eval_batch_size"}


def _trl_names() -> set[str]:
    """Field names of TRL's PPO config, script and model arguments (for a migration hint); no imports of
    transformers (reading `TrainingArguments` would cost seconds on an error path)."""
    from rewardlab.ppo import migrate

    names = set(_TRAINING_ARGUMENTS)
    for table in ("PPO_FIELDS", "_SCRIPT_ARGUMENTS", "_MODEL_CONFIG", "NO_EQUIVALENT", "TRL_DEFAULTS"):
        names |= set(getattr(migrate, table, ()))  # the migration's own lists of TRL fields
    return names


# Earlier names of fields, still read (configs and checkpoints written before TRL's names were adopted).
ALIASES: dict[str, str] = {"dataset": "dataset_name", "dataset_split": "dataset_train_split"}


def _resolve(key: str) -> tuple[str, str]:
    """``'ppo.cliprange'`` or ``'cliprange'`` → (``'ppo'``, ``'cliprange'``); an alias (`ALIASES`) → its field."""
    if "." in key:
        section, leaf = key.split(".", 1)
        leaf = ALIASES.get(leaf, leaf)
        if section not in SECTIONS:
            raise RewardlabError(f"unknown config section {section!r} in {key!r}; sections: {', '.join(SECTIONS)}")
        if leaf not in {f.name for f in fields(SECTIONS[section])}:
            known = ", ".join(f.name for f in fields(SECTIONS[section]))
            raise RewardlabError(f"unknown config key {key!r}; {section} has: {known}")
        return section, leaf
    key = ALIASES.get(key, key)
    sections = _leaf_index().get(key)
    if not sections:
        import difflib

        if key in _trl_names():
            raise RewardlabError(
                f"unknown config key {key!r}: it is a TRL PPOConfig/TrainingArguments field, so this looks like an "
                "unconverted TRL config; convert it first with `rewardlab migrate-trl-ppo TRL_FILE --output ppo.yaml` "
                "and run `rewardlab ppo --config ppo.yaml`")
        close = difflib.get_close_matches(key, list(_leaf_index()), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `rewardlab ppo --help`"
        raise RewardlabError(f"unknown config key {key!r}{hint}")
    return sections[0], key


def _put(nested: dict[str, dict[str, Any]], key: str, value: Any) -> None:
    """Place one flat or dotted field; TRL's ``bf16``/``fp16`` flags and a ``report_to`` string are translated."""
    if key in ("bf16", "fp16"):
        if value is True:
            nested["run"]["mixed_precision"] = key
        elif value is not False:
            raise RewardlabError(f"{key}={value!r} is invalid: true or false (TRL's flag; rewardlab's field is "
                                 "run.mixed_precision: auto, no, bf16 or fp16)")
        elif "mixed_precision" not in nested["run"]:
            nested["run"]["mixed_precision"] = "no"
        return
    section, leaf = _resolve(key)
    if leaf == "report_to" and isinstance(value, str):  # TRL's report_to="wandb" / "none"
        value = [] if value == "none" else [t.strip() for t in value.split(",") if t.strip()]
    nested[section][leaf] = value  # the section type-checks it on creation


def _need(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise RewardlabError(f"{name}={value!r} is invalid: {allowed}")


# ---- range rules, one function per section (run on creation); cross-section rules in `validate`
def _check_models(m: ModelsConfig) -> None:
    _need(not (m.reward_model_path and m.reward_model_paths), "models.reward_model_paths",
          list(m.reward_model_paths), "set reward_model_path or reward_model_paths, not both")
    _need(m.lora_r >= 1, "models.lora_r", m.lora_r, "must be ≥ 1")
    _need(m.lm_head_slice == 0 or m.lm_head_slice >= 64, "models.lm_head_slice", m.lm_head_slice,
          "must be 0 (off) or ≥ 64 (narrower matmuls may round differently)")
    _need(m.lora_alpha > 0, "models.lora_alpha", m.lora_alpha, "must be > 0")
    _need(m.dtype != "float16", "models.dtype", m.dtype,
          "float16 weights cannot be trained with AdamW without loss scaling; use bfloat16, or float32 weights with "
          "run.mixed_precision")
    _need(m.critic != "adapter" or m.use_peft, "models.critic", m.critic,
          "'adapter' puts the critic on the policy's LoRA base: set models.use_peft=true")
    _need(m.critic != "adapter" or m.value_model_path is None, "models.value_model_path", m.value_model_path,
          "is not read with models.critic='adapter' (the critic is an adapter on the policy)")
    if m.attn_implementation.startswith("flash"):
        from rewardlab.ppo.memory import check_attn_implementation

        check_attn_implementation(m.attn_implementation)


def _check_data(d: DataConfig) -> None:
    _need(0.0 <= d.eval_fraction < 1.0, "data.eval_fraction", d.eval_fraction, "must be in [0, 1)")
    _need(d.eval_fraction == 0.0 or d.dataset_test_split is None, "data.eval_fraction", d.eval_fraction,
          "and data.dataset_test_split both name evaluation prompts; set one")
    _need(d.max_prompt_length is None or d.max_prompt_length >= 1, "data.max_prompt_length", d.max_prompt_length,
          "must be ≥ 1 or null")


def _check_generation(g: GenerationConfig) -> None:
    _need(g.response_length > 0, "generation.response_length", g.response_length, "must be > 0")
    _need(math.isfinite(g.temperature) and g.temperature > 0, "generation.temperature", g.temperature,
          "must be > 0 (use a small value for near-greedy)")
    _need(g.top_k >= 0, "generation.top_k", g.top_k, "must be ≥ 0 (0 turns it off)")
    _need(0 < g.top_p <= 1, "generation.top_p", g.top_p, "must be in (0, 1]")
    _need(g.stop_token_id is None or g.stop_token_id >= 0, "generation.stop_token_id", g.stop_token_id,
          "must be a token id ≥ 0 or null")
    _need(all(i >= 0 for i in g.stop_token_ids), "generation.stop_token_ids", list(g.stop_token_ids),
          "must be token ids ≥ 0")
    _need(0 < g.vllm_gpu_memory_utilization < 1, "generation.vllm_gpu_memory_utilization",
          g.vllm_gpu_memory_utilization, "must be in (0, 1): the rest of the GPU is left for training")
    _need(g.vllm_kvcache_gib >= 1, "generation.vllm_kvcache_gib", g.vllm_kvcache_gib, "must be ≥ 1 (GiB)")


def _check_reward(r: RewardConfig) -> None:
    _need(r.num_reference_samples >= 1, "reward.num_reference_samples", r.num_reference_samples, "must be ≥ 1")
    _need(r.score_batch_size >= 1, "reward.score_batch_size", r.score_batch_size, "must be ≥ 1")
    _need(r.missing_eos_penalty is None or (math.isfinite(r.missing_eos_penalty) and r.missing_eos_penalty >= 0),
          "reward.missing_eos_penalty", r.missing_eos_penalty, "must be ≥ 0 (it is subtracted) or null")
    _need(r.reward_fn is None or ":" in r.reward_fn, "reward.reward_fn", r.reward_fn,
          "write it as 'package.module:function'")
    _need(r.overlong_buffer_len is None or r.overlong_buffer_len >= 1, "reward.overlong_buffer_len",
          r.overlong_buffer_len, "must be ≥ 1 or null (off)")
    _need(math.isfinite(r.overlong_penalty_factor) and r.overlong_penalty_factor >= 0, "reward.overlong_penalty_factor",
          r.overlong_penalty_factor, "must be ≥ 0")


def _check_kl(k: KLConfig) -> None:
    _need(math.isfinite(k.kl_coef) and k.kl_coef >= 0, "kl.kl_coef", k.kl_coef, "β must be a finite number ≥ 0")
    _need(math.isfinite(k.target_kl) and k.target_kl > 0, "kl.target_kl", k.target_kl, "must be > 0")
    _need(k.kl_horizon > 0, "kl.kl_horizon", k.kl_horizon, "must be > 0")
    _need(not (k.adaptive_kl and k.kl_coef == 0), "kl.kl_coef", k.kl_coef, "adaptive β must start > 0")


def _check_ppo(p: PPOHyperConfig) -> None:
    _need(math.isfinite(p.cliprange) and p.cliprange > 0, "ppo.cliprange", p.cliprange, "must be > 0")
    _need(math.isfinite(p.cliprange_value) and p.cliprange_value > 0, "ppo.cliprange_value", p.cliprange_value,
          "must be > 0")
    _need(math.isfinite(p.vf_coef) and p.vf_coef >= 0, "ppo.vf_coef", p.vf_coef, "must be ≥ 0")
    _need(math.isfinite(p.entropy_coef) and p.entropy_coef >= 0, "ppo.entropy_coef", p.entropy_coef, "must be ≥ 0")
    _need(0 <= p.gamma <= 1, "ppo.gamma", p.gamma, "must be in [0, 1]")
    _need(0 <= p.lam <= 1, "ppo.lam", p.lam, "must be in [0, 1]")
    _need(p.num_ppo_epochs >= 1, "ppo.num_ppo_epochs", p.num_ppo_epochs, "must be ≥ 1")
    _need(p.num_mini_batches >= 1, "ppo.num_mini_batches", p.num_mini_batches, "must be ≥ 1")
    _need(p.num_samples_per_prompt >= 1, "ppo.num_samples_per_prompt", p.num_samples_per_prompt, "must be ≥ 1")
    from rewardlab.ops.advantages import ADVANTAGE_ESTIMATORS  # torch: only when a config is checked

    estimator = ADVANTAGE_ESTIMATORS[p.advantage_estimator]
    _need(p.num_samples_per_prompt >= estimator.min_group_size, "ppo.num_samples_per_prompt", p.num_samples_per_prompt,
          f"advantage_estimator={p.advantage_estimator!r} needs ≥ {estimator.min_group_size} samples per prompt")
    _need(p.dual_clip is None or p.dual_clip > 1, "ppo.dual_clip", p.dual_clip, "must be > 1 or null (off)")
    _need(p.critic_warmup_updates >= 0, "ppo.critic_warmup_updates", p.critic_warmup_updates, "must be ≥ 0")
    _need(p.critic_warmup_updates == 0 or estimator.needs_critic, "ppo.critic_warmup_updates",
          p.critic_warmup_updates, f"needs a critic, and advantage_estimator={p.advantage_estimator!r} has none")


def _check_optim(o: OptimConfig) -> None:
    _need(math.isfinite(o.learning_rate) and o.learning_rate > 0, "optim.learning_rate", o.learning_rate,
          "must be > 0 (e.g. 1e-5)")
    _need(o.critic_learning_rate is None or (math.isfinite(o.critic_learning_rate) and o.critic_learning_rate > 0),
          "optim.critic_learning_rate", o.critic_learning_rate, "must be > 0 or null (= learning_rate)")
    _need(o.warmup_steps >= 0, "optim.warmup_steps", o.warmup_steps, "must be ≥ 0")
    _need(math.isfinite(o.weight_decay) and o.weight_decay >= 0, "optim.weight_decay", o.weight_decay, "must be ≥ 0")
    for name in ("adam_beta1", "adam_beta2"):
        _need(0 <= getattr(o, name) < 1, f"optim.{name}", getattr(o, name), "must be in [0, 1)")
    _need(o.adam_epsilon > 0, "optim.adam_epsilon", o.adam_epsilon, "must be > 0 (e.g. 1e-8)")
    _need(o.max_grad_norm is None or o.max_grad_norm > 0, "optim.max_grad_norm", o.max_grad_norm, "must be > 0 or null")
    _need(o.per_device_train_batch_size >= 1, "optim.per_device_train_batch_size", o.per_device_train_batch_size, "must be ≥ 1")
    _need(o.gradient_accumulation_steps is None or o.gradient_accumulation_steps >= 1,
          "optim.gradient_accumulation_steps", o.gradient_accumulation_steps, "must be ≥ 1 or null")
    _need(o.batch_size is None or o.batch_size >= 1, "optim.batch_size", o.batch_size, "must be ≥ 1 or null")
    _need(o.local_rollout_forward_batch_size >= 1, "optim.local_rollout_forward_batch_size",
          o.local_rollout_forward_batch_size, "must be ≥ 1")


def _check_run(run: RunConfig) -> None:
    _need(bool(run.output_dir), "run.output_dir", run.output_dir, "give a folder for the run's outputs")
    _need(run.total_episodes >= 1, "run.total_episodes", run.total_episodes, "must be ≥ 1")
    _need(run.save_steps >= 0, "run.save_steps", run.save_steps, "must be ≥ 0")
    _need(run.logging_steps >= 1, "run.logging_steps", run.logging_steps, "must be ≥ 1")
    _need(run.save_total_limit is None or run.save_total_limit >= 1, "run.save_total_limit", run.save_total_limit,
          "must be ≥ 1 or null (keep all)")
    _need(run.sample_steps is None or run.sample_steps >= 0, "run.sample_steps", run.sample_steps,
          "must be ≥ 0 (0: off) or null")
    _need(run.num_sample_prompts >= 1, "run.num_sample_prompts", run.num_sample_prompts, "must be ≥ 1")
    _need(run.eval_steps >= 0, "run.eval_steps", run.eval_steps, "must be ≥ 0")
    from rewardlab.tracking import TRACKERS as trackers

    for t in run.report_to:
        _need(t in trackers, "run.report_to", list(run.report_to), f"trackers are {', '.join(sorted(trackers))}")


def _check_alarm(a: AlarmConfig) -> None:
    _need(0.0 <= a.smoothing < 1.0, "alarm.smoothing", a.smoothing, "must be in [0, 1)")
    _need(a.warmup_updates >= 0, "alarm.warmup_updates", a.warmup_updates, "must be ≥ 0")
    _need(a.min_kl_growth >= 0.0, "alarm.min_kl_growth", a.min_kl_growth, "must be ≥ 0")
    for name in ("returns", "variance", "length", "saturation", "disagreement", "uncertainty"):
        th = getattr(a, f"{name}_threshold")
        _need(th is None or th > 0, f"alarm.{name}_threshold", th, "must be > 0, or null to switch the signal off")


_RANGES: dict[str, Any] = {
    "models": _check_models, "data": _check_data, "generation": _check_generation, "reward": _check_reward,
    "kl": _check_kl, "ppo": _check_ppo, "optim": _check_optim, "run": _check_run, "alarm": _check_alarm,
}


def validate(cfg: PPOConfig) -> None:
    """Rules across sections (each section checked its own fields on creation); raises `RewardlabError`."""
    g, r = cfg.generation, cfg.reward
    for name, cls in SECTIONS.items():  # a section replaced by something else is caught here
        _need(isinstance(getattr(cfg, name), cls), name, type(getattr(cfg, name)).__name__, f"must be a {cls.__name__}")
    _need(r.missing_eos_penalty is None or g.stop_token is not None or g.stop_token_id is not None
          or bool(g.stop_token_ids), "reward.missing_eos_penalty", r.missing_eos_penalty,
          "needs generation.stop_token='eos' or stop token ids")
    _need(not cfg.run.merge_adapter or cfg.models.use_peft, "run.merge_adapter", cfg.run.merge_adapter,
          "merges a LoRA adapter: set models.use_peft=true, or leave it off (a full policy is written anyway)")
    _need(r.overlong_buffer_len is None or r.overlong_buffer_len <= g.response_length, "reward.overlong_buffer_len",
          r.overlong_buffer_len, f"must be ≤ generation.response_length={g.response_length}")
    _derive_sizes(cfg, 1)  # divisibility that does not depend on the world size
    from rewardlab.reward.pipeline import RewardPipeline

    try:  # the spec parses; its sources fit the reward models named here; readings fit the declared semantics
        spec = reward_spec(cfg.models, r, resolve=False)
        RewardPipeline(spec.terms, semantics=r.reward_semantics)
    except RewardlabError as err:
        raise RewardlabError(f"reward.reward_pipeline={r.reward_pipeline!r} is invalid: {err}") from None


def reward_spec(m: ModelsConfig, r: RewardConfig, *, resolve: bool = True, unnamed_models: int | None = None) -> Any:
    """The `RewardSpec` a config's ``models`` and ``reward`` sections name: ``reward.reward_pipeline`` plus
    ``reward.reward_fn``, checked against the reward models the paths name.

    Args:
        resolve: import the rule functions (False: the spec's structure only, no user code runs).
        unnamed_models: the model count when no path is set (None: unknown, models may come from Python).
    """
    from rewardlab.reward.side import RewardSpec

    n = len(m.reward_model_paths) or (1 if m.reward_model_path else unnamed_models)
    return RewardSpec(r.reward_pipeline, extra_functions=[r.reward_fn] if r.reward_fn else [], num_models=n,
                      resolve=resolve)


def _derive_sizes(cfg: PPOConfig, world_size: int) -> Sizes:
    """TRL 1.10's arithmetic: batch = per_device · accumulation · world, split into num_mini_batches."""
    o, p = cfg.optim, cfg.ppo
    micro, minis = o.per_device_train_batch_size, p.num_mini_batches
    if o.batch_size is None:
        accum_total = o.gradient_accumulation_steps or 1
        batch = micro * accum_total * world_size
    else:
        batch = o.batch_size
        per_step = micro * minis * world_size
        _need(batch % per_step == 0, "optim.batch_size", batch,
              f"must be divisible by per_device_train_batch_size·num_mini_batches·world_size = "
              f"{micro}·{minis}·{world_size} = {per_step}")
        accum_total = batch // (micro * world_size)
        _need(o.gradient_accumulation_steps in (None, accum_total), "optim.gradient_accumulation_steps",
              o.gradient_accumulation_steps,
              f"batch_size={batch} implies {accum_total}; set one of the two, or make them agree")
    local = batch // world_size
    _need(local % minis == 0, "ppo.num_mini_batches", minis,
          f"must divide the per-device batch per_device_train_batch_size·gradient_accumulation_steps = {local}")
    mini = local // minis
    _need(mini % micro == 0 or mini < micro, "optim.gradient_accumulation_steps", o.gradient_accumulation_steps,
          f"a minibatch of {local}/{minis} = {mini} episodes is not a whole number of micro-batches of "
          f"per_device_train_batch_size={micro}; make gradient_accumulation_steps a multiple of num_mini_batches")
    accum = max(1, mini // micro)
    _need(local % p.num_samples_per_prompt == 0, "ppo.num_samples_per_prompt", p.num_samples_per_prompt,
          f"must divide the per-process batch of {local} episodes")
    return Sizes(
        world_size=world_size, batch_size=batch, local_batch_size=local,
        local_mini_batch_size=mini, gradient_accumulation_steps=accum,
        local_prompts_per_update=local // p.num_samples_per_prompt,
        num_updates=math.ceil(cfg.run.total_episodes / batch),
    )


def check_paths(cfg: PPOConfig) -> Any:
    """Every model folder the config names exists here and looks right, the prompts file exists, and the
    reward spec's rule functions import and can be called; returns that `RewardSpec` (before any load;
    the trainer reads the prompts and checks the functions' columns next, still before any model loads).

    Unset paths are left to the trainer (a Python caller may pass models instead); a Hub name is
    resolved here (fetched into the cache when online), so a wrong name fails before any model loads.
    """
    from rewardlab.local import check_output_dir, data_source, model_folder

    m = cfg.models
    named = [("models.sft_model_path", m.sft_model_path), ("models.reward_model_path", m.reward_model_path),
             ("models.value_model_path", m.value_model_path), ("models.ref_model_path", m.ref_model_path)]
    named += [(f"models.reward_model_paths[{i}]", p) for i, p in enumerate(m.reward_model_paths)]
    for name, path in named:
        if path:
            model_folder(path, name, need_tokenizer=name == "models.sft_model_path", trust_remote_code=m.trust_remote_code)
    check_output_dir(cfg.run.output_dir, "run.output_dir")
    if cfg.data.dataset_name is not None:
        data_source(cfg.data.dataset_name, "data.dataset_name", hub_ok=True)
    return reward_spec(m, cfg.reward)


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> PPOConfig:
    """Read a YAML config (nested or flat keys), apply ``key=value`` overrides, validate."""
    from rewardlab.yamlconf import load_yaml_mapping

    data = load_yaml_mapping(path, "keys to values")
    # Overrides are merged before validation, so a flag can repair an invalid value in the file.
    for section, leaf, value in _parse_overrides(overrides or []):
        if isinstance(data.get(section), dict):
            data[section] = {k: v for k, v in data[section].items() if k != leaf}
        data.pop(leaf, None)
        data[f"{section}.{leaf}"] = value
    return PPOConfig.from_dict(data)


def save_config(cfg: PPOConfig, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML, atomically."""
    import yaml

    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def field_docs() -> list[tuple[str, str, Any, str]]:
    """(section, name, default, help) for every field — used by the CLI and docs."""
    out = []
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            out.append((section, f.name, f.default, f.metadata.get("help", "")))
    return out


def config_reference() -> str:
    """The Markdown tables of every field by section, as docs/ppo.md's "Config reference" prints them."""
    parts = []
    for section in SECTIONS:
        rows = [f"| `{name}` | `{default!r}` | {help_.replace('|', chr(92) + '|')} |"
                for sec, name, default, help_ in field_docs() if sec == section]
        parts.append(f"**{section}**\n\n| field | default | meaning |\n|---|---|---|\n" + "\n".join(rows))
    return "\n\n".join(parts) + "\n"
