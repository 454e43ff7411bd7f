"""Benchmark: reward-model training throughput, rewardlab's `train-rm` against `trl.RewardTrainer`.

Same tiny GPT-2 base model (hidden 64, 2 layers, one head), same preference pairs, batch size,
epochs, learning rate and token sequences (responses end with the EOS token in the data, so TRL
appends nothing and both sides see identical ids). Each side runs in its own subprocess, so its
peak resident memory (ru_maxrss) is its own; the sides alternate A B A B over the repeats and
medians are reported, because this machine is shared and noisy.

Measured per run:
- ``pairs_per_s``: pairs trained / wall time of the optimisation loop alone (rewardlab: the loop
  in `train_reward_model`, after `accelerator.prepare`; TRL: from the ``on_train_begin`` to the
  ``on_train_end`` callback, i.e. after the Trainer's own preparation);
- ``train_call_s``: the whole training call (rewardlab: `train_reward_model`, including data
  loading, the final pass for reward statistics and saving; TRL: `trainer.train()`, without its
  data preparation in the constructor or saving);
- ``total_s``: the whole subprocess (imports, data, model, training, saving);
- ``peak_rss_mb``: the subprocess's peak resident memory.

Prints one JSON line; ``ratio`` = rewardlab pairs/s ÷ TRL pairs/s (target ≥ 1.0).

    .venv/bin/python bench/train_rm.py [--repeats 3] [--pairs 1024] [--batch-size 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def make_data(folder: str, n: int, hidden: int) -> None:
    """Preference pairs ('more t1 wins', responses ending in EOS) and a tiny causal-LM base folder."""
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from make_tiny_rm_data import make_pairs, write_jsonl

    from rewardlab.tiny import build_model, build_tokenizer, tiny_config

    rows = [dict(r, chosen=r["chosen"] + " [EOS]", rejected=r["rejected"] + " [EOS]") for r in make_pairs(n, seed=1)]
    write_jsonl(os.path.join(folder, "train.jsonl"), rows)
    tok = build_tokenizer(32)
    base = build_model("causal_lm", tiny_config("gpt2", tok, hidden=hidden, layers=2, heads=2), seed=0)
    base.save_pretrained(os.path.join(folder, "base"))
    tok.save_pretrained(os.path.join(folder, "base"))


def loop_clock():
    """A TRL/transformers callback noting when the training loop starts and ends."""
    from transformers import TrainerCallback

    class LoopClock(TrainerCallback):
        begin = end = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.end = time.perf_counter()

    return LoopClock()


def worker(side: str, args: argparse.Namespace) -> dict:
    """One training run in this process; returns its measurements."""
    t_start = time.perf_counter()
    import torch

    torch.set_num_threads(args.threads)
    out = tempfile.mkdtemp(dir=args.dir)
    base, train_file = os.path.join(args.dir, "base"), os.path.join(args.dir, "train.jsonl")
    if side == "rewardlab":
        from rewardlab.reward_model.train import RewardTrainingConfig, train_reward_model

        cfg = RewardTrainingConfig(
            model=base, train_file=train_file, output_dir=os.path.join(out, "rm"), learning_rate=args.lr,
            per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs, max_length=128,
            logging_steps=10, progress=False, seed=0,
        )
        t0 = time.perf_counter()
        result = train_reward_model(cfg)
        train_call_s = time.perf_counter() - t0
        pairs, loop_s = result.train_pairs, result.train_seconds
        final_loss = result.metrics["rm/loss"]
    else:
        from datasets import Dataset
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from trl import RewardConfig, RewardTrainer

        tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, use_safetensors=True)
        model.config.pad_token_id = tok.pad_token_id
        config = RewardConfig(
            output_dir=out, per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs,
            learning_rate=args.lr, max_length=128, logging_steps=10, save_strategy="no", report_to="none",
            bf16=False, use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0, lr_scheduler_type="linear",
            warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        )
        clock = loop_clock()
        trainer = RewardTrainer(model=model, args=config, train_dataset=Dataset.from_json(train_file),
                                processing_class=tok, callbacks=[clock])
        t0 = time.perf_counter()
        trainer.train()
        train_call_s = time.perf_counter() - t0
        # The loop alone, as on our side: from after the optimiser/model preparation to the last step.
        loop_s = clock.end - clock.begin
        pairs = len(trainer.train_dataset) * args.epochs
        final_loss = next((x["loss"] for x in reversed(trainer.state.log_history) if "loss" in x), None)
        trainer.save_model(os.path.join(out, "rm"))
    return {
        "side": side, "pairs": pairs, "loop_s": loop_s, "pairs_per_s": pairs / loop_s,
        "train_call_s": train_call_s, "total_s": time.perf_counter() - t_start,
        "final_loss": None if final_loss is None else float(final_loss),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _median_or_none(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return round(statistics.median(values), 4) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each subprocess")
    parser.add_argument("--worker", choices=["rewardlab", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    runs: dict[str, list[dict]] = {"rewardlab": [], "trl": []}
    with tempfile.TemporaryDirectory() as folder:
        make_data(folder, args.pairs, args.hidden)
        common = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in ("pairs", "epochs", "batch_size", "hidden", "lr", "threads")]
        for i in range(args.repeats):
            # A B then B A: neither side always runs first (caches, thermal state, neighbours).
            order = ("rewardlab", "trl") if i % 2 == 0 else ("trl", "rewardlab")
            for side in order:
                proc = subprocess.run([sys.executable, __file__, "--worker", side, "--dir", folder, *common],
                                      capture_output=True, text=True, env=env, cwd=ROOT)
                if proc.returncode != 0:
                    sys.stderr.write(proc.stderr[-4000:])
                    raise SystemExit(f"{side} run failed")
                runs[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))

    def med(side: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[side])

    ours, trl = med("rewardlab", "pairs_per_s"), med("trl", "pairs_per_s")
    print(json.dumps({
        "benchmark": "train_rm",
        "ratio": round(ours / trl, 3),
        "rewardlab_pairs_per_s": round(ours, 1),
        "trl_pairs_per_s": round(trl, 1),
        "total_s_ratio": round(med("trl", "total_s") / med("rewardlab", "total_s"), 3),
        "rewardlab_total_s": round(med("rewardlab", "total_s"), 2),
        "trl_total_s": round(med("trl", "total_s"), 2),
        "rewardlab_peak_rss_mb": round(med("rewardlab", "peak_rss_mb"), 1),
        "trl_peak_rss_mb": round(med("trl", "peak_rss_mb"), 1),
        "train_call_ratio": round(med("trl", "train_call_s") / med("rewardlab", "train_call_s"), 3),
        "rewardlab_final_loss": _median_or_none(runs["rewardlab"], "final_loss"),
        "trl_final_loss": _median_or_none(runs["trl"], "final_loss"),
        "pairs": args.pairs, "epochs": args.epochs, "batch_size": args.batch_size, "hidden": args.hidden,
        "threads": args.threads, "repeats": args.repeats,
        "all_pairs_per_s": {s: [round(r["pairs_per_s"], 1) for r in runs[s]] for s in runs},
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.python_version()}",
    }))


if __name__ == "__main__":
    main()
