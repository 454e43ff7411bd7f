"""Benchmark: the LM head on CPU, `sliced_linear` (slices of the vocabulary) against one ``F.linear``.

Per shape (ROWS × HIDDEN → VOCAB, random float32 weights), timed alternately in one process (the
order flips every repeat): the forward without gradients (a decode step: few rows) and a forward +
backward whose weight is also a sparse-gradient input embedding with a dense ``.grad`` buffer (a
tied head in the trainer's update): autograd's sum of the two gradients against `sliced_linear`'s
``accumulate_grad``. Prints one JSON line per shape and case with the median milliseconds of each
side and ``speedup`` = the median of the paired per-repeat ratios (one matmul / sliced); the
outputs and gradients are checked to be bitwise equal first.

    .venv/bin/python bench/lm_head.py       # GPT-2 small's head (768 → 50257) at 8 and 264 rows, Qwen2-0.5B's
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from sampler import interleaved

from rewardlab.ops.linear import sliced_linear


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    if not torch.equal(a, b):
        raise SystemExit(f"sliced and one-matmul results differ (max {(a - b).abs().max().item():.3g}): not comparable")


def _case_forward(rows: int, hidden: int, vocab: int, slice_rows: int):
    g = torch.Generator().manual_seed(0)
    weight, x = torch.randn(vocab, hidden, generator=g) * 0.02, torch.randn(rows, hidden, generator=g)
    _same(sliced_linear(x, weight, None, slice_rows), torch.nn.functional.linear(x, weight))

    def plain(_):
        torch.nn.functional.linear(x, weight)

    def sliced(_):
        sliced_linear(x, weight, None, slice_rows)

    return plain, sliced


def _case_tied_backward(rows: int, hidden: int, vocab: int, slice_rows: int):
    g = torch.Generator().manual_seed(0)
    weight = (torch.randn(vocab, hidden, generator=g) * 0.02).requires_grad_()
    weight.grad = torch.zeros_like(weight)
    ids = torch.randint(0, vocab, (rows,), generator=g)

    def step(use_sliced: bool) -> torch.Tensor:
        h = torch.nn.functional.embedding(ids, weight, sparse=True)
        logits = (sliced_linear(h, weight, None, slice_rows, accumulate_grad=True) if use_sliced
                  else torch.nn.functional.linear(h, weight))
        logits.logsumexp(-1).sum().backward()
        return weight.grad

    grads = []
    for use_sliced in (False, True):
        weight.grad.zero_()
        grads.append(step(use_sliced).clone())
    _same(*grads)
    return (lambda _: step(False)), (lambda _: step(True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default="8x768x50257,264x768x50257,8x896x151936",
                   help="comma-separated ROWSxHIDDENxVOCAB")
    p.add_argument("--slice-rows", type=int, default=1024, help="vocabulary rows per slice (models.lm_head_slice)")
    p.add_argument("--calls", type=int, default=5, help="calls per timing")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for shape in args.shapes.split(","):
        rows, hidden, vocab = (int(v) for v in shape.split("x"))
        for case, build in (("forward", _case_forward), ("tied_forward_backward", _case_tied_backward)):
            plain, sliced = build(rows, hidden, vocab, args.slice_rows)
            t = time.perf_counter()
            sliced_ms, plain_ms, ratio = interleaved(sliced, plain, args.calls, args.repeats)  # ratio: plain / sliced
            print(json.dumps({"bench": "lm_head", "case": case, "rows": rows, "hidden": hidden, "vocab": vocab,
                              "slice_rows": args.slice_rows, "one_matmul_ms": round(plain_ms, 2),
                              "sliced_ms": round(sliced_ms, 2), "speedup": round(ratio, 3), "repeats": args.repeats,
                              "threads": args.threads, "bitwise_equal": True, "torch": torch.__version__,
                              "cpu": platform.processor() or platform.machine(),
                              "seconds": round(time.perf_counter() - t, 1)}), flush=True)


if __name__ == "__main__":
    main()
