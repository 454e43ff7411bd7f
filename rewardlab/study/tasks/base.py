"""The task protocol of the study: what a synthetic RLHF task must provide, and how one is loaded.

A task defines a world with a *known* gold reward, so that a proxy reward model trained on
preferences sampled from the gold can be checked against it. Load a custom one with
``rewardlab study --task my_module:MyTask`` (module on PYTHONPATH or under the current folder) or
``--task path/to/my_task.py:MyTask`` (a file); the object is an instance, a class or a
zero-argument factory.

What the study does with a task's text, so that a task needs no knowledge of it:

- **Lengths.** ``max_prompt_tokens`` and ``max_response_tokens`` size every model: the SFT
  policy, the critic and the proxies get ``max_prompt_tokens + max_response_tokens + 1``
  positions (the 1 is EOS). A prompt or demonstration longer than declared, or a tokenizer whose
  ``model_max_length`` is shorter than that, is refused with a `RewardlabError` before training.
- **Padding.** The study pads prompts on the *left* itself for every generation (SFT samples,
  preferences, evaluation, PPO), and right-pads training sequences itself, so the tokenizer's own
  ``padding_side`` does not matter; the saved tokenizer is set to ``"left"``.
- **Special tokens.** Prompt text is encoded with ``add_special_tokens=True`` (the tokenizer's own
  BOS, if any, as PPO does); responses without, then EOS. Responses are decoded for the gold, in
  labelling and in evaluation alike, with ``skip_special_tokens=True`` and cut at the first EOS;
  ``finished`` tells the gold whether EOS was emitted.
- **Identity.** A task's cache identity is its ``describe()`` plus the sha256 of the source file
  that defines its class: editing a task recomputes every stage that depends on it. PPO workers
  receive the task object itself (pickled), so its parameters are the ones the caller set.

Example::

    task = load_task("rewardlab.study.tasks.digits:DigitSumTask")
    tok = task.build_tokenizer()
    prompts = task.sample_prompts(8, rng)
    demos = task.demonstrations(prompts, rng)
    gold = task.gold(prompts, demos, finished=[True] * 8)
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import pickle
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rewardlab.errors import RewardlabError


@runtime_checkable
class Task(Protocol):
    """A synthetic task for the study.

    Attributes:
        name: short identifier, used in cache keys and reports.
        max_prompt_tokens: the longest prompt in tokens (with the tokenizer's special tokens).
        max_response_tokens: the response length PPO generates up to (EOS not counted).
    """

    name: str
    max_prompt_tokens: int
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

        Responses are decoded text without special tokens (see the module docstring).
        Returns: (B,) float64.
        """
        ...

    def describe(self) -> dict[str, Any]:
        """Parameters that define the task (hashed into cache keys, printed in the report)."""
        ...


PROTOCOL = ("name", "max_prompt_tokens", "max_response_tokens", "build_tokenizer", "sample_prompts", "demonstrations",
            "gold", "describe")


def _import_task_module(module_ref: str) -> Any:
    """The module of a task reference: a ``.py`` file path, or a module name (the current folder searched too)."""
    if module_ref.endswith(".py") or os.sep in module_ref or "/" in module_ref:
        path = os.path.abspath(module_ref)
        if not os.path.isfile(path):
            raise RewardlabError(f"task file {module_ref!r} does not exist (resolved to {path}); give an existing .py file")
        # One module name per file *and content*, registered in sys.modules so that pickled instances
        # resolve; an edited file is a new module, so this process never runs a stale copy.
        with open(path, "rb") as f:
            digest = hashlib.sha256(path.encode() + b"\0" + f.read()).hexdigest()[:16]
        name = "_rewardlab_task_" + digest
        if name in sys.modules:
            return sys.modules[name]
        folder = os.path.dirname(path)
        if folder not in sys.path:
            sys.path.append(folder)  # the task file may import its neighbours
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise RewardlabError(f"cannot load task file {module_ref!r} as a Python module; give a .py file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            del sys.modules[name]
            raise RewardlabError(f"task file {module_ref!r} failed to import: {type(err).__name__}: {err}") from None
        return module
    try:
        return importlib.import_module(module_ref)
    except ModuleNotFoundError as err:
        if os.getcwd() not in sys.path and err.name == module_ref.split(".")[0]:
            sys.path.append(os.getcwd())
            try:
                return importlib.import_module(module_ref)
            except ImportError:
                pass
        raise RewardlabError(
            f"cannot import task module {module_ref!r}: {err}; put it on PYTHONPATH, run from its folder, "
            "or pass the file: --task path/to/file.py:Class") from None
    except ImportError as err:
        raise RewardlabError(f"cannot import task module {module_ref!r}: {err}") from None


def load_task(ref: str | Task) -> Task:
    """Load a task from ``"module:object"`` or ``"path/to/file.py:object"`` (an instance, a class or a factory)."""
    if not isinstance(ref, str):
        obj: Any = ref
    else:
        module_ref, sep, attr = ref.rpartition(":")
        if not sep or not module_ref or not attr:
            raise RewardlabError(f"--task must look like 'module:object' or 'path/to/file.py:object'; got {ref!r}")
        module = _import_task_module(module_ref)
        if not hasattr(module, attr):
            raise RewardlabError(f"module {module_ref!r} has no attribute {attr!r}; name a class, instance or factory in it")
        obj = getattr(module, attr)
    if isinstance(obj, type) or (callable(obj) and not isinstance(obj, Task)):
        obj = obj()
    missing = [m for m in PROTOCOL if not hasattr(obj, m)]
    if missing:
        raise RewardlabError(f"task {ref!r} does not follow the Task protocol: missing {missing} (see rewardlab.study.tasks.base.Task)")
    return obj


def task_reference(task: Task) -> str:
    """``module:Class`` of a task object (a file-loaded class keeps its file path)."""
    cls = type(task)
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    if cls.__module__.startswith("_rewardlab_task_") and path:
        return f"{path}:{cls.__qualname__}"
    return f"{cls.__module__}:{cls.__qualname__}"


def task_identity(task: Task) -> dict[str, Any]:
    """What a task's cached stages depend on: its class, its parameters and its source code.

    The source hash covers the file defining the task's class and the files of its base classes
    outside the standard library, so editing a gold function changes the identity.
    """
    files = []
    for cls in type(task).__mro__:
        try:
            path = inspect.getsourcefile(cls)
        except TypeError:  # builtins
            continue
        stdlib = (sys.base_prefix + os.sep + "lib", sys.prefix + os.sep + "lib")
        if path and os.path.isfile(path) and path not in files and "site-packages" not in path and not path.startswith(stdlib):
            files.append(path)
    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            h.update(f.read())
    return {"class": task_reference(task), "params": task.describe(), "source_sha256": h.hexdigest()}


@dataclass(frozen=True)
class TaskHandle:
    """A task object carried to a worker process: where its class lives and the pickled object.

    ``load()`` imports the class's module first (a task file is loaded by path), then unpickles,
    so the worker's task has exactly the caller's parameters.
    """

    ref: str
    blob: bytes

    @classmethod
    def of(cls, task: Task) -> TaskHandle:
        try:
            blob = pickle.dumps(task)
        except Exception as err:
            raise RewardlabError(
                f"task {task_reference(task)} cannot be pickled for the PPO workers ({type(err).__name__}: {err}); "
                "keep unpicklable state (loaded models, open files) out of the task object") from None
        return cls(ref=task_reference(task), blob=blob)

    def load(self) -> Task:
        _import_task_module(self.ref.rpartition(":")[0])
        return pickle.loads(self.blob)


def model_positions(task: Task) -> int:
    """Positions every study model gets: the longest prompt, the longest response and EOS."""
    return int(task.max_prompt_tokens) + int(task.max_response_tokens) + 1


def check_lengths(task: Task, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str] = ()) -> None:
    """Refuse prompts (or demonstration responses) longer than the task declares, or a too-short tokenizer.

    Raises `RewardlabError` naming the longest offender, its length and the fix.
    """
    for field in ("max_prompt_tokens", "max_response_tokens"):
        value = getattr(task, field)
        if not isinstance(value, int) or value < 1:
            raise RewardlabError(f"task {task.name!r}: {field}={value!r}; declare a positive integer")
    need = model_positions(task)
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < need:
        raise RewardlabError(
            f"task {task.name!r}: max_prompt_tokens + max_response_tokens + 1 = {need} exceeds the tokenizer's "
            f"model_max_length={limit}; raise model_max_length or declare shorter lengths")
    for texts, what, field, special, fix in ((prompts, "prompt", "max_prompt_tokens", True, "sample shorter prompts"),
                                             (responses, "demonstration", "max_response_tokens", False,
                                              "shorten demonstrations")):
        if not texts:
            continue
        lengths = [len(tokenizer(t, add_special_tokens=special)["input_ids"]) for t in texts]
        i, limit = int(np.argmax(lengths)), getattr(task, field)
        if lengths[i] > limit:
            raise RewardlabError(f"task {task.name!r}: {what} {texts[i]!r} has {lengths[i]} tokens > {field}={limit}; "
                                 f"declare {field} ≥ {lengths[i]} or {fix}")
        if what == "prompt" and min(lengths) == 0:
            raise RewardlabError(f"task {task.name!r}: a prompt tokenises to zero tokens; every prompt needs at least one")
