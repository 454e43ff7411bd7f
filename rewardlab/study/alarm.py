"""Validating the trainer's over-optimisation alarm against the gold reward the study knows.

Each PPO run logs the alarm (`rewardlab.ppo.alarm`) from proxy-side signals only; the run record
keeps ``alarm_stop``, the number of updates done before the first rollout that triggered it (the
policy ``alarm.early_stop`` would keep), or None. The study measures gold only at its evaluation
points, so a stop is scored at the newest evaluated policy at or before it (what a user would get
with checkpoints at those points; never later than the alarm's own policy).

Per run: gold at the stop, the run's gold peak over its evaluation points, its final gold, and

- *recovered*: the stop keeps ≥ 80 % of the peak's gold gain over SFT (the run's update-0 point):
  gold_stop − sft ≥ 0.8 · (peak − sft); when gold never rose, only a stop no worse than SFT counts;
- *early*: the run would have ended with a gain and the stop keeps < 80 % of it;
- *near peak*: gold_stop ≥ peak − 2 s.e. (s.e. of one evaluation's mean gold), the noise-aware view.

The issue's targets: ≥ 80 % of raw and whitened runs recovered on every task; no bounded strategy
(logsigmoid, sigmoid, LSC, PAR) stopped early by more than 20 % of its mean final gain.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

UNBOUNDED = ("raw", "whiten")
BOUNDED = ("logsigmoid", "sigmoid", "lsc", "par")
GROUPS = ("1-head", "β grid")  # the strategy comparisons the targets are judged on


def strategy_class(spec: str, group: str) -> str | None:
    """'unbounded' (raw, whiten…), 'bounded' (logsigmoid, sigmoid, LSC, PAR) or None (other groups/specs)."""
    if group not in GROUPS:
        return None
    head = spec.split("|")[0].split("(")[0]
    if head in UNBOUNDED:
        return "unbounded"
    if any(spec.startswith(b) for b in BOUNDED):
        return "bounded"
    return None


def alarm_metrics(run: dict[str, Any]) -> dict[str, float]:
    """The alarm's per-run metrics (empty for a record without ``alarm_stop``: runs from before the alarm)."""
    if "alarm_stop" not in run:
        return {}
    curve = run["curve"]
    last = curve[-1]["update"]
    stop = last if run["alarm_stop"] is None else min(int(run["alarm_stop"]), last)
    gold_stop = [c for c in curve if c["update"] <= stop][-1]["gold"]
    sft, final = curve[0]["gold"], curve[-1]["gold"]
    peak = max(c["gold"] for c in curve)
    pp = np.asarray(run["final_gold_per_prompt"], dtype=float)
    se = float(pp.std(ddof=1) / math.sqrt(len(pp))) if len(pp) > 1 else 0.0
    return {
        "alarm_update": float(stop),
        "alarm_fired": float(run["alarm_stop"] is not None),
        "alarm_gold": float(gold_stop),
        "alarm_recovered": float(gold_stop - sft >= 0.8 * (peak - sft) - 1e-12),
        "alarm_early": float(final > sft and gold_stop - sft < 0.8 * (final - sft)),
        "alarm_near_peak": float(gold_stop >= peak - 2 * se),
        "alarm_gain": float(gold_stop - sft),
        "final_gain": float(final - sft),
    }


def alarm_summary(results: dict[str, Any]) -> dict[str, Any] | None:
    """Targets over the study's runs: recovered fraction of unbounded runs, bounded strategies stopped early."""
    per_run, strategies = results.get("per_run", {}), results.get("strategies", {})
    unbounded, bounded_runs, early_strategies, judged = [], [], [], []
    for key, s in strategies.items():
        cls = strategy_class(s["spec"], s["group"])
        runs = [m for m in per_run.get(key, {}).values() if "alarm_gold" in m]
        if cls is None or not runs:
            continue
        if cls == "unbounded":
            unbounded += [m["alarm_recovered"] for m in runs]
        else:
            bounded_runs += [m["alarm_early"] for m in runs]
            stop_gain, final_gain = np.mean([m["alarm_gain"] for m in runs]), np.mean([m["final_gain"] for m in runs])
            judged.append(key)
            if final_gain > 0 and stop_gain < 0.8 * final_gain:
                early_strategies.append(s["label"])
    if not unbounded and not bounded_runs:
        return None
    rec = float(np.mean(unbounded)) if unbounded else math.nan
    return {
        "unbounded_runs": len(unbounded), "unbounded_recovered": rec,
        "bounded_runs": len(bounded_runs), "bounded_runs_early": float(np.mean(bounded_runs)) if bounded_runs else math.nan,
        "bounded_strategies": len(judged), "bounded_strategies_early": early_strategies,
        "target_met": bool(unbounded) and rec >= 0.8 and not early_strategies,
    }


def alarm_table(results: dict[str, Any], keys: list[str]) -> list[list[str]]:
    """Rows per strategy: the alarm's stop, gold there, gold peak, final gold, and the per-run verdicts."""
    from rewardlab.study.analysis import mean_ci
    from rewardlab.study.report import fmt_ci

    rows = [["strategy", "runs", "alarm fired", "stop (updates done)", "gold at the alarm's stop", "gold peak",
             "final gold", "recovered ≥ 80 % of peak gain", "within 2 s.e. of peak", "stopped early (> 20 % of final gain)"]]
    for k in keys:
        runs = [m for m in results["per_run"].get(k, {}).values() if "alarm_gold" in m]
        if not runs:
            continue
        n = len(runs)

        def count(field: str, runs: list[dict[str, float]] = runs, n: int = n) -> str:
            return f"{int(sum(m[field] for m in runs))}/{n}"

        rows.append([results["strategies"][k]["label"], str(n), count("alarm_fired"),
                     fmt_ci(mean_ci([m["alarm_update"] for m in runs])), fmt_ci(mean_ci([m["alarm_gold"] for m in runs])),
                     fmt_ci(mean_ci([m["peak_gold"] for m in runs])), fmt_ci(mean_ci([m["final_gold"] for m in runs])),
                     count("alarm_recovered"), count("alarm_near_peak"), count("alarm_early")])
    return rows


def alarm_text(summary: dict[str, Any] | None) -> str:
    """One paragraph stating the targets and what this study's runs give."""
    if summary is None:
        return "No run of this study recorded the alarm."
    early = summary["bounded_strategies_early"]
    return (
        "The trainer's alarm (`alarm/score`, proxy-side signals only; docs/ppo.md) logged on every run; a stop is scored at "
        "the newest evaluated policy at or before it. Targets: ≥ 80 % of raw and whitened runs keep ≥ 80 % of their peak's "
        "gold gain over SFT, and no bounded strategy is stopped early by more than 20 % of its mean final gain. This study: "
        f"{100 * summary['unbounded_recovered']:.0f} % of {summary['unbounded_runs']} raw/whitened runs recovered; "
        + (f"bounded strategies stopped early: {', '.join(early)}" if early else
           f"no bounded strategy of {summary['bounded_strategies']} stopped early")
        + f" ({100 * summary['bounded_runs_early']:.0f} % of {summary['bounded_runs']} bounded runs). "
        + ("Target met." if summary["target_met"] else "Target not met.")
    )
