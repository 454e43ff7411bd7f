from rewardlab.study.report import _md_table


def test_markdown_table_keeps_pipeline_specs_in_their_cell():
    text = _md_table([["strategy", "spec"], ["running_norm+clip", "`running_norm|clip(lo=-5,hi=5)`"]])
    header, rule, row = text.splitlines()
    assert rule == "|---|---|"
    assert row == "| running_norm+clip | `running_norm\\|clip(lo=-5,hi=5)` |"
    # unescaped pipes delimit exactly the two cells
    assert row.replace("\\|", "").count("|") == header.count("|") == 3


# --------------------------------------------------------------------------------------------
# Plots: bands only where enough seeds contribute, axes fitted to the data, the updates view
# --------------------------------------------------------------------------------------------
import math  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from rewardlab.study.analysis import Curve, curve_band  # noqa: E402
from rewardlab.study.report import MIN_BAND_RUNS, frontier_figure, plot_frontier  # noqa: E402


def _curve(reach: float, slope: float, updates=(0, 1, 2, 4, 8)) -> Curve:
    u = np.array(updates, dtype=float)
    s = reach * u / u.max()
    return Curve(sqrt_kl=s, gold=slope * s, proxy=s, update=u)


def test_band_is_drawn_only_where_three_seeds_contribute():
    curves = [_curve(1.0, 1.0), _curve(2.0, 1.0), _curve(3.0, 2.0), _curve(3.0, 0.0)]
    b = curve_band(curves, np.array([0.5, 1.5, 2.5]), "gold", min_runs=3)
    assert b.n.tolist() == [4, 3, 2]
    assert np.isfinite(b.lo[:2]).all() and np.isfinite(b.hi[:2]).all()
    assert math.isnan(b.lo[2]) and math.isnan(b.hi[2])  # two seeds: no band (its t quantile is 12.7)
    assert b.mean[2] == pytest.approx(2.5)  # the mean is still known there: (2·2.5 + 0) / 2
    assert b.lo[1] < b.mean[1] < b.hi[1]
    # Against updates every run contributes at each evaluation.
    u = curve_band(curves, np.array([0.0, 4.0, 8.0]), "proxy", x="update")
    assert u.n.tolist() == [4, 4, 4] and u.mean[-1] == pytest.approx(9 / 4)
    # A run with no finite value (the gold ceiling's proxy) is not counted.
    nan_run = Curve(np.zeros(2), np.zeros(2), np.full(2, np.nan), np.array([0.0, 8.0]))
    assert curve_band(curves[:2] + [nan_run], np.array([0.0]), "proxy", x="update").n.tolist() == [2]


def _results() -> dict:
    def rows(reach, slope, stop_gold=0.0):
        return [{"update": u, "sqrt_kl": reach * u / 8, "gold": slope * reach * u / 8 - (u / 8) ** 2 * stop_gold,
                 "proxy": reach * u / 8} for u in (0, 1, 2, 4, 8)]

    runs = []
    for seed in range(4):  # four seeds, gold within ±0.3
        runs.append({"key": "1-head/raw", "curve": rows(1.0 + 0.5 * seed, 0.1), "alarm_stop": 2 + seed})
    # Two seeds that disagree wildly far out: their t band would be ±(12.7 · spread) and must not set the axes.
    runs.append({"key": "1-head/lsc", "curve": rows(3.0, 0.1), "alarm_stop": None})
    runs.append({"key": "1-head/lsc", "curve": rows(3.0, -0.1), "alarm_stop": 4})
    return {"runs": runs, "sft_gold": 0.0,
            "strategies": {"1-head/raw": {"label": "raw"}, "1-head/lsc": {"label": "lsc"}}}


def test_frontier_figure_has_the_updates_view_alarm_stops_and_fitted_axes(tmp_path):
    from matplotlib import pyplot as plt

    results = _results()
    fig = frontier_figure(results, ["1-head/raw", "1-head/lsc"], "Gold vs √KL")
    kl, gold_u, proxy_u = fig.axes
    assert [a.get_xlabel() for a in fig.axes] == ["√KL(π ‖ π_SFT)  (nats^½)", "PPO updates", "PPO updates"]
    assert [a.get_ylabel() for a in fig.axes] == ["gold reward", "gold reward", "proxy reward"]
    # The alarm's stops: one triangle per run that fired (5 of the 6), on each updates panel, none against √KL.
    for ax, n in ((kl, 0), (gold_u, 5), (proxy_u, 5)):
        assert sum(1 for line in ax.lines if line.get_marker() == "v") == n
    # Axes fitted to the data: gold spans [-0.3, 0.3]; a 2-seed band would reach ±3.8.
    lo, hi = kl.get_ylim()
    assert -0.5 < lo < -0.29 and 0.29 < hi < 0.5
    assert kl.get_xlim()[1] == pytest.approx(3.0 * 1.03)
    lo, hi = proxy_u.get_ylim()
    assert -0.5 < lo <= 0 and 3.0 <= hi < 3.5
    # Bands: the 4-seed strategy has one, the 2-seed strategy none.
    assert len(kl.collections) >= 1
    plt.close(fig)
    proxy_fig = frontier_figure(results, ["1-head/raw"], "Proxy", field="proxy")
    assert len(proxy_fig.axes) == 2
    plt.close(proxy_fig)
    path = plot_frontier(results, ["1-head/raw", "1-head/lsc"], str(tmp_path / "gold.png"), "Gold vs √KL")
    assert (tmp_path / "gold.png").stat().st_size > 10_000 and path.endswith("gold.png")
    assert MIN_BAND_RUNS == 3
