"""Benchmark: the matmuls of one decode step on CPU, as the models run them (MKL) and through oneDNN.

A decode step multiplies a few rows (one per sequence) by every weight of the model. For a GPT-2
size (``L``: hidden 256, 4 layers, vocab 2048, 32 rows; ``124M``: hidden 768, 12 layers, vocab
50 257, 8 rows) each distinct shape is timed, alternately in one process (the order flips every
repeat), as

    mkl      what the trainer's decode loop runs: ``F.linear`` (MKL sgemm) for the body, and the LM
             head through `rewardlab.ops.linear.sliced_linear` (``models.lm_head_slice`` 1024)
    onednn   oneDNN's linear on a weight packed once for the row count
             (``torch.ops.mkldnn._reorder_linear_weight`` + ``_linear_pointwise``), as ``torch.compile``'s
             CPU backend does; the packing would have to be redone after every optimiser update

and each is reported in GFLOP/s beside the machine's 1024³ matmul peak (``bench/generation.py``'s
``matmul_peak``). Each call reuses the same weight, so caches are warm: an upper bound on what the
decode loop gets, where each weight is read once per step among other work (``bench/ppo.py
--profile-update`` times the matmuls there). ``step_ms`` sums the shapes of one decode step (the body's shapes once per layer,
the head once); ``max_abs_diff`` is oneDNN's largest difference from MKL's result: not zero, since
oneDNN sums in another order — the sampled tokens would no longer be ``generate``'s, which is why
the trainer does not use it. The figure shows how far below the peak the decode matmuls run with
the kernels that keep the numbers.

    .venv/bin/python bench/decode_matmul.py                 # L and 124M, 9 repeats
    .venv/bin/python bench/decode_matmul.py --sizes 124M --repeats 5
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from generation import matmul_peak
from sampler import interleaved

from rewardlab.ops.linear import sliced_linear

# name → (rows per decode step, hidden, layers, vocab, MLP width)
SIZES = {"L": (32, 256, 4, 2048, 1024), "124M": (8, 768, 12, 50257, 3072)}


def _shapes(hidden: int, vocab: int, mlp: int) -> list[tuple[str, int, int, int]]:
    """(name, in, out, times per step ÷ layers; 0 = once per step) of a GPT-2 block and its head."""
    return [("qkv", hidden, 3 * hidden, 1), ("attn_out", hidden, hidden, 1), ("mlp_in", hidden, mlp, 1),
            ("mlp_out", mlp, hidden, 1), ("lm_head", hidden, vocab, 0)]


def _case(rows: int, k: int, n: int, head: bool):
    """The two sides for one shape, and oneDNN's largest difference from the MKL result."""
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g) * k**-0.5
    b = None if head else torch.randn(n, generator=g) * 0.02
    packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)

    def mkl(_):
        return sliced_linear(x, w, None, 1024) if head else torch.nn.functional.linear(x, w, b)

    def onednn(_):
        return torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")

    return mkl, onednn, (mkl(0) - onednn(0)).abs().max().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="L,124M", help=f"comma-separated: {', '.join(SIZES)}")
    p.add_argument("--calls", type=int, default=20, help="calls per timing")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not torch.backends.mkldnn.is_available():
        raise SystemExit("this torch build has no oneDNN (torch.backends.mkldnn): nothing to compare")
    for size in args.sizes.split(","):
        if size not in SIZES:
            raise SystemExit(f"--sizes: unknown size {size!r}; choose from {', '.join(SIZES)}")
        rows, hidden, layers, vocab, mlp = SIZES[size]
        t0, peak = time.perf_counter(), matmul_peak()
        step = {"mkl": 0.0, "onednn": 0.0}
        flops_step, worst = 0.0, 0.0
        for name, k, n, per_layer in _shapes(hidden, vocab, mlp):
            mkl, onednn, diff = _case(rows, k, n, head=per_layer == 0)
            mkl_ms, onednn_ms, ratio = interleaved(mkl, onednn, args.calls, args.repeats)  # ratio: onednn / mkl ms
            flops = 2 * rows * k * n
            times = layers if per_layer else 1
            step["mkl"] += times * mkl_ms
            step["onednn"] += times * onednn_ms
            flops_step += times * flops
            worst = max(worst, diff)
            print(json.dumps({"bench": "decode_matmul", "size": size, "shape": name, "rows": rows, "in": k, "out": n,
                              "mkl_ms": round(mkl_ms, 4), "onednn_ms": round(onednn_ms, 4),
                              "speedup": round(1 / ratio, 3), "mkl_gflops": round(flops / mkl_ms / 1e6, 1),
                              "onednn_gflops": round(flops / onednn_ms / 1e6, 1), "max_abs_diff": diff}), flush=True)
        print(json.dumps({"bench": "decode_matmul_step", "size": size, "rows": rows, "layers": layers,
                          "peak_gflops": round(peak, 1), "step_gflop": round(flops_step / 1e9, 4),
                          "mkl_step_ms": round(step["mkl"], 3), "onednn_step_ms": round(step["onednn"], 3),
                          "mkl_fraction_of_peak": round(flops_step / (step["mkl"] / 1e3) / (peak * 1e9), 3),
                          "onednn_fraction_of_peak": round(flops_step / (step["onednn"] / 1e3) / (peak * 1e9), 3),
                          "speedup": round(step["mkl"] / step["onednn"], 3), "max_abs_diff": worst,
                          "bitwise_equal": worst == 0.0, "repeats": args.repeats, "threads": args.threads,
                          "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                          "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
