"""Convert a TRL 1.10 PPOConfig (YAML/JSON) into a rewardlab PPO config.

    rewardlab migrate-trl-ppo trl_ppo.yaml -o ppo.yaml     # table on stdout, config in ppo.yaml
    rewardlab migrate-trl-ppo trl_ppo.yaml > ppo.yaml      # config on stdout, table on stderr
    rewardlab ppo --config ppo.yaml

The table lists every TRL field: the rewardlab field it maps to and the value (TRL's default
where the file left it out, converted where the units differ), then the fields with no rewardlab
equivalent and why. Lines marked (!) need a decision; they are repeated as CHECK comments at the
top of the migrated YAML. The reward is read as TRL 1.10 read it (``reward_pipeline: raw``, the
single logit) until you choose otherwise: see docs/migrating-from-trl-ppo.md.
"""

from __future__ import annotations

import argparse
import sys

from rewardlab.ppo.migrate import migrate_trl_ppo, read_trl_config, save_migrated


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the TRL 1.10 PPOConfig YAML or JSON file")
    parser.add_argument("-o", "--output", metavar="OUT.yaml", help="write the rewardlab config here (default: stdout)")
    parser.add_argument("--reward-num-labels", type=int, default=None, metavar="N",
                        help="outputs of the reward model (default: read from reward_model_path when it is a local folder)")


def run(args: argparse.Namespace) -> int:
    migration = migrate_trl_ppo(read_trl_config(args.file), reward_num_labels=args.reward_num_labels)
    if args.output:
        save_migrated(migration, args.output, source=args.file)
        print(migration.table())
        print(f"\nwrote {args.output}; run it with: rewardlab ppo --config {args.output}")
    else:
        print(migration.table(), file=sys.stderr)
        sys.stdout.write(migration.to_yaml(args.file))
    if migration.attention:
        print(f"{len(migration.attention)} field(s) marked (!) need a decision before training", file=sys.stderr)
    return 0
