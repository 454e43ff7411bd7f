"""rewardlab study: which reward calculation wins, on a task with a known gold reward.

Trains an SFT policy and proxy reward models on a synthetic task, runs PPO with each reward
pipeline (strategy) over several seeds, and writes report.html, report.md, results.json, the
plots and every run's metrics and config to --out. Stages are cached in <out>/cache and each
run in <out>/runs, so an interrupted or repeated study only redoes what is missing.

Presets: default (≤ 10 min on 2 CPU cores: 4 seeds, 2 for the 2-head group, a β grid of 3
values for raw/whiten/logsigmoid/lsc/par), full (all strategies, 5 seeds, β grid; sized for a GPU
or a long CPU run), smoke (seconds; for tests).

Tasks: --task module:Class (module on PYTHONPATH or in the current folder) or
--task path/to/file.py:Class; --all-tasks runs every built-in task (digits, brackets, sorting) and
says which conclusions hold on all of them (three times the time of one task).

On your own models (no gold there, unless you give a function): --policy, --reward-model and
--prompts run the strategy comparison with your policy as the starting point and report proxy
reward, KL and diagnostics per strategy; --gold module:function (fn(prompts, responses) ->
scores) adds gold columns.

Example:
  rewardlab study --out study_out
  rewardlab study --preset full --workers 8
  rewardlab study --task rewardlab.study.tasks.brackets:BracketTask --out study_brackets
  rewardlab study --task ./my_task.py:MyTask --out my_task_study
  rewardlab study --all-tasks --out study_all
  rewardlab study --policy runs/sft --reward-model runs/rm --prompts prompts.jsonl --out my_study
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rewardlab.study.run import DEFAULT_TASK, PRESETS, USER_STRATEGIES

    parser.add_argument("--preset", choices=sorted(PRESETS), default="default", help="study size and strategies (default: %(default)s)")
    parser.add_argument("--out", default="study_out", help="output folder (default: %(default)s)")
    parser.add_argument("--task", default=DEFAULT_TASK,
                        help="task following rewardlab.study.tasks.base.Task: module:object (module on PYTHONPATH or in the current "
                             "folder) or path/to/file.py:object (default: %(default)s)")
    parser.add_argument("--all-tasks", action="store_true",
                        help="run the preset on every built-in task (digits, brackets, sorting) and report which conclusions hold on all")
    parser.add_argument("--report-only", action="store_true",
                        help="recompose the answer, the alarm's scoring and the report from <out>/results.json (with --all-tasks: each "
                             "task's and the agreement); no run")
    parser.add_argument("--workers", type=int, default=None, help="parallel worker processes (default: min(2, CPU count))")
    parser.add_argument("--no-progress", action="store_true", help="no progress display")
    own = parser.add_argument_group("your own models (instead of the synthetic task)")
    own.add_argument("--policy", help="policy folder (save_pretrained); the starting and reference policy")
    own.add_argument("--reward-model", help="reward model folder (AutoModelForSequenceClassification)")
    own.add_argument("--prompts", help="prompts: .txt (one per line) or .jsonl/.json/.csv/.parquet with a 'prompt' column")
    own.add_argument("--gold", help="optional gold reward function module:function, fn(prompts, responses) -> scores")
    own.add_argument("--semantics", choices=["bradley_terry", "classifier"], help="head semantics of a multi-output reward model")
    own.add_argument("--strategies", default=",".join(USER_STRATEGIES), help="comma-separated strategy names (default: %(default)s)")
    own.add_argument("--seeds", type=int, default=3, help="seeds per strategy (default: %(default)s)")
    own.add_argument("--updates", type=int, default=48, help="PPO updates per run (default: %(default)s)")
    own.add_argument("--batch-size", type=int, default=64, help="prompts per update (default: %(default)s)")
    own.add_argument("--response-length", type=int, default=64, help="max new tokens per response (default: %(default)s)")
    own.add_argument("--kl-coef", type=float, default=0.05, help="β (default: %(default)s)")
    own.add_argument("--learning-rate", type=float, default=1e-5, help="PPO learning rate (default: %(default)s)")
    own.add_argument("--device", default=None,
                     help="where your models run: cpu (default), cuda, or auto (the GPU when one is visible); the "
                          "synthetic study's tiny models run on the CPU")


def run(args: argparse.Namespace) -> int:
    from rewardlab.errors import RewardlabError
    from rewardlab.study.run import run_study, run_user_study

    own = [args.policy, args.reward_model, args.prompts]
    if args.device is not None and not any(own):
        raise RewardlabError("--device applies to a study of your own models (--policy, --reward-model, --prompts); "
                             "the synthetic study's tiny models run on the CPU")
    if any(own):
        if not all(own):
            raise RewardlabError("--policy, --reward-model and --prompts go together (all three, or none for the synthetic task)")
        from rewardlab.local import data_source, model_folder

        # local folders/files only, checked before any work

        args.policy = model_folder(args.policy, "--policy", need_tokenizer=True)  # hub:NAME → its local copy
        args.reward_model = model_folder(args.reward_model, "--reward-model")
        data_source(args.prompts, "--prompts")
        results = run_user_study(
            args.policy, args.reward_model, args.prompts, args.out, gold=args.gold, semantics=args.semantics,
            strategies=[s.strip() for s in args.strategies.split(",") if s.strip()], seeds=tuple(range(args.seeds)),
            updates=args.updates, prompts_per_update=args.batch_size, response_length=args.response_length,
            kl_coef=args.kl_coef, learning_rate=args.learning_rate, workers=args.workers, progress=not args.no_progress,
            device=args.device or "cpu",
        )
    elif args.report_only:
        from rewardlab.study.multi import rerender_builtin_tasks
        from rewardlab.study.summary import rerender

        results = rerender_builtin_tasks(args.out) if args.all_tasks else rerender(args.out)
        print(results["answer"])
        return 0
    elif args.all_tasks:
        from rewardlab.study.multi import run_builtin_tasks

        results = run_builtin_tasks(args.preset, args.out, workers=args.workers, progress=not args.no_progress)
        print(f"\nwrote {args.out}/agreement.md and one study per task under {args.out}/ ({results['wall_seconds']:.0f} s)\n")
        print(results["summary"])
        return 0
    else:
        results = run_study(args.preset, args.out, task=args.task, workers=args.workers, progress=not args.no_progress)
    print(f"\nwrote {args.out}/report.html, report.md and results.json ({results['wall_seconds']:.0f} s)\n")
    print(results["answer"])
    return 0
