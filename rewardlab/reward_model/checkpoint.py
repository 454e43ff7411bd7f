"""Reward-model training checkpoints: written atomically, found again, and resumed exactly.

A checkpoint ``<output_dir>.partial/checkpoints/step-NNNNNNN/`` holds the model
(``save_pretrained``, safetensors), the tokenizer and ``trainer_state.pt`` (optimiser and
schedule states, the step, torch's RNG state; tensors and plain containers only, so it loads with
``torch.load(..., weights_only=True)``). The data order is a pure function of (seed, epoch)
(`EpochOrder`), so a resumed run replays the same batches from the same position.

Example::

    path = latest_checkpoint("runs/rm.partial")          # None when there is none
    state = load_checkpoint(path, model)                   # weights into `model`; returns trainer state
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import torch

from rewardlab.atomic import atomic_dir
from rewardlab.errors import RewardlabError

STATE_FILE = "trainer_state.pt"


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
                    keep: int) -> str:
    """Write checkpoint ``step`` under ``partial/checkpoints`` atomically; keep the newest ``keep``."""
    root = os.path.join(partial, "checkpoints")
    path = os.path.join(root, f"step-{step:07d}")
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                    "rng": torch.get_rng_state()}, os.path.join(tmp, STATE_FILE))
    kept = sorted(d for d in os.listdir(root) if d.startswith("step-"))
    for old in kept[:-keep]:
        shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    return path


def latest_checkpoint(partial: str) -> str | None:
    """The newest complete checkpoint folder under ``partial/checkpoints`` (temporary folders ignored)."""
    root = os.path.join(partial, "checkpoints")
    if not os.path.isdir(root):
        return None
    done = sorted(d for d in os.listdir(root) if d.startswith("step-") and os.path.exists(os.path.join(root, d, STATE_FILE)))
    return os.path.join(root, done[-1]) if done else None


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
