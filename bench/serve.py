"""Benchmark: `rewardlab serve` against a batch-1 server loop, vLLM's classify server and the in-process forward.

Reward models with random weights, built locally: ``124M`` (the GPT-2-small config) and ``0.5B``
(Qwen2-0.5B's config: hidden 896, 24 layers, 14 heads, 2 KV heads, vocabulary 151 936), one head,
Bradley-Terry. Samples: a prompt of ``--prompt-tokens`` and a response of ``--response-tokens``
word tokens. The reward spec is ``lsc(q=0.5)`` centred on 4 reference samples per prompt (given to
the server as ``server.references``), so every figure of ours includes centring and the pipeline.

Two loads, each measured for every system in the same run, interleaved over ``--repeats``:

(a) ``--clients`` concurrent clients each sending one sample per request (OpenRLHF's pattern);
(b) one client sending batches of ``--batch`` samples (veRL's and TRL's pattern).

Systems: ``ours`` (dynamic batching: ``max_batch_size`` = clients, ``max_wait_ms`` 5);
``batch1`` — the same server with ``max_batch_size 1``: one forward per request, which is what
OpenRLHF's reference server does (its own server imports flash_attn and cannot start on a CPU);
``vllm`` — vLLM's pooling server (``/classify``, raw logits, from ``.venv-vllm``: ``make vllm-venv``);
``inproc`` — `RewardModel.score_texts` in this process on the same samples in batches of the same
size: the limit. Every server's model runs on one compute thread (vLLM's CPU default on two cores;
the other core serves HTTP and the clients).

Reports samples/s and p50/p99 request latency per system and load, and the targets' ratios:
(a) ours / batch1 (≥ 5), (b) ours / inproc (≥ 0.9), and the pipeline-and-centring time as a
fraction of the forward (≤ 5 %). One JSON line per size on stdout.

    .venv/bin/python bench/serve.py --sizes 124M --repeats 3
    .venv/bin/python bench/serve.py --sizes 124M,0.5B --repeats 3 --no-vllm
    python bench/serve.py --sizes 0.5B --device cuda --no-vllm      # on a GPU
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VLLM_PY = ROOT / ".venv-vllm" / "bin" / "python"
SPEC = "lsc(q=0.5)"
N_PROMPTS, K_REFS = 64, 4

# name -> (config builder arguments)
SIZES = {
    "124M": dict(arch="gpt2", hidden=768, layers=12, heads=12, kv_heads=12, inter=3072, vocab=50257),
    "0.5B": dict(arch="qwen2", hidden=896, layers=24, heads=14, kv_heads=2, inter=4864, vocab=151936),
    "S": dict(arch="gpt2", hidden=64, layers=2, heads=2, kv_heads=2, inter=256, vocab=512),  # a smoke test
}


def build(folder: Path, size: str) -> None:
    """``folder/rm`` (model + config) and ``folder/tok`` (the tokenizer alone), built once per size."""
    import torch
    from transformers import AutoModelForSequenceClassification, GPT2Config, Qwen2Config

    from rewardlab.reward.metadata import RewardModelMetadata, write_metadata
    from rewardlab.tiny import build_tokenizer

    if (folder / "done").exists():
        return
    s = SIZES[size]
    tok = build_tokenizer(s["vocab"], chat_template=False)
    ids = dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
               eos_token_id=tok.eos_token_id, num_labels=1)
    if s["arch"] == "gpt2":
        config = GPT2Config(n_embd=s["hidden"], n_layer=s["layers"], n_head=s["heads"], n_inner=s["inter"],
                            n_positions=1024, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids)
    else:
        config = Qwen2Config(hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                             num_key_value_heads=s["kv_heads"], intermediate_size=s["inter"],
                             max_position_embeddings=1024, tie_word_embeddings=True, **ids)
    write_metadata(config, RewardModelMetadata(semantics="bradley_terry", num_heads=1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder / "rm")
    tok.save_pretrained(folder / "tok")
    (folder / "done").write_text(size)


def make_samples(n: int, vocab: int, prompt_tokens: int, response_tokens: int, seed: int):
    """n (prompt, response) pairs over N_PROMPTS fixed prompts, and K_REFS reference responses per prompt."""
    g = random.Random(12345)
    words = vocab - 8
    prompts = [" ".join(f"t{g.randrange(words)}" for _ in range(prompt_tokens)) for _ in range(N_PROMPTS)]

    def response(g):
        return " " + " ".join(f"t{g.randrange(words)}" for _ in range(response_tokens))

    refs = [{"prompt": p, "response": response(g)} for p in prompts for _ in range(K_REFS)]
    g = random.Random(seed)
    samples = [(prompts[g.randrange(N_PROMPTS)], response(g)) for _ in range(n)]
    return samples, refs


SERVER = r'''
import sys
sys.path.insert(0, {root!r})
from rewardlab.ppo.models import build_reward_side
from rewardlab.reward.scoring import RewardModel
from rewardlab.serve.app import RewardService
from rewardlab.serve.commands import serve
from rewardlab.serve.config import load_serve_config
cfg = load_serve_config({cfg!r})
rm = RewardModel.from_pretrained({rm!r}, tokenizer_path={tok!r}, batch_size={score_batch}, device={device!r})
side = build_reward_side(cfg.models, cfg.reward, [rm], columns=None, device={device!r})
from rewardlab.reward.baselines import ReferenceRewards, prompt_key_of
from rewardlab.reward.commands import _samples, read_jsonl, score_rows
rows = read_jsonl({refs!r}, "references")
refs = ReferenceRewards()
refs.add([prompt_key_of(p) for p in _samples(rows).prompts], score_rows(rows, side.reference_scores))
sys.exit(serve(cfg, RewardService(cfg, side, references=refs)))
'''


class Proc:
    """A server process; its port read from its output."""

    def __init__(self, cmd: list[str], env: dict, pattern: str | None, timeout: float = 300.0) -> None:
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        if pattern is None:  # the caller finds out when it is up
            threading.Thread(target=lambda: [self.lines.append(x) for x in self.proc.stdout], daemon=True).start()
            return
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            m = re.search(pattern, line)
            if m:
                self.port = int(m.group(1))
                threading.Thread(target=lambda: [self.lines.append(x) for x in self.proc.stdout], daemon=True).start()
                return
        self.stop()
        raise RuntimeError("server did not start:\n" + "".join(self.lines[-40:]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def post(port: int, path: str, body: dict) -> tuple[dict, float]:
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"{path}: {response.status} {data[:300]!r}")
    return json.loads(data), time.perf_counter() - start


def request_body(system: str, pairs: list[tuple[str, str]]) -> tuple[str, dict]:
    if system == "vllm":
        return "/classify", {"input": [p + r for p, r in pairs], "use_activation": False}
    return "/score", {"prompts": [p for p, _ in pairs], "responses": [r for _, r in pairs]}


def load_a(port: int, system: str, samples, clients: int) -> dict:
    """`clients` threads, each sending its share of the samples one per request."""
    shares = [samples[i::clients] for i in range(clients)]

    def client(share):
        return [post(port, *request_body(system, [pair]))[1] for pair in share]

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [t for chunk in pool.map(client, shares) for t in chunk]
    return _figures(len(samples), time.perf_counter() - start, latencies)


def load_b(port: int, system: str, samples, batch: int) -> dict:
    latencies, start = [], time.perf_counter()
    for i in range(0, len(samples), batch):
        latencies.append(post(port, *request_body(system, samples[i:i + batch]))[1])
    return _figures(len(samples), time.perf_counter() - start, latencies)


def _figures(n: int, seconds: float, latencies: list[float]) -> dict:
    latencies = sorted(latencies)
    return {"samples_per_s": n / seconds, "p50_s": latencies[len(latencies) // 2],
            "p99_s": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}


def run_size(size: str, args) -> dict:
    import torch

    from rewardlab.ppo.models import build_reward_side
    from rewardlab.reward.baselines import ReferenceRewards, prompt_key_of
    from rewardlab.reward.scoring import RewardModel
    from rewardlab.reward.side import Samples
    from rewardlab.serve.config import load_serve_config

    if args.device == "cpu":
        torch.set_num_threads(1)
    work = Path(args.workdir) / size
    build(work, size)
    n = args.batch * args.batches
    samples, refs = make_samples(n, SIZES[size]["vocab"], args.prompt_tokens, args.response_tokens, seed=1)
    (work / "refs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           **({"OMP_NUM_THREADS": "1"} if args.device == "cpu" else {})}

    def config(max_batch: int) -> Path:
        path = work / f"serve-{max_batch}.yaml"
        path.write_text(f"models: {{reward_model_path: {work / 'rm'}}}\nreward: {{reward_pipeline: '{SPEC}', "
                        f"score_batch_size: {args.score_batch}}}\nserver: {{port: 0, max_batch_size: {max_batch}, "
                        f"max_wait_ms: 5, max_samples_per_request: {max(args.batch, 256)}, "
                        f"max_body_bytes: 67108864, device: '{args.device}'}}\n")
        return path

    def ours(max_batch: int) -> Proc:
        code = SERVER.format(root=str(ROOT), cfg=str(config(max_batch)), rm=str(work / "rm"), tok=str(work / "tok"),
                             refs=str(work / "refs.jsonl"), score_batch=args.score_batch, device=args.device)
        return Proc([sys.executable, "-c", code], env, r"listening on http://[\d.]+:(\d+)")

    servers = {"ours": ours(args.clients), "batch1": ours(1)}
    if args.vllm and VLLM_PY.exists():
        venv_env = {**env, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1",
                    "VLLM_CACHE_ROOT": str(work / "vllm-cache")}
        venv_env.pop("PYTHONPATH")
        port = _free_port()
        servers["vllm"] = Proc([str(VLLM_PY), "-m", "vllm.entrypoints.openai.api_server", "--model", str(work / "rm"),
                                "--tokenizer", str(work / "tok"), "--host", "127.0.0.1", "--port", str(port),
                                "--dtype", "float32", "--max-model-len", "1024", "--runner", "pooling",
                                "--convert", "classify", "--pooler-config", '{"use_activation": false}',
                                "--enforce-eager", "--max-num-seqs", str(max(args.batch, 256))],
                               venv_env, None)
        servers["vllm"].port = port
        _wait_health(port, servers["vllm"])
    # the limit: the same model in this process, batches of the same size
    cfg = load_serve_config(config(args.clients))
    rm = RewardModel.from_pretrained(work / "rm", tokenizer_path=work / "tok", batch_size=args.score_batch,
                                     device=args.device)
    side = build_reward_side(cfg.models, cfg.reward, [rm], columns=None, device=args.device)
    ref_cache = ReferenceRewards()
    ref_cache.add([prompt_key_of(r["prompt"]) for r in refs],
                  side.reference_scores(Samples([r["prompt"] for r in refs], [r["response"] for r in refs])))

    def inproc(batch: int) -> dict:
        latencies, start, fwd, pipe = [], time.perf_counter(), 0.0, 0.0
        for i in range(0, n, batch):
            pairs = samples[i:i + batch]
            t0 = time.perf_counter()
            raw = side.score(Samples([p for p, _ in pairs], [r for _, r in pairs]))
            t1 = time.perf_counter()
            side.reward(raw, ref=ref_cache.gather([prompt_key_of(p) for p, _ in pairs]), update=False)
            t2 = time.perf_counter()
            fwd, pipe = fwd + t1 - t0, pipe + t2 - t1
            latencies.append(t2 - t0)
        out = _figures(n, time.perf_counter() - start, latencies)
        out["pipeline_frac"] = pipe / fwd
        return out

    results: dict[str, dict[str, list[dict]]] = {}
    try:
        for _ in range(args.repeats):
            for system, proc in servers.items():
                results.setdefault(system, {}).setdefault("a", []).append(load_a(proc.port, system, samples, args.clients))
                results[system].setdefault("b", []).append(load_b(proc.port, system, samples, args.batch))
            results.setdefault("inproc", {}).setdefault("a", []).append(inproc(args.clients))
            results["inproc"].setdefault("b", []).append(inproc(args.batch))
        check = post(servers["ours"].port, *request_body("ours", samples[:8]))[0]["scores"]
        expect = side.reward(side.score(Samples([p for p, _ in samples[:8]], [r for _, r in samples[:8]])),
                             ref=ref_cache.gather([prompt_key_of(p) for p, _ in samples[:8]]), update=False).scores
        max_diff = max(abs(a - b) for a, b in zip(check, expect.tolist(), strict=True))
    finally:
        for proc in servers.values():
            proc.stop()
    med = {s: {load: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for load, runs in loads.items()}
           for s, loads in results.items()}
    out = {"size": size, "samples": n, "tokens_per_sample": args.prompt_tokens + args.response_tokens,
           "clients": args.clients, "batch": args.batch, "repeats": args.repeats, "median": med,
           "per_repeat": results, "server_vs_inprocess_max_abs_diff": max_diff,
           "ratio_a_ours_vs_batch1": med["ours"]["a"]["samples_per_s"] / med["batch1"]["a"]["samples_per_s"],
           "ratio_b_ours_vs_inproc": med["ours"]["b"]["samples_per_s"] / med["inproc"]["b"]["samples_per_s"],
           "pipeline_frac_of_forward": med["inproc"]["b"]["pipeline_frac"],
           "device": args.device, "torch_threads": 1 if args.device == "cpu" else None, "cpu_count": os.cpu_count()}
    if "vllm" in med:
        out["ratio_a_ours_vs_vllm"] = med["ours"]["a"]["samples_per_s"] / med["vllm"]["a"]["samples_per_s"]
        out["ratio_b_ours_vs_vllm"] = med["ours"]["b"]["samples_per_s"] / med["vllm"]["b"]["samples_per_s"]
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_health(port: int, proc: Proc, timeout: float = 900.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError("vLLM's server exited:\n" + "".join(proc.lines[-40:]))
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(1.0)
    raise RuntimeError("vLLM did not become healthy")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="124M")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=1, help="samples per measurement = batch · batches")
    p.add_argument("--prompt-tokens", type=int, default=8)
    p.add_argument("--response-tokens", type=int, default=24)
    p.add_argument("--score-batch", type=int, default=64, help="the reward model's micro-batch (reward.score_batch_size)")
    p.add_argument("--no-vllm", dest="vllm", action="store_false", help="skip vLLM's server (or no .venv-vllm)")
    p.add_argument("--device", default="cpu", help="where the reward models run (cpu: one compute thread each; cuda)")
    p.add_argument("--workdir", default=None, help="where models are built and kept (default: a temporary folder)")
    args = p.parse_args()
    tmp = None
    if args.workdir is None:
        tmp = tempfile.mkdtemp(prefix="bench-serve-")
        args.workdir = tmp
    try:
        for size in args.sizes.split(","):
            print(json.dumps(run_size(size, args)), flush=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
