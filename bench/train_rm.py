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

GPU cases (``--case``, run one per process by bench/gpu_check.sh): a ~0.5 B Qwen2-architecture base
with random weights (hidden 1280, 20 layers, vocabulary 32000; built here, nothing downloaded),
trained for a few steps in bf16 — with LoRA (r 16, α 32, dropout 0.05: TRL's defaults) or fully
with gradient checkpointing — by `train-rm` and by TRL's ``RewardTrainer`` with the same settings,
then `rewardlab score --device cuda` on the LoRA run's merged folder. Each prints one JSON line:
``{"case", "ok", "s_per_step", "peak_gpu_mem_gib", ...}`` (``s_per_step``: the training loop's wall
time per optimiser step, first step included; for ``rm_score``, the scoring time per batch of 32,
model loading excluded)::

    python bench/train_rm.py --case rm_fixture --dir /tmp/rm05 [--size 0.5B] [--length 256] [--steps 8]
    python bench/train_rm.py --case rm_lora --dir /tmp/rm05        # rm_lora_trl, rm_gc, rm_gc_trl
    python bench/train_rm.py --case rm_score --dir /tmp/rm05
    python bench/train_rm.py --case rm_lora --dir /tmp/tiny --size tiny --device cpu   # a CPU smoke run
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


# --------------------------------------------------------------------------------------------
# GPU cases: one per process, one JSON line each (bench/gpu_check.sh)
# --------------------------------------------------------------------------------------------
GPU_SIZES = {
    "0.5B": dict(hidden=1280, layers=20, heads=20, vocab=32000),  # ≈ 0.56 B parameters with the score head
    "tiny": dict(hidden=32, layers=2, heads=2, vocab=64),  # a CPU smoke run of the same code
}
#: case → (trainer, options beside bf16): LoRA alone, or all weights with gradient checkpointing.
GPU_CASES = {
    "rm_lora": ("rewardlab", {"use_peft": True}),
    "rm_lora_trl": ("trl", {"use_peft": True}),
    "rm_gc": ("rewardlab", {"gradient_checkpointing": True}),
    "rm_gc_trl": ("trl", {"gradient_checkpointing": True}),
}
LORA = {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05}  # TRL's ModelConfig defaults


def make_gpu_fixture(args: argparse.Namespace) -> dict:
    """A random-weight Qwen2-architecture causal LM and long preference pairs under ``args.dir``."""
    import torch
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from make_tiny_rm_data import make_pairs, write_jsonl

    from rewardlab.tiny import build_tokenizer, tiny_config

    size = GPU_SIZES[args.size]
    tok = build_tokenizer(size["vocab"])
    config = tiny_config("qwen2", tok, hidden=size["hidden"], layers=size["layers"], heads=size["heads"],
                         max_positions=2 * args.length + 64)
    torch.manual_seed(0)
    with torch.device(args.device):  # initialising on the GPU takes seconds, on the CPU a minute
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(os.path.join(args.dir, "base"))
    tok.save_pretrained(os.path.join(args.dir, "base"))
    n = args.steps * args.batch_size
    rows = [dict(r, chosen=r["chosen"] + " [EOS]", rejected=r["rejected"] + " [EOS]")  # TRL then appends nothing
            for r in make_pairs(n, seed=1, vocab=size["vocab"] - 16, length=(args.length - 8, args.length))]
    write_jsonl(os.path.join(args.dir, "train.jsonl"), rows)
    write_jsonl(os.path.join(args.dir, "score.jsonl"),
                [{"prompt": r["prompt"], "response": r[k]} for r in rows for k in ("chosen", "rejected")])
    return {"parameters": sum(p.numel() for p in model.parameters()), "pairs": n, "length": args.length}


def gpu_train_case(args: argparse.Namespace) -> dict:
    """One training run of ``args.case`` on the fixture; seconds per step and peak GPU memory."""
    import torch

    side, options = GPU_CASES[args.case]
    cuda = torch.cuda.is_available() and args.device != "cpu"
    base, train_file = os.path.join(args.dir, "base"), os.path.join(args.dir, "train.jsonl")
    out = os.path.join(args.dir, "out", args.case)
    common = dict(batch_size=args.batch_size, max_length=args.length + 16, lr=1e-5, bf16=True, **options,
                  **(LORA if options.get("use_peft") else {}))
    if side == "rewardlab":
        from rewardlab.reward_model.train import RewardTrainingConfig, train_reward_model

        cfg = RewardTrainingConfig(
            model=base, train_file=train_file, output_dir=out, overwrite_output_dir=True, mixed_precision="bf16",
            max_steps=args.steps, per_device_train_batch_size=args.batch_size, max_length=args.length + 16,
            learning_rate=1e-5, logging_steps=args.steps, progress=False, seed=0, **options,
            **(LORA if options.get("use_peft") else {}))
        result = train_reward_model(cfg)
        loop_s, steps, loss = result.train_seconds, result.steps, result.metrics.get("rm/loss")
    else:
        from datasets import Dataset
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from trl import RewardConfig, RewardTrainer

        tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32,
                                                                   attn_implementation="sdpa")
        model.config.pad_token_id = tok.pad_token_id
        peft_config = None
        if options.get("use_peft"):
            from peft import LoraConfig

            peft_config = LoraConfig(task_type="SEQ_CLS", r=LORA["lora_r"], lora_alpha=LORA["lora_alpha"],
                                     lora_dropout=LORA["lora_dropout"])
        gc = bool(options.get("gradient_checkpointing"))
        wanted = dict(  # TRL defaults gradient_checkpointing to True: set both ways explicitly
            output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=args.steps, learning_rate=1e-5,
            max_length=args.length + 16, logging_steps=args.steps, save_strategy="no", report_to="none", bf16=True,
            gradient_checkpointing=gc, gradient_checkpointing_kwargs={"use_reentrant": False} if gc else None,
            use_cpu=not cuda, disable_tqdm=True, dataloader_num_workers=0, seed=0, lr_scheduler_type="linear",
            warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0)
        known = set(RewardConfig.__dataclass_fields__)
        config = RewardConfig(**{k: v for k, v in wanted.items() if k in known})
        clock = loop_clock()
        trainer = RewardTrainer(model=model, args=config, train_dataset=Dataset.from_json(train_file),
                                processing_class=tok, peft_config=peft_config, callbacks=[clock])
        trainer.train()
        loop_s, steps = clock.end - clock.begin, trainer.state.global_step
        loss = next((x["loss"] for x in reversed(trainer.state.log_history) if "loss" in x), None)
    return {"s_per_step": round(loop_s / max(steps, 1), 4), "steps": steps, **common,
            "final_loss": None if loss is None else round(float(loss), 4)}


def gpu_score_case(args: argparse.Namespace) -> dict:
    """`rewardlab score --device …` (the CLI, in this process) on the LoRA run's merged folder."""
    import json as _json

    from rewardlab.cli import main as cli

    folder = next((os.path.join(args.dir, "out", c) for c in ("rm_lora", "rm_gc")
                   if os.path.isfile(os.path.join(args.dir, "out", c, "config.json"))), None)
    if folder is None:
        raise SystemExit("no trained folder under --dir/out: run the rm_lora or rm_gc case first")
    from rewardlab.reward.scoring import RewardModel

    out = os.path.join(args.dir, "out", "scored.jsonl")
    batch = 32
    scoring = {"s": 0.0, "device": None}
    score_texts = RewardModel.score_texts

    def timed(self, *a, **k):  # the scoring alone, not the load: the command's own clock
        t = time.perf_counter()
        result = score_texts(self, *a, **k)
        scoring["s"] += time.perf_counter() - t
        scoring["device"] = str(next(self.model.parameters()).device)
        return result

    RewardModel.score_texts = timed
    t0 = time.perf_counter()
    try:
        code = cli(["score", "--reward-model", folder, "--pipeline", "raw", "--input",
                    os.path.join(args.dir, "score.jsonl"), "--output", out, "--device", args.device,
                    "--batch-size", str(batch)])
    finally:
        RewardModel.score_texts = score_texts
    seconds = time.perf_counter() - t0
    scores = [_json.loads(line)["score"] for line in open(out)] if code == 0 else []
    return {"ok": code == 0 and bool(scores) and scoring["device"].startswith(args.device), "exit": code,
            "rows": len(scores), "model": os.path.basename(folder), "model_device": scoring["device"],
            "s_per_step": round(scoring["s"] / max(1, -(-len(scores) // batch)), 4), "command_s": round(seconds, 2),
            "finite": all(isinstance(x, float) and x == x for x in scores)}


def run_gpu_case(args: argparse.Namespace) -> None:
    """Run ``args.case`` and print its JSON line (``ok: false`` with the error when it fails)."""
    import torch

    os.makedirs(args.dir, exist_ok=True)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    row: dict = {"case": args.case, "ok": True, "size": args.size}
    try:
        if args.case == "rm_fixture":
            row.update(make_gpu_fixture(args))
        elif args.case == "rm_score":
            row.update(gpu_score_case(args))
        else:
            row.update(gpu_train_case(args))
    except Exception as err:  # noqa: BLE001 — one JSON line whatever happens; the traceback goes to stderr
        import traceback

        traceback.print_exc()
        row.update(ok=False, error=f"{type(err).__name__}: {str(err)[:300]}")
    row["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None
    print(json.dumps(row), flush=True)


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
    parser.add_argument("--case", choices=["rm_fixture", "rm_score", *GPU_CASES],
                        help="one GPU case (bench/gpu_check.sh) in this process; needs --dir")
    parser.add_argument("--dir", help="the GPU cases' folder (fixture, outputs)")
    parser.add_argument("--size", choices=list(GPU_SIZES), default="0.5B", help="GPU cases: the base model")
    parser.add_argument("--length", type=int, default=256, help="GPU cases: tokens per response")
    parser.add_argument("--steps", type=int, default=8, help="GPU cases: optimiser steps")
    parser.add_argument("--device", default="auto", help="GPU cases: cuda, cpu or auto")
    args = parser.parse_args()

    if args.case:
        if not args.dir:
            parser.error("--case needs --dir")
        if args.batch_size == parser.get_default("batch_size"):
            args.batch_size = 8  # pairs per step in the GPU cases: 16 sequences of ~length tokens
        run_gpu_case(args)
        return

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
