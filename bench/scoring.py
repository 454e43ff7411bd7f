"""Benchmark: reward scoring cost, and what the reward pipeline and length-sorted batching cost or save.

On a tiny GPT-2 reward model (hidden 64, 2 layers, vocabulary 512, 2 heads) and 256 (prompt, response)
pairs whose lengths are spread uniformly over 16-512 tokens, it measures, interleaved over a few
repeats (medians reported):

(a) the reward pipeline (reference gather + ``mean|center(q=0.85)|logsigmoid`` on the (256, H)
    logits) as a fraction of the model's scoring time -- target <= 1%;
(b) length-sorted micro-batches (``batch_size=32``, each trimmed to its longest row) against one
    padded batch of all 256 rows, same model, same run -- target >= 1.5x faster.

Both scoring modes must give the same logits (checked). Prints one JSON line.

    .venv/bin/python bench/scoring.py [--repeats 7] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

from rewardlab.reward.baselines import ReferenceRewards, prompt_key
from rewardlab.reward.pipeline import RewardPipeline
from rewardlab.reward.scoring import RewardModel
from rewardlab.tiny import build_model, build_tokenizer, tiny_config

SPEC = "mean|center(q=0.85)|logsigmoid"


def make_pairs(n: int, lo: int, hi: int, vocab: int, seed: int) -> tuple[list[str], list[str]]:
    """(prompt, response) texts of the tiny word vocabulary, total lengths uniform in [lo, hi] tokens.

    The prompt takes the first quarter of each sequence; rows come in random length order.
    """
    g = random.Random(seed)
    prompts, responses = [], []
    for _ in range(n):
        words = [f"t{g.randrange(vocab)}" for _ in range(g.randint(lo, hi))]
        cut = len(words) // 4
        prompts.append(" ".join(words[:cut]))
        responses.append(" " + " ".join(words[cut:]))
    return prompts, responses


def timed(fn, *args, **kwargs):
    """Run fn once; return (output, wall seconds, CPU seconds of this process)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads; 0 = torch's default. One thread by default: on a shared CPU, "
        "threads of one op wait on each other and the timings measure the scheduler, not the work",
    )
    parser.add_argument("--pipeline-calls", type=int, default=200, help="pipeline calls timed per repeat")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    tok = build_tokenizer(512)
    config = tiny_config("gpt2", tok, hidden=64, layers=2, heads=2, max_positions=1024, num_labels=2)
    model = build_model("sequence_classification", config, seed=0)
    kw = dict(semantics="bradley_terry", device=args.device)
    sorted_rm = RewardModel(model, tok, batch_size=args.batch_size, **kw)
    padded_rm = RewardModel(model, tok, batch_size=args.n, **kw)
    prompts, responses = make_pairs(args.n, 16, 512, 500, seed=0)
    # Tokens the model processes, padding included: what sorting saves before any timing.
    lengths = sorted(
        (len(tok(p + r).input_ids) for p, r in zip(prompts, responses, strict=True)), reverse=True
    )
    sorted_tokens = sum(
        lengths[i] * len(lengths[i : i + args.batch_size]) for i in range(0, args.n, args.batch_size)
    )
    padded_tokens = lengths[0] * args.n

    # References: K=4 reference samples for each of 64 prompts; row i belongs to prompt i % 64.
    n_prompts, k = 64, 4
    keys = [prompt_key(f"prompt {i % n_prompts}") for i in range(args.n)]
    cache = ReferenceRewards()
    cache.add(
        [prompt_key(f"prompt {p}") for p in range(n_prompts) for _ in range(k)],
        torch.randn(n_prompts * k, 2, generator=torch.Generator().manual_seed(1)),
    )
    pipe = RewardPipeline.from_spec(SPEC, semantics="bradley_terry")

    def apply_pipeline(logits: torch.Tensor):
        """What PPO does per batch after scoring: gather the references, apply the pipeline."""
        return pipe(logits, ref=cache.gather(keys))

    sorted_rm.score_texts(prompts[:8], responses[:8])  # warm-up
    times: dict[str, list[tuple[float, float]]] = {"sorted": [], "padded": [], "pipeline": []}
    logits = {}
    for rep in range(args.repeats):
        # Alternate which mode goes first so drift on a shared machine hits both alike.
        modes = [("sorted", sorted_rm), ("padded", padded_rm)]
        for name, rm in modes if rep % 2 == 0 else modes[::-1]:
            logits[name], wall, cpu = timed(rm.score_texts, prompts, responses)
            times[name].append((wall, cpu))
        torch.testing.assert_close(logits["sorted"], logits["padded"], atol=1e-4, rtol=0)
        # Each call timed alone, median over calls: on a shared CPU a few calls stall on scheduling.
        for _ in range(args.pipeline_calls):
            out, wall, cpu = timed(apply_pipeline, logits["sorted"])
            times["pipeline"].append((wall, cpu))
        assert out.scores.shape == (args.n,)

    def med(name: str, which: int) -> float:
        return statistics.median(t[which] for t in times[name])

    result = {
        "bench": "scoring",
        # Wall-clock medians: the figures asked for.
        "pipeline_over_model": round(med("pipeline", 0) / med("sorted", 0), 5),
        "sorted_speedup_vs_padded": round(med("padded", 0) / med("sorted", 0), 3),
        # The same ratios from CPU time (less sensitive to other processes on a shared machine).
        "pipeline_over_model_cpu": round(med("pipeline", 1) / med("sorted", 1), 5),
        "sorted_speedup_vs_padded_cpu": round(med("padded", 1) / med("sorted", 1), 3),
        "padded_over_sorted_tokens": round(padded_tokens / sorted_tokens, 3),
        "model_sorted_s": round(med("sorted", 0), 4),
        "model_padded_s": round(med("padded", 0), 4),
        "pipeline_ms": round(med("pipeline", 0) * 1e3, 4),
        "spec": SPEC,
        "n": args.n,
        "lengths": [min(lengths), max(lengths)],
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
