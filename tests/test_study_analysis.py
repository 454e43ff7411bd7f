"""Study analysis on hand-made curves."""

import math

import numpy as np
import pytest

from rewardlab.study.analysis import Curve, band, fit_gao, gold_at, mean_ci, paired, t95, win_rate


def test_gold_at_interpolates_and_is_nan_beyond_reach():
    c = Curve(sqrt_kl=np.array([0.0, 1.0, 2.0]), gold=np.array([0.0, 1.0, 3.0]), proxy=np.zeros(3))
    assert gold_at(c, 1.5) == pytest.approx(2.0)
    assert gold_at(c, 0.0) == 0.0
    assert math.isnan(gold_at(c, 2.5))


def test_mean_ci():
    m, h, n = mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert (m, n) == (2.0, 3) and h == pytest.approx(4.303 * 1.0 / math.sqrt(3))  # Student t, 2 df
    assert math.isnan(mean_ci([])[0])


def test_band_skips_runs_that_do_not_reach_a_point():
    a = Curve(np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 2.0]), np.zeros(3))
    b = Curve(np.array([0.0, 1.0]), np.array([0.0, 3.0]), np.zeros(2))
    m, lo, hi = band([a, b], np.array([1.0, 2.0]))
    assert m[0] == pytest.approx(2.0) and lo[0] < 2.0 < hi[0]
    assert m[1] == pytest.approx(2.0) and lo[1] == hi[1] == 2.0  # one run only: no band


def test_fit_gao_recovers_known_coefficients():
    d = np.linspace(0.1, 4, 40)
    alpha, beta = 1.3, 0.6
    a, b, r2 = fit_gao(d, d * (alpha - beta * np.log(d)))
    assert a == pytest.approx(alpha, rel=1e-6) and b == pytest.approx(beta, rel=1e-6) and r2 == pytest.approx(1.0)


def test_win_rate_counts_ties_half():
    assert win_rate(np.array([1.0, 0.0, 2.0, 1.0]), np.array([0.0, 1.0, 2.0, 1.0])) == pytest.approx(0.5)


def test_t95_is_the_student_quantile_and_tends_to_the_normal():
    assert t95(1) == pytest.approx(12.706) and t95(3) == pytest.approx(3.182)
    assert t95(27) == pytest.approx(2.042)  # conservative: the next table row up
    assert t95(100) == 1.96 and math.isnan(t95(0))


def test_paired_pairs_by_seed_and_says_when_the_interval_covers_zero():
    a = {0: 1.0, 1: 2.0, 2: 3.0, 3: 9.0}
    b = {0: 0.9, 1: 1.9, 2: 2.9, 5: 0.0}  # seed 3 has no partner, seed 5 none either
    p = paired(a, b, scale=0.5)
    assert p.seeds == [0, 1, 2] and p.n == 3
    assert p.diff == pytest.approx(0.1) and p.half == pytest.approx(0.0, abs=1e-12)
    assert p.scaled == pytest.approx(0.2)
    noisy = paired({0: 0.3, 1: -0.2, 2: 0.25, 3: -0.15}, {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0})
    assert noisy.diff > 0 and noisy.verdict == "not distinguishable"
    assert paired({0: 1.1, 1: 1.2, 2: 1.0}, {0: 0.0, 1: 0.0, 2: 0.0}).verdict == "above"
    assert paired({0: 1.0}, {0: 0.0}).verdict == "not distinguishable"  # one pair: no interval
