"""The `rewardlab` command line: thin subcommands over the Python API.

Each subcommand lives beside the code it drives, in a module exposing
``add_arguments(parser)`` and ``run(args) -> int``; this file only dispatches, importing
the module lazily so that ``rewardlab --help`` stays fast.

Errors leave through one boundary (`rewardlab.boundary.explain`): bad input exits 2, a run that
could not go on exits 1, an interrupt exits 130, each with one message and no traceback
(``--debug`` or ``REWARDLAB_DEBUG=1`` shows it); see docs/troubleshooting.md.

    rewardlab score      score (prompt, response) pairs with a reward model and a pipeline
    rewardlab train-rm   train a Bradley-Terry or classifier reward model
    rewardlab inspect    diagnose a sequence-classification reward model
    rewardlab ppo        PPO against a reward model
    rewardlab compare    two policies on held-out prompts: reward, win rate, KL, length; report.html
    rewardlab serve      the reward calculation as an HTTP service (OpenRLHF, veRL, slime, TRL)
    rewardlab study      the controlled reward-calculation study
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import traceback

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "score": ("rewardlab.reward.commands", "score (prompt, response) pairs with a reward model and a pipeline"),
    "train-rm": ("rewardlab.reward_model.commands_train", "train a Bradley-Terry or classifier reward model"),
    "evaluate-rm": ("rewardlab.reward_model.commands_evaluate", "evaluate a reward model on preference data"),
    "inspect": ("rewardlab.reward_model.commands_inspect", "diagnose a reward model: head semantics, readings, recommended pipeline"),
    "ppo": ("rewardlab.ppo.commands", "PPO against a reward model"),
    "serve": ("rewardlab.serve.commands", "serve the reward calculation over HTTP: OpenRLHF, veRL, slime and TRL runs"),
    "study": ("rewardlab.study.commands", "the controlled study: which reward calculation wins"),
    "compare": ("rewardlab.compare.commands", "compare two policies on held-out prompts: reward, win rate, KL, length"),
    "migrate-trl-ppo": ("rewardlab.ppo.commands_migrate", "convert a TRL 1.10 PPOConfig YAML/JSON into a rewardlab PPO config"),
}


def _present(module: str) -> bool:
    """Whether a command's module exists (commands land one issue at a time).

    Looked up as a file, not with ``importlib.util.find_spec``, which would import the parent
    packages (``rewardlab.reward_model`` pulls in torch and transformers: seconds per command).
    """
    spec = importlib.util.find_spec("rewardlab")
    root = os.path.dirname(spec.origin) if spec and spec.origin else ""
    path = os.path.join(root, *module.split(".")[1:])
    return os.path.isfile(path + ".py") or os.path.isfile(os.path.join(path, "__init__.py"))


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
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (also REWARDLAB_DEBUG=1); see docs/troubleshooting.md")
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
    """Run one command and return its exit code: 0, 2 (bad input), 1 (run failed), 130 (interrupted).

    Known failure classes become one message on stderr (`rewardlab.boundary.explain`); anything
    else is a bug and keeps its traceback. ``--debug`` / ``REWARDLAB_DEBUG=1`` print the traceback too.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is global: accepted before or after the command name (never a config value after "--").
    head = argv[: argv.index("--")] if "--" in argv else argv
    debug = "--debug" in head or os.environ.get("REWARDLAB_DEBUG", "") not in ("", "0")
    if "--debug" in head:
        argv = [a for i, a in enumerate(argv) if not (a == "--debug" and i < len(head))]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args._run(args) or 0)
    except BaseException as err:  # noqa: BLE001 - one boundary; unknown errors are re-raised below
        if isinstance(err, SystemExit):
            raise
        from rewardlab.boundary import explain

        known = explain(err)
        if known is None:  # not an input or environment problem: a bug, shown with its traceback
            raise
        code, message = known
        if debug:
            traceback.print_exception(err)
        print(f"rewardlab {args.command}: {'error: ' if code != 130 else ''}{message}", file=sys.stderr)
        if not debug and code == 1:
            print("(--debug or REWARDLAB_DEBUG=1 shows the traceback; see docs/troubleshooting.md)", file=sys.stderr)
        return code


if __name__ == "__main__":
    raise SystemExit(main())
