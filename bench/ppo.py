"""Benchmark: rewardlab's PPO trainer against TRL 1.10's ``trl.experimental.ppo.PPOTrainer``, side by side.

Both trainers run the same tiny GPT-2 models (policy, reference = policy, value model, reward
model with one output), built once by the shared ``make_tiny.py`` of ``../shared/bench/trl_baseline``
into ``<tiny-dir>/{S,L}`` (same weights for both sides), on the same prompts, with the same
rollout batch, response length (fixed: no stop token), 1 PPO epoch, the same minibatches, fp32,
lr 1e-5, β = 0.05, temperature 1. Our side scores through `RewardModel` with the ``raw`` reward
pipeline (Bradley-Terry semantics), which is what TRL does with a 1-output reward model.

Each run is its own subprocess: ours under this interpreter (``--worker ours``), TRL's under the
TRL 1.10 venv (``bench_trl_ppo.py --gc-freeze --fix-minibatch-accumulation``, TRL at its best:
stock 1.10 spends ~0.2 s per ``gc.collect()`` twice per update and steps the optimiser once per
epoch whatever ``num_mini_batches`` is). Runs alternate ours / TRL (the side that goes first
alternates between repeats), so a slow phase of the shared machine hits both. Per run: the
median wall time of an update after the warm-up updates, tokens/s = generated tokens per update
/ that time, peak RSS = ``ru_maxrss`` of the subprocess (read by the parent with ``wait4``, the
same way for both), our time split, minor page faults per update (fresh memory the kernel had
to map and zero), and the load average around the run.

Sizes: S (hidden 64, 2 layers, vocab 512) and L (hidden 256, 4 layers, vocab 2048); response
length 32 and 64; 32 prompts per update. ``--minibatch4`` adds the 4-minibatch variant (batch 64,
4 minibatches of 16, response 32). Prints one JSON line per configuration (``speedup`` = ours /
TRL tokens/s, median over the repeats' paired ratios) and a final summary line.

``--profile-update`` runs one more update of our side under ``torch.profiler`` (outside the timings)
and adds ``ours_kernel_profile_s``: self CPU seconds of the matmul, attention and fused-AdamW kernels
(``kernel_s``) and of every other op, in generation and in the whole update (``top_other_ops``: the
eight other ops with the most self time); and
``ours_kernel_bound_fraction``: the fraction of the matmul peak the update (or generation) would reach
if nothing but those kernels took time — the ceiling for any change that keeps the same kernels on
the same shapes, i.e. the same numbers.

    .venv/bin/python bench/ppo.py --minibatch4                 # S and L, lengths 32 and 64, + 4 minibatches
    .venv/bin/python bench/ppo.py --sizes S --lengths 32 --repeats 5 --threads 0   # torch's default threads
    .venv/bin/python bench/ppo.py --only-minibatch4            # batch 64, 4 minibatches, response 32
    .venv/bin/python bench/ppo.py --no-trl --baseline-src . --base-env KEY=VALUE   # one setting, A/B
    .venv/bin/python bench/ppo.py --sizes L --no-trl --profile-update     # + the kernels' own share of an update
    .venv-vllm/bin/python bench/ppo.py --sizes 124M --lengths 32 --batch-size 8 --no-trl --baseline-src . \
        --set generation.backend=vllm --base-set generation.backend=hf      # vLLM vs HF rollouts, end to end

Needs the TRL venv (``PINNED=1 bash ../shared/bench/trl_baseline/setup.sh``); no network.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "WANDB_DISABLED": "true",
    "WANDB_MODE": "disabled",
    "TRL_EXPERIMENTAL_SILENCE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
}
for _k, _v in OFFLINE_ENV.items():
    os.environ.setdefault(_k, _v)

REPO = Path(__file__).resolve().parents[1]
# name → make_tiny.py arguments (hidden, layers, heads, vocab)
SIZES = {"S": (64, 2, 2, 512), "L": (256, 4, 4, 2048), "124M": (768, 12, 12, 50257)}


# ---------------------------------------------------------------------- our side (in a subprocess)
def run_ours(args: argparse.Namespace) -> dict:
    """One run of rewardlab's PPOTrainer; returns per-update times and the time split."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from rewardlab.ppo.config import PPOConfig
    from rewardlab.ppo.trainer import PPOTrainer
    from rewardlab.reward.scoring import RewardModel

    d = Path(args.model_dir)
    tok = AutoTokenizer.from_pretrained(d / "tokenizer")
    tok.padding_side = "left"

    def lm():
        return AutoModelForCausalLM.from_pretrained(d / "policy", dtype=torch.float32, use_safetensors=True)

    policy, ref_policy = lm(), lm()
    critic = AutoModelForSequenceClassification.from_pretrained(
        d / "value", dtype=torch.float32, use_safetensors=True
    )
    rm = AutoModelForSequenceClassification.from_pretrained(
        d / "reward", dtype=torch.float32, use_safetensors=True
    )
    # One reward forward per rollout batch, like TRL's local_rollout_forward_batch_size = batch.
    reward_model = RewardModel(rm, tok, semantics="bradley_terry", batch_size=args.batch_size)
    with open(d / "prompts.jsonl", encoding="utf-8") as fh:
        prompts = [json.loads(line)["prompt"] for line in fh]
    b, m = args.batch_size, args.num_mini_batches
    cfg = PPOConfig.from_dict(
        {
            "response_length": args.response_length,
            "temperature": 1.0,
            "stop_token": None,
            "reward_pipeline": "raw",
            "reward_semantics": "bradley_terry",
            "kl_coef": 0.05,
            "kl_estimator": "k1",
            "num_ppo_epochs": 1,
            "num_mini_batches": m,
            "cliprange": 0.2,
            "cliprange_value": 0.2,
            "vf_coef": 0.1,
            "gamma": 1.0,
            "lam": 0.95,
            "learning_rate": args.lr,
            "lr_scheduler_type": "linear",
            "per_device_train_batch_size": b // m,
            "batch_size": b,
            "local_rollout_forward_batch_size": b,
            "total_episodes": b * (args.updates + bool(args.profile_update)),
            "output_dir": args.output_dir,
            "overwrite_output_dir": True,  # repetitions reuse one scratch folder
            "seed": 0,
            "mixed_precision": "no",
            "progress_bar": False,
            "sample_steps": 0,  # training only: the TRL side sets num_sample_generations=0
        }
    )
    if args.set:
        cfg = cfg.replace(args.set)
    trainer = PPOTrainer(
        cfg,
        policy=policy,
        ref_policy=ref_policy,
        critic=critic,
        tokenizer=tok,
        reward_model=reward_model,
        prompts=prompts,
    )
    # Update boundaries = end of each step(), as TRL's timestamps are taken at on_step_end; the
    # per-update logging of train() falls into the next interval, the final save into none.
    ends: list[float] = []
    history: list[dict] = []
    faults: list[int] = []  # minor page faults per update (fresh memory the kernel had to map and zero)
    step = trainer.step

    profile: dict = {}

    def timed_step():
        if args.profile_update and len(ends) == args.updates:  # the extra update: profiled, not timed
            metrics, figures = profiled_update(trainer, step)
            profile.update(figures)
            return metrics
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        metrics = step()
        ends.append(time.perf_counter())
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        history.append(metrics)
        return metrics

    trainer.step = timed_step
    from generation import matmul_peak

    peak_before = matmul_peak()
    t_begin = time.perf_counter()
    trainer.train()
    ts = [t_begin] + ends
    update_s = [b2 - a for a, b2 in zip(ts, ts[1:], strict=False)]
    split = {k.split("/")[1]: [h[k] for h in history] for k in history[0] if k.startswith("time/")}
    lengths = [h["objective/response_length"] for h in history]
    return {
        "update_s_all": update_s,
        "minflt_all": faults,
        "split_all": split,
        "peak_gflops": statistics.median([peak_before, matmul_peak()]),
        "flops": update_flops(trainer, [len(p) for p in trainer.prompts.ids], args),
        "response_length_mean": statistics.mean(lengths),
        "last_scores": history[-1]["objective/scores"],
        "last_kl": history[-1]["objective/kl"],
        "kernel_profile": profile or None,
    }


# Self time of these torch ops is the work the same numbers need (the same kernels on the same shapes);
# everything else is element-wise ops, copies and Python around them.
KERNELS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::mv"),
    "attention": ("scaled_dot_product", "flash_attention"),
    "optimizer": ("_fused_adamw",),
}


def profiled_update(trainer, step) -> tuple[dict, dict]:
    """One update under ``torch.profiler``: its metrics, and seconds of self CPU time per kernel class
    in generation and in the whole update.

    ``kernel_s`` = matmul + attention + optimizer: what the update would take if every other op and all
    Python overhead cost nothing. The profiler's own overhead inflates ``wall_s`` (not the kernels' times).
    """
    from torch.profiler import ProfilerActivity, profile, record_function

    engine = getattr(trainer, "engine", None)  # a --baseline-src tree from before rollout engines has none
    generate = engine.generate if engine is not None else None

    def marked(*a, **kw):
        with record_function("bench::generate"):
            return generate(*a, **kw)

    if engine is not None:
        engine.generate = marked
    try:
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            metrics = step()
        wall = time.perf_counter() - t0
    finally:
        if engine is not None:
            engine.generate = generate
    events = prof.events()
    gen = [(e.time_range.start, e.time_range.end) for e in events if e.name == "bench::generate"]
    out = {part: {k: 0.0 for k in (*KERNELS, "other_ops")} for part in ("generate", "total")}
    others: dict[str, float] = {}
    for e in events:
        if e.name.startswith("bench::"):
            continue
        kind = next((k for k, names in KERNELS.items() if any(n in e.name for n in names)), "other_ops")
        if kind == "other_ops":
            others[e.name] = others.get(e.name, 0.0) + e.self_cpu_time_total / 1e6
        parts = ["total"] + (["generate"] if any(a <= e.time_range.start < b for a, b in gen) else [])
        for part in parts:
            out[part][kind] += e.self_cpu_time_total / 1e6
    for part in out.values():
        part["kernel_s"] = sum(part[k] for k in KERNELS)
    out["generate"]["wall_s"] = sum(b - a for a, b in gen) / 1e6
    out["total"]["wall_s"] = wall
    figures = {part: {k: round(v, 4) for k, v in d.items()} for part, d in out.items()}
    figures["top_other_ops"] = {k: round(v, 4) for k, v in sorted(others.items(), key=lambda kv: -kv[1])[:8]}
    return metrics, figures


def update_flops(trainer, prompt_lengths: list[int], args: argparse.Namespace) -> dict[str, float]:
    """Matmul FLOPs of one of our PPO updates (mean prompt length; fixed-length responses).

    generate: `generation.generation_flops`. forward: π (the LM head over response positions), π_ref
    (same), critic and reward model (no LM head) over prompt + response, plus attention.
    update: per PPO epoch a forward and a backward (2× forward) of policy and critic over every row,
    less the forward of the first micro-batch, which the rollout's forward is (graph kept).
    """
    from generation import generation_flops, matmul_sizes


    b, t, cfg = args.batch_size, args.response_length, trainer.cfg
    tq = statistics.mean(prompt_lengths)
    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    sizes = matmul_sizes(policy)
    body, head, layers, d = sizes["body"], sizes["head"], sizes["layers"], sizes["attn_dim"]
    n = tq + t  # tokens per row in a full-sequence forward
    seq = 2 * body * n + 4 * layers * d * n * (n + 1) / 2  # body + causal attention, one row
    lm = seq + 2 * head * (t + 1)
    rows_gen = [prompt_lengths[i % len(prompt_lengths)] for i in range(b)]
    generate = generation_flops(sizes, rows_gen, t)
    forward = b * (2 * lm + 2 * seq)
    epochs, micro = cfg.ppo.num_ppo_epochs, cfg.optim.per_device_train_batch_size
    update = (epochs * b * 3 - micro) * (lm + seq)
    return {"generate": generate, "forward": forward, "update": update, "total": generate + forward + update}


# ---------------------------------------------------------------------- the parent: runs and figures
def peak_figures(side: str, rows: list[dict]) -> dict:
    """FLOPs of an update, the measured matmul peak and the achieved fraction (floor s / measured s).

    The fraction is per run (that run's FLOPs / its own peak / its update time), then the median;
    the phases use the trainer's ``time/*`` split.
    """
    flops, peak = rows[0]["flops"], median([r["peak_gflops"] for r in rows])
    out = {f"{side}_gflop": {k: round(v / 1e9, 2) for k, v in flops.items()}, f"{side}_peak_gflops": round(peak, 1),
           f"{side}_floor_s": round(flops["total"] / (peak * 1e9), 4)}
    frac = {"total": median([r["flops"]["total"] / (r["peak_gflops"] * 1e9) / r["update_s"] for r in rows])}
    for phase in ("generate", "forward", "update"):
        frac[phase] = median([r["flops"][phase] / (r["peak_gflops"] * 1e9) / r["split_s"][phase] for r in rows])
    out[f"{side}_peak_fraction"] = {k: round(v, 3) for k, v in frac.items()}
    if rows[0]["kernel_profile"]:  # --profile-update: the kernels' own time, and the fraction it would leave
        prof = {part: {k: round(median([r["kernel_profile"][part].get(k, 0.0) for r in rows]), 4) for k in d}
                for part, d in rows[0]["kernel_profile"].items()}
        out[f"{side}_kernel_profile_s"] = prof
        out[f"{side}_kernel_bound_fraction"] = {  # None: no generation range (a tree without rollout engines)
            part: round(median([r["flops"][part] / (r["peak_gflops"] * 1e9) / r["kernel_profile"][part]["kernel_s"]
                                for r in rows]), 3) if all(r["kernel_profile"][part]["kernel_s"] for r in rows) else None
            for part in ("total", "generate")}
    return out


def run_child(
    cmd: list[str], env: dict[str, str], log: Path, scratch: str | None = None
) -> tuple[int, str, float, float]:
    """Run a subprocess; returns (exit code, output, wall s, its peak RSS in MiB via wait4).

    ``scratch``: the run's output folder, deleted once it exits (a 124M run saves ~3.7 GB of models
    and checkpoints that no benchmark reads; left behind, repeats fill the disk).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=REPO, text=True
    )
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.write_text(out)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    return proc.returncode, out, time.perf_counter() - t0, usage.ru_maxrss / 1024  # Linux: KiB


def result_json(out: str, prefix: str = "RESULT_JSON ") -> dict:
    for line in reversed(out.splitlines()):
        if line.startswith(prefix):
            return json.loads(line[len(prefix) :])
    raise RuntimeError("no result line in the output:\n" + out[-3000:])


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def add_harness_args(p: argparse.ArgumentParser, log_dir: str) -> None:
    """The TRL side's and the worker's flags, shared by bench/ppo.py and bench/memory.py."""
    p.add_argument("--trl-dir", default=str(REPO.parent / "shared" / "bench" / "trl_baseline"))
    p.add_argument("--trl-python", default="/tmp/venv-trl110/bin/python")
    p.add_argument("--log-dir", default=log_dir)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--response-length", type=int, help=argparse.SUPPRESS)
    p.add_argument("--output-dir", help=argparse.SUPPRESS)


def print_worker_result(res: dict) -> None:
    """A worker's figures (plus its own peak RSS) as the one line the parent reads."""
    res["peak_rss_self_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT_JSON " + json.dumps(res), flush=True)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def one_run(side: str, cfg: dict, args: argparse.Namespace, tag: str) -> dict:
    """One subprocess run of one side; returns its figures."""
    env = dict(os.environ, **OFFLINE_ENV, PYTHONPATH=str(REPO))
    common = [
        "--model-dir",
        cfg["model_dir"],
        "--batch-size",
        str(cfg["batch"]),
        "--response-length",
        str(cfg["length"]),
        "--num-mini-batches",
        str(cfg["minibatches"]),
        "--updates",
        str(args.updates),
        "--warmup",
        str(args.warmup),
        "--lr",
        str(args.lr),
    ]
    threads = ["--threads", str(args.threads)] if args.threads else []
    profiled = ["--profile-update"] if args.profile_update and side in ("ours", "base") else []
    out_dir = f"/tmp/rewardlab_bench_ppo_{side}_{os.getpid()}"
    if side == "base":  # our trainer from another source tree (e.g. `git worktree add /tmp/base main`)
        env["PYTHONPATH"] = str(Path(args.baseline_src).resolve())
        env.update(dict(item.split("=", 1) for item in args.base_env))
    if side in ("ours", "base"):
        env.update(dict(item.split("=", 1) for item in args.ours_env))
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            "ours",
            *common,
            *threads,
            *profiled,
            *[f"--set={item}" for item in args.set + (args.base_set if side == "base" else [])],
            "--output-dir",
            out_dir,
        ]
    else:
        cmd = [
            args.trl_python,
            str(Path(args.trl_dir) / "bench_trl_ppo.py"),
            *common,
            *threads,
            "--seed",
            "0",
            "--gc-freeze",
            "--fix-minibatch-accumulation",
            "--output-dir",
            out_dir,
            "--tag",
            tag,
        ]
    load_before = loadavg()
    code, out, wall, rss = run_child(cmd, env, Path(args.log_dir) / f"{tag}_{side}.log", scratch=out_dir)
    if code != 0:
        raise RuntimeError(f"{side} run failed (exit {code}): {' '.join(cmd)}\n{out[-3000:]}")
    res = result_json(out)
    w = args.warmup
    ut = res["update_s_all"][w:]
    tokens = cfg["batch"] * cfg["length"]
    row = {
        "update_s": median(ut),
        "tok_s": tokens / median(ut),
        "peak_rss_mib": rss,
        "wall_s": wall,
        "load_before": load_before,
        "load_after": loadavg(),
    }
    if side in ("ours", "base"):
        row["peak_gflops"] = res["peak_gflops"]
        row["flops"] = res["flops"]
        row["split_s"] = {k: median(v[w:]) for k, v in res["split_all"].items()}
        row["minflt"] = median(res["minflt_all"][w:])
        row["kernel_profile"] = res["kernel_profile"]
        if abs(res["response_length_mean"] - cfg["length"]) > 1e-6:
            raise RuntimeError(
                f"our responses are {res['response_length_mean']} tokens, expected {cfg['length']}"
            )
    else:
        row["gen_s"] = res["gen_s_median"]
        row["opt_steps"] = res["optimizer_steps_per_update"]
        if res["gen_tokens_per_update"] != tokens:
            raise RuntimeError(
                f"TRL generated {res['gen_tokens_per_update']} tokens per update, expected {tokens}"
            )
        row["versions"] = res["versions"]
    return row


def ensure_fixture(name: str, args: argparse.Namespace) -> str:
    """Build <tiny-dir>/<name> with the shared make_tiny.py when it is missing; check its shape."""
    hidden, layers, heads, vocab = SIZES[name]
    out = Path(args.tiny_dir) / name
    if not (out / "meta.json").is_file():
        env = dict(os.environ, **OFFLINE_ENV)
        subprocess.run(
            [
                args.trl_python,
                str(Path(args.trl_dir) / "make_tiny.py"),
                "--out",
                str(out),
                "--hidden",
                str(hidden),
                "--layers",
                str(layers),
                "--heads",
                str(heads),
                "--vocab",
                str(vocab),
                "--seed",
                "0",
            ],
            check=True,
            env=env,
            capture_output=True,
        )
    meta = json.loads((out / "meta.json").read_text())
    got = (meta["hidden"], meta["layers"], meta["heads"], meta["vocab"])
    if got != (hidden, layers, heads, vocab) or meta["arch"] != "gpt2":
        raise SystemExit(
            f"{out} holds {meta['arch']} {got}, not size {name} {SIZES[name]}; delete it or pass --tiny-dir"
        )
    return str(out)


def machine() -> dict:
    cpu = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": cpu, "nproc": os.cpu_count(), "python": platform.python_version()}


def our_versions() -> dict:
    import accelerate
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="S,L", help="comma-separated: S, L")
    p.add_argument("--lengths", default="32,64", help="comma-separated response lengths")
    p.add_argument("--batch-size", type=int, default=32, help="prompts (= responses) per update")
    p.add_argument("--num-mini-batches", type=int, default=1)
    p.add_argument(
        "--minibatch4", action="store_true", help="also run batch 64 / 4 minibatches / response 32 per size"
    )
    p.add_argument("--only-minibatch4", action="store_true", help="run only the 4-minibatch variant")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--updates", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="updates excluded from the median")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads in both sides (0: torch's default = nproc). One by default: on this "
        "shared 2-core machine two OpenMP threads per process made both sides 10-20x slower",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override our PPOConfig (repeatable), e.g. --set models.fast_gelu=false for an ablation",
    )
    p.add_argument("--no-trl", action="store_true", help="skip TRL's side (e.g. at 124M, or without its venv)")
    p.add_argument("--baseline-src", help="also run our trainer from this source tree (old vs new, interleaved)")
    p.add_argument("--ours-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for our side's processes (repeatable), e.g. GLIBC_TUNABLES=...")
    p.add_argument("--base-set", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides for the --baseline-src side only, after --set (repeatable), e.g. "
                        "--set generation.backend=vllm --base-set generation.backend=hf")
    p.add_argument("--base-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for the --baseline-src side only (repeatable): with --baseline-src . the "
                        "same code under another setting")
    p.add_argument("--profile-update", action="store_true",
                   help="our side: one more update under torch.profiler (not timed); prints the self time of "
                        "matmul, attention and optimizer kernels and the peak fraction left if nothing else cost time")
    p.add_argument("--tiny-dir", default="/tmp/trl_tiny")
    p.add_argument("--worker", choices=["ours"], help=argparse.SUPPRESS)
    add_harness_args(p, "/tmp/rewardlab_bench_ppo_logs")
    args = p.parse_args()

    if args.worker:
        print_worker_result(run_ours(args))
        return
    if args.warmup >= args.updates:
        raise SystemExit(f"--warmup {args.warmup} must be < --updates {args.updates}")
    sides = ["ours"] + ([] if args.no_trl else ["trl"]) + (["base"] if args.baseline_src else [])
    if not Path(args.trl_python).is_file():
        raise SystemExit(f"{args.trl_python} not found; build it: PINNED=1 bash {args.trl_dir}/setup.sh")
    os.makedirs(args.log_dir, exist_ok=True)
    configs = []
    for size in args.sizes.split(","):
        if size not in SIZES:
            raise SystemExit(f"--sizes: unknown size {size!r}; choose from {', '.join(SIZES)}")
        model_dir = ensure_fixture(size, args)
        if not args.only_minibatch4:
            for length in (int(x) for x in args.lengths.split(",")):
                configs.append(
                    {
                        "size": size,
                        "length": length,
                        "batch": args.batch_size,
                        "minibatches": args.num_mini_batches,
                        "model_dir": model_dir,
                    }
                )
        if args.minibatch4 or args.only_minibatch4:
            configs.append(
                {"size": size, "length": 32, "batch": 64, "minibatches": 4, "model_dir": model_dir}
            )

    runs: dict[int, dict[str, list[dict]]] = {i: {side: [] for side in sides} for i in range(len(configs))}
    started = datetime.datetime.now(datetime.timezone.utc)
    for r in range(args.repeats):
        for i, cfg in enumerate(configs):
            order = sides if r % 2 == 0 else sides[::-1]
            tag = f"{cfg['size']}_L{cfg['length']}_b{cfg['batch']}_m{cfg['minibatches']}_r{r}"
            for side in order:
                row = one_run(side, cfg, args, tag)
                runs[i][side].append(row)
                print(
                    f"# {tag} {side}: {row['update_s']:.3f} s/update, {row['tok_s']:.0f} tok/s, "
                    f"{row['peak_rss_mib']:.0f} MiB, load {row['load_before']:.2f}",
                    file=sys.stderr,
                    flush=True,
                )

    lines = []
    trl_versions = None
    for i, cfg in enumerate(configs):
        ours = runs[i]["ours"]
        split = {k: round(median([o["split_s"][k] for o in ours]), 4) for k in ours[0]["split_s"]}
        line = {
            "bench": "ppo",
            "size": cfg["size"],
            "response_length": cfg["length"],
            "batch_size": cfg["batch"],
            "num_mini_batches": cfg["minibatches"],
            "repeats": args.repeats,
            "ours_tok_s": round(median([o["tok_s"] for o in ours]), 1),
            "ours_update_s": round(median([o["update_s"] for o in ours]), 4),
            "ours_peak_rss_mib": round(median([o["peak_rss_mib"] for o in ours]), 1),
            "ours_time_split_s": split,
            "ours_page_faults_per_update": median([o["minflt"] for o in ours]),
            **peak_figures("ours", ours),
        }
        if "trl" in runs[i]:
            trl = runs[i]["trl"]
            trl_versions = trl[0]["versions"]
            ratios = [a["tok_s"] / b["tok_s"] for a, b in zip(ours, trl, strict=True)]
            line.update({
                "trl_tok_s": round(median([t["tok_s"] for t in trl]), 1),
                "speedup": round(median(ratios), 3),
                "speedup_all": [round(x, 3) for x in ratios],
                "trl_update_s": round(median([t["update_s"] for t in trl]), 4),
                "trl_peak_rss_mib": round(median([t["peak_rss_mib"] for t in trl]), 1),
                "trl_generate_s": round(median([t["gen_s"] for t in trl]), 4),
                "trl_opt_steps_per_update": trl[0]["opt_steps"],
            })
        if "base" in runs[i]:
            base = runs[i]["base"]
            ratios = [b["update_s"] / a["update_s"] for a, b in zip(ours, base, strict=True)]
            line.update({
                "base_update_s": round(median([x["update_s"] for x in base]), 4),
                "base_time_split_s": {k: round(median([x["split_s"][k] for x in base]), 4) for k in base[0]["split_s"]},
                "base_peak_rss_mib": round(median([x["peak_rss_mib"] for x in base]), 1),
                "base_page_faults_per_update": median([x["minflt"] for x in base]),
                "speedup_vs_base": round(median(ratios), 3),
                "speedup_vs_base_all": [round(x, 3) for x in ratios],
                **peak_figures("base", base),
            })
        every = [x for side in runs[i].values() for x in side]
        line["load_avg"] = [round(min(x["load_before"] for x in every), 2), round(max(x["load_after"] for x in every), 2)]
        lines.append(line)
        print(json.dumps(line), flush=True)
    summary = {
        "bench": "ppo_summary",
        "configs": len(lines),
        "repeats": args.repeats,
        "updates": args.updates,
        "warmup": args.warmup,
        "threads": args.threads or "default",
        "ours_overrides": args.set,
        "base_overrides": args.base_set,
        "min_speedup": min(x["speedup"] for x in lines) if not args.no_trl else None,
        "speedup_ge_1_5_everywhere": all(x["speedup"] >= 1.5 for x in lines) if not args.no_trl else None,
        "rss_le_trl_everywhere": (all(x["ours_peak_rss_mib"] <= x["trl_peak_rss_mib"] for x in lines)
                                  if not args.no_trl else None),
        "speedups": {
            f"{x['size']}_L{x['response_length']}_b{x['batch_size']}_m{x['num_mini_batches']}": x.get("speedup")
            for x in lines
        },
        "baseline_src": args.baseline_src,
        "ours_env": args.ours_env,
        "base_env": args.base_env,
        "machine": machine(),
        "ours_versions": our_versions(),
        "trl_versions": trl_versions,
        "started_utc": started.strftime("%Y-%m-%d %H:%M"),
        "finished_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M"),
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
