"""The `rewardlab` command line: thin subcommands over the Python API.

Each subcommand lives beside the code it drives, in a module exposing
``add_arguments(parser)`` and ``run(args) -> int``; this file only dispatches, importing
the module lazily so that ``rewardlab --help`` stays fast.

    rewardlab score      score (prompt, response) pairs with a reward model and a pipeline
    rewardlab train-rm   train a Bradley-Terry or classifier reward model
    rewardlab inspect    diagnose a sequence-classification reward model
    rewardlab ppo        PPO against a reward model
    rewardlab study      the controlled reward-calculation study
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("rewardlab.reward.commands", "score (prompt, response) pairs with a reward model and a pipeline"),
    "train-rm": ("rewardlab.reward_model.commands_train", "train a Bradley-Terry or classifier reward model"),
    "evaluate-rm": ("rewardlab.reward_model.commands_evaluate", "evaluate a reward model on preference data"),
    "inspect": ("rewardlab.reward_model.commands_inspect", "diagnose a reward model: head semantics, readings, recommended pipeline"),
    "ppo": ("rewardlab.ppo.commands", "PPO against a reward model"),
    "study": ("rewardlab.study.commands", "the controlled study: which reward calculation wins"),
    "migrate-trl-ppo": ("rewardlab.ppo.commands_migrate", "convert a TRL 1.10 PPOConfig YAML/JSON into a rewardlab PPO config"),
}


def _present(module: str) -> bool:
    """Whether a command's module exists (commands land one issue at a time)."""
    return importlib.util.find_spec(module) is not None


def _not_yet(name: str) -> int:
    print(f"rewardlab {name}: not implemented yet in this version (see the project's open issues)", file=sys.stderr)
    return 2


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rewardlab",
        description="RLHF with PPO against learned reward models; the reward calculation made explicit.",
    )
    from rewardlab import __version__

    parser.add_argument("--version", action="version", version=f"rewardlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Import only the module of the command being run (or all of them for --help listings).
    wanted = next((a for a in (argv or []) if a in COMMANDS), None)
    for name, (module, help_) in COMMANDS.items():
        if not _present(module):
            p = sub.add_parser(name, help=f"{help_} (not implemented yet)")
            p.set_defaults(_run=lambda args, name=name: _not_yet(name))
            continue
        p = sub.add_parser(name, help=help_, description=help_)
        if wanted is None or name == wanted:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            if mod.__doc__:
                p.description = mod.__doc__.strip()
                p.formatter_class = argparse.RawDescriptionHelpFormatter
            p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if args.command is None else 2
    from rewardlab.errors import RewardlabError, RunFailure, RunInterrupted

    try:
        return int(args._run(args) or 0)
    except RunInterrupted as err:
        print(f"rewardlab {args.command}: {err}", file=sys.stderr)
        return RunInterrupted.exit_code
    except KeyboardInterrupt:
        print(f"rewardlab {args.command}: interrupted", file=sys.stderr)
        return RunInterrupted.exit_code
    except RunFailure as err:
        print(f"rewardlab {args.command}: error: {err}", file=sys.stderr)
        return 1
    except (RewardlabError, FileNotFoundError) as err:
        # Our own errors carry the problem and the fix; show them without a traceback.
        print(f"rewardlab {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
