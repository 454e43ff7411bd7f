"""PPO against a reward model, from a YAML config with command-line overrides.

    rewardlab ppo --make-tiny runs/tiny --config examples/ppo_tiny.yaml      # tiny models, CPU, ~1 min
    rewardlab ppo --config my.yaml --set kl.kl_coef=0.1 --cliprange 0.1
    rewardlab ppo --config my.yaml --resume                                # continue the run in output_dir
    rewardlab ppo --config my.yaml --resume=auto                           # … or start it if it has no checkpoint
    rewardlab ppo --config my.yaml --overwrite-output-dir                  # replace the run in output_dir
    accelerate launch --config_file examples/accelerate/ddp.yaml -m rewardlab.cli ppo --config my.yaml

Every config field is also a flag (``--kl_coef 0.1``); ``--set section.key=value`` does the same.
The config and the output folder are checked before any model loads. One run per folder:
``run.output_dir`` holding another run's files is refused unless ``--resume`` (continue it: the
checkpoint's config is the run's config; only total_episodes, save_steps, logging_steps,
report_to and progress_bar may change) or ``--overwrite-output-dir``. Outputs in ``run.output_dir``:
``run.json`` (run id, resumes), ``policy/``, ``checkpoints/``, ``config.yaml``, ``pipeline.txt``,
``metrics.jsonl``, ``train.log`` (a line per logging step), ``samples.jsonl``, ``versions.json``. See docs/runs.md. Ctrl-C stops with exit code 130, checkpoints intact.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

from rewardlab.atomic import write_jsonl
from rewardlab.ppo.config import ALIASES, check_paths, field_docs, load_config
from rewardlab.tracking import check_trackers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (nested sections or flat TRL-style keys)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field, e.g. --set ppo.cliprange=0.1 (repeatable)")
    parser.add_argument("--resume", nargs="?", const=True, default=False, type=_resume_mode, metavar="auto",
                        help="continue the run in output_dir from its newest checkpoint (an error if it has none); "
                             "--resume=auto starts fresh when there is none")
    parser.add_argument("--overwrite-output-dir", action="store_true",
                        help="replace the run in output_dir (same as --overwrite_output_dir true); the old files "
                             "are deleted once the new run's first checkpoint or final output is complete")
    parser.add_argument("--make-tiny", metavar="DIR",
                        help="build a tiny local policy, reward model and prompts in DIR (if missing) before training")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the resolved config, then exit")
    groups: dict[str, argparse._ArgumentGroup] = {}
    earlier = {new: old for old, new in ALIASES.items()}  # --dataset still means --dataset_name
    for section, name, default, help_ in field_docs():
        group = groups.setdefault(section, parser.add_argument_group(f"config: {section}"))
        shown = default if not callable(default) else None
        flags = [f"--{name}"] + ([f"--{earlier[name]}"] if name in earlier else [])
        group.add_argument(*flags, dest=f"cfg__{section}__{name}", default=None, metavar="V",
                           help=f"{help_} (default: {shown!r})")


def _resume_mode(text: str) -> bool | str:
    if text.lower() == "auto":
        return "auto"
    if text.lower() in ("true", "1", "yes"):
        return True
    raise argparse.ArgumentTypeError(f"--resume takes no value or 'auto', got {text!r}")


def run(args: argparse.Namespace) -> int:
    if args.make_tiny:
        make_tiny(args.make_tiny)
        if not args.config:
            print(f"tiny models and prompts written to {args.make_tiny}")
            return 0
    overrides = list(args.set)
    for key, value in vars(args).items():
        if key.startswith("cfg__") and value is not None:
            _, section, name = key.split("__", 2)
            overrides.append(f"{section}.{name}={value}")
    if args.overwrite_output_dir:
        overrides.append("run.overwrite_output_dir=true")
    cfg = load_config(args.config, overrides)
    check_trackers(cfg.run.report_to)  # a missing tracker package: refused now, a dry run included
    sizes = cfg.sizes()  # world-size dependent divisibility, still before any model loads
    spec = check_paths(cfg)  # model folders, the prompts file, the rule functions: local, complete, importable
    if args.dry_run:  # stdout reads back as --config; the derived sizes go beside it, on stderr
        if cfg.data.dataset_name is not None:  # a run reads them once, before any model loads; a dry run reads them here
            from rewardlab.ppo.prompts import load_prompt_rows

            spec.check_columns(list(load_prompt_rows(cfg.data)[1]))
        print(json.dumps(cfg.to_dict(), indent=1))
        print("derived: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(sizes).items()), file=sys.stderr)
        return 0
    from rewardlab.ppo.trainer import PPOTrainer

    PPOTrainer(cfg, resume=args.resume).train()
    return 0


def make_tiny(folder: str, *, vocab_size: int = 64, hidden: int = 32, layers: int = 2, num_prompts: int = 128,
              seed: int = 0) -> None:
    """Write ``policy/``, ``reward/`` (a 2-head Bradley-Terry model, random) and ``prompts.jsonl`` (``prompt``
    and a toy ``answer`` column: the prompt's first word) to ``folder``.

    Nothing is downloaded. Existing parts are left as they are, so repeated calls are cheap; each
    part appears in one rename (`rewardlab.atomic`), so a killed call leaves no half-written model.
    """
    import random

    from rewardlab.atomic import atomic_dir
    from rewardlab.reward.metadata import RewardModelMetadata, write_metadata
    from rewardlab.tiny import build_model, build_tokenizer, tiny_config

    tok = build_tokenizer(vocab_size)
    policy_dir, reward_dir = os.path.join(folder, "policy"), os.path.join(folder, "reward")
    if not os.path.isdir(policy_dir):
        policy = build_model("causal_lm", tiny_config("gpt2", tok, hidden=hidden, layers=layers), seed=seed)
        with atomic_dir(policy_dir) as tmp:
            policy.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
    if not os.path.isdir(reward_dir):
        config = tiny_config("gpt2", tok, hidden=hidden, layers=layers, num_labels=2)
        write_metadata(config, RewardModelMetadata(semantics="bradley_terry", num_heads=2))
        reward = build_model("sequence_classification", config, seed=seed + 1)
        with atomic_dir(reward_dir) as tmp:
            reward.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
    prompts_path = os.path.join(folder, "prompts.jsonl")
    if not os.path.exists(prompts_path):
        rng = random.Random(seed)
        words = [w for w in tok.get_vocab() if w.startswith("t") and w[1:].isdigit()]
        prompts = [" ".join(rng.choices(words, k=rng.randint(3, 8))) for _ in range(num_prompts)]
        # a toy ground truth for rule terms (examples/tiny_rules.py): the prompt's first word
        write_jsonl(prompts_path, [{"prompt": p, "answer": p.split()[0]} for p in prompts])
