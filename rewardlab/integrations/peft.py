"""Score with a LoRA reward adapter on the policy's own backbone: one model in memory for both.

A reward model trained as a LoRA adapter (plus a linear score head) on the same base model as the
policy need not be loaded as a second network: activate the reward adapter on the policy's
`PeftModel`, run its backbone to hidden states, apply the score head at every position and pool at
the last real token — then switch back to the policy's adapter. This is the successor of old TRL's
``compute_reward_score``; it reuses `RewardModel` for tokenisation, truncation, length-sorted
micro-batching and pooling, so its scores are read exactly as a standalone classifier's would be.

Example::

    from peft import PeftModel
    policy = PeftModel.from_pretrained(base, "runs/policy_lora")            # the policy's adapter
    rm = AdapterRewardModel.from_pretrained(policy, "runs/rm_lora", tokenizer,
                                            score_head_path="runs/rm_lora/score_head.safetensors")
    logits = rm.score_texts(prompts, responses)      # (B, H); the policy adapter is active again after

`save_score_head` writes the head (and its head semantics) to the safetensors file the loader reads.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rewardlab.atomic import atomic_path
from rewardlab.errors import RewardlabError
from rewardlab.reward.scoring import NanPolicy, RewardModel

__all__ = ["AdapterRewardModel", "load_score_head", "save_score_head"]

_SCORE_KEY = re.compile(r"(?:^|\.)score\.(weight|bias)$")


class _AdapterScorer(torch.nn.Module):
    """A score head beside a backbone it does not own.

    The backbone is kept out of the module tree on purpose: `RewardModel` calls ``eval()`` on the
    model it wraps, and that must not switch the policy (still training) to eval mode.
    """

    base_model_prefix = "backbone"

    def __init__(self, backbone: torch.nn.Module, score: torch.nn.Module, config: Any) -> None:
        super().__init__()
        self.score = score
        self.config = config
        self.__dict__["backbone"] = backbone  # plain attribute: not registered as a submodule


def _hidden_size(config: Any) -> int | None:
    for key in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


class AdapterRewardModel(RewardModel):
    """`RewardModel` scoring through a LoRA reward adapter of a policy's `peft.PeftModel`.

    Scoring (``score_texts``, ``score_messages``, ``score_ids``, ``score_policy_ids``, ``forward``)
    activates `adapter_name`, puts the backbone in eval mode (no dropout), runs it, applies
    `score_head` per token ``(B, T, D) -> (B, T, H)``, pools at the last real token, and restores
    the previously active adapter(s), the modules' train/eval modes and every ``requires_grad``.

    Args:
        peft_model: the policy, a ``peft.PeftModel`` holding the reward adapter.
        tokenizer: the policy's tokenizer (the reward adapter shares the base model's vocabulary).
        adapter_name: name of the reward adapter inside `peft_model`.
        score_head: ``Linear(D, H)`` mapping hidden states to H reward logits.
        semantics: ``"bradley_terry"`` or ``"classifier"`` (None: undeclared; H > 1 then needs it
            declared before a pipeline can read the heads).
        batch_size, max_length, nan_policy: as in `RewardModel`.
    """

    def __init__(
        self,
        peft_model: Any,
        tokenizer: Any,
        *,
        adapter_name: str = "reward",
        score_head: torch.nn.Module,
        semantics: str | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        nan_policy: NanPolicy = "error",
    ) -> None:
        configs = getattr(peft_model, "peft_config", None)
        if not isinstance(configs, dict) or not hasattr(peft_model, "set_adapter"):
            raise RewardlabError(
                f"peft_model must be a peft.PeftModel holding the reward adapter; got {type(peft_model).__name__}. "
                "Wrap the policy with peft.PeftModel.from_pretrained / get_peft_model first"
            )
        if adapter_name not in configs:
            raise RewardlabError(
                f"the model has no adapter named {adapter_name!r} (adapters: {sorted(configs)}); load it with "
                "AdapterRewardModel.from_pretrained or peft_model.load_adapter(path, adapter_name=...)"
            )
        base = peft_model.get_base_model()
        prefix = getattr(base, "base_model_prefix", None)
        backbone = getattr(base, prefix, None) if isinstance(prefix, str) and prefix else None
        if not isinstance(backbone, torch.nn.Module):
            raise RewardlabError(
                f"cannot find the backbone of {type(base).__name__} (base_model_prefix={prefix!r}); the reward "
                "adapter needs a transformers model whose backbone returns hidden states"
            )
        out_features = getattr(score_head, "out_features", None)
        in_features = getattr(score_head, "in_features", None)
        hidden = _hidden_size(base.config)
        if not isinstance(out_features, int):
            raise RewardlabError(f"score_head must be a torch.nn.Linear(hidden, H); got {type(score_head).__name__}")
        if hidden is not None and in_features != hidden:
            raise RewardlabError(
                f"score_head takes {in_features} features but the base model's hidden size is {hidden}; "
                "the head must come from a reward model trained on this base model"
            )
        param = next(backbone.parameters())
        # The head runs on the backbone's hidden states: same device and precision.
        score_head = score_head.to(device=param.device, dtype=param.dtype if param.is_floating_point() else None)
        config = copy.deepcopy(base.config)
        config.num_labels = out_features
        config.rewardlab = None  # the policy's metadata (if any) does not describe the reward head
        self.peft_model = peft_model
        self.adapter_name = adapter_name
        super().__init__(
            _AdapterScorer(backbone, score_head, config),
            tokenizer,
            semantics=semantics,
            batch_size=batch_size,
            max_length=max_length,
            nan_policy=nan_policy,
        )

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        peft_model: Any,
        adapter_path: str | os.PathLike[str],
        tokenizer: Any,
        *,
        adapter_name: str = "reward",
        score_head_path: str | os.PathLike[str] | None = None,
        semantics: str | None = None,
        batch_size: int = 32,
        max_length: int | None = None,
        nan_policy: NanPolicy = "error",
    ) -> AdapterRewardModel:
        """Load a saved reward adapter into `peft_model` and its score head, then wrap them.

        Args:
            adapter_path: a folder written by ``save_pretrained`` of the reward adapter
                (adapter_config.json + adapter_model.safetensors), or a Hub name of one.
            score_head_path: a safetensors file from `save_score_head`; default: ``score_head.safetensors``
                in `adapter_path`, else a ``score`` module saved inside the adapter (``modules_to_save``).
            semantics: head semantics; default: those saved with the score head.

        The adapter is loaded frozen and the active adapter is left as it was.
        """
        from rewardlab.local import as_hub_name, hub_snapshot

        name = as_hub_name(os.fspath(adapter_path))  # a Hub name (org/name[@revision]): its cached snapshot
        folder = Path(hub_snapshot(name, "adapter_path") if name else adapter_path)
        if not (folder / "adapter_config.json").is_file():
            raise RewardlabError(
                f"{str(adapter_path)!r} is not a saved PEFT adapter (no adapter_config.json); pass the folder "
                "written by peft_model.save_pretrained"
            )
        if not (folder / "adapter_model.safetensors").is_file():
            raise RewardlabError(
                f"no adapter_model.safetensors in {str(adapter_path)!r}; rewardlab loads safetensors only. Re-save "
                "the adapter with save_pretrained(..., safe_serialization=True)"
            )
        if adapter_name in getattr(peft_model, "peft_config", {}):
            raise RewardlabError(f"the model already has an adapter named {adapter_name!r}; pass another adapter_name")
        if score_head_path is None:
            default = folder / "score_head.safetensors"
            score_head_path = default if default.is_file() else folder / "adapter_model.safetensors"
        head, saved_semantics = load_score_head(score_head_path)
        previous = list(peft_model.active_adapters)
        peft_model.load_adapter(os.fspath(folder), adapter_name=adapter_name, is_trainable=False)
        _activate(peft_model, previous)  # load_adapter does not switch adapters; make sure of it
        return cls(
            peft_model,
            tokenizer,
            adapter_name=adapter_name,
            score_head=head,
            semantics=semantics if semantics is not None else saved_semantics,
            batch_size=batch_size,
            max_length=max_length,
            nan_policy=nan_policy,
        )

    @contextmanager
    def reward_adapter_active(self) -> Iterator[None]:
        """Within the block the reward adapter is active and the backbone in eval mode; all restored after."""
        pm = self.peft_model
        previous = list(pm.active_adapters)
        grads = [(p, p.requires_grad) for p in pm.parameters()]
        modes = [(m, m.training) for m in self._backbone.modules()]  # type: ignore[union-attr]
        try:
            pm.set_adapter(self.adapter_name)
            # set_adapter also marks the active adapter trainable; keep every flag as the caller set it,
            # so the reward adapter takes gradients in `forward` only if it was made trainable.
            for p, flag in grads:
                p.requires_grad_(flag)
            self._backbone.eval()  # type: ignore[union-attr]
            yield
        finally:
            _activate(pm, previous)
            for p, flag in grads:
                p.requires_grad_(flag)
            for m, training in modes:
                m.training = training

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Reward head logits at each row's last real token, through the reward adapter.

        Shapes: input_ids (B, T), attention_mask (B, T) -> (B, H).
        """
        with self.reward_adapter_active():
            return super().forward(input_ids, attention_mask)

    def __repr__(self) -> str:
        return (
            f"AdapterRewardModel(adapter={self.adapter_name!r}, heads={self.num_heads}, semantics={self.semantics}, "
            f"max_length={self.max_length}, batch_size={self.batch_size})"
        )


def _activate(peft_model: Any, adapters: list[str]) -> None:
    if len(adapters) == 1:
        peft_model.set_adapter(adapters[0])
    else:  # several active adapters: only the tuner model accepts a list
        peft_model.base_model.set_adapter(adapters)


def save_score_head(
    path: str | os.PathLike[str], score_head: torch.nn.Module, *, semantics: str | None = None
) -> None:
    """Write a score head (``weight`` (H, D), optional ``bias`` (H,)) and its semantics to safetensors, atomically."""
    from safetensors.torch import save_file

    tensors = {"weight": score_head.weight.detach().cpu().contiguous()}  # type: ignore[union-attr]
    if getattr(score_head, "bias", None) is not None:
        tensors["bias"] = score_head.bias.detach().cpu().contiguous()  # type: ignore[union-attr]
    meta = {"rewardlab": json.dumps({"semantics": semantics, "num_heads": int(tensors["weight"].shape[0])})}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=meta)


def load_score_head(path: str | os.PathLike[str]) -> tuple[torch.nn.Linear, str | None]:
    """Read a score head from a `save_score_head` file or from a PEFT adapter file holding ``…score.weight``.

    Returns:
        ``(Linear(D, H), semantics or None)``.
    """
    from safetensors import safe_open

    p = Path(path)
    if p.suffix != ".safetensors" or not p.is_file():
        raise RewardlabError(f"score head {str(path)!r} is not a .safetensors file; write one with save_score_head")
    with safe_open(os.fspath(p), framework="pt") as fh:
        keys = list(fh.keys())
        meta = fh.metadata() or {}
        if "weight" in keys:
            weight = fh.get_tensor("weight")
            bias = fh.get_tensor("bias") if "bias" in keys else None
        else:
            found = {m.group(1): k for k in keys if (m := _SCORE_KEY.search(k))}
            if "weight" not in found:
                raise RewardlabError(
                    f"no score head in {str(path)!r}: expected 'weight' (from save_score_head) or a '…score.weight' "
                    "saved with the adapter (modules_to_save=['score']); pass score_head_path="
                )
            weight = fh.get_tensor(found["weight"])
            bias = fh.get_tensor(found["bias"]) if "bias" in found else None
    if weight.dim() != 2:
        raise RewardlabError(f"score head weight in {str(path)!r} must be (H, D); got {tuple(weight.shape)}")
    head = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    with torch.no_grad():
        head.weight.copy_(weight)
        if bias is not None:
            head.bias.copy_(bias)
    semantics = json.loads(meta["rewardlab"]).get("semantics") if "rewardlab" in meta else None
    return head, semantics
