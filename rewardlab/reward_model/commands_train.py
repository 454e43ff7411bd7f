"""Train a Bradley-Terry or classifier reward model.

    rewardlab train-rm --model BASE --train-file prefs.jsonl --output-dir runs/rm
    rewardlab train-rm --config examples/train_rm_tiny.yaml --learning-rate 1e-3
    accelerate launch -m rewardlab.cli train-rm --config run.yaml      # several GPUs

    rewardlab train-rm --config run.yaml --resume                       # continue OUTPUT_DIR.partial

Options come from a YAML file (--config), overridden by the command line. The model folder
written to --output-dir records its head semantics, loss, fitted temperature and reward
mean/std in config.json (see docs/reward-models.md); metrics go to OUTPUT_DIR/metrics.jsonl.

One run per folder (docs/runs.md): the run writes into OUTPUT_DIR.partial (run.json with the run
id, metrics, checkpoints) and renames it to OUTPUT_DIR when the model is complete. A leftover
.partial or an existing OUTPUT_DIR is refused unless --resume (continue it: the checkpoint's
config is the run's config; only max_steps, num_train_epochs, logging/eval/save cadence,
save_total_limit, report_to and progress may change) or --overwrite-output-dir. Everything is
checked before the model loads; Ctrl-C stops with exit code 130, checkpoints intact.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from rewardlab.errors import RewardlabError


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(the non-None type of a field annotation, whether None is allowed)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return annotation, False


def _parser_for(base: Any, optional: bool):
    def parse(text: str) -> Any:
        if optional and text.lower() in ("none", "null"):
            return None
        if base is bool:
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
        if typing.get_origin(base) is typing.Literal:
            if text not in typing.get_args(base):
                raise argparse.ArgumentTypeError(f"choose one of {', '.join(typing.get_args(base))}")
            return text
        return base(text)

    parse.__name__ = getattr(base, "__name__", "value")  # argparse says "invalid float value: 'abc'"
    return parse


def _resume_mode(text: str) -> bool | str:
    if text.lower() == "auto":
        return "auto"
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"--resume takes no value, 'auto', true or false; got {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rewardlab.reward_model.config import RewardTrainingConfig

    parser.add_argument("--config", metavar="YAML", help="read options from this YAML file (flags override it)")
    hints = typing.get_type_hints(RewardTrainingConfig)
    for f in dataclasses.fields(RewardTrainingConfig):
        base, optional = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        flags = [flag] + ([f"--{f.name}"] if "_" in f.name else [])  # TRL's scripts spell them with underscores
        if f.name == "model":
            flags.append("--model_name_or_path")  # TRL's ModelConfig name
        default = f.default if f.default is not dataclasses.MISSING else "none"
        help_ = f"{f.metadata.get('help', '')} (default: {default})"
        if f.name == "resume":
            parser.add_argument(*flags, dest=f.name, nargs="?", const=True, default=None, type=_resume_mode,
                                metavar="auto", help=help_)
        elif typing.get_origin(base) is list:
            parser.add_argument(*flags, dest=f.name, type=lambda t: [x for x in t.split(",") if x], default=None,
                                help=help_, metavar=f.name.upper())
        elif base is bool and not optional:
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            parser.add_argument(*flags, dest=f.name, type=_parser_for(base, optional), default=None, help=help_,
                                metavar=f.name.upper())


def config_from_args(args: argparse.Namespace):
    """The training config: defaults, then the YAML file, then the flags given."""
    from rewardlab.reward_model.config import RewardTrainingConfig

    values: dict[str, Any] = {}
    if args.config:
        from rewardlab.yamlconf import load_yaml_file  # 1e-4 is a float; syntax errors name the line

        loaded = load_yaml_file(args.config, "--config") or {}
        if not isinstance(loaded, dict):
            raise RewardlabError(f"--config {args.config}: expected a mapping of option: value")
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    for f in dataclasses.fields(RewardTrainingConfig):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    return RewardTrainingConfig.from_dict(values).validate().check_paths()  # paths checked before any load


def run(args: argparse.Namespace) -> int:
    import logging

    from rewardlab.reward_model.train import train_reward_model

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = config_from_args(args)
    result = train_reward_model(config)
    m = result.metrics
    summary = f"saved {result.output_dir}: {result.steps} steps, train accuracy {m.get('rm/accuracy', float('nan')):.3f}"
    if "rm/eval/accuracy" in m:
        summary += f", held-out accuracy {m['rm/eval/accuracy']:.3f}"
    if result.metadata.temperature is not None:
        summary += f", temperature {result.metadata.temperature:.3g}"
    print(summary)
    return 0
