"""Benchmark: K bootstrap heads on one backbone against K separate small models (issue 27).

Both ensembles estimate a reward model's uncertainty from the disagreement of K members, each
trained on its own bootstrap resample of the pairs (multinomial counts, `bootstrap_weights`):

- ``heads``: one tiny GPT-2 with K Bradley-Terry heads, ``train-rm --num-heads K --bootstrap``;
- ``models``: K tiny GPT-2s with one head each, model k trained (from its own initialisation)
  on the pairs repeated as column k of the same counts;
- ``plain``: for reference, one backbone with K heads trained on the same pairs (no bootstrap).

Data: `examples/make_tiny_rm_data.py`'s pairs ("more t1 wins"), training labels flipped with
probability 0.1, held-out labels clean, so an error on a held-out pair is the model's own.
Nothing is downloaded.

Measured per run, on the held-out pairs (d_k = r_chosen,k − r_rejected,k of member k):
- cost: ``train_s`` (the optimisation loops, summed over members) and ``parameters`` (all members);
- ``accuracy``: of the ensemble mean d̄;
- ``corr``: mean pairwise Pearson correlation of the members' rewards over the 2P responses;
- ``std``: mean over pairs of the population std of d_k over members (reward units), and
  ``rel_std``: that std over the std of d̄ across pairs (scale-free);
- ``auroc_std``: AUROC of std_k(d_k) for "the ensemble mean picks the wrong winner" (0.5: no signal);
  ``auroc_rel``: the same for std_k(d_k) / |d̄| (disagreement relative to the margin);
  ``auroc_margin``: the baseline without members, −|d̄| (a small margin flags an error) — the
  margin alone, which ``auroc_rel`` also contains, so disagreement adds signal only above it;
- ``dispute``: fraction of pairs whose winner the members do not all agree on.

Variants alternate (rotated order) over the repeats; medians (and every run) are printed as one
JSON object on stdout; training logs go to stderr.

    .venv/bin/python bench/bootstrap_heads.py [--repeats 3] [--pairs 256] [--heads 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("heads", "models", "plain")


def _example():
    spec = importlib.util.spec_from_file_location("make_tiny_rm_data", ROOT / "examples" / "make_tiny_rm_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties half (Mann-Whitney U / n₊n₋); NaN without both."""
    pos, neg = score[positive], score[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def _train(folder: Path, train_file: str, num_heads: int, bootstrap: bool, seed: int, args) -> tuple[str, float, int]:
    """(output folder, optimisation seconds, parameters) of one train-rm run on an in-memory tiny GPT-2."""
    from rewardlab.reward_model.train import RewardTrainingConfig, train_reward_model
    from rewardlab.tiny import build_model, build_tokenizer, tiny_config

    tok = build_tokenizer(32)
    model = build_model("sequence_classification",
                        tiny_config("gpt2", tok, hidden=args.hidden, layers=2, num_labels=num_heads), seed=seed)
    params = sum(p.numel() for p in model.parameters())
    cfg = RewardTrainingConfig(model="(in memory)", train_file=train_file, output_dir=str(folder), num_heads=num_heads,
                               bootstrap=bootstrap, seed=seed, learning_rate=3e-3, num_train_epochs=args.epochs,
                               per_device_train_batch_size=32, max_length=64, logging_steps=1000, progress=False)
    result = train_reward_model(cfg, model=model, tokenizer=tok)
    return result.output_dir, result.train_seconds, params


def _held_out_diffs(folder: str, rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(d (P, K), rewards (2P, K)) of a saved model on the held-out pairs."""
    from rewardlab.reward.scoring import RewardModel

    rm = RewardModel.from_pretrained(folder)
    prompts = [r["prompt"] for r in rows]
    chosen = rm.score_texts(prompts, [r["chosen"] for r in rows]).double().numpy()
    rejected = rm.score_texts(prompts, [r["rejected"] for r in rows]).double().numpy()
    return chosen - rejected, np.concatenate([chosen, rejected])


def _signal(d: np.ndarray, rewards: np.ndarray) -> dict[str, float]:
    mean = d.mean(1)
    wrong = mean <= 0  # the held-out labels are clean: chosen is better
    from rewardlab.reward.pipeline import head_correlation

    std = d.std(1)  # population std over members
    winners = np.sign(d)
    return {
        "accuracy": float((mean > 0).mean()),
        "corr": head_correlation(torch.from_numpy(rewards)),  # what the alarm's disagreement reads
        "std": float(std.mean()),
        "rel_std": float(std.mean() / mean.std()),
        "auroc_std": auroc(std, wrong),
        "auroc_rel": auroc(std / np.maximum(np.abs(mean), 1e-12), wrong),
        "auroc_margin": auroc(-np.abs(mean), wrong),
        "dispute": float((winners != winners[:, :1]).any(1).mean()),
        "errors": int(wrong.sum()),
    }


def run_variant(variant: str, rep: int, train_rows: list[dict], eval_rows: list[dict], work: Path, args) -> dict:
    from rewardlab.reward_model.loss import bootstrap_weights

    seed = 100 * rep
    folder = work / f"{variant}-{rep}"
    folder.mkdir()
    train_file = _write(folder / "train.jsonl", train_rows)
    if variant in ("heads", "plain"):
        out, seconds, params = _train(folder / "rm", train_file, args.heads, variant == "heads", seed, args)
        d, rewards = _held_out_diffs(out, eval_rows)
    else:
        counts = bootstrap_weights(len(train_rows), args.heads, seed).long()  # the counts the heads variant uses
        ds, rs, seconds, params = [], [], 0.0, 0
        for k in range(args.heads):
            resample = [row for row, c in zip(train_rows, counts[:, k].tolist()) for _ in range(c)]
            out, s, p = _train(folder / f"rm{k}", _write(folder / f"train{k}.jsonl", resample), 1, False, seed + k, args)
            d_k, r_k = _held_out_diffs(out, eval_rows)
            ds.append(d_k)
            rs.append(r_k)
            seconds, params = seconds + s, params + p
        d, rewards = np.concatenate(ds, 1), np.concatenate(rs, 1)
    return {"variant": variant, "rep": rep, "train_s": seconds, "parameters": params, **_signal(d, rewards)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=256, help="training pairs")
    parser.add_argument("--eval-pairs", type=int, default=400, help="held-out pairs")
    parser.add_argument("--heads", type=int, default=3, help="K: heads, or separate models")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import logging

    logging.disable(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    example = _example()
    runs = []
    t0 = time.perf_counter()
    # Training logs go to stderr: stdout holds the JSON alone.
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        for rep in range(args.repeats):
            train_rows = example.make_pairs(args.pairs, seed=1000 + rep, noise=0.1)
            eval_rows = example.make_pairs(args.eval_pairs, seed=2000 + rep, noise=0.0)
            order = VARIANTS[rep % 3:] + VARIANTS[:rep % 3]  # interleaved, rotated
            for variant in order:
                runs.append(run_variant(variant, rep, train_rows, eval_rows, Path(tmp), args))
    keys = [k for k in runs[0] if k not in ("variant", "rep")]
    medians = {v: {k: statistics.median(r[k] for r in runs if r["variant"] == v) for k in keys} for v in VARIANTS}
    print(json.dumps({"args": vars(args), "medians": medians, "runs": runs,
                      "wall_s": round(time.perf_counter() - t0, 1), "torch": torch.__version__}, indent=1))


if __name__ == "__main__":
    main()
