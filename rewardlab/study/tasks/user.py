"""A user's own setting as a study task: their policy, their prompts, and optionally a gold function.

Used by ``rewardlab study --policy PATH --reward-model PATH --prompts FILE [--gold module:function]``.
Without a gold function the gold reward is unknown (NaN) and the study reports proxy reward, KL
and diagnostics per strategy.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rewardlab.errors import RewardlabError


def load_prompts(path: str, column: str = "prompt") -> list[str]:
    """Text prompts from a .txt (one per line), .jsonl/.json, .csv or .parquet file (`column`)."""
    import os

    if not os.path.isfile(path):
        raise RewardlabError(f"prompts file {path!r} does not exist")
    if path.endswith(".txt"):
        with open(path, encoding="utf-8") as f:
            prompts = [line.rstrip("\n") for line in f if line.strip()]
    else:
        from rewardlab.ppo.config import DataConfig
        from rewardlab.ppo.prompts import load_prompts as load_ppo_prompts

        if os.path.splitext(path)[1] not in (".jsonl", ".json", ".csv", ".parquet"):
            raise RewardlabError(f"prompts file {path!r}: use .txt, .jsonl, .json, .csv or .parquet")
        prompts = [str(p) for p in load_ppo_prompts(DataConfig(dataset=path, prompt_column=column))]
    if not prompts:
        raise RewardlabError(f"prompts file {path!r} is empty")
    return prompts


@dataclass
class UserTask:
    """The `Task` protocol over a user's policy folder, prompts file and optional gold function."""

    policy: str = ""
    prompts_file: str = ""
    gold_ref: str | None = None
    max_response_tokens: int = 64
    name: str = "user"
    _prompts: list[str] = field(default_factory=list, repr=False, compare=False)

    def build_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.policy)

    def prompts(self) -> list[str]:
        if not self._prompts:
            self._prompts = load_prompts(self.prompts_file)
        return self._prompts

    def sample_prompts(self, n: int, rng: np.random.Generator) -> list[str]:
        pool = self.prompts()
        return [pool[i] for i in rng.integers(0, len(pool), size=n)]

    def demonstrations(self, prompts: Sequence[str], rng: np.random.Generator) -> list[str]:
        raise RewardlabError("a user task has no demonstrations: the study uses the given policy as the SFT policy")

    def gold(self, prompts: Sequence[str], responses: Sequence[str], finished: Sequence[bool]) -> np.ndarray:
        if self.gold_ref is None:
            return np.full(len(prompts), np.nan)
        module, _, attr = self.gold_ref.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise RewardlabError(f"cannot load gold function {self.gold_ref!r} (module:function): {err}") from None
        out = np.asarray(fn(list(prompts), list(responses)), dtype=np.float64)
        if out.shape != (len(prompts),):
            raise RewardlabError(f"gold function {self.gold_ref!r} returned shape {out.shape}; expected ({len(prompts)},)")
        return out

    def describe(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        with open(self.prompts_file, "rb") as f:
            d["prompts_sha256"] = hashlib.sha256(f.read()).hexdigest()
        return d
