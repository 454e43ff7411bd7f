"""The task protocol of the study: what a synthetic RLHF task must provide, and how one is loaded.

A task defines a world with a *known* gold reward, so that a proxy reward model trained on
preferences sampled from the gold can be checked against it. Load a custom one with
``rewardlab study --task my_module:MyTask`` (an object or a zero-argument factory).

Example::

    task = load_task("rewardlab.study.tasks.digits:DigitSumTask")
    tok = task.build_tokenizer()
    prompts = task.sample_prompts(8, rng)
    demos = task.demonstrations(prompts, rng)
    gold = task.gold(prompts, demos, finished=[True] * 8)
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rewardlab.errors import RewardlabError


@runtime_checkable
class Task(Protocol):
    """A synthetic task for the study.

    Attributes:
        name: short identifier, used in cache keys and reports.
        max_response_tokens: the response length PPO generates up to.
    """

    name: str
    max_response_tokens: int

    def build_tokenizer(self) -> Any:
        """A local `PreTrainedTokenizerFast` covering prompts and responses (EOS = end of response)."""
        ...

    def sample_prompts(self, n: int, rng: np.random.Generator) -> list[str]:
        """`n` prompt texts drawn from the task's prompt distribution."""
        ...

    def demonstrations(self, prompts: Sequence[str], rng: np.random.Generator) -> list[str]:
        """One demonstration response text per prompt (the SFT data; without EOS)."""
        ...

    def gold(self, prompts: Sequence[str], responses: Sequence[str], finished: Sequence[bool]) -> np.ndarray:
        """Gold reward per (prompt, response); `finished` says whether the response ended with EOS.

        Returns: (B,) float64.
        """
        ...

    def describe(self) -> dict[str, Any]:
        """Parameters that define the task (hashed into cache keys, printed in the report)."""
        ...


def load_task(ref: str | Task) -> Task:
    """Load a task from ``"module:object"`` (an instance, a class or a zero-argument factory)."""
    if not isinstance(ref, str):
        obj: Any = ref
    else:
        module_name, sep, attr = ref.partition(":")
        if not sep or not module_name or not attr:
            raise RewardlabError(f"--task must look like 'module:object'; got {ref!r}")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise RewardlabError(f"cannot import task module {module_name!r}: {err}") from None
        if not hasattr(module, attr):
            raise RewardlabError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(module, attr)
    if isinstance(obj, type) or (callable(obj) and not isinstance(obj, Task)):
        obj = obj()
    missing = [m for m in ("name", "max_response_tokens", "build_tokenizer", "sample_prompts", "demonstrations", "gold", "describe") if not hasattr(obj, m)]
    if missing:
        raise RewardlabError(f"task {ref!r} does not follow the Task protocol: missing {missing} (see rewardlab.study.tasks.base.Task)")
    return obj
