"""The comparison's statistics: pure numpy, from per-prompt numbers of two policies.

A comparison samples one response per prompt from each policy, so every statistic of A against B
is *paired* by prompt. The win rate of A over B counts, per prompt, 1 when A's score is higher, ½
on a tie and 0 otherwise (`rewardlab.study.analysis.win_rate`), and its 95 % interval is Wilson's
score interval (Wilson 1927) for a proportion of n prompts: unlike the normal (Wald) interval it
stays inside [0, 1] and does not collapse to a point when A wins every prompt. Ties counted as half
a win make the per-prompt outcome less variable than a Bernoulli one, so the interval is, if
anything, conservative.

Example::

    wr = win_summary(scores_a, scores_b)      # {"win_rate": 0.61, "low": 0.54, "high": 0.68, "wins": …}
    summary(kl_a)                              # {"mean": …, "std": …, "q05": …, "q50": …, …}
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rewardlab.study.analysis import win_rate

__all__ = ["QUANTILES", "summary", "win_summary", "wilson_interval"]

Z95 = 1.959963984540054  # the two-sided 95 % normal quantile
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion p observed over n trials.

    centre = (p + z²/2n) / (1 + z²/n),  half = z·√(p(1−p)/n + z²/4n²) / (1 + z²/n).

    Returns (low, high) within [0, 1] and around p (at p = 0 or 1 the bound is p exactly: rounding would put it
    a hair inside); (nan, nan) for n = 0.
    """
    if n <= 0 or not math.isfinite(p):
        return math.nan, math.nan
    d = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / d
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def win_summary(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Win rate of A over B on paired values (ties half), its 95 % Wilson interval and the counts.

    Pairs where either value is not finite (a rule that returned None, a gold NaN) are left out.

    Shapes: a, b (N,) → a dict of numbers.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(len(x))
    p = win_rate(x, y) if n else math.nan
    low, high = wilson_interval(p, n)
    return {"win_rate": p, "low": low, "high": high, "wins": int((x > y).sum()), "ties": int((x == y).sum()),
            "losses": int((x < y).sum()), "n": n, "interval": "wilson-95"}


def summary(values: Sequence[float]) -> dict[str, float | int]:
    """Mean, standard deviation (ddof 1), min, max and the `QUANTILES` of the finite values, with their count n."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan}
    out: dict[str, float | int] = {"n": int(len(v)), "mean": float(v.mean()),
                                   "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                                   "min": float(v.min()), "max": float(v.max())}
    for q in QUANTILES:
        out[f"q{round(q * 100):02d}"] = float(np.quantile(v, q))
    return out
