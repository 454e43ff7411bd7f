"""Study analysis: curves across seeds, comparisons at matched KL and at fixed budget, Gao's fit.

Pure numpy. A *curve* is one PPO run's trajectory: arrays of √KL(π‖π_SFT), gold and proxy at its
evaluation points. Strategies are compared two ways (Gao et al. 2022; shaping mostly buys
robustness, not a better frontier):

- at matched KL: gold interpolated at √KL = 1, 2, 3 on each run's own trajectory, and the peak;
- at a fixed budget: gold at the end of training (the same steps and β for every strategy).

Comparisons between strategies are *paired* (`paired`): the runs of two strategies with the
same seed share the proxy model and the PPO seed, so the per-seed difference removes the
reward-model variance that dominates unpaired intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Curve:
    """One run's trajectory; arrays of equal length, in evaluation order.

    `update` is the number of PPO updates done at each evaluation (None for a curve built without it).
    """

    sqrt_kl: np.ndarray
    gold: np.ndarray
    proxy: np.ndarray
    update: np.ndarray | None = None

    @classmethod
    def from_rows(cls, rows: Sequence[dict[str, float]]) -> Curve:
        return cls(
            sqrt_kl=np.array([r["sqrt_kl"] for r in rows], dtype=float),
            gold=np.array([r["gold"] for r in rows], dtype=float),
            proxy=np.array([r.get("proxy", math.nan) for r in rows], dtype=float),
            update=np.array([r.get("update", math.nan) for r in rows], dtype=float),
        )


def gold_at(curve: Curve, d: float) -> float:
    """Gold where the run first reaches √KL = d (linear interpolation); NaN if it never does."""
    s, g = curve.sqrt_kl, curve.gold
    if len(s) == 0 or s.max() < d:
        return math.nan
    i = int(np.argmax(s >= d))
    if i == 0:
        return float(g[0])
    frac = (d - s[i - 1]) / (s[i] - s[i - 1]) if s[i] > s[i - 1] else 1.0
    return float(g[i - 1] + frac * (g[i] - g[i - 1]))


# Two-sided 95% Student-t quantiles by degrees of freedom (df > 30: the normal 1.96).
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086,
        25: 2.060, 30: 2.042}


def t95(df: int) -> float:
    """The two-sided 95% Student-t quantile for `df` degrees of freedom (conservative between table rows)."""
    if df < 1:
        return math.nan
    if df > 30:
        return 1.96
    return _T95[min(k for k in _T95 if k >= df)]


def mean_ci(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean and the half-width of a 95% Student-t interval over the finite values; (nan, nan, 0) if none.

    With a handful of seeds the t quantile (3.18 for 4 seeds) matters: a normal 1.96 would
    overstate what the runs show.
    """
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, 0
    if len(v) == 1:
        return float(v[0]), math.nan, 1
    return float(v.mean()), float(t95(len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))), len(v)


@dataclass
class Paired:
    """A paired difference a − b over seeds (same proxy seed, same PPO seed) with its 95% t interval.

    `verdict` is "above" or "below" when the interval excludes 0, else "not distinguishable"
    (also with fewer than two pairs). `scaled` is the difference as a fraction of a gold range.
    """

    diff: float
    half: float
    n: int
    seeds: list[int]
    scaled: float | None = None
    scaled_half: float | None = None

    @property
    def verdict(self) -> str:
        if self.n < 2 or not (math.isfinite(self.diff) and math.isfinite(self.half)):
            return "not distinguishable"
        if self.diff - self.half > 0:
            return "above"
        if self.diff + self.half < 0:
            return "below"
        return "not distinguishable"


def paired(a: dict[int, float], b: dict[int, float], scale: float | None = None) -> Paired:
    """Paired difference of per-seed values a[s] − b[s] over the seeds both have finite values for.

    `scale` (e.g. the SFT → ceiling gold range) adds the difference as a fraction of it.
    """
    seeds = sorted(s for s in a if s in b and np.isfinite(a[s]) and np.isfinite(b[s]))
    m, h, n = mean_ci([a[s] - b[s] for s in seeds])
    ok = scale is not None and math.isfinite(scale) and scale > 0
    return Paired(diff=m, half=h, n=n, seeds=seeds, scaled=m / scale if ok else None,
                  scaled_half=h / scale if ok and math.isfinite(h) else None)


@dataclass
class Band:
    """Mean over runs on a grid (the caller's), how many runs reach each point, and a 95% band where enough do.

    Shapes: every field (G,). `mean` is NaN where no run contributes; `lo`/`hi` are NaN where
    fewer than the band's `min_runs` contribute (a t interval over 2 runs has quantile 12.7 and
    hides every curve, so it is not drawn).
    """

    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n: np.ndarray


def curve_band(curves: Sequence[Curve], grid: np.ndarray, field: str = "gold", x: str = "sqrt_kl",
               min_runs: int = 3) -> Band:
    """Mean and 95% t band of `field` over runs, against √KL (``x="sqrt_kl"``) or updates (``x="update"``).

    Against √KL each run is interpolated on its own monotone envelope of √KL (runs' KL can dip
    between evaluations); against updates, on its evaluation schedule. A grid point outside a
    run's range, or where its value is not finite, is left out for that run. The band is drawn
    only where at least `min_runs` runs contribute.

    Shapes: grid (G,) → every field of the `Band` (G,).
    """
    means, lo, hi, counts = [], [], [], []
    for d in grid:
        vals = []
        for c in curves:
            xs, y = getattr(c, x), getattr(c, field)
            if xs is None or len(xs) == 0 or d > np.nanmax(xs) or d < np.nanmin(xs):
                continue
            v = float(np.interp(d, np.maximum.accumulate(xs), y))
            if math.isfinite(v):
                vals.append(v)
        m, h, n = mean_ci(vals)
        ok = n >= max(min_runs, 2) and math.isfinite(h)
        means.append(m)
        lo.append(m - h if ok else math.nan)
        hi.append(m + h if ok else math.nan)
        counts.append(n)
    return Band(mean=np.array(means), lo=np.array(lo), hi=np.array(hi),
                n=np.array(counts, dtype=int))


def band(curves: Sequence[Curve], grid: np.ndarray, field: str = "gold") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95% band of `field` on a √KL grid over the runs that reach each point (`curve_band`, 2 runs
    enough); where one run contributes the band is the mean itself."""
    b = curve_band(curves, grid, field, min_runs=2)
    return b.mean, np.where(np.isfinite(b.lo), b.lo, b.mean), np.where(np.isfinite(b.hi), b.hi, b.mean)


def fit_gao(sqrt_kl: np.ndarray, gold_gain: np.ndarray) -> tuple[float, float, float]:
    """Least-squares fit of Gao et al.'s RL form R(d) = d·(α − β·log d) to gold gains over SFT.

    Returns (α, β, R²). Points with d ≤ 0 are dropped (the form is 0 there).
    """
    d = np.asarray(sqrt_kl, dtype=float)
    y = np.asarray(gold_gain, dtype=float)
    keep = (d > 1e-6) & np.isfinite(y)
    d, y = d[keep], y[keep]
    if len(d) < 3:
        return math.nan, math.nan, math.nan
    X = np.stack([d, -d * np.log(d)], axis=1)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else math.nan
    return float(coef[0]), float(coef[1]), r2


def win_rate(gold_policy: np.ndarray, gold_sft: np.ndarray) -> float:
    """P(gold of a policy sample > gold of an SFT sample for the same prompt); ties count half."""
    a, b = np.asarray(gold_policy), np.asarray(gold_sft)
    return float(np.mean((a > b) + 0.5 * (a == b)))
