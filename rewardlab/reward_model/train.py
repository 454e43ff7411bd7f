"""Train a reward model: Bradley-Terry pairs (H heads) or a cross-entropy classifier, on `accelerate`.

    rewardlab train-rm --model BASE --train-file prefs.jsonl --output-dir runs/rm
    accelerate launch -m rewardlab.cli train-rm --config examples/train_rm_tiny.yaml   # several GPUs

Python::

    from rewardlab.reward_model.train import RewardTrainingConfig, train_reward_model
    result = train_reward_model(RewardTrainingConfig(model="base", train_file="prefs.jsonl", output_dir="runs/rm"))

The loop, one optimiser step at a time:

1. a batch of B pairs → one forward pass over the 2B sequences (chosen then rejected), right-padded;
2. head logits pooled at each row's last real token (`RewardModel.forward`, with gradients) → (2B, H);
3. loss (`reward_model.loss`): BT over heads (+ margin, label smoothing, centring; with ``bootstrap``
   each head's terms weighted by its bootstrap counts of the pairs) or cross-entropy;
4. backward, gradient clipping, AdamW step, learning-rate schedule;
5. every ``logging_steps``: ``rm/*`` metrics to ``metrics.jsonl``; every ``eval_steps``: held-out
   accuracy; every ``save_steps``: a checkpoint.

What differs between ``mode: bradley_terry`` and ``mode: classifier`` (data, batches, loss, metrics,
metadata) is one row of `MODES`; the loop itself never asks which mode it runs.

Large models (`_memory_options`, TRL's RewardTrainer options of the same names): ``mixed_precision``
autocasts over float32 weights, ``gradient_checkpointing`` recomputes each decoder layer in the
backward pass, ``attn_implementation`` picks the kernel, and ``use_peft`` trains LoRA adapters and
the score head only; they are merged into the weights before the final save, so the folder is an
ordinary classifier (a LoRA run's checkpoints hold the adapters and head alone).

At the end, the held-out pairs fit the temperature, the training pairs give the reward mean/std,
and the model folder (safetensors + tokenizer + `RewardModelMetadata` in config.json) appears at
``output_dir`` in one rename. While training, everything is written under ``output_dir + ".partial"``
(metrics, checkpoints); an interrupted run leaves it there, and ``resume`` continues it from its
newest checkpoint (same weights, optimiser, schedule, RNG, data position and logging window: see
`rewardlab.reward_model.checkpoint`), bit for bit, dropout included. The folders are checked and the
resume rule applied before any model loads (`rewardlab.runfolder`, docs/runs.md); Ctrl-C or SIGTERM
stop the run with `RunInterrupted`, checkpoints intact.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from rewardlab.atomic import replace_dir, write_text
from rewardlab.errors import RewardlabError, RunInterrupted
from rewardlab.local import resolved_models
from rewardlab.reward.metadata import RewardModelMetadata, write_metadata
from rewardlab.reward.readings import principal_reading, read_heads
from rewardlab.reward_model import data as rm_data
from rewardlab.reward_model.checkpoint import PREFIX, STATE_FILE, EpochOrder, load_checkpoint, save_checkpoint
from rewardlab.reward_model.config import Mode, RewardTrainingConfig
from rewardlab.reward_model.evaluate import (
    T_MAX,
    T_MIN,
    expected_calibration_error,
    fit_classifier_temperature,
    fit_temperature,
    pad_right,
)
from rewardlab.reward_model.loss import (
    bootstrap_weights,
    classifier_loss,
    preference_accuracy,
    reward_model_loss,
)
from rewardlab.runfolder import (
    RM_RESUMABLE,
    RunPlan,
    check_output_dir,
    interrupts,
    plan_run,
    remove_leftovers,
    resume_config,
)
from rewardlab.tracking import RM_LINE, MetricsLogger, check_trackers, rich_progress

__all__ = ["Mode", "PooledRewardModel", "RewardTrainingConfig", "TrainResult", "train_reward_model"]

logger = logging.getLogger("rewardlab.train_rm")

@dataclass
class TrainResult:
    """What a finished run produced."""

    output_dir: str
    metadata: RewardModelMetadata
    steps: int
    train_pairs: int
    train_seconds: float
    """Wall time of the optimisation loop alone (no data loading, final evaluation or saving)."""
    metrics: dict[str, float]
    """The final ``rm/*`` metrics (also the last line of metrics.jsonl)."""


# --------------------------------------------------------------------------------------------
# The model as the loss sees it
# --------------------------------------------------------------------------------------------
class PooledRewardModel(torch.nn.Module):
    """Head logits at each row's last real token, with gradients: the training view of a classifier.

    Pooling is `RewardModel.forward`'s (backbone with the attention mask, score head, gather at the
    last mask position), so training and scoring read the same token. Wrapping it in a module
    lets accelerate (DDP, FSDP, DeepSpeed) wrap the whole forward.

    Shapes: input_ids, attention_mask (B, T) → (B, H).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any) -> None:
        from rewardlab.reward.scoring import RewardModel

        super().__init__()
        self.model = model
        # A PEFT wrapper's LoRA layers sit inside its base model (and the score head's trained copy too):
        # scoring the base model finds the head and backbone where a plain classifier has them.
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._scorer = RewardModel(base, tokenizer, max_length=None)  # sets eval(); the loop calls train()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._scorer.forward(input_ids, attention_mask)


@torch.no_grad()
def _score_all(scorer: torch.nn.Module, seqs: list[list[int]], pad_id: int, batch_size: int, device) -> torch.Tensor:
    """Head logits of every sequence, in length-sorted batches. Shapes: → (N, H) float32 CPU."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    chunks = []
    for start in range(0, len(order), batch_size):
        ids, mask = pad_right([seqs[i] for i in order[start : start + batch_size]], pad_id)
        chunks.append(scorer(ids.to(device), mask.to(device)).float().cpu())
    out = torch.empty_like(torch.cat(chunks))
    out[torch.tensor(order)] = torch.cat(chunks)
    return out


# --------------------------------------------------------------------------------------------
# The two modes: everything that differs between Bradley-Terry pairs and a classifier
# --------------------------------------------------------------------------------------------
Rows = rm_data.TokenizedPairs | rm_data.TokenizedLabels
Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class _ModeRules:
    """How one ``config.mode`` trains: the loop calls these and never asks which mode it runs.

    Attributes:
        semantics: the head semantics written to the metadata (they pick the principal reading).
        loss_name: the loss written to the metadata.
        seqs_per_row: sequences per training row in a batch: 2 for a pair (chosen, rejected), 1 for a text.
        read, tokenize: a data file → rows (`rewardlab.reward_model.data`).
        split: (rows, eval_fraction, seed) → (train, held-out) rows.
        num_heads: (config, training rows) → H.
        use_margin: (config, train, evals) → whether the loss subtracts the data's margins.
        collate: (rows, pad_id, use_margin) → the loader's collate function.
        sequences: rows → the token sequences to score: `seqs_per_row` blocks of len(rows).
        loss: (logits, batch, config) → the micro-batch loss.
        batch_stats: (logits, batch) → the ``rm/*`` statistics of a micro-batch besides its loss.
        eval_metrics: (logits of ``sequences(evals)``, evals, config, use_margin) → ``rm/eval/*``.
    """

    semantics: str
    loss_name: str
    seqs_per_row: int
    read: Callable[..., Any]  # (source, config=, split=, field=) → a checked datasets.Dataset
    tokenize: Callable[[Any, Any, int | None], Any]
    split: Callable[[Any, float, int], tuple[Any, Any]]
    num_heads: Callable[[RewardTrainingConfig, Any], int]
    use_margin: Callable[[RewardTrainingConfig, Any, Any], bool]
    collate: Callable[[Any, int, bool], Callable[[list[int]], Batch]]
    sequences: Callable[[Any], list[list[int]]]
    loss: Callable[[torch.Tensor, Batch, RewardTrainingConfig], torch.Tensor]
    batch_stats: Callable[[torch.Tensor, Batch], dict[str, torch.Tensor]]
    eval_metrics: Callable[[torch.Tensor, Any, RewardTrainingConfig, bool], dict[str, float]]


def _pairs_use_margin(config: RewardTrainingConfig, train: rm_data.TokenizedPairs,
                      evals: rm_data.TokenizedPairs | None) -> bool:
    """Whether the BT loss subtracts the data's margins: as configured, else when the column exists."""
    has_margin = train.margin is not None
    if config.use_margin and not has_margin:
        raise RewardlabError(f"use_margin is set but {config.train_file or config.dataset_name} has no 'margin' column")
    use_margin = has_margin if config.use_margin is None else bool(config.use_margin)
    if use_margin and evals is not None and evals.margin is None:
        logger.info("the eval data has no margin column; held-out loss is computed without margins")
    return use_margin


def _pairs_collate(pairs: rm_data.TokenizedPairs, pad_id: int, use_margin: bool) -> Callable[[list[int]], Batch]:
    """B pair indices → one batch of the 2B sequences, chosen then rejected (+ the B margins)."""
    def collate(idx: list[int]) -> Batch:
        seqs = [pairs.chosen_ids[i] for i in idx] + [pairs.rejected_ids[i] for i in idx]
        ids, mask = pad_right(seqs, pad_id)
        batch = {"input_ids": ids, "attention_mask": mask}
        if use_margin:
            batch["margin"] = torch.tensor([pairs.margin[i] for i in idx], dtype=torch.float32)  # type: ignore[index]
        return batch

    return collate


def _pairs_loss(logits: torch.Tensor, batch: Batch, config: RewardTrainingConfig) -> torch.Tensor:
    """BT loss over heads (+ margin, label smoothing, centring; bootstrap-weighted with ``bootstrap``).
    Shapes: logits (2B, H) → scalar."""
    chosen, rejected = logits.float().chunk(2)  # (B, H) each
    return reward_model_loss(chosen, rejected, batch.get("margin"), config.label_smoothing,
                             config.center_rewards_coefficient, weights=batch.get("bootstrap_weights"))


def _with_bootstrap_weights(collate: Callable[[list[int]], Batch], weights: torch.Tensor) -> Callable[[list[int]], Batch]:
    """Add each pair's row of bootstrap counts to its batch. Indexed by training row, the weights follow a
    pair wherever the data order, a resume or accelerate's sharding puts it. Shapes: weights (N, H) → (B, H)."""
    def collate_weighted(idx: list[int]) -> Batch:
        return {**collate(idx), "bootstrap_weights": weights[torch.tensor(idx, dtype=torch.long)]}

    return collate_weighted


def _pairs_batch_stats(logits: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
    """Accuracy, margin and centre of the mean-over-heads reward. Shapes: logits (2B, H)."""
    chosen, rejected = logits.float().chunk(2)
    rc, rr = chosen.mean(-1), rejected.mean(-1)
    return {"rm/accuracy": preference_accuracy(rc, rr), "rm/margin": (rc - rr).mean(),
            "rm/reward_center": ((rc + rr) / 2).mean()}


def _pairs_eval(logits: torch.Tensor, evals: rm_data.TokenizedPairs, config: RewardTrainingConfig,
                use_margin: bool) -> dict[str, float]:
    """Held-out BT loss, and accuracy, ECE and temperature of the mean over heads. Shapes: logits (2N, H)."""
    chosen, rejected = logits[: len(evals)], logits[len(evals):]
    rc, rr = chosen.mean(-1), rejected.mean(-1)
    margin = torch.tensor(evals.margin) if (use_margin and evals.margin is not None) else None
    loss = reward_model_loss(chosen, rejected, margin, config.label_smoothing, config.center_rewards_coefficient)
    d = rc - rr
    return {"rm/eval/loss": float(loss), "rm/eval/accuracy": float(preference_accuracy(rc, rr)),
            "rm/eval/ece": expected_calibration_error(d), "rm/eval/temperature": fit_temperature(d)}


def _labels_num_heads(config: RewardTrainingConfig, train: rm_data.TokenizedLabels) -> int:
    """C classes: as configured, else max label + 1 (at least 2)."""
    n_classes = max(train.labels) + 1
    num_heads = config.num_heads or max(2, n_classes)
    if n_classes > num_heads:
        raise RewardlabError(f"{config.train_file or config.dataset_name} has label {n_classes - 1} but "
                             f"num_heads={num_heads} classes")
    return num_heads


def _labels_split(data: rm_data.TokenizedLabels, eval_fraction: float, seed: int) -> tuple[Any, Any]:
    """Labelled texts are not split into held-out rows: refused."""
    raise RewardlabError("eval_fraction applies to preference pairs; give classifier runs an eval_file")


def _labels_collate(data: rm_data.TokenizedLabels, pad_id: int, use_margin: bool) -> Callable[[list[int]], Batch]:
    """B indices → one batch of B labelled sequences."""
    def collate(idx: list[int]) -> Batch:
        ids, mask = pad_right([data.input_ids[i] for i in idx], pad_id)
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([data.labels[i] for i in idx])}

    return collate


def _labels_eval(logits: torch.Tensor, evals: rm_data.TokenizedLabels, config: RewardTrainingConfig,
                 use_margin: bool) -> dict[str, float]:
    """Held-out cross-entropy, accuracy and fitted temperature. Shapes: logits (N, C)."""
    labels = torch.tensor(evals.labels)
    return {"rm/eval/loss": float(classifier_loss(logits, labels)),
            "rm/eval/accuracy": float((logits.argmax(-1) == labels).float().mean()),
            "rm/eval/temperature": fit_classifier_temperature(logits, labels)}


MODES: dict[Mode, _ModeRules] = {
    "bradley_terry": _ModeRules(
        semantics="bradley_terry", loss_name="bradley_terry", seqs_per_row=2,
        read=rm_data.read_preferences, tokenize=rm_data.tokenize_preferences, split=rm_data.split_pairs,
        num_heads=lambda config, train: config.num_heads or 1,
        use_margin=_pairs_use_margin,
        collate=_pairs_collate,
        sequences=lambda pairs: pairs.chosen_ids + pairs.rejected_ids,
        loss=_pairs_loss,
        batch_stats=_pairs_batch_stats,
        eval_metrics=_pairs_eval,
    ),
    "classifier": _ModeRules(
        semantics="classifier", loss_name="cross_entropy", seqs_per_row=1,
        read=rm_data.read_labelled, tokenize=rm_data.tokenize_labelled, split=_labels_split,
        num_heads=_labels_num_heads,
        use_margin=lambda config, train, evals: False,  # labelled texts have no margins
        collate=_labels_collate,
        sequences=lambda data: data.input_ids,
        loss=lambda logits, batch, config: classifier_loss(logits.float(), batch["labels"]),
        batch_stats=lambda logits, batch: {"rm/accuracy": (logits.argmax(-1) == batch["labels"]).float().mean()},
        eval_metrics=_labels_eval,
    ),
}


# --------------------------------------------------------------------------------------------
# Files: metrics, checkpoints, the final folder
# --------------------------------------------------------------------------------------------
def _plan_run(config: RewardTrainingConfig) -> tuple[RunPlan, RewardTrainingConfig]:
    """Folder checks and the resume rule, before any model loads; returns the plan and the run's config.

    The run writes into ``output_dir.partial`` (`rewardlab.runfolder` decides what happens to a
    leftover one); ``output_dir`` appears only at the end. A finished ``output_dir`` is replaced
    (with ``overwrite_output_dir``) only by that final rename.
    """
    out = os.path.abspath(config.output_dir)
    model_dir = config.model if os.path.isdir(config.model) else None
    inputs = {k: v for k, v in (("train_file", config.train_file), ("dataset_name", config.dataset_name),
                                ("eval_file", config.eval_file)) if v and os.path.exists(v)}  # local data only
    inputs["model"] = model_dir
    check_output_dir(out, inputs)
    check_output_dir(out + ".partial", inputs, name="output_dir + '.partial'")
    if os.path.exists(out):
        if config.resume:
            raise RewardlabError(f"{out} already exists: that run finished, there is nothing to resume; choose another "
                                 "output_dir, or pass --overwrite-output-dir (without --resume) to train it again")
        if not config.overwrite_output_dir:
            raise RewardlabError(f"{out} already exists (a finished run); choose another output_dir or pass "
                                 "--overwrite-output-dir (it is replaced when the new model is complete)")
    plan = plan_run(out + ".partial", command="train-rm", resume=config.resume, overwrite=config.overwrite_output_dir,
                    prefix=PREFIX, state_file=STATE_FILE, what="the unfinished run folder")
    if plan.checkpoint is not None and plan.saved_config is not None:
        # A checkpoint written before a field existed reads with its default: only real differences count.
        saved = asdict(RewardTrainingConfig.from_dict(plan.saved_config))
        merged, plan.changes = resume_config(saved, asdict(config), RM_RESUMABLE, command="train-rm", output_dir=out)
        config = RewardTrainingConfig.from_dict(merged).validate()
    return plan, config


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def _load_tokenizer(config: RewardTrainingConfig):
    from transformers import AutoTokenizer

    from rewardlab.local import model_folder  # never a hub lookup by accident; folder problems named

    tok = AutoTokenizer.from_pretrained(model_folder(config.model, "model", need_tokenizer=True),
                                        trust_remote_code=config.trust_remote_code)
    return tok


def _load_model(config: RewardTrainingConfig, num_heads: int):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from rewardlab.local import model_folder

    folder = model_folder(config.model, "model")  # local (a hub: name downloaded, as opted in)
    base = AutoConfig.from_pretrained(folder, trust_remote_code=config.trust_remote_code)
    is_classifier = any(a.endswith("ForSequenceClassification") for a in (base.architectures or []))
    if is_classifier and base.num_labels != num_heads:
        raise RewardlabError(
            f"{config.model} is a classifier with num_labels={base.num_labels} but this run needs {num_heads} "
            "heads; set num_heads to match or start from a base (causal-LM) model"
        )
    # float32 weights whatever the precision: mixed precision autocasts the compute, AdamW updates float32 masters.
    return AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=num_heads, use_safetensors=True, trust_remote_code=config.trust_remote_code,
        dtype=torch.float32, attn_implementation=config.attn_implementation,
    )


def _accelerator(config: RewardTrainingConfig):
    """The run's `accelerate.Accelerator`: ``mixed_precision`` autocasts the forward pass to bf16/fp16 over
    float32 weights (fp16 with a dynamic loss scale), as transformers' Trainer (and so TRL's RewardTrainer)
    does with ``bf16=True`` / ``fp16=True``."""
    from rewardlab.devices import make_accelerator, resolve_device

    on_cpu = resolve_device(config.device, "device").type == "cpu"  # a device this machine lacks: refused here
    accelerator = make_accelerator(
        cpu=on_cpu and torch.cuda.is_available(), mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps
    )
    if config.mixed_precision == "fp16" and accelerator.scaler is None and accelerator.device.type == "cpu":
        # accelerate would silently train in float32 here.
        raise RewardlabError("mixed_precision='fp16' needs a GPU (float16 autocast with loss scaling) and this run "
                             "is on the CPU; use bf16 (CPU autocast) or no")
    return accelerator


def _memory_options(model: torch.nn.Module, config: RewardTrainingConfig) -> torch.nn.Module:
    """The attention kernel, LoRA adapters and activation checkpointing ``config`` asks for, as TRL's
    RewardTrainer applies ``attn_implementation``, ``peft_config`` and ``gradient_checkpointing``.

    With ``use_peft`` the result is a peft model (task ``SEQ_CLS``: the LoRA matrices and a trainable copy
    of the score head are its only trainable parameters); the caller merges it before saving.
    """
    from rewardlab.ppo.memory import enable_gradient_checkpointing

    attn = config.attn_implementation
    if getattr(model.config, "_attn_implementation", attn) != attn:  # an in-memory model built otherwise
        try:
            model.set_attn_implementation(attn)
        except (ValueError, ImportError) as err:
            raise RewardlabError(f"attn_implementation={attn!r}: {type(model).__name__} cannot use it "
                                 f"({str(err).splitlines()[0][:200]}); choose another, e.g. sdpa or eager") from None
    if config.use_peft:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            task_type="SEQ_CLS", r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=list(config.lora_target_modules) or None))
    if config.gradient_checkpointing:
        try:
            enable_gradient_checkpointing(model)  # non-reentrant, on every decoder layer (through peft too)
        except (RewardlabError, ValueError):  # ours: no such layers; transformers': not supported at all
            raise RewardlabError(f"{type(model).__name__} has no layers that support gradient checkpointing; "
                                 "set gradient_checkpointing=false") from None
    return model


class _AdapterWeights:
    """A LoRA run's checkpoint as `load_checkpoint` reads it back: peft's ``save_pretrained`` files hold the
    adapters and the score head only; the frozen base weights are those of ``--model`` again."""

    def __init__(self, peft_model: torch.nn.Module) -> None:
        self.peft_model = peft_model

    def load_state_dict(self, weights: dict[str, torch.Tensor], strict: bool = False) -> tuple[list[str], list[str]]:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.peft_model, weights)
        trainable = {n for n, p in self.peft_model.named_parameters() if p.requires_grad}
        return [k for k in result.missing_keys if k in trainable], list(result.unexpected_keys)


def _scaler_state(accelerator: Any) -> dict[str, Any]:
    """fp16's loss-scaler state for a checkpoint (none without one), so a resumed run scales as the killed one."""
    return {"scaler": accelerator.scaler.state_dict()} if accelerator.scaler is not None else {}


def _load_data(config: RewardTrainingConfig, tokenizer: Any, mode: _ModeRules) -> tuple[Rows, Rows | None, bool]:
    """(train, eval or None, use_margin): tokenised pairs or labelled texts, as the mode reads them."""
    data, field = (config.dataset_name, "dataset_name") if config.dataset_name else (config.train_file, "train_file")
    train = mode.tokenize(mode.read(data, config=config.dataset_config, split=config.dataset_train_split, field=field),
                          tokenizer, config.max_length)
    if config.dataset_test_split:  # a split of the same dataset (TRL's dataset_test_split)
        evals = mode.read(data, config=config.dataset_config, split=config.dataset_test_split, field=field)
    else:  # another source: its only split
        evals = mode.read(config.eval_file, field="eval_file") if config.eval_file else None
    evals = mode.tokenize(evals, tokenizer, config.max_length) if evals is not None else None
    if evals is None and config.eval_fraction > 0:
        train, evals = mode.split(train, config.eval_fraction, config.seed)
    return train, evals, mode.use_margin(config, train, evals)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def train_reward_model(
    config: RewardTrainingConfig, *, model: torch.nn.Module | None = None, tokenizer: Any = None
) -> TrainResult:
    """Train a reward model as `config` says and save it to ``config.output_dir``.

    Args:
        config: the run's settings (validated here).
        model: an in-memory sequence-classification model to train instead of loading
            ``config.model`` (its ``num_labels`` must match the heads; ``attn_implementation``,
            LoRA and checkpointing are applied to it, and with LoRA it is merged in place at the end).
        tokenizer: its tokenizer (required with `model`).

    Returns:
        A `TrainResult`; the folder at ``result.output_dir`` loads with `RewardModel.from_pretrained`.
    """
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    config.validate()
    if (model is None) != (tokenizer is None) and model is not None:
        raise RewardlabError("pass a tokenizer together with an in-memory model")
    check_trackers(config.report_to, field="report_to")  # a missing package: refused before the run folder is written
    plan, config = _plan_run(config)  # before any model loads
    accelerator = _accelerator(config)
    set_seed(config.seed)
    is_main = accelerator.is_main_process
    mode = MODES[config.mode]

    # ---- 1. data --------------------------------------------------------------------------
    tokenizer = tokenizer if tokenizer is not None else _load_tokenizer(config)
    if tokenizer.pad_token is None:
        from rewardlab.reward.scoring import use_eos_as_pad

        use_eos_as_pad(tokenizer, "the tokenizer")
    pad_id = int(tokenizer.pad_token_id)
    train, evals, use_margin = _load_data(config, tokenizer, mode)
    num_heads = mode.num_heads(config, train)

    # ---- 2. model ---------------------------------------------------------------------------
    if model is None:
        model = _load_model(config, num_heads)
    if model.config.num_labels != num_heads:
        raise RewardlabError(f"the model has num_labels={model.config.num_labels} but this run needs {num_heads} heads")
    model.config.pad_token_id = pad_id
    model = _memory_options(model, config)  # attention kernel, LoRA adapters, activation checkpointing
    scorer = PooledRewardModel(model, tokenizer)

    # ---- 3. batches, optimiser, schedule ------------------------------------------------
    collate = mode.collate(train, pad_id, use_margin)
    if config.bootstrap:  # one resample per head, a pure function of (seed, training rows): a resume redraws it
        collate = _with_bootstrap_weights(collate, bootstrap_weights(len(train), num_heads, config.seed))
    order = EpochOrder(len(train), config.seed)  # a pure function of (seed, epoch): resumable
    # The loader's own generator: starting an iterator draws a base seed, which must not come from
    # torch's global generator (dropout's), or a resumed run's dropout masks would be shifted.
    loader = torch.utils.data.DataLoader(
        list(range(len(train))), batch_size=config.per_device_train_batch_size, sampler=order, collate_fn=collate,
        generator=torch.Generator().manual_seed(config.seed),
    )
    # Each process sees 1/num_processes of the batches once accelerate shards the loader.
    n_proc = accelerator.num_processes
    steps_per_epoch = math.ceil(math.ceil(len(loader) / n_proc) / config.gradient_accumulation_steps)
    total_steps = config.max_steps if config.max_steps > 0 else max(1, math.ceil(config.num_train_epochs * steps_per_epoch))
    resume_from = plan.checkpoint
    state = load_checkpoint(resume_from, _AdapterWeights(model) if config.use_peft else model) if resume_from else None
    optimizer = _adamw(scorer, config)
    # accelerate steps a prepared scheduler once per process at every optimiser step.
    scheduler = get_scheduler(
        config.lr_scheduler_type, optimizer, num_warmup_steps=int(config.warmup_ratio * total_steps) * n_proc,
        num_training_steps=total_steps * n_proc,
    )
    scorer, optimizer, loader, scheduler = accelerator.prepare(scorer, optimizer, loader, scheduler)
    step = 0
    window: dict[str, list[torch.Tensor]] = {}  # per-micro-batch statistics since the last log line
    rows_seen = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        step = int(state["step"])
        window = {k: list(v.to(accelerator.device).unbind(0)) for k, v in state.get("window", {}).items()}
        rows_seen = int(state.get("rows_seen", 0))
        if accelerator.scaler is not None and "scaler" in state:  # fp16's loss scale, as the killed run had it
            accelerator.scaler.load_state_dict(state["scaler"])
        logger.info("resuming from %s (step %d of %d)", resume_from, step, total_steps)

    partial = plan.path
    if is_main:
        plan.start(asdict(config))
    accelerator.wait_for_everyone()
    metrics = MetricsLogger(partial, config.report_to, enabled=is_main, project="rewardlab-train-rm",
                            run_name=os.path.basename(os.path.normpath(config.output_dir)), run_config=asdict(config),
                            resume_step=step if state is not None else None, log_line=RM_LINE,
                            total_steps=total_steps, progress_bar=config.progress)
    if is_main:
        write_text(os.path.join(partial, "train_config.json"), json.dumps(
            {**asdict(config), "run_id": plan.run_id,
             "resolved": {"num_heads": num_heads, "use_margin": use_margin, "total_steps": total_steps,
                          "train_rows": len(train), "eval_rows": 0 if evals is None else len(evals),
                          "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
                          "parameters": sum(p.numel() for p in model.parameters())},
             "hub_models": resolved_models()}, indent=2))
    logger.info("training %s reward model: %d heads, %d rows, %d steps, margin=%s, outputs in %s",
                config.mode, num_heads, len(train), total_steps, use_margin, config.output_dir)

    def evaluate(step: int) -> dict[str, float]:
        if evals is None:
            return {}
        scorer.eval()
        logits = _score_all(scorer, mode.sequences(evals), pad_id, config.per_device_eval_batch_size, accelerator.device)
        out = mode.eval_metrics(logits, evals, config, use_margin)
        scorer.train()
        metrics.log(out, step=step)
        return out

    # ---- 4. the loop ------------------------------------------------------------------------
    progress = rich_progress("[bold]{task.description}", "{task.fields[info]}", enabled=config.progress and is_main)
    task = progress.add_task("train-rm", total=total_steps, info="", completed=step)
    train_seconds, last = 0.0, {}
    # Every epoch but the last takes steps_per_epoch steps of gradient_accumulation_steps batches.
    epoch, done_in_epoch = divmod(step, steps_per_epoch)
    skip = done_in_epoch * config.gradient_accumulation_steps
    scorer.train()
    t0 = time.perf_counter()
    rows_at_start = rows_seen
    try:
        with interrupts(), progress:
            while step < total_steps:
                order.use_epoch(epoch)
                batches = accelerator.skip_first_batches(loader, skip) if skip else loader
                epoch, skip = epoch + 1, 0
                for batch in batches:
                    with accelerator.accumulate(scorer):
                        logits = scorer(batch["input_ids"], batch["attention_mask"])  # (2B, H) or (B, C)
                        loss = mode.loss(logits, batch, config)
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and config.max_grad_norm > 0:
                            accelerator.clip_grad_norm_(scorer.parameters(), config.max_grad_norm)
                        optimizer.step()
                        scheduler.step()
                        optimizer.zero_grad()
                    rows_seen += batch["input_ids"].shape[0] // mode.seqs_per_row
                    _accumulate(window, loss, mode.batch_stats(logits.detach(), batch))
                    if not accelerator.sync_gradients:
                        continue
                    step += 1
                    if step % config.logging_steps == 0 or step == total_steps:
                        elapsed = time.perf_counter() - t0
                        last = _summarise(window, accelerator)
                        rate = (rows_seen - rows_at_start) * accelerator.num_processes / max(elapsed, 1e-9)
                        last.update({"rm/learning_rate": scheduler.get_last_lr()[0], "rm/epoch": step / steps_per_epoch,
                                     "rm/rows_per_second": rate})
                        metrics.log(last, step=step)
                        window = {}
                        progress.update(task, info=f"loss {last['rm/loss']:.4f}  acc {last['rm/accuracy']:.3f}")
                    if config.eval_steps and step % config.eval_steps == 0 and step < total_steps:
                        evaluate(step)
                    if config.save_steps and step % config.save_steps == 0 and step < total_steps:
                        accelerator.wait_for_everyone()
                        if is_main:
                            # The logging window goes with it, so the log line spanning a resume is complete.
                            save_checkpoint(partial, step, accelerator.unwrap_model(scorer).model, tokenizer, optimizer,
                                            scheduler, keep=config.save_total_limit, run_id=plan.run_id,
                                            config=asdict(config),
                                            extra={"window": {k: torch.stack(v).cpu() for k, v in window.items()},
                                                   "rows_seen": rows_seen, **_scaler_state(accelerator)})
                            plan.output_complete()
                    progress.update(task, advance=1)
                    if step >= total_steps:
                        break
    except KeyboardInterrupt:
        metrics.close()
        raise RunInterrupted(plan.interrupted("step", step + 1)) from None
    train_seconds = time.perf_counter() - t0

    # ---- 5. final evaluation, metadata, save ---------------------------------------------
    scorer.eval()
    final = dict(last)
    final["rm/train_seconds"] = train_seconds
    final.update(evaluate(step))
    reading = principal_reading(mode.semantics, num_heads)
    temperature = final.get("rm/eval/temperature")
    if temperature is not None and not T_MIN * 1.01 < temperature < T_MAX * 0.99:
        # At a search bound the held-out NLL has no interior minimum: separable pairs (T → 0) or
        # no signal (T → ∞). Such a T is not a calibration; record none rather than a bound.
        logger.warning("the temperature fit hit its bound (%.3g): held-out pairs are %s; no temperature recorded",
                       temperature, "separable" if temperature < 1 else "uninformative")
        temperature = None
    final_scorer = scorer
    if config.use_peft:
        # The output folder must load anywhere as an ordinary classifier: the adapters are merged into the
        # weights (W + (α/r)·BA) and the score head's trained copy replaces the original, before the
        # reward statistics are measured, so they are those of the saved model.
        final_scorer = PooledRewardModel(accelerator.unwrap_model(scorer).model.merge_and_unload(), tokenizer)
    with accelerator.autocast():  # as the prepared model runs (a no-op without mixed precision)
        train_logits = _score_all(final_scorer, mode.sequences(train), pad_id, config.per_device_eval_batch_size,
                                  accelerator.device)
    rewards = read_heads(reading, train_logits)
    meta = RewardModelMetadata(
        semantics=mode.semantics,
        num_heads=num_heads,
        loss=mode.loss_name,
        ensemble="bootstrap" if config.bootstrap else None,
        temperature=temperature,
        reward_mean=float(rewards.mean()),
        reward_std=float(rewards.std(correction=0)),
        extra={
            "reading": reading,
            "use_margin": use_margin,
            "center_rewards_coefficient": config.center_rewards_coefficient,
            "label_smoothing": config.label_smoothing,
            "eval_accuracy": final.get("rm/eval/accuracy"),
            "train_rows": len(train),
            **({"bootstrap": {"weights": "multinomial", "seed": config.seed}} if config.bootstrap else {}),
            "trained_by": f"rewardlab {_version()}",
            "run_id": plan.run_id,
        },
    )
    final.update({"rm/reward_mean": meta.reward_mean, "rm/reward_std": meta.reward_std})
    metrics.log(final, step=step)
    metrics.close()
    accelerator.wait_for_everyone()
    if is_main:
        unwrapped = accelerator.unwrap_model(final_scorer).model
        write_metadata(unwrapped.config, meta)

        def write(folder: str) -> None:
            unwrapped.save_pretrained(folder, safe_serialization=True)
            tokenizer.save_pretrained(folder)

        # The model files sit at the top of the run folder, so output_dir itself loads with
        # from_pretrained; the folder appears under its final name only now, in one rename, without
        # a replaced run's files or a temporary folder inside.
        write(partial)
        plan.output_complete()
        for folder in (partial, plan.checkpoints_root):
            remove_leftovers(folder, any_process=True)
        replace_dir(partial, os.path.abspath(config.output_dir))
    accelerator.wait_for_everyone()
    accelerator.end_training()  # no process group left behind: Gloo's threads can abort the process at exit
    return TrainResult(
        output_dir=os.path.abspath(config.output_dir), metadata=meta, steps=step,
        train_pairs=rows_seen * accelerator.num_processes, train_seconds=train_seconds, metrics=final,
    )


def _adamw(module: torch.nn.Module, config: RewardTrainingConfig) -> torch.optim.Optimizer:
    """AdamW, with the fused kernel where torch has one for these parameters (as transformers' default)."""
    params = [p for p in module.parameters() if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)


def _accumulate(window: dict[str, list[torch.Tensor]], loss: torch.Tensor, stats: dict[str, torch.Tensor]) -> None:
    """Keep per-micro-batch statistics as tensors; they are synchronised only when logged."""
    window.setdefault("rm/loss", []).append(loss.detach().float())
    for key, value in stats.items():
        window.setdefault(key, []).append(value)


def _summarise(window: dict[str, list[torch.Tensor]], accelerator: Any) -> dict[str, float]:
    """The window's mean of each statistic, averaged over processes."""
    out = {}
    for key, values in window.items():
        mean = torch.stack(values).mean()
        out[key] = float(accelerator.gather_for_metrics(mean.reshape(1)).mean())
    return out


def _version() -> str:
    from rewardlab import __version__

    return __version__
