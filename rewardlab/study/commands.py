"""rewardlab study: which reward calculation wins, on a task with a known gold reward.

Trains an SFT policy and proxy reward models on a synthetic task, runs PPO with each reward
pipeline (strategy) over several seeds, and writes report.html, report.md, results.json, the
plots and every run's metrics and config to --out. Stages are cached in <out>/cache and each
run in <out>/runs, so an interrupted or repeated study only redoes what is missing.

Presets: default (≈10 min on 2 CPU cores, 3 seeds), full (all strategies, 5 seeds, β grid;
sized for a GPU or a long CPU run), smoke (seconds; for tests).

Example:
  rewardlab study --out study_out
  rewardlab study --preset full --workers 8
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rewardlab.study.run import DEFAULT_TASK, PRESETS

    parser.add_argument("--preset", choices=sorted(PRESETS), default="default", help="study size and strategies (default: %(default)s)")
    parser.add_argument("--out", default="study_out", help="output folder (default: %(default)s)")
    parser.add_argument("--task", default=DEFAULT_TASK, help="task as module:object following rewardlab.study.tasks.base.Task (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="parallel worker processes (default: min(2, CPU count))")
    parser.add_argument("--no-progress", action="store_true", help="no progress display")


def run(args: argparse.Namespace) -> int:
    from rewardlab.study.run import run_study

    results = run_study(args.preset, args.out, task=args.task, workers=args.workers, progress=not args.no_progress)
    print(f"\nwrote {args.out}/report.html, report.md and results.json ({results['wall_seconds']:.0f} s)\n")
    print(results["answer"])
    return 0
