"""How a study's proxy and its monitors read the policy's final samples against the SFT policy's (issue 27).

For each judged run of a finished `rewardlab study` (1-head strategies, every seed), scores the run's
kept final responses (`final_responses`: the first evaluation prompts, one sample each) and the SFT
policy's samples on the same prompts with the run's proxy and its monitors (the cache's single-head
proxies of seeds s, 1000 + s, 2000 + s …), and prints one JSON object: per strategy, medians over seeds of

- ``mean_sft`` / ``mean_final``: the members' mean reward (averaged over members), SFT samples → final;
- ``spread_sft`` / ``spread_final``: mean over samples of the across-member std of the rewards, each
  member shifted by its mean on the SFT samples (`rewardlab.ppo.alarm.head_spread`, the alarm's ``uncertainty``
  input, docs/ppo.md);
- ``corr_sft`` / ``corr_final``: mean pairwise Pearson correlation of the members' rewards over the samples
  (`rewardlab.reward.pipeline.head_correlation`, what the alarm's ``disagreement`` reads).

The `uncertainty` signal rises only when ``spread_final`` > ``spread_sft``: members that agree on what
the policy found (means rising together, spread flat or falling) give no second opinion.

    .venv/bin/python bench/monitor_spread.py study_all/brackets [--task brackets]

Nothing is trained; SFT samples are drawn with the evaluation's seed (seconds on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STRATEGIES = ("raw", "whiten", "logsigmoid", "lsc", "par")


def cached_proxies(cache: str) -> dict[int, str]:
    """{seed: model folder} of the cache's single-head proxies (their train_config.json says seed and heads)."""
    out = {}
    for name in sorted(os.listdir(cache)):
        cfg_path = os.path.join(cache, name, "model", "train_config.json")
        if name.startswith("proxy-") and os.path.isfile(cfg_path):
            with open(cfg_path, encoding="utf-8") as f:
                cfg = json.load(f)
            if cfg.get("num_heads", 1) == 1:
                if cfg["seed"] in out:
                    raise SystemExit(f"{cache} holds two single-head proxies of seed {cfg['seed']} (a cache shared by "
                                     "several studies); run this on a study with a fresh --out")
                out[cfg["seed"]] = os.path.join(cache, name, "model")
    return out


def score(models: list, prompts: list[str], responses: list[str]) -> torch.Tensor:
    """(N, K) float64: each member's reward of prompt + " " + response (the study's text layout)."""
    return torch.cat([m.score_texts(prompts, [" " + r for r in responses]) for m in models], 1).double()


def main(argv: list[str] | None = None) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rewardlab.ppo.alarm import head_spread
    from rewardlab.reward.pipeline import head_correlation
    from rewardlab.reward.scoring import RewardModel
    from rewardlab.study.multi import BUILTIN_TASKS
    from rewardlab.study.run import MONITOR_SEEDS
    from rewardlab.study.runs import evaluate_policy
    from rewardlab.study.tasks.base import load_task

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study", help="a finished study's output folder (results.json, cache/)")
    parser.add_argument("--task", default=None, help=f"built-in task of the study ({', '.join(BUILTIN_TASKS)}; "
                        "default: the folder's name)")
    args = parser.parse_args(argv)
    name = args.task or os.path.basename(os.path.normpath(args.study))
    if name not in BUILTIN_TASKS:
        parser.error(f"task {name!r} is not built in; pass --task {' / '.join(BUILTIN_TASKS)}")
    with open(os.path.join(args.study, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    task = load_task(BUILTIN_TASKS[name])
    cache = os.path.join(args.study, "cache")
    proxies = cached_proxies(cache)
    sft_dir = next(os.path.join(cache, d) for d in os.listdir(cache) if d.startswith("sft-"))
    tok = AutoTokenizer.from_pretrained(sft_dir)
    sft = AutoModelForCausalLM.from_pretrained(sft_dir, use_safetensors=True).eval()
    prompts = results["eval_prompts"]
    base = evaluate_policy(sft, sft, tok, task, prompts, None, max_new_tokens=task.max_response_tokens, seed=0)
    monitors = results["preset"].get("monitors", 0)
    members: dict[int, list] = {}
    per: dict[str, list[dict[str, float]]] = {}
    for run in results["runs"]:
        strategy = run["key"].split("/", 1)[1]
        if not run["key"].startswith("1-head/") or strategy not in STRATEGIES:
            continue
        seed = run["job"]["seed"]
        seeds = [seed] + [MONITOR_SEEDS * m + seed for m in range(1, run["job"].get("monitors", monitors) + 1)]
        if seed not in members:
            members[seed] = [RewardModel.from_pretrained(proxies[s], semantics="bradley_terry") for s in seeds]
        final = run["final_responses"]
        n = len(final)
        ps = prompts[:n]

        sft_scores = score(members[seed], ps, base["responses"][:n])
        final_scores = score(members[seed], ps, final)
        shift = sft_scores.mean(0)  # each member's mean on the SFT samples, as the alarm shifts its heads
        per.setdefault(strategy, []).append({
            "mean_sft": float(sft_scores.mean()), "mean_final": float(final_scores.mean()),
            "spread_sft": head_spread(sft_scores, shift), "spread_final": head_spread(final_scores, shift),
            "corr_sft": head_correlation(sft_scores), "corr_final": head_correlation(final_scores),
        })
    out = {"study": args.study, "task": name, "members": 1 + monitors, "responses_per_run": len(prompts[:n]) if per else 0,
           "strategies": {s: {"seeds": len(rows), **{k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}}
                          for s, rows in per.items()}}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
