"""One run per folder: a run's identity, its up-front checks, checkpoint naming, the resume rule.

`rewardlab ppo` and `rewardlab train-rm` both open their output folder here, before any model
loads (see docs/runs.md):

1. **Checks.** ``output_dir`` must not be a file, must be writable, and must not equal, contain or
   lie inside an input folder (policy, reference, critic, reward models, adapters and their bases,
   data files). A folder holding another run's files is refused unless the run is resumed
   (``--resume`` continues *that* run) or replaced (``--overwrite-output-dir``).
2. **Identity.** A run has a run id (``run.json`` at the top of the folder and in every
   checkpoint). Pruning deletes only this run's checkpoints, never a protected one (PPO: the one the
   over-optimisation alarm points back to); resuming reads only this run's. The top ``run.json``
   lists the kept checkpoints (`record_checkpoints`).
3. **The resume rule.** The checkpoint's config is the run's config. The fields a command lists
   as changeable on resume (``total_episodes``, cadences, trackers …) may differ: the new value
   takes effect and the change is recorded in ``run.json``. Any other difference is refused,
   listing the changes and the way out. ``--resume`` with no checkpoint is an error;
   ``--resume=auto`` then starts fresh and says so.
4. **Replacing.** With ``--overwrite-output-dir`` the old contents move to ``.replaced/`` and are
   deleted only once the new run's first checkpoint or final output is complete.
5. **Leftovers.** Temporary folders of killed writes (``.tmp-<pid>-…``, ``.old-<pid>-…`` from
   `rewardlab.atomic`) whose process is gone are removed at start.

Example::

    check_output_dir("runs/ppo", {"models.sft_model_path": "runs/sft"})          # before any model loads
    plan = plan_run("runs/ppo", command="ppo", resume=True, overwrite=False, prefix="update-",
                    state_file="trainer_state.json")
    if plan.saved_config is not None:                                            # raises on forbidden changes
        config, plan.changes = resume_config(plan.saved_config, current_config_dict, PPO_RESUMABLE,
                                             command="ppo", output_dir="runs/ppo")
    plan.start(config)                                                           # main process only
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from rewardlab.atomic import write_text
from rewardlab.errors import RewardlabError

RUN_FILE = "run.json"
REPLACED = ".replaced"
ResumeMode = bool | Literal["auto"]

#: PPO fields that may change on ``--resume`` (everything else must equal the checkpoint's config).
PPO_RESUMABLE = ("run.total_episodes", "run.save_steps", "run.logging_steps", "run.report_to", "run.progress_bar",
                 "run.save_total_limit", "run.sample_steps", "run.num_sample_prompts", "run.eval_steps",
                 "run.project", "run.run_name",
                 "run.save_dtype", "run.merge_adapter",
                 "alarm.early_stop")
#: train-rm fields that may change on ``--resume``.
RM_RESUMABLE = ("max_steps", "num_train_epochs", "logging_steps", "eval_steps", "save_steps", "save_total_limit",
                "report_to", "progress")
#: Fields that describe the invocation rather than the run; never compared.
NOT_COMPARED = ("run.output_dir", "run.overwrite_output_dir", "output_dir", "overwrite_output_dir", "resume")

_LEFTOVER = re.compile(r"^\.(tmp|old)-(\d+)-[0-9a-f]{8}-")


def new_run_id() -> str:
    """``YYYYmmdd-HHMMSS-<6 hex>``: sortable by start time, unique in practice."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


# ---------------------------------------------------------------------------------------------
# Checks that need no model
# ---------------------------------------------------------------------------------------------
def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def _inside(child: str, parent: str) -> bool:
    return os.path.commonpath([child, parent]) == parent


def _adapter_base(path: str) -> str | None:
    """The local base-model folder a PEFT adapter folder names, if any."""
    cfg = os.path.join(path, "adapter_config.json")
    if not os.path.isfile(cfg):
        return None
    try:
        with open(cfg, encoding="utf-8") as fh:
            base = json.load(fh).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None
    return base if isinstance(base, str) and os.path.isdir(base) else None


def check_output_dir(output_dir: str, inputs: Mapping[str, str | None], *, name: str = "output_dir") -> None:
    """Refuse an ``output_dir`` that is a file, is not writable, or overlaps an input folder or file.

    Args:
        output_dir: the folder the run will write (and, with ``--overwrite-output-dir``, empty).
        inputs: ``{config field: path}`` of everything the run reads (None entries are skipped);
            adapter folders add their local base model.
        name: how the config calls ``output_dir`` (for the message).
    """
    out = _real(output_dir)
    if os.path.exists(out) and not os.path.isdir(out):
        raise RewardlabError(f"{name}={output_dir!r} is a file, not a folder; choose a folder path for the run")
    probe = out
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RewardlabError(f"{name}={output_dir!r} is not writable ({probe} does not allow writing); "
                             "choose a folder you can write to")
    named = [(k, v) for k, v in inputs.items() if v]
    for key, path in list(named):
        base = _adapter_base(path)
        if base is not None:
            named.append((f"{key} (its adapter's base model)", base))
    for key, path in named:
        p = _real(path)
        if p == out:
            how = "is"
        elif _inside(out, p):
            how = "lies inside"
        elif _inside(p, out):
            how = "contains"
        else:
            continue
        raise RewardlabError(
            f"{name}={output_dir!r} {how} the input {key}={path!r}; the run would write over what it reads. "
            "Choose an output_dir outside every model folder and data file")


# ---------------------------------------------------------------------------------------------
# Checkpoints of one run
# ---------------------------------------------------------------------------------------------
def read_json(path: str) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when the file is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def checkpoint_info(path: str) -> dict[str, Any]:
    """``run.json`` of a checkpoint folder (run id, step, config); {} for checkpoints older than run ids."""
    return read_json(os.path.join(path, RUN_FILE)) or {}


def write_checkpoint_info(folder: str, run_id: str | None, step: int, config: Mapping[str, Any] | None,
                          summary: Mapping[str, Any] | None = None) -> None:
    """Write a checkpoint's ``run.json`` into ``folder`` (the checkpoint's temporary folder).

    ``summary`` (e.g. PPO's ``{"update": 6, "metrics": {...}, "alarm_score": 0.4}``) is stored beside the
    run id, step and config; `record_checkpoints` copies it into the run's own ``run.json``.
    """
    info = {"run_id": run_id, "step": step, "config": dict(config) if config is not None else None}
    if summary:
        info["summary"] = dict(summary)
    with open(os.path.join(folder, RUN_FILE), "w", encoding="utf-8") as fh:
        json.dump(info, fh, indent=1, default=str)


def list_checkpoints(root: str, prefix: str, state_file: str, run_id: str | None = None) -> list[tuple[int, str]]:
    """(step, path) of the complete checkpoints ``<root>/<prefix><n>``, oldest first.

    With ``run_id``, only that run's (checkpoints written before run ids count as any run's).
    A folder without ``state_file`` is not complete and is skipped.
    """
    if not os.path.isdir(root):
        return []
    pattern = re.compile("^" + re.escape(prefix) + r"(\d+)$")
    found = []
    for name in os.listdir(root):
        m = pattern.match(name)
        path = os.path.join(root, name)
        if not m or not os.path.isfile(os.path.join(path, state_file)):
            continue
        owner = checkpoint_info(path).get("run_id")
        if run_id is None or owner in (None, run_id):
            found.append((int(m.group(1)), path))
    return sorted(found)


def prune_checkpoints(root: str, prefix: str, state_file: str, run_id: str | None, keep: int | None,
                      protect: Collection[str] = ()) -> list[str]:
    """Delete this run's checkpoints but the newest ``keep`` (None: keep all) and those named in ``protect``
    (folder names, e.g. the one PPO's over-optimisation alarm points back to); returns the deleted paths.
    Other runs' checkpoints are never touched."""
    if keep is None:
        return []
    if keep < 1:
        raise RewardlabError(f"save_total_limit={keep} would delete every checkpoint; use ≥ 1, or null to keep all")
    found = list_checkpoints(root, prefix, state_file, run_id)
    doomed = [path for _, path in found[:-keep] if os.path.basename(path) not in protect]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def record_checkpoints(run_dir: str, prefix: str, state_file: str, run_id: str | None, *, unit: str = "step",
                       **fields: Any) -> list[dict[str, Any]]:
    """List this run's kept checkpoints in ``<run_dir>/run.json`` (``checkpoints``), oldest first; returns the list.

    Each entry is ``{"name", <unit>, "path"}`` (``unit``: ``"update"`` for PPO; ``path`` relative to ``run_dir``) plus the ``summary`` the
    checkpoint's own ``run.json`` holds (`write_checkpoint_info`). ``fields`` are set at the top level of
    ``run.json`` as well (PPO: ``alarm_checkpoint``). The list is rebuilt from the folders on disk, so it is
    what is really there; call it after every save and prune (main process). ``run.json`` is rewritten
    atomically; a missing one is created.
    """
    root = os.path.join(run_dir, "checkpoints")
    listed = []
    for step, path in list_checkpoints(root, prefix, state_file, run_id):
        name = os.path.basename(path)
        entry = {"name": name, unit: step, "path": os.path.join("checkpoints", name)}
        entry.update(checkpoint_info(path).get("summary") or {})
        listed.append(entry)
    info = read_json(os.path.join(run_dir, RUN_FILE)) or {"run_id": run_id}
    info.update(fields)
    info["checkpoints"] = listed
    write_text(os.path.join(run_dir, RUN_FILE), json.dumps(info, indent=1, default=str) + "\n")
    return listed


# ---------------------------------------------------------------------------------------------
# Leftovers of killed writes
# ---------------------------------------------------------------------------------------------
def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_leftovers(folder: str, suffix: str = "", *, any_process: bool = False) -> list[str]:
    """Remove ``.tmp-<pid>-…`` / ``.old-<pid>-…`` entries of dead processes in ``folder``; returns them.

    With ``suffix``, only entries whose name ends with it (the siblings of one target); with
    ``any_process``, live processes' too (for a folder no write is in progress in).
    """
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in os.listdir(folder):
        m = _LEFTOVER.match(name)
        if not m or not name.endswith(suffix) or (not any_process and _alive(int(m.group(2)))):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        removed.append(path)
    return removed


def _is_leftover(name: str) -> bool:
    return _LEFTOVER.match(name) is not None


# ---------------------------------------------------------------------------------------------
# The resume rule
# ---------------------------------------------------------------------------------------------
def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{dotted key: value}``, tuples as lists (how it compares and how trackers show it)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (checkpoint value, current value)}`` for every compared field that differs."""
    a, b = flatten(saved), flatten(current)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k not in NOT_COMPARED and a.get(k) != b.get(k)}


def resume_config(saved: Mapping[str, Any], current: Mapping[str, Any], resumable: tuple[str, ...], *,
                  command: str, output_dir: str) -> tuple[dict[str, Any], dict[str, tuple[Any, Any]]]:
    """The resumed run's config: the checkpoint's, with the changes to ``resumable`` fields applied.

    Returns (config dict, applied changes). Raises `RewardlabError` listing every other change.
    """
    changes = config_changes(saved, current)
    refused = {k: v for k, v in changes.items() if k not in resumable}
    if refused:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise RewardlabError(
            f"--resume: the config differs from the checkpoint's in {listed}. A resumed run keeps its config; only "
            f"{', '.join(resumable)} may change (see docs/runs.md). Undo the change to continue the run, or start a "
            f"new run with --overwrite-output-dir (replaces {output_dir}) or another output_dir")
    merged = json.loads(json.dumps(saved, default=str))
    flat_current = flatten(current)
    for key in (*resumable, *NOT_COMPARED):
        if key in flat_current:
            _set(merged, key, flat_current[key])
    return merged, {k: v for k, v in changes.items() if k in resumable}


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        if not isinstance(d.get(p), dict):
            return
        d = d[p]
    d[leaf] = value


# ---------------------------------------------------------------------------------------------
# Opening a run folder
# ---------------------------------------------------------------------------------------------
@dataclass
class RunPlan:
    """What `plan_run` decided about a folder (read-only so far); `start` carries it out.

    Attributes:
        path: the folder the run writes while it runs.
        run_id: this run's id (the folder's own when resuming).
        checkpoint: the checkpoint to continue from (None: a fresh run).
        saved_config: that checkpoint's config (None for a fresh run or a checkpoint without one).
        replace: whether the folder's current contents are to be replaced.
        prefix, state_file: checkpoint naming (``update-`` / ``step-`` and the file that marks one complete).
    """

    path: str
    command: str
    run_id: str
    checkpoint: str | None
    saved_config: dict[str, Any] | None
    replace: bool
    prefix: str
    state_file: str
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    note: str | None = None

    @property
    def checkpoints_root(self) -> str:
        return os.path.join(self.path, "checkpoints")

    def start(self, config: Mapping[str, Any]) -> None:
        """Main process, before writing anything else: clean leftovers, set replaced contents aside,
        write ``run.json`` (with the resume record), print a line saying what happens."""
        if self.note:
            print(self.note, flush=True)
        os.makedirs(self.path, exist_ok=True)
        remove_leftovers(self.path)
        remove_leftovers(self.checkpoints_root)
        replaced = os.path.join(self.path, REPLACED)
        if self.replace:
            own = list_checkpoints(self.checkpoints_root, self.prefix, self.state_file)
            if os.path.isdir(replaced) and not own:
                # an earlier replacement never reached a checkpoint: keep the run it replaced, drop its own files
                for name in os.listdir(self.path):
                    if name != REPLACED:
                        _remove(os.path.join(self.path, name))
            else:
                shutil.rmtree(replaced, ignore_errors=True)
                entries = [n for n in os.listdir(self.path) if n != REPLACED]
                if entries:
                    os.makedirs(replaced)
                    for name in entries:
                        os.rename(os.path.join(self.path, name), os.path.join(replaced, name))
        elif self.checkpoint is not None and os.path.isdir(replaced):
            shutil.rmtree(replaced, ignore_errors=True)  # this run has a checkpoint: the replaced run is gone for good
        info = read_json(os.path.join(self.path, RUN_FILE)) if self.checkpoint else None
        if not info or info.get("run_id") != self.run_id:
            info = {"run_id": self.run_id, "command": self.command,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "resumes": []}
        if self.checkpoint is not None:
            info.setdefault("resumes", []).append({
                "from": os.path.basename(self.checkpoint), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "changes": {k: {"old": old, "new": new} for k, (old, new) in self.changes.items()}})
            changed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in self.changes.items())
            print(f"rewardlab {self.command}: resuming run {self.run_id} from {self.checkpoint}"
                  + (f" with {changed}" if changed else ""), flush=True)
        write_text(os.path.join(self.path, RUN_FILE), json.dumps(info, indent=1, default=str) + "\n")

    def output_complete(self) -> None:
        """Call once a checkpoint or the final output of this run is complete: the replaced run goes."""
        shutil.rmtree(os.path.join(self.path, REPLACED), ignore_errors=True)

    def interrupted(self, unit: str, n: int) -> str:
        """The one-line message of an interrupted run: where it stopped and how to go on."""
        done = list_checkpoints(self.checkpoints_root, self.prefix, self.state_file, self.run_id)
        if done:
            return (f"interrupted at {unit} {n}; the last checkpoint is {os.path.basename(done[-1][1])} in "
                    f"{self.checkpoints_root}; continue with --resume")
        return (f"interrupted at {unit} {n}; no checkpoint was written yet (set save_steps to write some); "
                f"start again with --overwrite-output-dir (or --resume=auto)")


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def folder_contents(path: str) -> list[str]:
    """The entries of ``path`` that are not leftovers of killed writes (empty when it does not exist)."""
    if not os.path.isdir(path):
        return []
    return sorted(n for n in os.listdir(path) if not _is_leftover(n))


def plan_run(path: str, *, command: str, resume: ResumeMode, overwrite: bool, prefix: str, state_file: str,
             legacy_config: str | None = None, what: str = "output_dir") -> RunPlan:
    """Decide what a run does with ``path`` (read-only; safe on every process). See the module docstring.

    Args:
        path: the run folder.
        command: ``ppo`` or ``train-rm`` (messages, ``run.json``).
        resume: False, True (a checkpoint must exist) or ``"auto"`` (continue if one exists, else start fresh).
        overwrite: replace a folder holding another run's files.
        prefix, state_file: checkpoint naming.
        legacy_config: for checkpoints written before run ids, the state file key holding the config.
        what: how to name ``path`` in messages.
    """
    info = read_json(os.path.join(path, RUN_FILE)) or {}
    folder_id = info.get("run_id")
    contents = folder_contents(path)
    root = os.path.join(path, "checkpoints")
    if resume:
        found = list_checkpoints(root, prefix, state_file, folder_id)
        if found:
            ckpt = found[-1][1]
            saved = checkpoint_info(ckpt).get("config")
            if saved is None and legacy_config is not None:
                saved = (read_json(os.path.join(ckpt, state_file)) or {}).get(legacy_config)
            return RunPlan(path, command, folder_id or new_run_id(), ckpt, saved, False, prefix, state_file)
        if resume != "auto":
            extra = (f"; the run it replaced is kept in {os.path.join(path, REPLACED)}"
                     if REPLACED in contents else "")
            raise RewardlabError(
                f"--resume: there is no checkpoint to continue in {what} {path} (looked for {root}/{prefix}N){extra}. "
                "Run without --resume to start a new run, or pass --resume=auto to start fresh when there is none")
        return RunPlan(path, command, new_run_id(), None, None, bool(contents), prefix, state_file,
                       note=f"rewardlab {command}: --resume=auto: no checkpoint in {path}; starting a fresh run")
    if contents and not overwrite:
        owner = f"run {folder_id}" if folder_id else "another run or other files"
        shown = ", ".join(contents[:5]) + (" …" if len(contents) > 5 else "")
        raise RewardlabError(
            f"{what} {path} already holds the files of {owner} ({shown}). Pass --resume to continue that run, "
            f"--overwrite-output-dir to replace it (its files are deleted once the new run's first checkpoint "
            f"or final output is complete), or choose another output_dir")
    return RunPlan(path, command, new_run_id(), None, None, bool(contents), prefix, state_file)


# ---------------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def interrupts() -> Iterator[None]:
    """SIGTERM (and SIGHUP) raise KeyboardInterrupt inside the block, like Ctrl-C, so the run stops
    between two Python statements with its checkpoints intact. No-op outside the main thread.

    A signal the process was started with ignored stays ignored: under ``nohup`` SIGHUP must not stop
    the run (as Python leaves SIGINT ignored in a background job of a non-interactive shell)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
