"""Masked reductions over padded token tensors: mean, variance, whitening, last real token.

Every function takes a value tensor ``x`` and a same-shaped (or broadcastable) 0/1 ``mask`` whose
ones mark real tokens; padded positions never influence a result. Pure functions of tensors.

Example::

    >>> x = torch.tensor([[1.0, 2.0, 9.0]]); m = torch.tensor([[1, 1, 0]])
    >>> masked_mean(x, m)
    tensor(1.5000)
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over positions where ``mask`` is 1.

    Shapes: x, mask (..., T) → scalar if ``dim`` is None, else x with ``dim`` reduced.
    """
    mask = mask.to(x.dtype)
    return (x * mask).sum() if dim is None else (x * mask).sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over real positions: Σ m·x / Σ m.

    An all-padding slice has mean 0 (its count is clamped to 1), never NaN.

    Shapes: x, mask (..., T) → scalar if ``dim`` is None, else x with ``dim`` reduced.
    """
    mask = mask.to(x.dtype)
    count = mask.sum() if dim is None else mask.sum(dim=dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over all real positions.

    var = Σ m·(x − μ)² / (n − 1) when ``unbiased`` (Bessel's correction), else / n, with
    μ = masked_mean(x, m) and n = Σ m. With n ≤ 1 the unbiased variance is defined as 0 here,
    so that whitening a single token stays finite.

    Shapes: x, mask (..., T) → scalar.
    """
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    n = mask.sum()
    sq = masked_sum((x - mean) ** 2, mask)
    if unbiased:
        return torch.where(n > 1, sq / (n - 1).clamp(min=1.0), torch.zeros_like(sq))
    return sq / n.clamp(min=1.0)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Whiten ``x`` with statistics over real positions only.

    whitened = (x − μ) / √(var + eps); with ``shift_mean=False`` the mean is added back,
    x' = (x − μ)/√(var + eps) + μ, which rescales without centring (used for rewards, whose
    mean carries the signal). Padded positions are returned as 0.
    μ and var come from `masked_mean` / `masked_var` (unbiased), so a constant input gives
    zeros (or μ), never NaN.

    Shapes: x, mask (..., T) → (..., T).

    References: advantage normalisation as in the PPO implementation details of Huang et al.
    (2022, "The 37 implementation details of PPO", detail 7).
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(out.dtype)


def last_true_index(mask: Tensor) -> Tensor:
    """Index of the last 1 in each row of ``mask``; −1 for a row with no 1.

    Works for any padding side (left, right, or holes) because it looks for the last one,
    not for the count of ones.

    Shapes: mask (B, T) → (B,) int64.
    """
    t = mask.shape[-1]
    positions = torch.arange(t, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.full_like(positions, -1)).max(dim=-1).values


def pad_rows(rows: list[list[int]], pad_id: int, side: str = "left") -> tuple[Tensor, Tensor]:
    """Token-id rows padded to the longest with ``pad_id`` on ``side``, and their attention mask.

    Left padding is what generation needs (new tokens are appended after the last column).

    Shapes: B rows of any length → (B, T_max) int64 ids, (B, T_max) int64 mask.
    """
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            sl = slice(width - len(r), width) if side == "left" else slice(0, len(r))
            ids[i, sl] = torch.tensor(r, dtype=torch.long)
            mask[i, sl] = 1
    return ids, mask
