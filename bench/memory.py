"""Benchmark: peak memory and seconds of a PPO update per memory option, beside TRL 1.10's PPOTrainer.

Two realistic sizes with random weights, built once by the shared ``make_tiny.py`` of
``../shared/bench/trl_baseline`` (policy, reward and value models of one architecture):
``124M`` (the GPT-2-small config: hidden 768, 12 layers, vocab 50257) and ``0.37B`` (a Llama config:
hidden 1024, 20 layers, 16 heads, vocab 32000). Each update: 8 prompts of 64 tokens, 128 new tokens
(no stop token), one PPO epoch, one minibatch, fp32 on CPU.

Our cases (every model loaded from its folder by the trainer, so the options apply as a user sets them):

    full          full fine-tune: policy, reference, critic (from the value model), reward model
    gc            + models.gradient_checkpointing
    lora          models.use_peft: LoRA on policy and critic; the reference is the policy's base, adapter off
    lora_gc       + gradient checkpointing
    adapter       LoRA with models.critic=adapter: one base for policy, reference and critic
    adapter_gc    + gradient checkpointing

TRL's cases (``trl.experimental.ppo.PPOTrainer`` through the shared ``bench_trl_ppo.py``, under the TRL
venv): ``trl`` as shipped (its PPOConfig turns gradient checkpointing on, for the policy only),
``trl_nogc`` without it, ``trl_peft`` with a LoRA ``peft_config`` (reference = adapter disabled;
the value model stays a full model, as in TRL; the policy checkpointed as shipped) and ``trl_peft_nogc``
the same without checkpointing, via ``bench/trl_ppo_options.py``. The summary pairs each with ours
in the same configuration: full/trl_nogc, gc/trl, lora/trl_peft_nogc, lora_gc/trl_peft.

Each run is its own subprocess; peak memory is that process's ``ru_maxrss`` (read by the parent with
``wait4``) on CPU and ``torch.cuda.max_memory_allocated`` on a GPU; ``after_load`` is the worker's RSS
once every model is loaded, so ``peak − after_load`` is what the update itself adds (activations,
gradients, optimiser state); ``activation_mib`` counts the distinct non-parameter tensors autograd
keeps for the backward pass during an update (our side only: a saved-tensors hook). Cases alternate in order between repeats. Prints one JSON line per
(size, case) and a summary with the ratios the issue targets.

    .venv/bin/python bench/memory.py                                   # both sizes, every case, 1 repeat
    .venv/bin/python bench/memory.py --sizes 124M --repeats 3
    .venv/bin/python bench/memory.py --sizes 124M --cases adapter_gc --lengths 128,256,512   # growth with length

Needs the TRL venv for the TRL cases (``PINNED=1 bash ../shared/bench/trl_baseline/setup.sh``, then
``/tmp/venv-trl110/bin/pip install --no-deps peft==0.21.2`` for ``trl_peft``; ``--no-trl`` skips them);
no network.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo import (  # noqa: E402
    OFFLINE_ENV,
    REPO,
    add_harness_args,
    loadavg,
    machine,
    median,
    our_versions,
    print_worker_result,
    result_json,
    run_child,
)

# name -> make_tiny.py arguments
SIZES = {
    "124M": ["--arch", "gpt2", "--hidden", "768", "--layers", "12", "--heads", "12", "--vocab", "50257"],
    "0.37B": ["--arch", "llama", "--hidden", "1024", "--layers", "20", "--heads", "16", "--vocab", "32000"],
    "0.5B": ["--arch", "llama", "--hidden", "1280", "--layers", "20", "--heads", "20", "--vocab", "32000"],  # GPU
    "tiny": ["--arch", "gpt2", "--hidden", "32", "--layers", "2", "--heads", "2", "--vocab", "512"],  # a smoke test
}
OURS = {
    "full": {},
    "gc": {"models.gradient_checkpointing": True},
    "lora": {"models.use_peft": True},
    "lora_gc": {"models.use_peft": True, "models.gradient_checkpointing": True},
    "adapter": {"models.use_peft": True, "models.critic": "adapter"},
    "adapter_gc": {"models.use_peft": True, "models.critic": "adapter", "models.gradient_checkpointing": True},
}
TRL = {"trl": [], "trl_nogc": ["--gradient-checkpointing", "off"], "trl_peft": ["--peft"],
       "trl_peft_nogc": ["--peft", "--gradient-checkpointing", "off"]}


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------- our side (in a subprocess)
def run_ours(args: argparse.Namespace) -> dict:
    import torch
    from torch.distributed.tensor import DTensor

    if args.threads:
        torch.set_num_threads(args.threads)
    from rewardlab.ppo.config import PPOConfig
    from rewardlab.ppo.trainer import PPOTrainer

    d = Path(args.model_dir)
    settings = {
        "sft_model_path": str(d / "policy"), "reward_model_path": str(d / "reward"),
        "value_model_path": None if OURS[args.case].get("models.critic") == "adapter" else str(d / "value"),
        "dataset_name": str(d / "prompts.jsonl"), "reward_pipeline": "raw", "response_length": args.response_length,
        "temperature": 1.0, "stop_token": None, "kl_coef": 0.05, "num_ppo_epochs": 1, "num_mini_batches": 1,
        "batch_size": args.batch_size, "per_device_train_batch_size": args.batch_size,
        "local_rollout_forward_batch_size": args.batch_size, "score_batch_size": args.batch_size,
        "learning_rate": 1e-5, "total_episodes": args.batch_size * args.updates, "output_dir": args.output_dir,
        "overwrite_output_dir": True, "save_steps": 0, "progress_bar": False, "seed": 0,
        "mixed_precision": args.mixed_precision, "dtype": args.dtype, "sample_steps": 0,  # training only
    }
    for key, value in OURS[args.case].items():
        settings[key.split(".")[1]] = value
    trainer = PPOTrainer(PPOConfig.from_dict(settings))
    after_load = rss_mib()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    # Activation memory: the distinct non-parameter storages autograd keeps for backward during an update.
    # Under FSDP parameters are DTensors; their storage is the local shard's.
    params = {(p.to_local() if isinstance(p, DTensor) else p).untyped_storage().data_ptr()
              for p in trainer.model.parameters()}
    seen: set[int] = set()
    saved = [0]

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            saved[0] += t.untyped_storage().nbytes()
        return t

    times, activations = [], []
    for _ in range(args.updates):  # the trainer's own step, without train()'s final save
        seen.clear()
        saved[0] = 0
        t0 = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            trainer.step()
        trainer.update += 1
        times.append(time.perf_counter() - t0)
        activations.append(saved[0] / 2**20)
    return {"update_s_all": times, "rss_after_load_mib": after_load, "activation_mib": max(activations),
            "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}


# ---------------------------------------------------------------------- the parent
def ensure_fixture(size: str, args: argparse.Namespace) -> str:
    import subprocess

    out = Path(args.tiny_dir) / size
    if not (out / "meta.json").is_file():
        subprocess.run([args.trl_python, str(Path(args.trl_dir) / "make_tiny.py"), "--out", str(out), *SIZES[size],
                        "--max-positions", "1024", "--n-prompts", "64", "--min-prompt-len", "64",
                        "--max-prompt-len", "64", "--seed", "0"],
                       check=True, env=dict(os.environ, **OFFLINE_ENV), capture_output=True)
    return str(out)


def one_run(case: str, size: str, length: int, args: argparse.Namespace, tag: str) -> dict:
    model_dir = ensure_fixture(size, args)
    env = dict(os.environ, **OFFLINE_ENV, PYTHONPATH=str(REPO))
    out_dir = f"/tmp/rewardlab_bench_memory_{case}_{os.getpid()}"
    common = ["--model-dir", model_dir, "--batch-size", str(args.batch_size), "--response-length", str(length),
              "--updates", str(args.updates)]
    threads = ["--threads", str(args.threads)] if args.threads else []
    if case in OURS:
        launch = ([sys.executable, "-m", "accelerate.commands.launch", "--config_file", args.launch, "--num_processes",
                   "1"] if args.launch else [sys.executable])
        cmd = [*launch, __file__, "--worker", "--case", case, *common, *threads, "--output-dir", out_dir,
               "--dtype", args.dtype, "--mixed-precision", args.mixed_precision]
    else:
        cmd = [args.trl_python, str(Path(__file__).resolve().parent / "trl_ppo_options.py"), "--trl-dir", args.trl_dir,
               *TRL[case], *common, *threads, "--warmup", "0", "--seed", "0", "--gc-freeze", "--output-dir", out_dir,
               "--tag", tag, *(["--bf16"] if args.mixed_precision == "bf16" else [])]
    load = loadavg()
    code, out, wall, rss = run_child(cmd, env, Path(args.log_dir) / f"{tag}.log", scratch=out_dir)
    if code != 0:
        raise RuntimeError(f"{case} failed (exit {code}): {' '.join(cmd)}\n{out[-3000:]}")
    res = result_json(out)
    times = res["update_s_all"]
    row = {"case": case, "size": size, "response_length": length, "peak_rss_mib": round(rss, 1),
           "update_s": round(median(times[1:] if len(times) > 1 else times), 3), "wall_s": round(wall, 1),
           "load_before": load}
    if res.get("activation_mib") is not None:
        row["activation_mib"] = round(res["activation_mib"], 1)
    after = res.get("rss_after_load_mib")
    if after is not None:
        row["after_load_mib"] = round(after, 1)
        row["update_adds_mib"] = round(rss - after, 1)
    if res.get("cuda_peak_mib") is not None:
        row["cuda_peak_mib"] = round(res["cuda_peak_mib"], 1)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="124M,0.37B")
    p.add_argument("--cases", default=",".join([*OURS, *TRL]))
    p.add_argument("--lengths", default="128", help="response lengths (comma-separated)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--updates", type=int, default=2, help="updates per run (the first is excluded from s/update "
                   "when there are several)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (0: torch's default)")
    p.add_argument("--no-trl", action="store_true", help="skip TRL's cases")
    p.add_argument("--dtype", default="float32", help="our models.dtype (float32, bfloat16, auto)")
    p.add_argument("--mixed-precision", default="no", help="our run.mixed_precision (no, bf16, auto)")
    p.add_argument("--launch", default=None, metavar="ACCELERATE_CONFIG",
                   help="run our cases under `accelerate launch --config_file ACCELERATE_CONFIG --num_processes 1`")
    p.add_argument("--tiny-dir", default="/tmp/rewardlab_bench_memory_models")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    add_harness_args(p, "/tmp/rewardlab_bench_memory_logs")
    args = p.parse_args()
    if args.worker:
        print_worker_result(run_ours(args))
        return
    cases = [c for c in args.cases.split(",") if not (args.no_trl and c in TRL)]
    unknown = [c for c in cases if c not in OURS and c not in TRL]
    if unknown:
        raise SystemExit(f"--cases: unknown {unknown}; choose from {', '.join([*OURS, *TRL])}")
    if any(c in TRL for c in cases) and not Path(args.trl_python).is_file():
        raise SystemExit(f"{args.trl_python} not found; build it (PINNED=1 bash {args.trl_dir}/setup.sh) or pass --no-trl")
    if "trl_peft" in cases or "trl_peft_nogc" in cases:
        import subprocess

        if subprocess.run([args.trl_python, "-c", "import peft"], capture_output=True).returncode:
            raise SystemExit(f"trl_peft needs peft in the TRL venv: {Path(args.trl_python).parent}/pip install "
                             "--no-deps peft==0.21.2 (or leave trl_peft out of --cases)")
    os.makedirs(args.log_dir, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    rows: dict[tuple, list[dict]] = {}
    for r in range(args.repeats):
        for size in args.sizes.split(","):
            if size not in SIZES:
                raise SystemExit(f"--sizes: unknown {size!r}; choose from {', '.join(SIZES)}")
            for length in (int(x) for x in args.lengths.split(",")):
                order = cases if r % 2 == 0 else cases[::-1]
                for case in order:
                    row = one_run(case, size, length, args, f"{size}_{case}_L{length}_r{r}")
                    rows.setdefault((size, case, length), []).append(row)
                    print(f"# {size} {case} L{length}: peak {row['peak_rss_mib']:.0f} MiB, {row['update_s']:.1f} s/update",
                          file=sys.stderr, flush=True)
    lines = []
    for (size, case, length), rs in rows.items():
        line = {"bench": "memory", "size": size, "case": case, "response_length": length, "repeats": len(rs),
                "peak_rss_mib": median([x["peak_rss_mib"] for x in rs]), "update_s": median([x["update_s"] for x in rs])}
        for k in ("after_load_mib", "update_adds_mib", "activation_mib", "cuda_peak_mib"):
            if k in rs[0]:
                line[k] = median([x[k] for x in rs])
        lines.append(line)
        print(json.dumps(line), flush=True)

    def peak(size, case, length=128):
        got = [x for x in lines if (x["size"], x["case"], x["response_length"]) == (size, case, length)]
        return got[0]["peak_rss_mib"] if got else None

    def activations(size, case, length=128):
        got = [x for x in lines if (x["size"], x["case"], x["response_length"]) == (size, case, length)]
        return got[0].get("activation_mib") if got else None

    summary = {"bench": "memory_summary", "batch_size": args.batch_size, "updates": args.updates,
               "dtype": args.dtype, "mixed_precision": args.mixed_precision, "launch": args.launch,
               "threads": args.threads or "default", "machine": machine(), "ours_versions": our_versions(),
               "started_utc": started.strftime("%Y-%m-%d %H:%M"),
               "finished_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M")}
    for size in args.sizes.split(","):
        full, best = peak(size, "full"), peak(size, "adapter_gc") or peak(size, "adapter")
        if full and best:
            summary[f"{size}_adapter_vs_full_peak"] = round(best / full, 3)
        if activations(size, "full") and activations(size, "gc"):
            summary[f"{size}_gc_activation_cut"] = round(1 - activations(size, "gc") / activations(size, "full"), 3)
        for ours, trl in (("full", "trl_nogc"), ("gc", "trl"), ("lora", "trl_peft_nogc"), ("lora_gc", "trl_peft")):
            if peak(size, ours) and peak(size, trl):
                summary[f"{size}_{ours}_vs_{trl}_peak"] = round(peak(size, ours) / peak(size, trl), 3)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
