"""Options of a reward-model training run (`rewardlab train-rm`): one dataclass, one help line per field.

Example::

    config = RewardTrainingConfig(model="./base", train_file="prefs.jsonl", output_dir="runs/rm").validate()
"""

from __future__ import annotations

import functools
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from rewardlab.errors import RewardlabError
from rewardlab.yamlconf import check_type

Mode = Literal["bradley_terry", "classifier"]


def _h(text: str, **kw: Any) -> Any:
    """A config field whose help text becomes the CLI's --help."""
    return field(metadata={"help": text}, **kw)


@dataclass
class RewardTrainingConfig:
    """Everything a reward-model training run needs; each field is a `rewardlab train-rm` option."""

    model: str = _h("base model: a sequence-classification or causal-LM `save_pretrained` folder, or a Hub name", default="")
    train_file: str = _h("training data: a Hub dataset, a local JSONL/JSON/CSV/Parquet/Arrow file or a dataset folder "
                         "(prompt/chosen/rejected, or text/label for classifier); TRL's name: dataset_name", default="")
    output_dir: str = _h("where the trained model folder is written (atomically, at the end)", default="")
    eval_file: str | None = _h("held-out data in the same format (for accuracy and the temperature)", default=None)
    dataset_name: str | None = _h("TRL's name for the training data (the same as train_file; give one of the two)",
                                  default=None)
    dataset_config: str | None = _h("the dataset's configuration (subset) name", default=None)
    dataset_train_split: str = _h("split of the training data to train on", default="train")
    dataset_test_split: str | None = _h("split of the training data held out for evaluation (TRL's "
                                        "dataset_test_split; None: eval_file, else eval_fraction)", default=None)
    eval_fraction: float = _h("hold out this fraction of the training prompts when no eval_file is given (0 = none)", default=0.0)
    mode: Mode = _h("bradley_terry (pairs) or classifier (cross-entropy on labelled texts)", default="bradley_terry")
    num_heads: int | None = _h("BT heads, or classifier classes (default: 1 head; classes = max label + 1)", default=None)
    bootstrap: bool = _h("each of the num_heads Bradley-Terry heads trains on its own bootstrap resample of the pairs "
                         "(multinomial counts, seeded): an ensemble in one backbone whose disagreement measures "
                         "uncertainty (read it with mean, min or uwo; needs num_heads ≥ 2)", default=False)
    use_margin: bool | None = _h("use the data's 'margin' column (default: when the column exists)", default=None)
    center_rewards_coefficient: float = _h("centring regulariser coef · mean((r_c + r_r)²) (e.g. 0.01; 0 = off)", default=0.0)
    label_smoothing: float = _h("BT label smoothing ε in [0, 0.5)", default=0.0)
    learning_rate: float = _h("AdamW peak learning rate", default=1e-4)
    weight_decay: float = _h("AdamW weight decay", default=0.0)
    lr_scheduler_type: str = _h("learning-rate schedule (transformers name: linear, cosine, constant, …)", default="linear")
    warmup_ratio: float = _h("fraction of steps spent warming up the learning rate", default=0.0)
    per_device_train_batch_size: int = _h("pairs (or labelled texts) per device per micro-batch", default=8)
    per_device_eval_batch_size: int = _h("sequences per forward pass when evaluating", default=32)
    gradient_accumulation_steps: int = _h("micro-batches per optimiser step", default=1)
    num_train_epochs: float = _h("passes over the training data (ignored when max_steps > 0)", default=1.0)
    max_steps: int = _h("optimiser steps to run (> 0 overrides num_train_epochs)", default=-1)
    max_grad_norm: float = _h("gradient-norm clipping threshold (0 = off)", default=1.0)
    max_length: int | None = _h("keep at most the last max_length tokens of each sequence", default=1024)
    seed: int = _h("random seed (data order, initialisation of a new head)", default=0)
    logging_steps: int = _h("log training metrics every this many steps", default=10)
    eval_steps: int = _h("evaluate every this many steps (0 = only at the end)", default=0)
    save_steps: int = _h("write a checkpoint every this many steps (0 = none)", default=0)
    save_total_limit: int = _h("checkpoints kept (oldest deleted first)", default=1)
    device: Literal["auto", "cpu", "cuda"] = _h(
        "auto: the GPU(s) accelerate sees, else the CPU; cpu: the CPU even where a GPU is visible; cuda: refuse to "
        "start without one (choose GPUs with CUDA_VISIBLE_DEVICES / accelerate launch)", default="auto")
    mixed_precision: str = _h("no, fp16 or bf16: autocast over float32 master weights (accelerate; fp16 with loss "
                              "scaling)", default="no")
    gradient_checkpointing: bool = _h("recompute activations in the backward pass (non-reentrant): less memory, about "
                                      "one more forward of time", default=False)
    attn_implementation: str = _h("attention kernel: sdpa, eager, flash_attention_2 or flash_attention_3",
                                  default="sdpa")
    use_peft: bool = _h("train LoRA adapters (and the score head) instead of all weights (needs peft); the output "
                        "folder holds the merged model", default=False)
    lora_r: int = _h("LoRA rank", default=16)
    lora_alpha: int = _h("LoRA scaling α (the update is scaled by α / r)", default=32)
    lora_dropout: float = _h("dropout on the LoRA inputs (TRL's default 0.05)", default=0.05)
    lora_target_modules: list[str] = _h("modules to adapt (empty: peft's default for the architecture)",
                                        default_factory=list)
    overwrite_output_dir: bool = _h("replace an existing output_dir (and a leftover .partial folder); the old files "
                                    "go once the new run's first checkpoint or final model is complete", default=False)
    resume: bool | Literal["auto"] = _h(
        "continue the interrupted run in OUTPUT_DIR.partial from its newest checkpoint (an error if there is none; "
        "'auto': start fresh then). Only max_steps, num_train_epochs, logging/eval/save cadence, save_total_limit, "
        "report_to and progress may change (docs/runs.md)", default=False)
    progress: bool = _h("show a progress bar", default=True)
    report_to: list[str] = _h("trackers besides metrics.jsonl: mlflow, tensorboard, trackio, wandb (comma-separated)",
                              default_factory=list)
    trust_remote_code: bool = _h("allow the model folder's own code to run (off: safer)", default=False)

    def __post_init__(self) -> None:
        """Types and ranges, however the config is built (YAML, flags, Python); required fields in `validate`."""
        self._check()

    def _check(self) -> None:
        hints = _hints()
        for f in fields(self):  # ints widen to floats; a quoted "16" or a list for a number is refused
            setattr(self, f.name, check_type(f.name, getattr(self, f.name), hints[f.name]))

        def bad(name: str, allowed: str) -> RewardlabError:
            return RewardlabError(f"{name}={getattr(self, name)!r} is invalid; {allowed}")

        if self.num_heads is not None and self.num_heads < 1:
            raise bad("num_heads", "use an integer ≥ 1")
        if self.bootstrap and (self.mode != "bradley_terry" or (self.num_heads or 1) < 2):
            raise RewardlabError(
                f"bootstrap=True is invalid with mode={self.mode!r} and num_heads={self.num_heads!r}; it resamples the "
                "pairs for each Bradley-Terry head: use mode=bradley_terry and num_heads ≥ 2 (e.g. 3–5), or bootstrap=false")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise bad("eval_fraction", "use a fraction in [0, 1)")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise bad("label_smoothing", "use ε in [0, 0.5)")
        if not (math.isfinite(self.center_rewards_coefficient) and self.center_rewards_coefficient >= 0):
            raise bad("center_rewards_coefficient", "use a coefficient ≥ 0")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise bad("learning_rate", "use a learning rate > 0, e.g. 1e-5")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise bad("weight_decay", "use a weight decay ≥ 0")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0):
            raise bad("max_grad_norm", "use a norm > 0, or 0 to turn clipping off")
        if not math.isfinite(self.num_train_epochs) or self.num_train_epochs < 0:
            raise bad("num_train_epochs", "use a number of passes ≥ 0")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                     "logging_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                raise bad(name, "use an integer ≥ 1")
        for name in ("eval_steps", "save_steps"):
            if getattr(self, name) < 0:
                raise bad(name, "use an integer ≥ 0 (0 = off)")
        if self.max_length is not None and self.max_length < 2:
            raise bad("max_length", "use an integer ≥ 2 or null")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            raise bad("mixed_precision", "choose no, fp16 or bf16")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise bad("warmup_ratio", "use a fraction in [0, 1)")
        self._check_memory_options(bad)
        from rewardlab.tracking import TRACKERS as trackers

        if not set(self.report_to) <= set(trackers):
            raise bad("report_to", f"trackers are {', '.join(sorted(trackers))}")

    def _check_memory_options(self, bad: Any) -> None:
        """Attention kernel and LoRA settings (precision is checked with the other fields)."""
        import importlib.util

        from rewardlab.ppo.memory import check_attn_implementation  # one list of kernels, flash_attn checked

        check_attn_implementation(self.attn_implementation, "attn_implementation")
        if self.lora_r < 1:
            raise bad("lora_r", "use a LoRA rank ≥ 1, e.g. 16")
        if not (math.isfinite(self.lora_alpha) and self.lora_alpha > 0):
            raise bad("lora_alpha", "use a scaling α > 0, e.g. 2 × lora_r")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise bad("lora_dropout", "use a dropout probability in [0, 1)")
        if self.use_peft and importlib.util.find_spec("peft") is None:
            raise RewardlabError("use_peft=true needs the peft package, which is not installed; "
                                 "pip install 'rewardlab[peft]', or train all weights (use_peft=false)")

    def validate(self) -> RewardTrainingConfig:
        """Check values (again: fields may have been set since) and the required fields; raise
        `RewardlabError` naming the field, the value and what is allowed."""
        self._check()
        if self.train_file and self.dataset_name:
            raise RewardlabError(f"train_file={self.train_file!r} and dataset_name={self.dataset_name!r} both name the "
                                 "training data (dataset_name is TRL's name for train_file); give one")
        if self.dataset_test_split and self.eval_file:
            raise RewardlabError(f"dataset_test_split={self.dataset_test_split!r} and eval_file={self.eval_file!r} both "
                                 "name the eval data; give one (a split of the training data, or another source)")
        if self.dataset_test_split and self.eval_fraction:
            raise RewardlabError(f"eval_fraction={self.eval_fraction} holds out training prompts, but dataset_test_split="
                                 f"{self.dataset_test_split!r} already names the eval data; set eval_fraction to 0")
        for name in ("model", "train_file", "output_dir"):
            if not getattr(self, name) and not (name == "train_file" and self.dataset_name):
                also = " or --dataset-name" if name == "train_file" else ""
                raise RewardlabError(f"{name} is required (--{name.replace('_', '-')}{also})")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise RewardlabError("set max_steps > 0 or num_train_epochs > 0; both are off")
        if self.mode == "classifier" and (self.use_margin or self.center_rewards_coefficient or self.label_smoothing):
            raise RewardlabError(
                "use_margin, center_rewards_coefficient and label_smoothing apply to Bradley-Terry pairs only; "
                "unset them for mode=classifier"
            )
        return self

    def check_paths(self) -> RewardTrainingConfig:
        """The model folder (a Hub name resolved to its cached snapshot), the data (a local file or folder, or
        a Hub dataset name) and the output folder are usable (before any load)."""
        from rewardlab.local import check_output_dir, data_source, model_folder

        model_folder(self.model, "model", need_tokenizer=True)
        for name in ("train_file", "dataset_name", "eval_file"):  # local, or a Hub name (read with the data)
            if getattr(self, name):
                data_source(getattr(self, name), name, hub_ok=True)
        check_output_dir(self.output_dir, "output_dir")
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RewardTrainingConfig:
        """Build from a mapping (a YAML file's keys, dashes or underscores), refusing unknown keys."""
        known = {f.name for f in fields(cls)}
        if "model_name_or_path" in values:  # TRL's ModelConfig name for the base model
            if values.get("model"):
                raise RewardlabError("model and model_name_or_path (TRL's name) are the same option; give one")
            values = {("model" if k == "model_name_or_path" else k): v for k, v in values.items()}
        unknown = sorted(set(values) - known)
        if unknown:
            import difflib

            close = {k: difflib.get_close_matches(k, known, n=1) for k in unknown}
            hint = "; ".join(f"{k}: did you mean {c[0]}?" for k, c in close.items() if c)
            raise RewardlabError(f"unknown train-rm option(s) {unknown}{' (' + hint + ')' if hint else ''}; "
                                 f"known: {', '.join(sorted(known))}")
        return cls(**values)


@functools.cache
def _hints() -> dict[str, Any]:
    """Resolved field annotations of `RewardTrainingConfig` (cached: resolving them is slow)."""
    return typing.get_type_hints(RewardTrainingConfig)
