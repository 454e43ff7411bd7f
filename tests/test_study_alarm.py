"""The study's validation of the over-optimisation alarm: per-run verdicts by hand, the targets."""

from __future__ import annotations

import math

import pytest

from rewardlab.ppo.alarm import AlarmSignals, OveroptimisationAlarm, first_trigger, scaled_signals
from rewardlab.ppo.config import AlarmConfig
from rewardlab.study.alarm import (
    alarm_metrics,
    alarm_summary,
    alarm_table,
    alarm_text,
    choose_level,
    first_signal,
    recovered,
    replay_stop,
    replayed_summary,
    strategy_class,
)


def record(golds, stop, updates=(0, 1, 2, 4, 8), per_prompt=(0.0, 1.0, 0.0, 1.0)):
    return {"curve": [{"update": u, "gold": g} for u, g in zip(updates, golds, strict=True)], "alarm_stop": stop,
            "final_gold_per_prompt": list(per_prompt)}


def test_a_stop_between_evaluations_is_scored_at_the_evaluated_policy_before_it():
    m = alarm_metrics(record([0.0, 0.5, 1.0, 0.2, -1.0], stop=3))  # evaluated at 2 (gold 1.0) ≤ 3 < 4
    assert m["alarm_update"] == 3 and m["alarm_gold"] == 1.0
    assert m["alarm_recovered"] == 1.0 and m["alarm_early"] == 0.0


SE = 0.5 / math.sqrt(4) * math.sqrt(4 / 3)  # s.d. (ddof 1) of per-prompt gold 0, 1, 0, 1 over √4 ≈ 0.289


def test_recovery_when_the_peak_comes_later():
    golds = [0.0, 0.3, 1.0, 0.2, -1.0]  # peak 1.0 at update 2, well above SFT + 2 s.e.
    assert alarm_metrics(record(golds, stop=2))["alarm_recovered"] == 1.0
    assert alarm_metrics(record(golds, stop=3))["alarm_recovered"] == 1.0  # scored at update 2
    assert alarm_metrics(record(golds, stop=1))["alarm_recovered"] == 0.0  # too early: 0.3 < 1.0 − 2 s.e.
    assert alarm_metrics(record(golds, stop=4))["alarm_recovered"] == 0.0  # too late: gold fell to 0.2
    assert alarm_metrics(record([0.0, 1.0 - 1.9 * SE, 1.0, 0.2, -1.0], stop=1))["alarm_recovered"] == 1.0  # within noise


def test_recovery_when_the_peak_is_the_sft_policy():
    # Gold never rises more than 2 s.e. above SFT (the "peak" at update 1 is noise): the level is SFT's gold.
    golds = [0.5, 0.5 + 1.5 * SE, 0.5 - 1.5 * SE, 0.5 - 3 * SE, 0.4]
    assert alarm_metrics(record(golds, stop=0))["alarm_recovered"] == 1.0
    assert alarm_metrics(record(golds, stop=3))["alarm_recovered"] == 1.0  # stopped in time: scored at update 2
    assert alarm_metrics(record(golds, stop=4))["alarm_recovered"] == 0.0  # late: gold fell below SFT − 2 s.e. at 4 …
    assert alarm_metrics(record(golds, stop=8))["alarm_recovered"] == 0.0  # … and came back by noise at 8: still late
    # The old rule (keep 80 % of the noise peak's gain) would have needed a stop at update 1 exactly.


def test_recovery_when_the_alarm_never_fires():
    never = alarm_metrics(record([0.0, 0.5, 1.0, 0.2, -1.0], stop=None))  # the final policy, far below the peak
    assert never["alarm_fired"] == 0.0 and never["alarm_gold"] == -1.0 and never["alarm_recovered"] == 0.0
    assert alarm_metrics(record([0.0, 0.2, 0.4, 0.6, 1.0], stop=None))["alarm_recovered"] == 1.0  # no over-optimisation
    assert recovered([{"update": 0, "gold": 0.0}, {"update": 5, "gold": 0.0}], 5, 0.0)


def test_early_and_near_peak_verdicts():
    rising = [0.0, 0.2, 0.4, 0.6, 1.0]
    m = alarm_metrics(record(rising, stop=2))
    assert m["alarm_early"] == 1.0  # final gain 1.0, kept 0.4 < 0.8
    assert alarm_metrics(record(rising, stop=8))["alarm_early"] == 0.0
    near = alarm_metrics(record([0.0, 1.0 - 1.9 * SE, 1.0, 0.0, 0.0], stop=1))
    far = alarm_metrics(record([0.0, 1.0 - 2.1 * SE, 1.0, 0.0, 0.0], stop=1))
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


def _results(unbounded_recovered, bounded_early):
    def per(**kw):
        return {"alarm_gold": 0.0, "alarm_recovered": 0.0, "alarm_early": 0.0, "alarm_gain": 0.0, "final_gain": 1.0,
                "alarm_update": 1.0, "alarm_fired": 1.0, "alarm_near_peak": 1.0, "peak_gold": 1.0, "final_gold": 0.0, **kw}
    return {
        "strategies": {"1-head/raw": {"spec": "raw", "group": "1-head", "label": "raw"},
                       "1-head/lsc": {"spec": "lsc(q=0.5)", "group": "1-head", "label": "lsc"}},
        "per_run": {"1-head/raw": {s: per(alarm_recovered=float(r)) for s, r in enumerate(unbounded_recovered)},
                    "1-head/lsc": {s: per(alarm_early=float(e), alarm_gain=0.5 if e else 1.0)
                                   for s, e in enumerate(bounded_early)}},
    }


def test_targets():
    ok = alarm_summary(_results([1, 1, 1, 1, 0], [0] * 9 + [1]))
    assert ok["unbounded_recovered"] == 0.8 and ok["bounded_runs_early"] == 0.1 and ok["target_met"]
    assert ok["bounded_strategies_early"] == []  # mean stop gain 0.95 of the mean final gain
    assert not alarm_summary(_results([1, 1, 1, 0, 0], [0] * 10))["target_met"]
    assert not alarm_summary(_results([1] * 5, [0] * 8 + [1, 1]))["target_met"]  # 20 % of bounded runs early
    assert alarm_summary(_results([1], []))["target_met"]  # no bounded runs
    # Records from before the replay: no variant without the uncertainty signal, and the text says so.
    assert set(ok["variants"]) == {"all"} and "not scored" in alarm_text(ok)


def test_table_counts_runs():
    rows = alarm_table(_results([1, 0, 1], [0]), ["1-head/raw", "1-head/lsc"])
    assert rows[1][0] == "raw" and rows[1][1] == "3" and rows[1][7] == "2/3"
    assert rows[1][9] == "– / – / –" and rows[1][10] == "–"  # records without the per-update signals


# ------------------------------------------------------------------ replaying the alarm with and without a signal
def _logged_run(n=12, uncertainty_rise=0.12, length_drift=0.08, head_corr=None):
    """A trainer-like stream: metrics rows as the trainer logs them, and the run record the study keeps."""
    alarm = OveroptimisationAlarm(AlarmConfig())
    rows = []
    for t in range(n):
        s = AlarmSignals(proxy=0.3 * t, kl=(0.25 * t) ** 2, reward_std=1.0, length=4.0 * (1 + length_drift * t),
                         head_spread=0.4 * (1 + uncertainty_rise * t), ref_head_spread=0.4, head_means=(0.0, 0.0),
                         head_corr=head_corr)
        rows.append({"update": t + 1, **alarm.update(s)})
    golds = [0.0, 0.4, 0.7, 0.0, -0.5]
    rec = {**record(golds, stop=first_trigger(rows), updates=(0, 3, 6, 8, 12)),
           "alarm_scaled": scaled_signals(rows, AlarmConfig())}
    return rows, rec


def test_replay_with_every_signal_is_the_logged_stop():
    rows, rec = _logged_run()
    scaled = rec["alarm_scaled"]
    # Smoothed (a = 0.5): uncertainty 0.60 / 0.5 on the rollout of update 7; length 0.56 / 0.5 on update 9.
    assert replay_stop(scaled, list(scaled)) == first_trigger(rows) == 6
    assert first_signal(scaled, 6) == "uncertainty"
    assert replay_stop(scaled, [k for k in scaled if k != "uncertainty"]) == 8
    quiet_rows, quiet = _logged_run(uncertainty_rise=0.0, length_drift=0.0)
    assert replay_stop(quiet["alarm_scaled"], list(quiet["alarm_scaled"])) is first_trigger(quiet_rows) is None


def test_metrics_and_table_with_and_without_the_uncertainty_signal():
    _, rec = _logged_run()
    m = alarm_metrics(rec)
    assert m["alarm_update"] == 6 and m["alarm_gold"] == 0.7 and m["alarm_recovered"] == 1.0  # at the peak
    assert m["alarm_no_uncertainty_update"] == 8 and m["alarm_no_uncertainty_gold"] == 0.0  # gold has fallen
    assert m["alarm_no_uncertainty_recovered"] == 0.0
    assert m["alarm_first_uncertainty"] == 1.0 and m["alarm_first_length"] == 0.0
    assert m["uncertainty_peak"] == max(rec["alarm_scaled"]["uncertainty"]) > 1.0
    results = {"strategies": {"1-head/raw": {"spec": "raw", "group": "1-head", "label": "raw"}},
               "per_run": {"1-head/raw": {0: {**m, "peak_gold": 0.7, "final_gold": -0.5}}}}
    summary = alarm_summary(results)
    assert set(summary["variants"]) == {"all", "no_uncertainty", "no_head_signals"}
    assert summary["first_signal"]["uncertainty"] == 1
    # This stream's heads have no disagreement signal: dropping it too replays the same stop as without uncertainty.
    assert m["alarm_no_head_signals_update"] == m["alarm_no_uncertainty_update"] == 8
    rows = alarm_table(results, ["1-head/raw"])
    assert rows[1][9] == "1/1 / 0/1 / 0/1" and rows[1][10] == "uncertainty 1"
    assert summary["unbounded_recovered"] == 1.0 and summary["variants"]["no_uncertainty"]["unbounded_recovered"] == 0.0
    assert summary["uncertainty_moved_stops"] == [1, 1]
    text = alarm_text(summary)
    assert "Without the uncertainty signal" in text and "uncertainty 1" in text and "stop of 1 of 1 runs" in text
    assert f"was a median {m['uncertainty_peak']:.2f} of its level" in text
    assert "Without either signal that reads several heads (uncertainty and disagreement" in text


def test_an_old_results_json_still_renders():
    # results.json from before this change: old per-run fields, old summary, no per-update signals.
    old_run = {"alarm_update": 3.0, "alarm_fired": 1.0, "alarm_gold": 0.1, "alarm_recovered": 0.0, "alarm_early": 0.0,
               "alarm_near_peak": 1.0, "alarm_gain": 0.1, "final_gain": -0.2, "peak_gold": 0.2, "final_gold": -0.2}
    results = {"strategies": {"1-head/raw": {"spec": "raw", "group": "1-head", "label": "raw"}},
               "per_run": {"1-head/raw": {0: old_run}},
               "alarm": {"unbounded_runs": 1, "unbounded_recovered": 0.0, "bounded_runs": 0, "bounded_runs_early": math.nan,
                         "bounded_strategies": 0, "bounded_strategies_early": [], "target_met": False}}
    assert "Target not met" in alarm_text(results["alarm"])
    assert alarm_table(results, ["1-head/raw"])[1][:3] == ["raw", "1", "1/1"]


# ------------------------------------------------------------------ replaying the alarm at other thresholds
def _study_of(rec):
    return {"runs": [{**rec, "key": "1-head/raw", "job": {"seed": 0}}],
            "strategies": {"1-head/raw": {"spec": "raw", "group": "1-head", "label": "raw"}}}


def test_replay_at_the_logged_thresholds_is_the_logged_alarm():
    _, rec = _logged_run()
    logged = AlarmConfig().uncertainty_threshold
    m = alarm_metrics(rec, {"uncertainty": 1.0})
    assert m == alarm_metrics(rec)
    summary = replayed_summary(_study_of(rec), {"uncertainty": logged})
    assert summary["unbounded_recovered"] == 1.0 and summary["first_signal"]["uncertainty"] == 1


def test_replay_at_another_uncertainty_threshold():
    _, rec = _logged_run()
    # Signal off (an infinite level): the stop is the one without it (update 8, gold fallen: not recovered).
    off = replayed_summary(_study_of(rec), {"uncertainty": math.inf})
    assert off["unbounded_recovered"] == 0.0 and off["first_signal"].get("uncertainty", 0) == 0
    # At half the level (logged values × 2) the uncertainty signal reaches it on an earlier rollout.
    low = alarm_metrics(rec, {"uncertainty": 2.0})
    assert low["alarm_update"] < 6 and low["alarm_first_uncertainty"] == 1.0
    with pytest.raises(ValueError, match="cannot be replayed"):
        alarm_metrics({k: v for k, v in rec.items() if k != "alarm_scaled"}, {"uncertainty": 2.0})


def _sweep_entry(rec_a, early_a, rec_b=None, early_b=None):
    rec_b = rec_a if rec_b is None else rec_b
    early_b = early_a if early_b is None else early_b
    return {task: {"unbounded_recovered": r, "bounded_runs_early": e,
                   "target_met": r >= 0.8 and e <= 0.1} for task, r, e in (("a", rec_a, early_a), ("b", rec_b, early_b))}


def test_choose_level_by_the_stated_rule():
    # 1. The largest level meeting both targets on both tasks.
    assert choose_level({0.25: _sweep_entry(0.9, 0.05), 0.5: _sweep_entry(0.85, 0.0), math.inf: _sweep_entry(0.5, 0.0)}) == 0.5
    # 2. None meets both: the calm level (early ≤ 10 % on both) whose worst task recovers most.
    assert choose_level({0.25: _sweep_entry(0.9, 0.3), 0.5: _sweep_entry(0.7, 0.05, 0.6, 0.1),
                         1.0: _sweep_entry(0.7, 0.0, 0.5, 0.0)}) == 0.5
    # 3. No calm level: the largest worst-task recovered − early.
    assert choose_level({0.25: _sweep_entry(0.9, 0.5), 0.5: _sweep_entry(0.6, 0.2)}) == 0.25
    # Ties keep the current level (a flat sweep moves no default), else go to the larger level.
    flat = {lv: _sweep_entry(0.2, 0.3) for lv in (0.25, 0.5, 1.0, math.inf)}
    assert choose_level(flat, current=0.5) == 0.5 and choose_level(flat) == math.inf
    assert choose_level({0.25: _sweep_entry(0.9, 0.0), 0.5: _sweep_entry(0.85, 0.0), 1.0: _sweep_entry(0.8, 0.1)},
                        current=0.25) == 0.25
    assert choose_level({0.25: _sweep_entry(0.9, 0.0), 0.5: _sweep_entry(0.7, 0.0)}, current=0.5) == 0.25


def test_why_unrecovered_runs_missed():
    """Late (kept policy after gold left the band) or too soon (stopped before reaching the best level)."""
    golds = [0.0, 0.3, 1.0, 0.2, -1.0]  # peak 1.0 at update 2; gold leaves the band at update 4
    late, soon, ok = (alarm_metrics(record(golds, stop=s)) for s in (4, 1, 2))
    assert late["alarm_late"] == 1.0 and late["band_exit"] == 4.0 and late["best_at_sft"] == 0.0
    assert soon["alarm_late"] == 0.0 and soon["alarm_recovered"] == 0.0
    assert ok["alarm_late"] == 0.0 and ok["alarm_recovered"] == 1.0
    flat = alarm_metrics(record([0.5, 0.5, 0.5, 0.5, 0.5], stop=None))
    assert flat["best_at_sft"] == 1.0 and math.isnan(flat["band_exit"]) and flat["alarm_recovered"] == 1.0
    results = {"strategies": {"1-head/raw": {"spec": "raw", "group": "1-head", "label": "raw"}},
               "per_run": {"1-head/raw": {i: {**m, "peak_gold": 1.0, "final_gold": -1.0}
                                          for i, m in enumerate((late, soon, ok, late))}}}
    summary = alarm_summary(results)
    assert (summary["unbounded_late"], summary["unbounded_too_soon"], summary["unbounded_best_at_sft"]) == (2, 1, 0)
    assert summary["unbounded_median_exit"] == 4.0 and summary["unbounded_median_stop"] == 3.0
    text = alarm_text(summary)
    assert "Of the 3 raw/whitened runs that did not recover, 2 stopped after gold had left the band and 1 before" in text
    assert "median of 4 updates, the alarm stopped after a median of 3 updates" in text


def test_the_alarm_without_any_head_signal():
    """Heads that disagree from the start (correlation 0.3: disagreement 0.7 > 0.5) stop the run at once; the
    replay without both head signals is the alarm a lone single-head proxy would have had."""
    _, rec = _logged_run(head_corr=0.3)
    m = alarm_metrics(rec)
    assert m["alarm_update"] == 0 and m["alarm_no_uncertainty_update"] == 0 and m["alarm_first_disagreement"] == 1.0
    assert m["alarm_no_head_signals_update"] == 8
