"""Where a command runs its models: ``--device`` as every command that loads a model takes it.

``auto`` (the default) is the first CUDA device when one is visible, else the CPU, as a TRL or
transformers user expects a GPU to be used when there is one. An explicit device that this
machine does not have is refused with the fix, before any model loads.

Example::

    device = resolve_device("auto")          # cuda:0 on a GPU machine, cpu elsewhere
    device = resolve_device("cuda:1", "--device")
"""

from __future__ import annotations

import torch

from rewardlab.errors import RewardlabError

DEVICE_HELP = "where the models run: auto (the GPU when one is visible, else cpu), cpu, cuda, cuda:N or mps"


def resolve_device(name: str | torch.device | None = "auto", field: str = "--device") -> torch.device:
    """The `torch.device` for ``name`` (None or ``"auto"``: CUDA when available, else CPU).

    Raises:
        RewardlabError: not a device name, or a device this machine does not have.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise RewardlabError(f"{field}={name!r} is not a device; {DEVICE_HELP}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RewardlabError(f"{field}={name!r}: no CUDA device is visible here (torch {torch.__version__}); "
                                 "use --device cpu, or install a CUDA build of torch on a GPU machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RewardlabError(f"{field}={name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible; "
                                 f"use cuda:0 … cuda:{torch.cuda.device_count() - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise RewardlabError(f"{field}={name!r}: MPS is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise RewardlabError(f"{field}={name!r} is not a device rewardlab runs on; {DEVICE_HELP}")
    return device


def make_accelerator(*, mixed_precision: str, cpu: bool = False, **kwargs):
    """An `accelerate.Accelerator` with this ``mixed_precision``, in a process that may have made one with another.

    accelerate keeps one state per process and refuses a second precision in it; a later run in the
    same process (a notebook, a sweep, a test suite) with another precision starts from a fresh state.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    previous = AcceleratorState._shared_state.get("_mixed_precision")
    if previous is not None and previous != mixed_precision:
        AcceleratorState._reset_state()
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision, **kwargs)


def add_device_argument(parser) -> None:
    """``--device`` (default ``auto``) for a command that loads a model; resolve it with `resolve_device`."""
    parser.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default: auto)")
