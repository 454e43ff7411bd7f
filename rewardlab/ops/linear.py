"""A linear layer over a large output dimension, computed in slices of its rows.

A causal LM's head maps hidden states (…, D) to vocabulary logits (…, V) with V in the tens of
thousands. On CPU, MKL runs ``x @ W.T`` faster as a series of matmuls over slices of W's rows
than as one call over all of them (1.3–1.7× with the few rows of a decode step at V = 32 k–152 k;
``bench/lm_head.py``). Each logit is the same dot product computed by the same kernel, so the
result is bitwise equal to ``F.linear`` (``tests/test_ops_linear.py`` checks it).

The backward is that of ``F.linear`` written out, ``grad_x = g @ W`` and ``grad_W = gᵀ @ x``, the
matmuls autograd runs. With ``accumulate_grad`` the weight's gradient is added into an existing
``weight.grad`` in place (``addmm_``) instead of being returned. That is for a weight shared with
an input embedding (a tied LM head) whose caller keeps a dense ``.grad`` buffer: autograd would
otherwise sum the head's dense gradient and the embedding's sparse one out of place — a fresh
(V, D) tensor and a copy per backward, ~1 s of a GPT-2-small PPO update on CPU — and then add
that sum into ``.grad``.

Example::

    logits = sliced_linear(hidden, lm_head.weight, None, rows=1024)   # == F.linear(hidden, weight)
"""

from __future__ import annotations

import torch
from torch import Tensor


def _slices(n: int, rows: int) -> list[tuple[int, int]]:
    """[start, end) bounds of ``rows`` rows each; the last also takes the remainder.

    No slice is narrower than ``rows``: MKL computes a matmul with only a few output columns with
    another kernel, whose sums differ in the last bits from those of the wide matmul.
    """
    starts = list(range(0, n - rows + 1, rows)) or [0]
    return list(zip(starts, [*starts[1:], n], strict=True))


class _SlicedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, rows: int, accumulate_grad: bool) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        out = x2.new_empty(x2.shape[0], weight.shape[0])
        for i, j in _slices(weight.shape[0], rows):
            out[:, i:j] = torch.nn.functional.linear(x2, weight[i:j], None if bias is None else bias[i:j])
        ctx.save_for_backward(x2, weight)
        ctx.x_shape, ctx.has_bias, ctx.accumulate_grad = x.shape, bias is not None, accumulate_grad
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor):
        x2, weight = ctx.saved_tensors
        g = grad.reshape(-1, weight.shape[0])
        grad_x = g.mm(weight).view(ctx.x_shape) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            buffer = weight.grad
            if (ctx.accumulate_grad and buffer is not None and buffer.layout == torch.strided
                    and buffer.shape == weight.shape and buffer.dtype == g.dtype):
                buffer.addmm_(g.t(), x2)
            else:
                grad_w = g.t().mm(x2)
        grad_b = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None


def sliced_linear(x: Tensor, weight: Tensor, bias: Tensor | None, rows: int, *, accumulate_grad: bool = False) -> Tensor:
    """``F.linear(x, weight, bias)`` computed over slices of ``rows`` rows of ``weight``.

    The same numbers as ``F.linear`` (see the module docstring); falls back to ``F.linear``
    itself where slicing is not known to be exact or faster: off CPU, under autocast, for
    dtypes other than float32, for tensor subclasses (e.g. FSDP2's DTensor), and when
    ``weight`` has no more than ``4 * rows`` rows. ``rows`` ≥ 64 (narrower matmuls may round
    differently; `_slices`).

    ``accumulate_grad``: add the weight's gradient into ``weight.grad`` when that is a dense
    tensor at backward time (the weight then gets no gradient from this op through autograd,
    so use it only where the caller reads ``.grad``, never with ``torch.autograd.grad``).

    Shapes: x (…, D), weight (V, D), bias (V,) or None → (…, V).
    """
    plain = type(weight) in (Tensor, torch.nn.Parameter) and type(x) in (Tensor, torch.nn.Parameter)
    if rows < 64 and rows > 0:
        raise ValueError(f"sliced_linear: rows={rows} must be 0 (off) or ≥ 64")
    if (rows <= 0 or weight.shape[0] <= 4 * rows or not plain or weight.device.type != "cpu"
            or weight.dtype != torch.float32 or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu")):
        return torch.nn.functional.linear(x, weight, bias)
    return _SlicedLinear.apply(x, weight, bias, rows, accumulate_grad)
