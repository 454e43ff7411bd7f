"""The CLI's error boundary: which exceptions are the user's input or environment, and what to say.

`explain` maps an exception to ``(exit code, one-line message)``, or None for an unknown one (a
bug: the CLI lets its traceback through). The message names the problem, the value (the file,
folder or field) and the fix. Exit codes:

- 2 — bad input: rewardlab's own `RewardlabError`, a missing file, malformed YAML/JSON, a
  corrupt model file, a folder that cannot be written (read-only, permission), a name that would
  need the network;
- 1 — a run that could not go on: `RunFailure`, no space left on device, a corrupt checkpoint
  (resume from the previous one), out of memory;
- 130 — interrupted (Ctrl-C, SIGTERM).

Libraries raise these without saying which file they were reading, so the file is taken from the
exception (``OSError.filename``) or, failing that, from the innermost frame of the traceback that
holds a path to an existing file (the one being read) or folder (the one being written).

Example::

    code, message = explain(err)      # (1, "no space left on device writing to runs/x: …")
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable, Iterator

from rewardlab.errors import RewardlabError, RunFailure, RunInterrupted

DEBUG_HINT = "--debug shows the traceback"
_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
# torch.load's messages for a truncated or damaged zip/pickle checkpoint (it raises plain RuntimeErrors)
_CORRUPT_RUNTIME = re.compile(r"PytorchStreamReader|central directory|file not found in archive|Ran out of input")


def explain(err: BaseException) -> tuple[int, str] | None:
    """(exit code, message) for a known failure class, else None (see the module docstring)."""
    if isinstance(err, (RunInterrupted, KeyboardInterrupt)):
        return RunInterrupted.exit_code, str(err) or "interrupted"
    if isinstance(err, RunFailure):
        return 1, str(err)
    if isinstance(err, RewardlabError):
        return 2, str(err)
    for handler in (_yaml, _json, _network, _no_space, _corrupt, _disk, _missing_package, _out_of_memory):
        found = handler(err)
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------------------------------
# Which file: from the exception, else from the traceback's local variables
# --------------------------------------------------------------------------------------------
def _paths_in_traceback(err: BaseException) -> Iterator[str]:
    """Every str/PathLike local of every frame (and the name of every open file), innermost frame first."""
    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in list(frame.f_locals.values()):
            if hasattr(value, "read") and isinstance(getattr(value, "name", None), str):
                value = value.name  # an open file object: its path
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
            if isinstance(value, str) and 0 < len(value) < 4096 and "\n" not in value:
                yield value


def _find(err: BaseException, ok: Callable[[str], bool]) -> str | None:
    for path in _paths_in_traceback(err):
        try:
            if ok(path):
                return path
        except (OSError, ValueError):
            continue
    return None


def _in_checkpoint(path: str) -> bool:
    return "checkpoint" in os.path.abspath(path).lower()


def _checkpoint_fix(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    return (f"the checkpoint in {folder} is damaged (an interrupted write or a bad copy); delete that checkpoint "
            "folder and resume from the previous one (`--resume` takes the newest remaining checkpoint)")


# --------------------------------------------------------------------------------------------
# The failure classes
# --------------------------------------------------------------------------------------------
def _yaml(err: BaseException) -> tuple[int, str] | None:
    try:
        import yaml
    except ImportError:  # pragma: no cover - yaml is a dependency
        return None
    if not isinstance(err, yaml.YAMLError):
        return None
    from rewardlab.yamlconf import describe_yaml_error

    mark = getattr(err, "problem_mark", None)
    source = getattr(mark, "name", None) or _find(err, lambda p: os.path.isfile(p) and p.endswith((".yaml", ".yml")))
    return 2, describe_yaml_error(err, source or "a YAML file")


def _json(err: BaseException) -> tuple[int, str] | None:
    if not isinstance(err, json.JSONDecodeError):
        return None
    path = _find(err, lambda p: os.path.isfile(p) and p.endswith((".json", ".jsonl")))
    where = f"line {err.lineno}, column {err.colno}"
    if path is not None and _in_checkpoint(path):
        return 1, f"{path}: {where}: invalid JSON ({err.msg}): {_checkpoint_fix(path)}"
    name = path or "a JSON file"
    return 2, (f"{name}: {where}: invalid JSON ({err.msg}); fix the file there, or restore or re-create it "
               "if it was truncated")


def _network(err: BaseException) -> tuple[int, str] | None:
    names = {c.__name__ for c in type(err).__mro__}
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    if "HFValidationError" in names:  # transformers tried a missing local path as a hub name
        return 2, (f"a path is neither a local folder nor a valid Hugging Face Hub name ({first}); give the path "
                   "of a local folder")
    if names & {"RepositoryNotFoundError", "GatedRepoError"}:
        return 2, (f"the Hugging Face Hub has no repository you can read under that name ({type(err).__name__}: "
                   f"{first}); check the name after hub:, or log in (HF_TOKEN) for a gated or private model")
    network = {"ConnectionError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "Timeout", "ReadTimeout",
               "ConnectTimeout", "MaxRetryError", "NameResolutionError", "gaierror"}
    if not names & network:
        return None
    return 2, (f"a name was looked up on the Hugging Face Hub and that failed ({type(err).__name__}: {first}): "
               "no network, or offline mode (HF_HUB_OFFLINE=1). rewardlab downloads only names written hub:NAME; "
               "give a local folder or file instead (e.g. `huggingface-cli download NAME --local-dir DIR` on a "
               "machine with network, then pass DIR)")


def _corrupt(err: BaseException) -> tuple[int, str] | None:
    import pickle
    import zipfile

    names = {c.__name__ for c in type(err).__mro__}
    corrupt = isinstance(err, (zipfile.BadZipFile, pickle.UnpicklingError, EOFError)) or "SafetensorError" in names
    if not corrupt and not (isinstance(err, RuntimeError) and _CORRUPT_RUNTIME.search(str(err))):
        return None
    path = _find(err, lambda p: os.path.isfile(p) and p.endswith(_WEIGHT_SUFFIXES))
    detail = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
    if path is None:
        return 2, (f"a weights file is truncated or corrupt ({type(err).__name__}: {detail}); re-copy or re-save "
                   f"it ({DEBUG_HINT}, which names the file)")
    if _in_checkpoint(path):
        return 1, f"{path} is truncated or corrupt ({detail}): {_checkpoint_fix(path)}"
    return 2, (f"{path} is truncated or corrupt ({detail}); re-copy the model folder, or re-save it with "
               "`model.save_pretrained(folder)`")


def _folder_of(err: BaseException, path: str | None) -> str:
    """The folder being written: that of ``path``, else of the innermost path in the traceback."""
    if path is None:
        path = _find(err, lambda p: os.sep in p and os.path.isdir(os.path.dirname(os.path.abspath(p))))
    if path is None:
        return "the output folder"
    path = os.path.abspath(path)
    return path if os.path.isdir(path) else os.path.dirname(path)


def _no_space(err: BaseException) -> tuple[int, str] | None:
    """ENOSPC, also when a library reports it in its own exception type (safetensors: "os error 28")."""
    text = str(err)
    if not ((isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left on device" in text
            or "os error 28" in text):
        return None
    filename = getattr(err, "filename", None)
    return 1, (f"no space left on device writing to {_folder_of(err, filename if isinstance(filename, str) else None)}; "
               "free space there (old checkpoints, runs) or set the output folder on another disk, then resume")


def _disk(err: BaseException) -> tuple[int, str] | None:
    if not isinstance(err, OSError):
        return None
    if err.errno is None:  # transformers' own OSErrors: a folder without a file it needs
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        return 2, (f"{first} (a model folder needs config.json, *.safetensors weights and the tokenizer files, "
                   "as `save_pretrained` writes them)")
    filename = err.filename if isinstance(err.filename, str) else None

    def folder_of(path: str | None) -> str:
        return _folder_of(err, path)

    if err.errno == errno.EDQUOT:
        return 1, f"disk quota exceeded writing to {folder_of(filename)}; free space or write elsewhere"
    if err.errno == errno.EROFS:
        target = f"cannot write {filename}: " if filename else ""
        return 2, f"{target}{folder_of(filename)} is on a read-only file system; choose a writable output folder"
    if err.errno in (errno.EACCES, errno.EPERM):
        return 2, (f"permission denied: {filename or folder_of(None)}; choose a folder you can write to (or read, "
                   "for inputs), or fix its permissions")
    if err.errno == errno.ENOENT:
        where = filename or "a file"
        return 2, f"{where}: no such file or folder; check the path (relative paths start at {os.getcwd()})"
    if err.errno == errno.ENOTDIR:
        return 2, f"{filename or 'a path'}: a part of this path is a file, not a folder; choose another path"
    if err.errno == errno.EISDIR:
        return 2, f"{filename or 'a path'} is a folder where a file was expected; give the file's path"
    if err.errno == errno.EEXIST:
        what = "a file" if filename and os.path.isfile(filename) else "something"
        return 2, f"{filename or 'a path'} already exists as {what} where a folder is needed; choose another path"
    return None


def _missing_package(err: BaseException) -> tuple[int, str] | None:
    if not isinstance(err, ModuleNotFoundError) or not err.name or err.name.startswith("rewardlab"):
        return None
    package = err.name.split(".")[0]
    return 2, f"this needs the Python package {package!r}, which is not installed; pip install {package}"


def _out_of_memory(err: BaseException) -> tuple[int, str] | None:
    if not (isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"):
        return None
    return 1, ("out of memory; lower the micro-batch sizes (per_device_train_batch_size, "
               "local_rollout_forward_batch_size, score_batch_size) or response_length, then resume")
