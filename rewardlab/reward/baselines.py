"""Per-prompt reference rewards r_ref(x): the raw reward-model outputs of K reference-policy samples.

Centred transforms (``center``, ``lsc``, ``par``, and a not-yet-fitted ``standardize``) compare
each reward with the rewards of reference responses *to the same prompt*, which cancels the
per-prompt constant a Bradley-Terry model cannot identify. The reference policy does not change
during PPO, so these are computed once per prompt and cached.

Example::

    cache = ReferenceRewards()
    cache.add([prompt_key(ids)] * K, ref_logits)      # (K, H) for one prompt
    ref = cache.gather([prompt_key(ids) for ids in batch_prompt_ids])   # (B, K, H)
    pipe(logits, ref=ref)

Imports only torch (and safetensors to save).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import torch

from rewardlab.atomic import atomic_path
from rewardlab.errors import RewardlabError


def reference_baseline(ref: torch.Tensor, q: float | None = None) -> torch.Tensor:
    """Per-row baseline from reference rewards: mean over K (``q=None``) or the q-quantile.

    Quantiles use linear interpolation between order statistics (numpy's default).

    Shapes: ref (B, K) -> (B,)
    """
    if q is None:
        return ref.mean(dim=-1)
    return torch.quantile(ref, q, dim=-1)


def prompt_key(prompt: str | Sequence[int] | torch.Tensor) -> str:
    """A stable key for a prompt, from its text or its token ids (padding must be removed)."""
    if isinstance(prompt, str):
        data = b"t:" + prompt.encode("utf-8")
    else:
        ids = prompt.tolist() if isinstance(prompt, torch.Tensor) else list(prompt)
        data = b"i:" + ",".join(str(int(i)) for i in ids).encode()
    return hashlib.sha1(data).hexdigest()[:20]


def prompt_key_of(prompt: str | Sequence[dict]) -> str:
    """The cache key of a prompt as the data gives it: its text, or its chat messages (role and content),
    so that a chat prompt and the same words as text are different prompts."""
    if isinstance(prompt, str):
        return prompt_key(prompt)
    import json

    return prompt_key(json.dumps(list(prompt), sort_keys=True, ensure_ascii=False))


class ReferenceRewards:
    """Cache of raw reference logits per prompt key: key -> (K, H) float32."""

    def __init__(self) -> None:
        self._store: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, key: str) -> bool:
        return key in self._store

    def missing(self, keys: Sequence[str]) -> list[str]:
        """The distinct keys not cached yet, in first-seen order."""
        return [k for k in dict.fromkeys(keys) if k not in self._store]

    def add(self, keys: Sequence[str], logits: torch.Tensor) -> None:
        """Append reference logits; row i belongs to prompt ``keys[i]``.

        Shapes: logits (N, H), len(keys) == N.
        """
        if logits.dim() != 2 or logits.shape[0] != len(keys):
            raise RewardlabError(f"add: expected logits (N={len(keys)}, H); got {tuple(logits.shape)}")
        if not bool(torch.isfinite(logits).all()):
            raise RewardlabError("add: reference logits contain NaN or inf")
        logits = logits.detach().to("cpu", torch.float32)
        groups: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            groups.setdefault(k, []).append(i)
        for k, rows in groups.items():
            new = logits[rows]
            old = self._store.get(k)
            if old is not None and old.shape[1] != new.shape[1]:
                raise RewardlabError(f"add: prompt {k} has {old.shape[1]}-head references; got {new.shape[1]} heads")
            self._store[k] = new if old is None else torch.cat([old, new])

    def gather(self, keys: Sequence[str], k: int | None = None) -> torch.Tensor:
        """Reference logits for each row's prompt.

        Args:
            keys: one prompt key per row.
            k: use the first k references of each prompt (default: all; prompts must agree).

        Shapes: -> (B, K, H)
        """
        missing = self.missing(keys)
        if missing:
            raise RewardlabError(
                f"no reference rewards for {len(missing)} prompt(s) (e.g. key {missing[0]}); "
                "score reference-policy samples for them first (ReferenceRewards.add)"
            )
        rows = [self._store[key] for key in keys]
        sizes = {r.shape[0] for r in rows}
        if k is None:
            if len(sizes) != 1:
                raise RewardlabError(f"prompts have different numbers of references {sorted(sizes)}; pass k=")
        elif min(sizes) < k:
            raise RewardlabError(f"asked for k={k} references per prompt; some prompts have only {min(sizes)}")
        return torch.stack([r if k is None else r[:k] for r in rows])

    # -- persistence -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self._store)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._store = {k: v.to(torch.float32) for k, v in state.items()}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write to a safetensors file atomically (temp file, then rename)."""
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in self._store.items()}, tmp)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReferenceRewards:
        from safetensors.torch import load_file

        out = cls()
        out.load_state_dict(load_file(os.fspath(path)))
        return out


def group_references(logits: torch.Tensor, group_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Leave-one-out references within groups (GRPO/RLOO-style): each row's references are the
    other rows of its group.

    Shapes: logits (B, H), group_ids (B,) -> (B, G-1, H) with all groups of equal size G ≥ 2.
    """
    gid = torch.as_tensor(group_ids)
    uniq, counts = torch.unique(gid, return_counts=True)
    if counts.min() != counts.max() or int(counts.min()) < 2:
        raise RewardlabError(
            f"group references need groups of equal size ≥ 2; got sizes {sorted(set(counts.tolist()))}"
        )
    out = []
    for i in range(logits.shape[0]):
        same = (gid == gid[i]).nonzero().flatten()
        out.append(logits[same[same != i]])
    return torch.stack(out)
