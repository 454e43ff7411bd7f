"""Reward-model training checkpoints: written atomically, found again, and resumed exactly.

A checkpoint ``<output_dir>.partial/checkpoints/step-NNNNNNN/`` holds the model
(``save_pretrained``, safetensors), the tokenizer, ``trainer_state.pt`` (optimiser and schedule
states, the step, torch's CPU and CUDA RNG states, the open logging window; tensors and plain
containers only, so it loads with ``torch.load(..., weights_only=True)``) and ``run.json`` (run id,
step, resolved config: `rewardlab.runfolder`). The data order is a pure function of (seed, epoch)
(`EpochOrder`), so a resumed run replays the same batches from the same position, with the same
dropout masks. Pruning keeps the newest ``keep`` checkpoints of this run only.

Example::

    path = latest_checkpoint("runs/rm.partial")          # None when there is none
    state = load_checkpoint(path, model)                   # weights into `model`; returns trainer state
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch

from rewardlab.atomic import atomic_dir
from rewardlab.errors import RewardlabError
from rewardlab.runfolder import list_checkpoints, prune_checkpoints, write_checkpoint_info

STATE_FILE = "trainer_state.pt"
PREFIX = "step-"


class EpochOrder(torch.utils.data.Sampler[int]):
    """Row indices in a seeded random order that depends only on (seed, epoch).

    Call `use_epoch` before each pass. (Not named ``set_epoch``: accelerate calls that with its own
    pass counter, which restarts at 0 for a loader that skips batches on resume.)
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


def save_checkpoint(partial: str, step: int, model: torch.nn.Module, tokenizer: Any, optimizer, scheduler,
                    keep: int, run_id: str | None = None, config: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None) -> str:
    """Write checkpoint ``step`` under ``partial/checkpoints`` atomically; keep this run's newest ``keep``.

    ``extra`` (tensors and plain values) is stored in the trainer state beside the optimiser, schedule
    and RNG states.
    """
    root = os.path.join(partial, "checkpoints")
    path = os.path.join(root, f"{PREFIX}{step:07d}")
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
             "rng": torch.get_rng_state(), **(extra or {})}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_checkpoint_info(tmp, run_id, step, config)
        torch.save(state, os.path.join(tmp, STATE_FILE))
    prune_checkpoints(root, PREFIX, STATE_FILE, run_id, keep)
    return path


def latest_checkpoint(partial: str, run_id: str | None = None) -> str | None:
    """The newest complete checkpoint folder under ``partial/checkpoints`` (temporary folders ignored)."""
    found = list_checkpoints(os.path.join(partial, "checkpoints"), PREFIX, STATE_FILE, run_id)
    return found[-1][1] if found else None


def load_checkpoint(path: str, model: torch.nn.Module) -> dict[str, Any]:
    """Load a checkpoint's weights into ``model`` (safetensors) and return its trainer state."""
    from safetensors.torch import load_file

    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
        raise RewardlabError(f"{path} has no .safetensors weights; it is not a train-rm checkpoint")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(os.path.join(path, f)))
    hint = "resume with the same --model and --num-heads"
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # shape mismatches
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err)[:200])
        raise RewardlabError(f"{path} does not match the model being trained ({first}); {hint}") from None
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or set(missing) - tied:
        raise RewardlabError(
            f"{path} does not match the model being trained (missing {sorted(set(missing) - tied)[:5]}, unexpected "
            f"{sorted(unexpected)[:5]}); {hint}")
    return torch.load(os.path.join(path, STATE_FILE), weights_only=True)
