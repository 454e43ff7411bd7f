"""Benchmark: the PPO rollout's per-step sampling cost, inverse-CDF (`SeededSampler`) against Gumbel-max.

Both are layout-independent samplers keyed by counter-based random numbers: Gumbel-max hashes one
number per (row, step, token) with `counter_uniform` over the whole vocabulary and takes
``z/τ − log(−log u)``; `SeededSampler` hashes one number per (row, step) and samples by inverse
CDF. Prints one JSON line per (rows, vocabulary) with the median milliseconds per decoding step of
each and ``speedup`` = the median of the paired per-repeat ratios Gumbel / inverse-CDF (timed
alternately), then checks that both sample the same distribution.

    .venv/bin/python bench/sampler.py                 # (32, 512), (32, 2048), (64, 50257); 1 thread
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from rewardlab.ppo.rollout import SeededSampler, counter_uniform


def gumbel_step(z: torch.Tensor, seeds: torch.Tensor, step: int) -> torch.Tensor:
    """The per-token Gumbel-max sampler this project used before (same hash, whole vocabulary)."""
    return z - torch.log(-torch.log(counter_uniform(seeds, step, z.shape[-1])))


def per_step_ms(fn, steps: int) -> float:
    t = time.perf_counter()
    for s in range(steps):
        fn(s)
    return (time.perf_counter() - t) / steps * 1e3


def interleaved(a, b, steps: int, repeats: int) -> tuple[float, float, float]:
    """Median ms per step of `a` and `b`, timed alternately (the order flips every repeat), and the
    median of the per-repeat ratios b / a (this machine's speed drifts; pairs share a moment)."""
    ta, tb, ratios = [], [], []
    for r in range(repeats):
        if r % 2:
            y, x = per_step_ms(b, steps), per_step_ms(a, steps)
        else:
            x, y = per_step_ms(a, steps), per_step_ms(b, steps)
        ta.append(x)
        tb.append(y)
        ratios.append(y / x)
    return statistics.median(ta), statistics.median(tb), statistics.median(ratios)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="32x512,32x2048,64x50257", help="comma-separated ROWSxVOCAB")
    p.add_argument("--steps", type=int, default=32, help="decoding steps per timing")
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for shape in args.shapes.split(","):
        b, v = (int(x) for x in shape.split("x"))
        z = torch.randn(b, v, generator=torch.Generator().manual_seed(0)) * 2
        seeds = torch.arange(b, dtype=torch.int64) * 7919 + 1
        sampler = SeededSampler(seeds.tolist(), 1.0, 0, 1.0, "cpu")
        icdf, gumbel, ratio = interleaved(lambda s, f=sampler, z=z: f(None, z),
                                          lambda s, z=z, seeds=seeds: gumbel_step(z, seeds, s), args.steps, args.repeats)
        print(json.dumps({"bench": "sampler", "rows": b, "vocab": v, "gumbel_ms_per_step": round(gumbel, 3),
                          "inverse_cdf_ms_per_step": round(icdf, 3), "speedup": round(ratio, 2),
                          "repeats": args.repeats, "threads": args.threads}), flush=True)
    # Same distribution: 20 000 draws of one 4-token row by each method.
    n = 20_000
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    z = probs.log().expand(n, 4).contiguous()
    seeds = torch.arange(n, dtype=torch.int64) * 104729 + 3
    freq = {name: [round(f, 4) for f in (torch.bincount(tok, minlength=4).float() / n).tolist()] for name, tok in (
        ("inverse_cdf", SeededSampler(seeds.tolist(), 1.0, 0, 1.0, "cpu")(None, z).argmax(-1)),
        ("gumbel", gumbel_step(z, seeds, 0).argmax(-1)))}
    print(json.dumps({"bench": "sampler_frequencies", "target": [0.1, 0.2, 0.3, 0.4], **freq}), flush=True)


if __name__ == "__main__":
    main()
