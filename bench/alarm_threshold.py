"""Choose an alarm signal's threshold on the study's tuning tasks, by replay (issue 27).

Reads the ``results.json`` of finished studies (one per tuning task), replays every run's alarm at each
level of a grid for one signal (`rewardlab.study.alarm.replayed_summary`: the runs logged each signal
over its default threshold per update, and training does not depend on the alarm, so a replay is what
the run would have logged), and picks a level by the rule fixed before the held-out run
(`rewardlab.study.alarm.choose_level`, docs/study.md; ties keep today's default). Prints one JSON object: per level and task, the
fraction of raw/whitened runs recovered and of bounded runs stopped early, and the chosen level.
``inf`` in the grid is the signal switched off.

    .venv/bin/python bench/alarm_threshold.py study_all/digits study_all/brackets
    .venv/bin/python bench/alarm_threshold.py --signal uncertainty --grid 0.1,0.25,0.5,1,inf DIR [DIR ...]

Nothing is trained; it takes seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rewardlab.ppo.alarm import SIGNALS  # noqa: E402
from rewardlab.ppo.config import AlarmConfig  # noqa: E402
from rewardlab.study.alarm import choose_level, replayed_summary  # noqa: E402

GRID = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, math.inf)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("studies", nargs="+", help="study output folders (each with results.json), one per tuning task")
    parser.add_argument("--signal", default="uncertainty", choices=SIGNALS, help="the signal whose level is swept")
    parser.add_argument("--grid", default=",".join(str(x) for x in GRID), help="comma-separated levels ('inf': off)")
    args = parser.parse_args(argv)
    try:
        grid = [float(x) for x in args.grid.split(",")]
    except ValueError:
        parser.error(f"--grid must be comma-separated numbers or 'inf'; got {args.grid!r}")
    if not grid or any(not x > 0 for x in grid):
        parser.error(f"--grid levels must be positive; got {args.grid!r}")
    studies = {}
    for folder in args.studies:
        path = os.path.join(folder, "results.json")
        if not os.path.isfile(path):
            parser.error(f"{path} does not exist; give the output folder of a finished `rewardlab study`")
        with open(path, encoding="utf-8") as f:
            results = json.load(f)
        studies[os.path.basename(os.path.normpath(folder))] = results  # --all-tasks writes <out>/<task>/
    sweep = {}
    for level in grid:
        per_task = {}
        for task, results in studies.items():
            s = replayed_summary(results, {args.signal: level})
            if s is None:
                parser.error(f"study {task!r} holds no run with the alarm's per-update signals; run it with this rewardlab")
            per_task[task] = s
        sweep[level] = per_task
    current = getattr(AlarmConfig(), f"{args.signal}_threshold")
    chosen = choose_level(sweep, current=math.inf if current is None else current)
    out = {
        "signal": args.signal, "tasks": list(studies), "current": current,
        "chosen": "inf" if math.isinf(chosen) else chosen,
        "levels": [{"level": "inf" if math.isinf(lv) else lv,
                    **{task: {"recovered": round(s["unbounded_recovered"], 3), "early": round(s["bounded_runs_early"], 3),
                              "runs": [s["unbounded_runs"], s["bounded_runs"]], "target_met": s["target_met"],
                              "first_signal": s["first_signal"]}
                       for task, s in per_task.items()}} for lv, per_task in sweep.items()],
    }
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
