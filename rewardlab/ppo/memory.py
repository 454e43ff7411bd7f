"""How a run's models are held in memory: precision, attention kernel, activation checkpointing.

Precision is decided per model, once, by `model_precisions` (a pure function of the config and
whether the run is on CUDA) — the table in docs/ppo.md, "Precision and devices":

- trained models (policy, critic): ``models.dtype`` — their master weights, float32 by default —
  run under the accelerator's autocast (`accelerator_mixed_precision`: ``run.mixed_precision``,
  ``auto`` = bf16 on a GPU, none on CPU; ``fp16`` adds loss scaling). float16 master weights are
  refused: AdamW on them underflows without loss scaling.
- frozen models: the reference policy (``models.ref_dtype``) and the reward models
  (``models.reward_dtype``); unset, bfloat16 on a GPU under bf16/fp16 mixed precision (half the
  memory, the precision their autocast forward computes in anyway), else ``models.dtype``. The
  reference runs under the same autocast as the policy; the reward models score outside it.

Two more options of ``models`` (TRL's names), applied when a model is loaded:

- ``attn_implementation`` — ``sdpa`` (default), ``eager``, or ``flash_attention_2`` /
  ``flash_attention_3`` when the ``flash_attn`` package is installed (refused otherwise).
- ``gradient_checkpointing`` — recompute each decoder layer's activations in the backward pass
  instead of keeping them (non-reentrant ``torch.utils.checkpoint``), for policy and critic.

Activation checkpointing in transformers runs only in layers whose ``training`` flag is set, and
PPO keeps every model in eval mode (dropout off, so that the rollout's π_old and the update's π_θ
are the same function). `enable_gradient_checkpointing` therefore sets the flag on the decoder
layers alone: their dropout and attention submodules stay in eval mode, and the numbers are those
of the model without checkpointing (a test checks the gradients agree).

Example::

    precisions = model_precisions(cfg, cuda=torch.cuda.is_available())
    precisions["reference"]                               # ModelPrecision(dtype='bfloat16', device='cuda', …)
    kwargs = load_kwargs(precisions["policy"].dtype, "sdpa", trained=True)   # {"dtype": ..., "attn_implementation": ...}
    policy = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    enable_gradient_checkpointing(policy)
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import torch

from rewardlab.errors import RewardlabError

DTYPES: dict[str, torch.dtype | str] = {
    "auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
}
ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")


def resolve_dtype(name: str, *, trained: bool, field: str = "models.dtype") -> torch.dtype | str:
    """The torch dtype (or ``"auto"``) for a model loaded under ``dtype=name``.

    Raises RewardlabError for an unknown name, or ``float16`` for a model that is trained.
    """
    if name not in DTYPES:
        raise RewardlabError(f"{field}={name!r} is not a dtype; choose one of {', '.join(DTYPES)}")
    if trained and name == "float16":
        raise RewardlabError(
            f"{field}=float16 would train float16 weights, whose AdamW updates underflow without loss scaling; "
            "use bfloat16 or float32 weights, or keep float32 weights with run.mixed_precision=fp16")
    return DTYPES[name]


MIXED_PRECISION = {"no": None, "bf16": "bfloat16", "fp16": "float16"}  # accelerate's name → autocast dtype


@dataclass(frozen=True)
class ModelPrecision:
    """How one model of a run is held and run.

    Attributes:
        dtype: the dtype its weights are loaded in (``float32``, ``bfloat16``, ``float16``; ``auto``: as saved).
        device: ``cuda`` or ``cpu`` (every model of a process is on the accelerator's device).
        autocast: the dtype its forwards compute in under the accelerator's autocast (``bfloat16``,
            ``float16``), or None: in its weights' dtype.
        trained: whether the optimiser updates it (its weights are then the master weights).
    """

    dtype: str
    device: str
    autocast: str | None
    trained: bool

    @property
    def torch_dtype(self) -> torch.dtype | str:
        """The ``dtype`` argument of ``from_pretrained`` (a torch dtype, or ``"auto"``)."""
        return DTYPES[self.dtype]


def accelerator_mixed_precision(cfg: Any, *, cuda: bool) -> str:
    """accelerate's ``mixed_precision`` for a run: ``no``, ``bf16`` or ``fp16`` (``run.mixed_precision``;
    ``auto`` = bf16 on a GPU, no on CPU).

    Raises RewardlabError for ``fp16`` without CUDA (accelerate would silently compute in float32
    there: CPU autocast has no float16), and for bfloat16 master weights under fp16 autocast.
    """
    mixed = cfg.run.mixed_precision
    if mixed == "auto":
        return "bf16" if cuda else "no"
    if mixed == "fp16" and not cuda:
        raise RewardlabError("run.mixed_precision='fp16' needs a CUDA GPU (fp16 autocast and loss scaling run on CUDA "
                             "only; here the run would silently compute in float32); use 'bf16' or 'no' on CPU")
    if mixed == "fp16" and cfg.models.dtype == "bfloat16":
        raise RewardlabError("run.mixed_precision='fp16' with models.dtype='bfloat16' would compute bfloat16 weights in "
                             "float16; use mixed_precision 'bf16' with bfloat16 weights, or models.dtype='float32' with fp16")
    return mixed


def model_precisions(cfg: Any, *, cuda: bool) -> dict[str, ModelPrecision]:
    """The dtype, device and autocast of each model of a PPO run: ``policy``, ``critic``, ``reference``, ``reward``.

    A pure function of the config (``models.dtype``, ``ref_dtype``, ``reward_dtype``,
    ``use_peft``, ``ref_model_path``, ``run.mixed_precision``) and ``cuda`` (whether the run's
    device is a CUDA GPU); nothing is loaded. Under LoRA with the shared reference (the policy's
    base, adapter off) the reference is held in the policy's dtype, and ``ref_dtype`` is refused.
    The critic's entry also describes a value head or critic adapter on the policy (the head is
    a float32 ``nn.Linear``).

    Raises RewardlabError for a combination that cannot run (see `accelerator_mixed_precision`,
    `resolve_dtype`).
    """
    m = cfg.models
    mixed = accelerator_mixed_precision(cfg, cuda=cuda)
    autocast, device = MIXED_PRECISION[mixed], "cuda" if cuda else "cpu"
    resolve_dtype(m.dtype, trained=True)  # float16 master weights: refused with the fix
    frozen_default = "bfloat16" if cuda and mixed in ("bf16", "fp16") else m.dtype
    shared_reference = m.use_peft and m.ref_model_path in (None, m.sft_model_path)
    if shared_reference and m.ref_dtype is not None:
        raise RewardlabError(
            f"models.ref_dtype={m.ref_dtype!r} has no model to apply to: with models.use_peft the reference is the "
            "policy's own base (adapter off), held in models.dtype; unset ref_dtype, or give a ref_model_path")
    ref = m.dtype if shared_reference else (m.ref_dtype or frozen_default)
    reward = m.reward_dtype or frozen_default
    for name, value in (("models.ref_dtype", ref), ("models.reward_dtype", reward)):
        resolve_dtype(value, trained=False, field=name)
    return {
        "policy": ModelPrecision(m.dtype, device, autocast, trained=True),
        "critic": ModelPrecision(m.dtype, device, autocast, trained=True),
        "reference": ModelPrecision(ref, device, autocast, trained=False),
        "reward": ModelPrecision(reward, device, None, trained=False),
    }


def describe_precisions(precisions: dict[str, ModelPrecision]) -> str:
    """One line for the run's log: ``policy float32 (autocast bfloat16), …, reward bfloat16 on cuda``."""
    parts = [f"{name} {p.dtype}" + (f" (autocast {p.autocast})" if p.autocast else "") for name, p in precisions.items()]
    return ", ".join(parts) + f" on {next(iter(precisions.values())).device}"


def check_attn_implementation(name: str, field: str = "models.attn_implementation") -> str:
    """``name`` if it is an attention kernel this machine can run; a RewardlabError naming the fix otherwise."""
    if name not in ATTENTION:
        raise RewardlabError(f"{field}={name!r} is not an attention implementation; choose one of {', '.join(ATTENTION)}")
    if name.startswith("flash_attention") and importlib.util.find_spec("flash_attn") is None:
        raise RewardlabError(
            f"{field}={name!r} needs the flash_attn package (CUDA only), which is not installed; "
            "pip install flash-attn, or use 'sdpa' (the default)")
    return name


def load_kwargs(dtype: str, attn_implementation: str, *, trained: bool) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained`` that apply ``dtype`` and ``attn_implementation``."""
    return {"dtype": resolve_dtype(dtype, trained=trained), "attn_implementation": check_attn_implementation(attn_implementation)}


def enable_gradient_checkpointing(model: torch.nn.Module) -> int:
    """Non-reentrant activation checkpointing on every decoder layer of ``model``, dropout left off.

    Works on transformers models and on PEFT wrappers of them. Returns the number of layers that
    now recompute their activations (0 means the architecture does not support it: an error).
    """

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers ≥ 5.20
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    n = mark_checkpointed_layers(base)
    if not n:
        raise RewardlabError(
            f"{type(base).__name__} has no decoder layers that support gradient checkpointing; "
            "set models.gradient_checkpointing=false")
    return n


def mark_checkpointed_layers(model: torch.nn.Module) -> int:
    """Set ``training`` on the checkpointed decoder layers of ``model`` only (their submodules stay in eval mode).

    Call it after every ``eval()`` (which clears the flags). Returns the number of such layers.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    n = 0
    for layer in model.modules():
        if isinstance(layer, GradientCheckpointingLayer) and layer.gradient_checkpointing:
            layer.training = True
            n += 1
    return n
