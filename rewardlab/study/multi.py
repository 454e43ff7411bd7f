"""The study on every built-in task, and whether each of its conclusions holds on all of them.

``rewardlab study --all-tasks`` runs the same preset on the digit-sum task (gold from a sum), the
bracket task (gold from a stack; prompts of varying length) and the sorting task (gold from a copy
under a global order), each into its own folder ``<out>/<task>/``, then lines up their findings
(`rewardlab.study.answer.findings`) by id: a conclusion *holds on all* when every task gives the
same distinguishable verdict, *holds on some* when some are distinguishable (in one direction) and
the others are not, and *conflicts* when the directions differ. With two tasks the words are
"holds on both" and "holds on one".

Example::

    rewardlab study --all-tasks --out study_all
"""

from __future__ import annotations

import json
import os
from typing import Any

from rewardlab.atomic import write_text

BUILTIN_TASKS = {
    "digits": "rewardlab.study.tasks.digits:DigitSumTask",
    "brackets": "rewardlab.study.tasks.brackets:BracketTask",
    "sorting": "rewardlab.study.tasks.sorting:SortTask",
}


def agreement(per_task: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per finding id present for every task: each task's verdict and whether the conclusion holds on all.

    Statuses: "holds on all" ("holds on both" for two tasks), "holds on k of n" ("holds on one" for two),
    "conflicts" (distinguishable in opposite directions), "not distinguishable on any" ("… on either").
    """
    names = list(per_task)
    by = {n: {f["id"]: f for f in fs} for n, fs in per_task.items()}
    ids = [i for i in dict.fromkeys(f["id"] for fs in per_task.values() for f in fs) if all(i in by[n] for n in names)]
    rows = []
    for i in ids:
        verdicts = {n: by[n][i]["verdict"] for n in names}
        decided = [v for v in verdicts.values() if v != "not distinguishable"]
        if len(set(decided)) > 1:
            status = "conflicts"
        elif len(decided) == len(names):
            status = "holds on both" if len(names) == 2 else "holds on all"
        elif decided:
            status = "holds on one" if len(names) == 2 else f"holds on {len(decided)} of {len(names)}"
        else:
            status = "not distinguishable on either" if len(names) == 2 else "not distinguishable on any"
        first = by[names[0]][i]
        rows.append({"id": i, "question": first["question"], "comparison": f"{first['a']} vs {first['b']}", "metric": first["metric"],
                     "verdicts": verdicts, "diffs": {n: (by[n][i]["diff"], by[n][i]["half"]) for n in names}, "status": status})
    return rows


def _summary_text(rows: list[dict[str, Any]], names: list[str]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    both = [r for r in rows if r["status"] in ("holds on both", "holds on all")]
    conflicts = [r for r in rows if r["status"] == "conflicts"]
    text = (f"On the tasks {', '.join(names)}: of {len(rows)} paired comparisons, "
            + ", ".join(f"{n} {k}" for k, n in counts.items()) + ".")
    if both:
        text += (" Holding on both: " if len(names) == 2 else " Holding on all: ") + "; ".join(
            f"{r['comparison']} ({r['metric']}: {r['verdicts'][names[0]]})" for r in both) + "."
    if conflicts:
        text += " Opposite directions: " + "; ".join(
            r["comparison"] + " (" + ", ".join(f"{n} {r['verdicts'][n]}" for n in names) + ")" for r in conflicts) + "."
    return text


def run_builtin_tasks(preset: Any = "default", out_dir: str = "study_out", *, workers: int | None = None,
                      progress: bool = True) -> dict[str, Any]:
    """Run `preset` on each built-in task and write ``<out>/agreement.md`` and ``<out>/results.json``."""
    from rewardlab.study.run import run_study

    per_task = {name: run_study(preset, os.path.join(out_dir, name), task=ref, workers=workers, progress=progress)
                for name, ref in BUILTIN_TASKS.items()}
    return write_agreement(per_task, out_dir)


def rerender_builtin_tasks(out_dir: str) -> dict[str, Any]:
    """Recompose each task's report and the agreement from the results.json files under `out_dir`."""
    from rewardlab.study.summary import rerender

    return write_agreement({name: rerender(os.path.join(out_dir, name)) for name in BUILTIN_TASKS}, out_dir)


def write_agreement(per_task_results: dict[str, dict[str, Any]], out_dir: str) -> dict[str, Any]:
    """``<out>/agreement.md`` and ``<out>/results.json`` from each task's results."""
    from rewardlab.study.report import _md_table, fmt_ci

    per_task = {n: r["findings"] for n, r in per_task_results.items()}
    answers = {n: r["answer"] for n, r in per_task_results.items()}
    wall = {n: r["wall_seconds"] for n, r in per_task_results.items()}
    names = list(per_task)
    rows = agreement(per_task)
    summary = _summary_text(rows, names)
    table = [["question", "comparison", "metric"] + [f"{n}: difference" for n in names] + [f"{n}: verdict" for n in names] + ["status"]]
    for r in rows:
        table.append([r["question"], r["comparison"], r["metric"]] + [fmt_ci((*r["diffs"][n], 2)) for n in names]
                     + [r["verdicts"][n] for n in names] + [r["status"]])
    md = ["# rewardlab study — do the conclusions hold on every built-in task?", "", summary, "", _md_table(table), ""]
    for n in names:
        md += [f"## The answer on `{n}` (full report: `{n}/report.md`, {wall[n]:.0f} s)", "", answers[n], ""]
    os.makedirs(out_dir, exist_ok=True)
    write_text(os.path.join(out_dir, "agreement.md"), "\n".join(md))
    out = {"tasks": BUILTIN_TASKS, "agreement": rows, "summary": summary, "answers": answers, "task_wall_seconds": wall,
           "wall_seconds": float(sum(wall.values())), "answer": summary}
    write_text(os.path.join(out_dir, "results.json"), json.dumps(out, indent=1, default=float))
    return out
