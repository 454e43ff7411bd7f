"""How a run's models are held in memory: precision, attention kernel, activation checkpointing.

Three options of ``models`` (TRL's names), applied when a model is loaded:

- ``dtype`` — ``auto`` (the checkpoint's own dtype), ``float32``, ``bfloat16`` or ``float16``.
  The frozen models (reference policy, reward models) take it as given; the trained ones (policy,
  critic) take ``float32`` or ``bfloat16`` — AdamW on float16 weights without loss scaling
  underflows, so ``float16`` trained weights are refused (use ``run.mixed_precision: fp16``).
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

    kwargs = load_kwargs(cfg.models, trained=True)        # {"dtype": ..., "attn_implementation": ...}
    policy = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    enable_gradient_checkpointing(policy)
"""

from __future__ import annotations

import importlib.util
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
