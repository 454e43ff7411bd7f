"""Config values as users write them: YAML where ``1e-4`` is a number and a syntax error names its
line, and one type check for config dataclass fields (PPO and train-rm alike).

PyYAML implements YAML 1.1, where a float needs a dot (``1.0e-4``), so ``learning_rate: 1e-4``
— the way TRL, transformers and most papers write it — would arrive as the *string* ``'1e-4'``.
`load_yaml` uses a safe loader with YAML 1.2's float rule added (``1e-4``, ``3E+2``, ``.5``
are floats; quoted values stay strings), for config files, ``--set`` values and flags alike.
JSON is YAML, so ``rewardlab ppo --dry-run``'s own output reads back unchanged.

Example::

    load_yaml("learning_rate: 1e-4")          # {'learning_rate': 0.0001}
    load_yaml_file("my.yaml")                 # RewardlabError "my.yaml: line 3, column 7: …" if malformed
"""

from __future__ import annotations

import os
import re
import types
import typing
from typing import Any, Literal

import yaml

from rewardlab.errors import RewardlabError


class _Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` plus YAML 1.2's float syntax (exponent without a dot)."""


# YAML 1.2 core schema floats; YAML 1.1 forms (1.5, 1.0e-4, .inf) keep resolving as before.
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$|^[-+]?\.[0-9_]+$"),
    list("-+0123456789."),
)


def load_yaml(text: str, source: str = "<text>") -> Any:
    """Parse YAML text; a syntax error becomes a `RewardlabError` naming ``source``, line and column."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise RewardlabError(describe_yaml_error(err, source)) from None


def load_yaml_file(path: str | os.PathLike[str], what: str = "config") -> Any:
    """Read a YAML (or JSON) file; missing, unreadable or malformed files raise `RewardlabError`."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise RewardlabError(f"{what} {path!r} is a folder; give the YAML file")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise RewardlabError(f"{what} {path!r}: no such file; check the path (relative paths start at "
                             f"{os.getcwd()})") from None
    except UnicodeDecodeError as err:
        raise RewardlabError(f"{what} {path!r} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise RewardlabError(f"{what} {path!r} cannot be read: {err.strerror}") from None
    return load_yaml(text, source=path)


def load_yaml_mapping(path: str | os.PathLike[str] | None, mapping_of: str) -> dict[str, Any]:
    """A config file's top-level mapping (``{}`` without a file); anything else is refused, naming what it must map."""
    if path is None:
        return {}
    data = load_yaml_file(path, "--config") or {}
    if not isinstance(data, dict):
        raise RewardlabError(f"{path}: the config must be a mapping of {mapping_of}, got {type(data).__name__}")
    return data


def describe_yaml_error(err: yaml.YAMLError, source: str) -> str:
    """One line: where (line and column, 1-based), what PyYAML found, and what to do."""
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "somewhere"
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    detail = f"{context}, {problem}" if context else problem
    return (f"{source}: {where}: invalid YAML ({detail}); fix the syntax there (common causes: a tab for "
            "indentation, a missing space after ':', an unclosed quote or bracket)")


_EXAMPLE = {float: "1e-4", int: "16", bool: "true", str: "'text'"}


def check_type(name: str, value: Any, hint: Any) -> Any:
    """Return ``value`` if it fits the annotation ``hint``, else raise `RewardlabError` naming ``name``.

    Ints widen to floats; a comma-separated string or a list becomes the declared tuple/list of
    names. Nothing else is converted: a quoted ``"16"`` for an int field is an error that says so.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_type(name, value, arg)
            except RewardlabError as err:
                errors.append(str(err))
        if len(errors) == 1:
            raise RewardlabError(errors[0] + " (or null)")
        raise RewardlabError(f"{name}={value!r} has the wrong type ({hint})")
    if origin is Literal:
        if value in args:
            return value
        raise RewardlabError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, args))}")
    if origin in (tuple, list):
        item = args[0] if args else str
        if item is int:  # token ids: a list of ints, one int, or '1,2' from a flag
            if isinstance(value, int) and not isinstance(value, bool):
                value = [value]
            elif isinstance(value, str):
                try:
                    value = [int(v) for v in value.split(",") if v.strip()]
                except ValueError:
                    raise RewardlabError(f"{name}={value!r}: expected a list of integers, e.g. [1, 2] or '1,2'") from None
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                               for v in value):
                raise RewardlabError(f"{name}={value!r}: expected a list of integers, e.g. [1, 2] or '1,2'")
            return origin(value)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise RewardlabError(f"{name}={value!r}: expected a list of names, e.g. [a, b] or 'a,b'")
        return origin(value)
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    if hint not in _EXAMPLE:  # an annotation this check does not know (dict, a class …): left to its field
        return value
    expected = getattr(hint, "__name__", str(hint))
    fix = f"write e.g. {name.split('.')[-1]}: {_EXAMPLE[hint]}"
    if isinstance(value, str) and hint in (int, float):
        fix = f"write the number without quotes ({fix})"
    elif isinstance(value, float) and hint is int:
        fix = f"give a whole number ({fix})"
    raise RewardlabError(f"{name}={value!r} has the wrong type: expected {expected}, got {type(value).__name__}; {fix}")
