"""Compare two policies (final vs SFT, or two checkpoints) on held-out prompts.

Samples one response per prompt from policy A and policy B (same per-prompt seeds), scores both
with a reward model through a reward pipeline, and writes to --out:

  results.json   per policy: score mean/std/quantiles, raw reward, KL to the reference, length,
                 EOS rate (and gold); the win rate of A over B (ties half) with a 95 % Wilson
                 interval, by score (and gold); every paired sample
  report.html    one self-contained page: score histograms and ECDFs, paired scores per prompt,
                 win-rate bars with intervals, length and KL histograms, paired samples side by side

KL is measured against --reference (default: policy B, the starting policy) on each policy's own
samples. Centred pipelines (center, lsc, par, standardize) centre on --num-reference-samples
samples of the reference per prompt, as PPO does. See docs/compare.md.

Example:
  rewardlab compare --policy-a runs/ppo_tiny/policy --policy-b runs/tiny/policy \\
      --reward-model runs/tiny/reward --prompts runs/tiny/prompts.jsonl --num-prompts 64 --out compare_out
  rewardlab compare --policy-a runs/ppo/checkpoints/step-200/policy --policy-b runs/ppo/policy \\
      --reference runs/sft --reward-model runs/rm --pipeline "mean|lsc(q=0.5)" \\
      --prompts org/data --dataset-split test --gold my_gold.py:gold --device cuda
"""

from __future__ import annotations

import argparse

from rewardlab.datasets_io import add_dataset_arguments
from rewardlab.devices import add_device_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy-a", required=True, metavar="PATH",
                        help="policy A, e.g. the final policy (a causal-LM folder or Hub name)")
    parser.add_argument("--policy-b", required=True, metavar="PATH",
                        help="policy B, e.g. the SFT policy or an earlier checkpoint (same tokenizer as A)")
    parser.add_argument("--reference", metavar="PATH", default=None,
                        help="the policy KL is measured against and centred pipelines centre on (default: policy B)")
    parser.add_argument("--reward-model", required=True, metavar="PATH",
                        help="reward model folder (AutoModelForSequenceClassification) or Hub name")
    parser.add_argument("--pipeline", metavar="SPEC", default=None,
                        help="reward pipeline spec (default: the model's principal reading: 'mean' for Bradley-Terry "
                             "heads, 'logodds(pos=1,neg=0)' for a 2-class classifier); rule terms read the prompts' "
                             "other columns")
    parser.add_argument("--semantics", choices=("bradley_terry", "classifier"), default=None,
                        help="head semantics of the reward model (default: its rewardlab metadata)")
    parser.add_argument("--allow-semantics-mismatch", action="store_true",
                        help="keep --semantics even when the heads' correlation contradicts it")
    add_dataset_arguments(parser, "--prompts", required=True, what="held-out prompts (a 'prompt' column)")
    parser.add_argument("--prompt-column", default="prompt", help="the column holding the prompts (default: %(default)s)")
    parser.add_argument("--gold", metavar="FN", default=None,
                        help="optional gold reward, module:function or path/to/file.py:function, "
                             "fn(prompts, responses) -> scores")
    parser.add_argument("--num-prompts", type=int, default=256, help="the first N prompts (default: %(default)s)")
    parser.add_argument("--response-length", type=int, default=64, help="max new tokens per response (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature; logprobs for KL use the same (default: %(default)s)")
    parser.add_argument("--max-prompt-length", type=int, default=None, help="drop prompts longer than this many tokens")
    parser.add_argument("--num-reference-samples", type=int, default=4,
                        help="K reference samples per prompt for centred pipelines (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed, the same per prompt for A and B (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per forward pass (default: %(default)s)")
    parser.add_argument("--label-a", default="A", help="how the report names policy A (default: %(default)s)")
    parser.add_argument("--label-b", default="B", help="how the report names policy B (default: %(default)s)")
    parser.add_argument("--show-pairs", type=int, default=24,
                        help="paired samples shown in report.html; results.json keeps all (default: %(default)s)")
    parser.add_argument("--out", default="compare_out", help="output folder (default: %(default)s)")
    add_device_argument(parser)


def run(args: argparse.Namespace) -> int:
    import os

    from transformers.utils import logging as hf_logging

    from rewardlab.compare.report import verdict
    from rewardlab.compare.run import compare_policies

    hf_logging.disable_progress_bar()  # three models load in a second each; errors stay one line
    results = compare_policies(
        args.policy_a, args.policy_b, reward_model=args.reward_model, prompts=args.prompts, out_dir=args.out,
        pipeline=args.pipeline, reference=args.reference, gold=args.gold, num_prompts=args.num_prompts,
        response_length=args.response_length, temperature=args.temperature, seed=args.seed, device=args.device,
        semantics=args.semantics, allow_semantics_mismatch=args.allow_semantics_mismatch,
        num_reference_samples=args.num_reference_samples, prompt_column=args.prompt_column,
        dataset_config=args.dataset_config, dataset_split=args.dataset_split, max_prompt_length=args.max_prompt_length,
        batch_size=args.batch_size, labels=(args.label_a, args.label_b), show_pairs=args.show_pairs,
    )
    s = results["settings"]
    print(f"rewardlab compare: {s['num_prompts']} prompts, pipeline {s['pipeline']}, on {s['device']}")
    for key in ("a", "b"):
        p = results["policies"][key]
        print(f"  {p['label']:<8} score {p['score']['mean']:+.4f} ± {p['score']['std']:.4f}   "
              f"KL {p['kl']['mean']:.4f}   length {p['length']['mean']:.1f}   EOS {p['eos_rate']:.2f}"
              + (f"   gold {p['gold']['mean']:+.4f}" if p.get("gold") else ""))
    for field in results["win_rate"]:
        print("  " + verdict(results, field))
    print(f"wrote {os.path.join(args.out, 'results.json')} and {os.path.join(args.out, 'report.html')}")
    return 0
