"""The study's validation of the over-optimisation alarm: per-run verdicts by hand, the targets."""

from __future__ import annotations

import math

import pytest

from rewardlab.study.alarm import alarm_metrics, alarm_summary, alarm_table, strategy_class


def record(golds, stop, updates=(0, 1, 2, 4, 8), per_prompt=(0.0, 1.0, 0.0, 1.0)):
    return {"curve": [{"update": u, "gold": g} for u, g in zip(updates, golds, strict=True)], "alarm_stop": stop,
            "final_gold_per_prompt": list(per_prompt)}


def test_a_stop_between_evaluations_is_scored_at_the_evaluated_policy_before_it():
    m = alarm_metrics(record([0.0, 0.5, 1.0, 0.2, -1.0], stop=3))  # evaluated at 2 (gold 1.0) ≤ 3 < 4
    assert m["alarm_update"] == 3 and m["alarm_gold"] == 1.0
    assert m["alarm_recovered"] == 1.0 and m["alarm_early"] == 0.0


def test_recovery_is_80_percent_of_the_peak_gain():
    golds = [0.0, 0.5, 1.0, 0.2, -1.0]
    assert alarm_metrics(record(golds, stop=1))["alarm_recovered"] == 0.0  # keeps 50 % of the peak's gain
    assert alarm_metrics(record([0.0, 0.85, 1.0, 0.2, -1.0], stop=1))["alarm_recovered"] == 1.0
    never = alarm_metrics(record(golds, stop=None))  # no alarm: the final policy, far below the peak
    assert never["alarm_fired"] == 0.0 and never["alarm_gold"] == -1.0 and never["alarm_recovered"] == 0.0


def test_when_gold_never_rises_only_a_stop_no_worse_than_sft_recovers():
    golds = [0.5, 0.4, 0.3, 0.2, 0.1]
    assert alarm_metrics(record(golds, stop=0))["alarm_recovered"] == 1.0
    assert alarm_metrics(record(golds, stop=1))["alarm_recovered"] == 0.0


def test_early_and_near_peak_verdicts():
    rising = [0.0, 0.2, 0.4, 0.6, 1.0]
    m = alarm_metrics(record(rising, stop=2))
    assert m["alarm_early"] == 1.0  # final gain 1.0, kept 0.4 < 0.8
    assert alarm_metrics(record(rising, stop=8))["alarm_early"] == 0.0
    se = 0.5 / math.sqrt(4) * math.sqrt(4 / 3)  # s.d. (ddof 1) of 0, 1, 0, 1 over √4
    near = alarm_metrics(record([0.0, 1.0 - 1.9 * se, 1.0, 0.0, 0.0], stop=1))
    far = alarm_metrics(record([0.0, 1.0 - 2.1 * se, 1.0, 0.0, 0.0], stop=1))
    assert near["alarm_near_peak"] == 1.0 and far["alarm_near_peak"] == 0.0


def test_records_without_the_alarm_give_no_alarm_metrics():
    rec = record([0.0, 1.0, 0.0, 0.0, 0.0], stop=None)
    del rec["alarm_stop"]
    assert alarm_metrics(rec) == {}


@pytest.mark.parametrize("spec,group,cls", [("raw", "1-head", "unbounded"), ("whiten", "β grid", "unbounded"),
                                            ("lsc(q=0.5)", "1-head", "bounded"), ("par", "β grid", "bounded"),
                                            ("logsigmoid", "stress", None), ("running_norm|clip(lo=-3)", "1-head", None),
                                            ("mean", "2-head", None)])
def test_strategy_classes(spec, group, cls):
    assert strategy_class(spec, group) == cls


def _results(unbounded_recovered, bounded_gain_at_stop, bounded_final_gain):
    def per(**kw):
        return {"alarm_gold": 0.0, "alarm_recovered": 0.0, "alarm_early": 0.0, "alarm_gain": 0.0, "final_gain": 0.0,
                "alarm_update": 1.0, "alarm_fired": 1.0, "alarm_near_peak": 1.0, "peak_gold": 1.0, "final_gold": 0.0, **kw}
    return {
        "strategies": {"1-head/raw": {"spec": "raw", "group": "1-head", "label": "raw"},
                       "1-head/lsc": {"spec": "lsc(q=0.5)", "group": "1-head", "label": "lsc"}},
        "per_run": {"1-head/raw": {s: per(alarm_recovered=float(r)) for s, r in enumerate(unbounded_recovered)},
                    "1-head/lsc": {0: per(alarm_gain=bounded_gain_at_stop, final_gain=bounded_final_gain)}},
    }


def test_targets():
    ok = alarm_summary(_results([1, 1, 1, 1, 0], 0.9, 1.0))
    assert ok["unbounded_recovered"] == 0.8 and ok["bounded_strategies_early"] == [] and ok["target_met"]
    assert not alarm_summary(_results([1, 1, 1, 0, 0], 0.9, 1.0))["target_met"]
    early = alarm_summary(_results([1, 1, 1, 1, 1], 0.7, 1.0))
    assert early["bounded_strategies_early"] == ["lsc"] and not early["target_met"]
    assert alarm_summary(_results([1], -0.5, -0.2))["target_met"]  # a bounded run that loses gold anyway


def test_table_counts_runs():
    rows = alarm_table(_results([1, 0, 1], 0.9, 1.0), ["1-head/raw", "1-head/lsc"])
    assert rows[1][0] == "raw" and rows[1][1] == "3" and rows[1][7] == "2/3"
