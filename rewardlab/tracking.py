"""One metrics logger for every rewardlab run: namespaced keys → JSONL, plus optional trackers.

Keys are namespaced (``objective/*``, ``ppo/*``, ``reward/<stage>/*``, ``time/*``, ``rm/*``) and
documented in ``docs/metrics.md``. Every record is one JSON line ``{"step": n, key: value, …}``
appended to ``metrics.jsonl``; trackers named in ``report_to`` (``tensorboard``, ``trackio``,
``wandb``) receive the same dict and are imported only when asked for.

Example::

    with MetricsLogger("runs/x", report_to=("tensorboard",)) as log:
        log.log({"objective/scores": 0.3, "time/update": 1.2}, step=1)
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from rewardlab.atomic import write_text
from rewardlab.errors import RewardlabError

TRACKERS = ("tensorboard", "trackio", "wandb")


class MetricsLogger:
    """Append metrics to ``<output_dir>/metrics.jsonl`` and forward them to trackers.

    Args:
        output_dir: run folder (created if missing).
        report_to: tracker names; empty for JSONL only.
        enabled: False on non-main processes — then every call is a no-op.
        resume_step: None starts a new ``metrics.jsonl`` (an old one is replaced); when resuming,
            the existing file is kept up to ``step <= resume_step`` (later records belong to the
            part of the run being redone) and appended to.
        project: project / run-group name for trackers.
        run_config: the resolved config, passed to trackers that record hyperparameters.
    """

    def __init__(
        self, output_dir: str | os.PathLike[str], report_to: Iterable[str] = (), *, enabled: bool = True,
        resume_step: int | None = None, project: str = "rewardlab", run_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = os.path.join(os.fspath(output_dir), "metrics.jsonl")
        self._trackers: list[Any] = []
        report_to = tuple(report_to)
        for name in report_to:
            if name not in TRACKERS:
                raise RewardlabError(f"unknown tracker {name!r} in report_to; choose from {', '.join(TRACKERS)}")
        if not enabled:
            return
        os.makedirs(os.fspath(output_dir), exist_ok=True)
        if resume_step is not None and os.path.exists(self.path):
            self._truncate(resume_step)
        self._fh = open(self.path, "w" if resume_step is None else "a", encoding="utf-8")
        for name in report_to:
            self._trackers.append(_open_tracker(name, os.fspath(output_dir), project, dict(run_config or {})))

    def _truncate(self, resume_step: int) -> None:
        with open(self.path, encoding="utf-8") as fh:
            kept = [line for line in fh if line.strip() and json.loads(line).get("step", 0) <= resume_step]
        write_text(self.path, "".join(kept))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Write one record. Values must be numbers; NaN/inf are written as null (JSON has no NaN)."""
        if not self.enabled:
            return
        record: dict[str, Any] = {"step": int(step)}
        for key, value in metrics.items():
            v = float(value)
            record[key] = v if math.isfinite(v) else None
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()
        for tracker in self._trackers:
            tracker(dict(metrics), int(step))

    def close(self) -> None:
        if self.enabled and not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file (or of the run folder holding it)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _open_tracker(name: str, output_dir: str, project: str, config: dict[str, Any]):
    """A function ``(metrics, step) -> None`` for one tracker; the package is imported here only."""
    try:
        if name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=os.path.join(output_dir, "tensorboard"))

            def write(metrics: dict[str, float], step: int) -> None:
                for key, value in metrics.items():
                    writer.add_scalar(key, value, step)
                writer.flush()

            return write
        if name == "wandb":
            import wandb

            run = wandb.init(project=project, config=config, dir=output_dir)
            return lambda m, s: run.log(m, step=s)
        if name == "trackio":
            import trackio

            trackio.init(project=project, config=config)
            return lambda m, s: trackio.log(m, step=s)
    except ImportError as err:
        raise RewardlabError(f"report_to={name!r} needs the {name} package ({err}); pip install {name}") from None
    raise RewardlabError(f"unknown tracker {name!r}")


def library_versions() -> dict[str, Any]:
    """Versions of Python and the libraries that decide a run's numbers, and of every Hub model it resolved
    (``hub_models``: field → name, revision, commit); saved with every run."""
    import importlib.metadata as md
    import platform

    from rewardlab.local import resolved_models

    out: dict[str, Any] = {"python": platform.python_version()}
    for pkg in ("rewardlab", "torch", "transformers", "accelerate", "datasets", "safetensors", "peft"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    hub = resolved_models()
    if hub:
        out["hub_models"] = hub
    return out


def rich_progress(label: str, info: str, *, enabled: bool = True):
    """A rich progress bar: ``label``, bar, done/total, elapsed, ETA, then ``info`` (rich column templates)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn(info), disable=not enabled)


class ProgressBar:
    """A rich progress bar with ETA over updates (a no-op when disabled)."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled, self.total, self.done = enabled, total, done

    def __enter__(self) -> Callable[[dict[str, float]], None]:
        if not self.enabled:
            return lambda metrics: None
        self.bar = rich_progress("PPO", "{task.description}")
        self.bar.start()
        task = self.bar.add_task("", total=self.total, completed=self.done)

        def advance(m: dict[str, float]) -> None:
            desc = f"score {m.get('objective/scores', math.nan):.3f}  kl {m.get('objective/kl', math.nan):.3f}"
            self.bar.update(task, advance=1, description=desc)

        return advance

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.stop()
