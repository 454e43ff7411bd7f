"""The answer generator on synthetic results.json: paired, interval-aware wording, nothing printed regardless of the numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rewardlab.study.analysis import mean_ci
from rewardlab.study.answer import compose_answer, findings, frontier_gap, gold_range
from rewardlab.study.multi import agreement

RAW = [0.10, 0.20, 0.30, 0.40]


def _results(per_seed: dict[str, dict], sft: float = 0.0, runs: list | None = None) -> dict:
    """A results dict as results.json holds it: per-run metrics by seed, per-strategy mean ± interval."""
    strategies, per_run = {}, {}
    for key, metrics in per_seed.items():
        group, name = key.split("/", 1)
        spec = {"lsc": "lsc(q=0.5)", "head 0": "head(k=0)", "logodds (wrong)": "logodds(pos=1,neg=0)"}.get(name.split(" + ")[0], name.split(" + ")[0])
        n = len(next(iter(metrics.values())))
        per_run[key] = {str(s): {m: v[s] for m, v in metrics.items()} for s in range(n)}
        strategies[key] = {"label": name, "group": group, "spec": spec, "kl_coef": None, "n_runs": n,
                           **{m: mean_ci(v) for m, v in metrics.items()}}
    results = {"sft_gold": sft, "strategies": strategies, "per_run": per_run, "runs": runs or [], "proxies": {},
               "preset": {"kl_coef": 0.02}}
    return json.loads(json.dumps(results))  # as read back from results.json (seed keys become strings)


def _final(values):
    v = list(values)
    return {"final_gold": v, "peak_gold": [max(x, 0.5) for x in v], "final_sqrt_kl": [2.0] * len(v), "gold_at_1": v}


def test_answer_says_not_distinguishable_when_the_paired_interval_covers_zero():
    noise = np.array([0.25, -0.15, 0.20, -0.10])  # mean +0.05, but the paired interval covers 0
    res = _results({
        "1-head/raw": _final(RAW),
        "1-head/lsc": _final(np.array(RAW) + noise),
        "1-head/par": _final(np.array(RAW) + [0.10, 0.11, 0.09, 0.10]),  # +0.10, every seed
        "ceiling/gold (ceiling)": {"final_gold": [1.0] * 4, "peak_gold": [1.0] * 4, "final_sqrt_kl": [1.0] * 4, "gold_at_1": [1.0] * 4},
    })
    by = {f["id"]: f for f in findings(res)}
    lsc, par = by["bounding:lsc-vs-raw:final_gold"], by["bounding:par-vs-raw:final_gold"]
    assert lsc["diff"] == pytest.approx(0.05) and lsc["verdict"] == "not distinguishable"
    assert par["verdict"] == "above" and par["scaled"] == pytest.approx(0.10)  # range: ceiling 1.0 − SFT 0.0
    answer = compose_answer(res)
    assert "lsc not distinguishable from raw" in answer and "par above raw" in answer
    assert "+0.100 ± " in answer and "(+10% ± " in answer  # the difference and its share of the gold range
    # The best strategy is named with those it cannot be told apart from, not ranked by its mean.
    assert "Highest mean final gold: par" in answer and "Not distinguishable from it (paired): lsc" in answer
    # One β: no claim about robustness across β.
    assert "single β" in answer


def test_no_sentence_is_printed_whatever_the_numbers_say():
    same = [1.0, 1.1, 0.9, 1.05]
    res = _results({
        "2-head/mean": _final(RAW) | {"final_sqrt_kl": same},
        "2-head/sum": _final(RAW) | {"final_sqrt_kl": [1.3, 0.8, 1.1, 0.9]},  # not distinguishable from the mean's
        "2-head/logodds (wrong)": _final([0.12, 0.18, 0.33, 0.37]),
    })
    answer = compose_answer(res)
    assert "half the effective β" not in answer
    assert "final √KL not distinguishable from the mean's" in answer
    assert "do not show the wrong reading doing worse" in answer
    res = _results({
        "2-head/mean": _final(RAW) | {"final_sqrt_kl": same},
        "2-head/sum": _final(RAW) | {"final_sqrt_kl": [x + 1.0 for x in same]},
    })
    assert "half the effective β" in compose_answer(res)


def test_centring_is_separated_from_bounding():
    base = np.array([0.3, 0.35, 0.4, 0.32])
    res = _results({
        "1-head/raw": _final(base - 0.5),
        "1-head/logsigmoid": _final(base),
        "1-head/lsc": _final(base),
        "stress/logsigmoid + c(x)": _final(base - [0.2, 0.25, 0.22, 0.21]),  # moved by the offsets
        "stress/lsc + c(x)": _final(base + [0.01, -0.01, 0.0, 0.005]),  # not moved
    })
    by = {f["id"]: f for f in findings(res)}
    assert by["centring:logsigmoid+c-vs-logsigmoid:final_gold"]["verdict"] == "below"
    assert by["centring:lsc+c-vs-lsc:final_gold"]["verdict"] == "not distinguishable"
    answer = compose_answer(res)
    assert "logsigmoid above raw" in answer  # bounding
    assert "changed the uncentred logsigmoid, and no centred transform" in answer  # centring


def test_frontier_gap_and_beta_grid_worst_case():
    def run(key, seed, s, g):
        return {"key": key, "job": {"seed": seed}, "curve": [{"sqrt_kl": a, "gold": b, "proxy": 0.0} for a, b in zip(s, g)]}

    runs = [run("1-head/raw", 0, [0, 1, 2, 3], [0, 0.4, 0.2, -0.4]), run("1-head/par", 0, [0, 1, 2], [0, 0.4, 0.5])]
    res = _results({"1-head/raw": _final([0.0]), "1-head/par": _final([0.5])}, runs=runs)
    assert frontier_gap(res, "1-head/par", "1-head/raw") == {0: pytest.approx(0.5 - 0.2)}  # raw at √KL = 2 had 0.2
    # β grid: worst and mean over β per seed, paired against raw's.
    res = _results({
        "1-head/raw": _final([0.1, 0.2, 0.3]),
        "β grid/raw@β=0.005": _final([-0.9, -0.8, -0.7]),
        "1-head/lsc": _final([0.2, 0.3, 0.4]),
        "β grid/lsc@β=0.005": _final([0.0, 0.1, 0.05]),
    })
    res["strategies"]["β grid/raw@β=0.005"].update(spec="raw", kl_coef=0.005)
    res["strategies"]["β grid/lsc@β=0.005"].update(spec="lsc(q=0.5)", kl_coef=0.005)
    by = {f["id"]: f for f in findings(res)}
    worst = by["grid:lsc-vs-raw:worst_final_gold"]
    assert worst["diff"] == pytest.approx(np.mean([0.9, 0.9, 0.75])) and worst["verdict"] == "above"
    assert "Over the β grid (0.005, 0.02)" in compose_answer(res)


def test_gold_range_is_ceiling_peak_minus_sft():
    res = _results({"ceiling/gold (ceiling)": {"final_gold": [0.8, 0.9], "peak_gold": [0.9, 1.1], "final_sqrt_kl": [1, 1], "gold_at_1": [1, 1]}},
                   sft=0.5)
    assert gold_range(res) == pytest.approx(0.5)
    assert gold_range(_results({"1-head/raw": _final(RAW)})) is None


def test_agreement_across_tasks():
    def f(fid, verdict):
        return {"id": fid, "question": "q", "a": "a", "b": "b", "metric": "m", "diff": 0.1, "half": 0.05, "verdict": verdict}

    rows = agreement({"digits": [f("x", "above"), f("y", "below"), f("z", "above"), f("w", "not distinguishable")],
                      "brackets": [f("x", "above"), f("y", "not distinguishable"), f("z", "below"), f("w", "not distinguishable")]})
    assert {r["id"]: r["status"] for r in rows} == {"x": "holds on both", "y": "holds on one", "z": "conflicts",
                                                    "w": "not distinguishable on either"}
