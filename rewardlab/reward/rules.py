"""Rule functions as reward terms: TRL's ``reward_funcs`` signature, checked once, called per batch.

A rule function takes ``prompts``, ``completions``, ``completion_ids`` and every dataset column by
name (TRL's form), or the older rewardlab form ``f(prompts, responses[, finished])`` with decoded
texts, and returns one number per completion, or None where it does not apply.

Example::

    rule = resolve_function("my_rules:correct", {})       # imported; its signature checked
    rule.check_columns(["prompt", "answer"])              # the columns it needs, before any model loads
    values = rule(samples)                                 # (B, 1) float32, NaN where it returned None
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import inspect
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rewardlab.errors import RewardlabError
from rewardlab.reward.pipeline import term_names
from rewardlab.reward.samples import Samples

__all__ = ["RuleFunction", "function_name", "named_functions", "resolve_function"]

# What a TRL-style rule function is called with besides dataset columns.
_TRL_ARGS = ("prompts", "completions", "completion_ids")


@dataclass(frozen=True)
class RuleFunction:
    """A rule function and how to call it.

    Attributes:
        ref: how the spec names it (``fn:<ref>``): a name given in Python or ``module:function``.
        fn: the callable (sync or async).
        style: ``"trl"`` (keywords: prompts, completions, completion_ids, columns) or ``"texts"``
            (positional decoded prompt and response texts, the older rewardlab form).
        params: the keyword names it accepts (None: any, it has ``**kwargs``).
        required: parameters without a default that must come from dataset columns.
    """

    ref: str
    fn: Callable
    style: str
    params: frozenset[str] | None
    required: tuple[str, ...]

    @classmethod
    def of(cls, ref: str, fn: Any) -> RuleFunction:
        """Inspect ``fn``'s signature once (the checks name the term ``fn:<ref>``)."""
        label = f"rule term fn:{ref}"
        if not callable(fn):
            raise RewardlabError(f"{label} is {type(fn).__name__}, not a function; give fn(prompts, completions, **columns)")
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):  # a builtin: called positionally with the texts
            return cls(ref, fn, "texts", None, ())
        ps = sig.parameters
        var_kw = any(p.kind is p.VAR_KEYWORD for p in ps.values())
        if "completions" in ps or var_kw:
            positional_only = [n for n, p in ps.items() if p.kind is p.POSITIONAL_ONLY and p.default is p.empty]
            if positional_only:
                raise RewardlabError(f"{label}{sig}: positional-only parameters {positional_only} cannot be passed; "
                                     "TRL-style reward functions are called with keywords")
            required = tuple(n for n, p in ps.items() if p.default is p.empty and n not in _TRL_ARGS
                             and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
            names = None if var_kw else frozenset(n for n, p in ps.items() if p.kind is not p.VAR_POSITIONAL)
            return cls(ref, fn, "trl", names, required)
        try:
            sig.bind(["p"], ["r"], **({"finished": [True]} if "finished" in ps else {}))
        except TypeError as err:
            raise RewardlabError(
                f"{label}{sig} cannot be called as fn(prompts, completions, **columns) nor fn(prompts, responses) "
                f"({err}); a rule function takes the prompts and the completions (TRL's reward_funcs form) and "
                "returns one score per completion (None where it does not apply)") from None
        return cls(ref, fn, "texts", frozenset(ps), ())

    @property
    def name(self) -> str:
        return term_names([f"fn:{self.ref}"])[0]

    def check_columns(self, columns: Sequence[str]) -> None:
        """Refuse a function that needs a column the data lacks (before any model loads)."""
        missing = [c for c in self.required if c not in columns]
        if missing:
            raise RewardlabError(
                f"rule term fn:{self.ref} needs the dataset column(s) {missing}, which the data lacks (columns: "
                f"{sorted(columns)}); add the column, rename the function's parameter to the column's name, or give "
                "it a default")

    def __call__(self, samples: Samples) -> Tensor:
        """One (B,) or (B, H) float32 tensor, NaN where the function returned None."""
        kwargs: dict[str, Any]
        if self.style == "texts":
            prompts, responses = samples.texts()
            args: tuple = (prompts, responses)
            kwargs = {"finished": _bools(samples.finished)} if self.params and "finished" in self.params else {}
        else:
            args, kwargs = (), self._trl_kwargs(samples)
        try:
            out = self.fn(*args, **kwargs)
            if inspect.isawaitable(out):
                out = asyncio.run(_await(out))
        except KeyError as err:
            key = err.args[0] if err.args else None
            if isinstance(key, str) and key not in samples.columns and key not in kwargs:
                raise RewardlabError(
                    f"rule term fn:{self.ref} read the column {key!r}, which the data lacks (columns: "
                    f"{sorted(samples.columns)}); add it to the dataset or read another") from None
            raise
        return self._as_tensor(out, len(samples.prompts))

    def _trl_kwargs(self, samples: Samples) -> dict[str, Any]:
        responses = samples.response_list()
        completions = [[{"role": "assistant", "content": r}] if samples.chat and isinstance(r, str) else r
                       for r in responses]
        t = samples.tokens
        ids = None if t is None else [row[m.bool()].tolist() for row, m in zip(t.response_ids, t.response_mask)]
        kwargs = {"prompts": list(samples.prompts), "completions": completions, "completion_ids": ids,
                  **{k: list(v) for k, v in samples.columns.items()}}
        if self.params is not None and "finished" in self.params and samples.finished is not None:
            kwargs["finished"] = _bools(samples.finished)
        return kwargs if self.params is None else {k: v for k, v in kwargs.items() if k in self.params}

    def _as_tensor(self, out: Any, b: int) -> Tensor:
        label = f"rule term fn:{self.ref}"
        if isinstance(out, Tensor) or hasattr(out, "__array__"):
            try:
                scores = torch.as_tensor(out, dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError):
                raise RewardlabError(f"{label} returned {type(out).__name__} that is not numbers") from None
            none = torch.zeros(scores.shape[:1], dtype=torch.bool)
        elif isinstance(out, (list, tuple)):
            none = torch.tensor([v is None for v in out], dtype=torch.bool)
            first = next((v for v in out if v is not None), 0.0)
            width = len(first) if isinstance(first, (list, tuple)) else None
            fill = math.nan if width is None else [math.nan] * width
            try:
                scores = torch.tensor([fill if v is None else v for v in out], dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError):
                bad = next((v for v in out if not isinstance(v, (int, float)) and v is not None), None)
                raise RewardlabError(
                    f"{label} returned a {type(bad).__name__} ({bad!r:.60}) among its scores; return one number per "
                    "completion, or None where the function does not apply") from None
        else:
            raise RewardlabError(f"{label} returned {type(out).__name__}, not a list of scores; return one number "
                                 "per completion (a list or a 1-D tensor), None where it does not apply")
        if scores.dim() not in (1, 2) or scores.shape[0] != b or scores.numel() == 0:
            raise RewardlabError(
                f"{label} returned shape {tuple(scores.shape)} for {b} completions; return one score per completion "
                "(a list or a (B,) tensor), or H scores per completion as a (B, H) tensor")
        scores = scores.view(b, -1)
        bad = (~torch.isfinite(scores).all(-1) & ~none).nonzero().flatten().tolist()
        if bad:
            shown = ", ".join(map(str, bad[:10])) + (" …" if len(bad) > 10 else "")
            raise RewardlabError(
                f"{label} returned NaN or inf for {len(bad)} of {b} completions (rows {shown}); return a finite score, "
                "or None where the function does not apply")
        return scores


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _bools(x: Sequence[bool] | Tensor | None) -> list[bool] | None:
    return None if x is None else [bool(v) for v in (x.tolist() if isinstance(x, Tensor) else x)]


def resolve_function(ref: str, functions: Mapping[str, Callable]) -> RuleFunction:
    """``fn:<ref>``: a function given in Python under that name, ``package.module:function`` (imported), or
    ``path/to/file.py:function`` (loaded from that file, relative to the working directory, as veRL's
    ``custom_reward_function.path`` is)."""
    if ref in functions:
        return RuleFunction.of(ref, functions[ref])
    if ":" not in ref:
        given = f" (given: {sorted(functions)})" if functions else ""
        raise RewardlabError(
            f"rule term fn:{ref}: no function named {ref!r} was given{given}; pass it in Python "
            f"(reward_funcs={{'{ref}': fn}}) or name it by import path, fn:package.module:function, or by file, "
            "fn:path/to/rules.py:function")
    module, _, name = ref.rpartition(":")
    try:
        mod = load_module_file(module, f"rule term fn:{ref}") if module.endswith(".py") else importlib.import_module(module)
        fn = getattr(mod, name)
    except ImportError as err:
        hint = f" (a file here? write fn:./{module}.py:{name})" if os.path.isfile(f"{module}.py") else ""
        raise RewardlabError(f"rule term fn:{ref}: cannot import module {module!r} ({err}); check the module path "
                             f"and that it is importable from here (e.g. on PYTHONPATH){hint}") from None
    except AttributeError:
        raise RewardlabError(f"rule term fn:{ref}: module {module!r} has no attribute {name!r}") from None
    return RuleFunction.of(ref, fn)


def load_module_file(path: str, what: str) -> Any:
    """The module of a Python file, loaded once per process; ``what`` names it in the error (``rule term fn:…``)."""
    if not os.path.isfile(path):
        raise RewardlabError(f"{what}: no file {path!r} (from {os.getcwd()}); give the path to a .py file")
    name = "rewardlab_rules_" + hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def named_functions(functions: Mapping[str, Callable] | Sequence[Callable] | None) -> dict[str, Callable]:
    """Rule functions by the name a spec reads them with (``fn:NAME``): a dict as given, a list by ``__name__``."""
    if functions is None:
        return {}
    if isinstance(functions, Mapping):
        return dict(functions)
    return {function_name(f): f for f in functions}


def function_name(fn: Callable) -> str:
    """The name a callable is read by (``fn:NAME``): its ``__name__``, or ``reward_fn`` for a lambda."""
    name = getattr(fn, "__name__", "")
    return name if name.isidentifier() else "reward_fn"
