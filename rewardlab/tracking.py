"""One metrics logger for every rewardlab run: namespaced keys → JSONL, a log line, and optional trackers.

Keys are namespaced (``objective/*``, ``ppo/*``, ``reward/<stage>/*``, ``time/*``, ``rm/*``) and
documented in ``docs/metrics.md``. Every record is one JSON line ``{"step": n, key: value, …}``
appended to ``metrics.jsonl``; given a `LogLine`, it is also one line of text in ``train.log``
(and on stdout unless a progress bar shows on a terminal); trackers named in ``report_to``
(``mlflow``, ``tensorboard``, ``trackio``, ``wandb``) receive the same dict. Each tracker's package
is checked by `check_trackers` before any model loads, and imported only when asked for.

Example::

    with MetricsLogger("runs/x", report_to=("tensorboard",), log_line=PPO_LINE, total_steps=8) as log:
        log.log({"objective/scores": 0.3, "time/update": 1.2}, step=1)
        log.log_table("samples", [{"prompt": "2+2", "response": "4", "score": 1.0}], step=1)
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from rewardlab.atomic import write_text
from rewardlab.errors import RewardlabError

__all__ = ["PPO_LINE", "RM_LINE", "TRACKERS", "LogLine", "MetricsLogger", "ProgressBar", "check_trackers",
           "library_versions", "print_lines", "read_jsonl", "read_metrics", "rich_progress", "truncate_jsonl"]

"""Tracker names ``report_to`` takes; each is also the package it needs (mlflow-skinny provides ``mlflow``)."""

Field = tuple[str, str | Callable[[Mapping[str, float], int], float | None]]


# ---------------------------------------------------------------------------------------------- log lines
@dataclass(frozen=True)
class LogLine:
    """How one metrics record reads as a line of text: ``<unit> n/total``, then ``label value`` per field
    present, then the phase times. A record with none of the fields gives no line.

    Args:
        unit: what a step is called (``update``, ``step``).
        fields: ``(label, key)``, or ``(label, fn(metrics, step) -> value or None)`` for a derived figure.
        timings: ``(label, key)`` of seconds, shown after ``time``.
    """

    unit: str
    fields: tuple[Field, ...]
    timings: tuple[tuple[str, str], ...] = ()

    def format(self, metrics: Mapping[str, float], step: int, total: int | None) -> str | None:
        shown = []
        for label, source in self.fields:
            value = metrics.get(source) if isinstance(source, str) else source(metrics, step)
            if value is not None:
                shown.append(f"{label} {_number(float(value))}")
        if not shown:
            return None
        parts = [f"{self.unit} {step}" + (f"/{total}" if total else ""), *shown]
        times = [f"{label} {metrics[key]:.2f}s" for label, key in self.timings if key in metrics]
        if times:
            parts.append("time " + " ".join(times))
        if metrics.get("alarm/stopped"):
            parts.append("STOPPED by the over-optimisation alarm")
        elif metrics.get("alarm/triggered", 0.0) >= 1.0:
            parts.append("ALARM")
        return "  ".join(parts)


def _number(v: float) -> str:
    """Three significant figures, whole numbers from 1000 on (no ``1.23e+04`` for a throughput)."""
    if not math.isfinite(v):
        return str(v)
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def _ppo_tokens_per_second(m: Mapping[str, float], step: int) -> float | None:
    """Response tokens of the update per second of the update: (episodes / step) · mean length / time/total
    (``episodes`` counts every update's batch, so episodes / step is the global batch size)."""
    try:
        return m["episodes"] / step * m["objective/response_length"] / m["time/total"]
    except (KeyError, ZeroDivisionError):
        return None


PPO_LINE = LogLine(
    "update",
    fields=(("score", "objective/scores"), ("raw", "reward/raw/mean"), ("kl", "objective/kl"),
            ("beta", "objective/kl_coef"), ("entropy", "objective/entropy"), ("len", "objective/response_length"),
            ("eos", "objective/stop_frac"), ("alarm", "alarm/score"), ("tok/s", _ppo_tokens_per_second),
            ("eval_score", "eval/score"), ("eval_kl", "eval/kl"), ("eval_win", "eval/win_rate")),
    timings=(("gen", "time/generate"), ("fwd", "time/forward"), ("score", "time/score"), ("update", "time/update")),
)
"""`rewardlab ppo`'s line (docs/metrics.md, "The log line")."""

RM_LINE = LogLine(
    "step",
    fields=(("loss", "rm/loss"), ("acc", "rm/accuracy"), ("margin", "rm/margin"), ("lr", "rm/learning_rate"),
            ("epoch", "rm/epoch"), ("rows/s", "rm/rows_per_second"), ("eval_loss", "rm/eval/loss"),
            ("eval_acc", "rm/eval/accuracy"), ("ece", "rm/eval/ece")),
)
"""`rewardlab train-rm`'s line."""


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def print_lines(progress_bar: bool, stream: TextIO | None = None) -> bool:
    """Whether log lines go to ``stream`` (stdout): yes, unless the progress bar shows there, which it does
    only on a terminal. Redirected to a file or a pipe (a cluster job), a progress bar would print only
    at the end, so the lines replace it."""
    return not (progress_bar and _is_terminal(sys.stdout if stream is None else stream))


# ---------------------------------------------------------------------------------------------- the logger
class MetricsLogger:
    """Append metrics to ``<output_dir>/metrics.jsonl`` (and, with `log_line`, ``train.log``) and forward
    them to trackers.

    Args:
        output_dir: run folder (created if missing).
        report_to: tracker names (`TRACKERS`); empty for JSONL only.
        enabled: False on non-main processes — then every call is a no-op.
        resume_step: None starts new ``metrics.jsonl`` and ``train.log`` files (old ones are replaced); when
            resuming, the existing ``metrics.jsonl`` is kept up to ``step <= resume_step`` (later records
            belong to the part of the run being redone) and appended to; ``train.log`` is appended to.
        project: the trackers' project (wandb, trackio) or experiment (mlflow); None: ``rewardlab``.
        run_name: the trackers' run name (tensorboard: its folder under ``tensorboard/``); None: the output
            folder's name.
        run_config: the resolved config, passed to trackers that record hyperparameters.
        log_line: how a record reads as a line (`PPO_LINE`, `RM_LINE`); None: no lines, no ``train.log``.
        total_steps: the run's last step, shown as ``update n/total`` and used for the ETA.
        progress_bar: whether the caller shows a progress bar; the lines go to stdout as `print_lines` says.
    """

    def __init__(
        self, output_dir: str | os.PathLike[str], report_to: Iterable[str] = (), *, enabled: bool = True,
        resume_step: int | None = None, project: str | None = None, run_name: str | None = None,
        run_config: Mapping[str, Any] | None = None, log_line: LogLine | None = None,
        total_steps: int | None = None, progress_bar: bool = False,
    ) -> None:
        report_to = tuple(report_to)
        check_trackers(report_to, field="report_to")
        self.enabled = enabled
        output_dir = os.fspath(output_dir)
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.log_path = os.path.join(output_dir, "train.log")
        self._trackers: list[Any] = []
        self._line, self._total, self._echo = log_line, total_steps, print_lines(progress_bar)
        self._t0, self._first_step = time.monotonic(), resume_step or 0
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        if resume_step is not None and os.path.exists(self.path):
            truncate_jsonl(self.path, "step", resume_step)
        self._fh = open(self.path, "w" if resume_step is None else "a", encoding="utf-8")
        self._log_fh = None
        if log_line is not None:
            self._log_fh = open(self.log_path, "w" if resume_step is None else "a", encoding="utf-8")
            when = time.strftime("%Y-%m-%d %H:%M:%S")
            self._log_fh.write(f"# started {when}\n" if resume_step is None else
                               f"# resumed after {log_line.unit} {resume_step}, {when}\n")
            self._log_fh.flush()
        run_name = run_name or os.path.basename(os.path.normpath(os.path.abspath(output_dir)))
        for name in report_to:
            self._trackers.append(_TRACKER_CLASSES[name](output_dir, project or "rewardlab", run_name,
                                                         dict(run_config or {})))

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
        if self._line is not None:
            self._write_line(metrics, int(step))
        for tracker in self._trackers:
            tracker.log(dict(metrics), int(step))

    def _write_line(self, metrics: Mapping[str, float], step: int) -> None:
        line = self._line.format(metrics, step, self._total)
        if line is None:
            return
        elapsed = time.monotonic() - self._t0
        line += f"  elapsed {_duration(elapsed)}"
        if self._total and step > self._first_step and step < self._total:
            line += f"  eta {_duration(elapsed / (step - self._first_step) * (self._total - step))}"
        self._log_fh.write(line + "\n")  # one write and a flush per line: a killed run leaves whole lines
        self._log_fh.flush()
        if self._echo:
            print(line, flush=True)

    def log_table(self, key: str, rows: list[dict], step: int) -> None:
        """Send ``rows`` (one dict per row; columns in order of first appearance) to each tracker as a table
        named ``key``: wandb ``Table``, tensorboard text (a markdown table), trackio ``Table``, mlflow a
        JSON table artifact ``<key>/step-<step>.json``. Nothing goes to ``metrics.jsonl`` or ``train.log``."""
        if not self.enabled or not self._trackers:
            return
        columns = list(dict.fromkeys(k for row in rows for k in row))
        for tracker in self._trackers:
            tracker.table(key, columns, [[row.get(c) for c in columns] for row in rows], int(step))

    def close(self) -> None:
        if not self.enabled or self._fh.closed:
            return
        self._fh.close()
        if self._log_fh is not None:
            self._log_fh.close()
        for tracker in self._trackers:
            tracker.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file (or of the run folder holding it)."""
    return read_jsonl(path, "metrics.jsonl")


def read_jsonl(path: str | os.PathLike[str], filename: str) -> list[dict[str, Any]]:
    """All records of a JSON-lines file, or of the file ``filename`` in the run folder ``path``."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, filename)
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def truncate_jsonl(path: str, key: str, upto: int) -> None:
    """Keep the records of a JSON-lines file whose ``key`` is ≤ ``upto`` (a resumed run redoes the rest), atomically."""
    with open(path, encoding="utf-8") as fh:
        kept = [line for line in fh if line.strip() and json.loads(line).get(key, 0) <= upto]
    write_text(path, "".join(kept))


# ---------------------------------------------------------------------------------------------- trackers
def check_trackers(report_to: Iterable[str], field: str = "run.report_to") -> None:
    """Refuse an unknown tracker, or one whose package is not installed — called before any model loads and
    before the run folder is written, so a retry after ``pip install`` starts clean."""
    report_to = list(report_to)
    for name in report_to:
        if name not in TRACKERS:
            raise RewardlabError(f"{field}={report_to!r}: unknown tracker {name!r}; trackers are {', '.join(TRACKERS)}")
        if not _installed(name):
            raise RewardlabError(f"{field}={report_to!r} needs the {name} package, which is not installed; "
                                 f"pip install {name} (or remove it from report_to)")


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a blocked import (sys.modules[name] = None) or a broken package
        return False


def _markdown_table(columns: Sequence[str], data: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        text = f"{v:.4g}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in data]
    return "\n".join(lines)


class _TensorBoard:
    """Scalars under ``<output_dir>/tensorboard/<run_name>``; the config and tables as markdown text."""

    def __init__(self, output_dir: str, project: str, run_name: str, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=os.path.join(output_dir, "tensorboard", run_name))
        if config:
            self.writer.add_text("config", "```\n" + json.dumps(config, indent=1, default=str) + "\n```")

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def table(self, key: str, columns: list[str], data: list[list[Any]], step: int) -> None:
        self.writer.add_text(key, _markdown_table(columns, data), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, output_dir: str, project: str, run_name: str, config: dict[str, Any]) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=project, name=run_name, config=config, dir=output_dir)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def table(self, key: str, columns: list[str], data: list[list[Any]], step: int) -> None:
        self.run.log({key: self.wandb.Table(columns=columns, data=data)}, step=step)

    def close(self) -> None:
        self.run.finish()


class _Trackio:
    def __init__(self, output_dir: str, project: str, run_name: str, config: dict[str, Any]) -> None:
        import trackio

        self.trackio = trackio
        trackio.init(project=project, name=run_name, config=config)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.trackio.log(metrics, step=step)

    def table(self, key: str, columns: list[str], data: list[list[Any]], step: int) -> None:
        import pandas  # a dependency of trackio

        self.trackio.log({key: self.trackio.Table(dataframe=pandas.DataFrame(data, columns=columns))}, step=step)

    def close(self) -> None:
        self.trackio.finish()


class _MLflow:
    """A run named ``run_name`` in the experiment ``project``, parameters = the flattened config.

    The store is ``MLFLOW_TRACKING_URI`` when set, else ``<output_dir>/mlruns`` (mlflow's file store, which
    mlflow 3 allows only with ``MLFLOW_ALLOW_FILE_STORE``: set here for that local default) — never a server
    nobody configured."""

    def __init__(self, output_dir: str, project: str, run_name: str, config: dict[str, Any]) -> None:
        import pathlib

        import mlflow
        from mlflow.entities import Metric, Param

        self.Metric = Metric
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = pathlib.Path(output_dir, "mlruns").resolve().as_uri()
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(project)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(project)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        from rewardlab.runfolder import flatten

        params = [Param(key, str(value)[:500]) for key, value in flatten(config).items()]
        for i in range(0, len(params), 100):  # mlflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self.Metric(k, float(v), now, step) for k, v in metrics.items()])

    def table(self, key: str, columns: list[str], data: list[list[Any]], step: int) -> None:
        self.client.log_table(self.run_id, {c: [row[i] for row in data] for i, c in enumerate(columns)},
                              artifact_file=f"{key}/step-{step:07d}.json")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


_TRACKER_CLASSES = {"mlflow": _MLflow, "tensorboard": _TensorBoard, "trackio": _Trackio, "wandb": _Wandb}
TRACKERS = tuple(_TRACKER_CLASSES)  # the names report_to takes


# ---------------------------------------------------------------------------------------------- run files
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
    """A rich progress bar: ``label``, bar, done/total, elapsed, ETA, then ``info`` (rich column templates).

    Shown only on a terminal: redirected, rich would print it once, at the end (`print_lines`)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn(info), disable=not (enabled and _is_terminal(sys.stdout)))


class ProgressBar:
    """A rich progress bar with ETA over updates (a no-op when disabled, or when stdout is not a terminal)."""

    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled, self.total, self.done = enabled and _is_terminal(sys.stdout), total, done

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
