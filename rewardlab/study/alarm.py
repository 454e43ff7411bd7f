"""Validating the trainer's over-optimisation alarm against the gold reward the study knows.

Each PPO run logs the alarm (`rewardlab.ppo.alarm`) from proxy-side signals only; the run record
keeps ``alarm_stop``, the number of updates done before the first rollout that triggered it (the
policy ``alarm.early_stop`` would keep), or None, and ``alarm_scaled``, each signal over its threshold
per update, so that the alarm can be replayed with a subset of its signals: the stop is the first
update where the largest chosen scaled signal reaches 1 (with every signal, exactly the logged stop).
The study measures gold only at its evaluation points, so a stop is scored at the newest evaluated
policy at or before it (what a user would get with checkpoints at those points; never later than
the alarm's own policy). A run the alarm never stopped is scored at its final policy.

Per run, with s.e. the standard error of one evaluation's mean gold (over the evaluation prompts):

- *best level* B: the run's gold peak over its evaluation points if it exceeds SFT's gold (update 0)
  by more than 2 s.e.; otherwise SFT's gold, at update 0 (the peak is the SFT policy, within noise:
  the largest of many noisy evaluations is biased up, and a gain of zero cannot be kept at 80 %);
- *recovered*: the stop came before gold fell more than 2 s.e. below B. Every evaluated policy from
  the earlier of B's update and the stop's policy up to the stop's policy has gold ≥ B − 2 s.e.: the
  kept policy is within 2 s.e. of B (a stop before the peak that missed its gain fails) and gold did not
  drop out of that band between B and the stop (a late stop fails even if gold has come back by noise).
  For a peak at SFT this reads: stopped before gold fell below SFT − 2 s.e. One rule, every task;
- *early* (bounded strategies): the run would have ended with a gain over SFT and the stop keeps
  < 80 % of it (stopped early by more than 20 % of its final gain);
- *near peak*: the stop's gold ≥ peak − 2 s.e. (the peak itself, noisy).

The issue's targets, judged on the 1-head and β-grid groups: ≥ 80 % of raw and whitened runs recover;
≤ 10 % of bounded-strategy runs (logsigmoid, sigmoid, LSC, PAR) stopped early. Both are reported for
the alarm with every signal and without ``uncertainty``, with the signal that fired first per strategy.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

UNBOUNDED = ("raw", "whiten")
BOUNDED = ("logsigmoid", "sigmoid", "lsc", "par")
GROUPS = ("1-head", "β grid")  # the strategy comparisons the targets are judged on
RECOVERED_TARGET, EARLY_TARGET = 0.8, 0.1
WITHOUT = "uncertainty"  # the signal the study also scores the alarm without
NO_PREFIX = f"alarm_no_{WITHOUT}_"  # per-run metrics of the alarm replayed without that signal
VARIANTS = {"all": "alarm_", f"no_{WITHOUT}": NO_PREFIX}  # summary variant -> its per-run metric prefix


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


def replay_stop(scaled: dict[str, Sequence[float]], signals: Sequence[str]) -> int | None:
    """Updates done before the first rollout where the largest of ``signals`` (scaled: 1 = alarm level) is ≥ 1."""
    chosen = [scaled[k] for k in signals if k in scaled]
    n = min((len(v) for v in chosen), default=0)
    return next((i for i in range(n) if max(v[i] for v in chosen) >= 1.0), None)


def first_signal(scaled: dict[str, Sequence[float]], stop: int | None) -> str | None:
    """The largest scaled signal on the rollout the alarm stopped at (None: it never fired)."""
    if stop is None or not scaled:
        return None
    return max(scaled, key=lambda k: scaled[k][stop])


def recovered(curve: Sequence[dict[str, float]], stop: int, se: float) -> bool:
    """The stated recovery rule (module docstring) for a stop after ``stop`` updates."""
    sft, peak = curve[0]["gold"], max(c["gold"] for c in curve)
    if peak - sft > 2 * se:
        best, at = peak, next(c["update"] for c in curve if c["gold"] == peak)
    else:
        best, at = sft, 0
    kept = [c for c in curve if c["update"] <= stop][-1]["update"]
    return all(c["gold"] >= best - 2 * se - 1e-12 for c in curve if min(at, kept) <= c["update"] <= kept)


def _verdicts(curve: Sequence[dict[str, float]], alarm_stop: int | None, se: float, prefix: str) -> dict[str, float]:
    last = curve[-1]["update"]
    stop = last if alarm_stop is None else min(int(alarm_stop), last)
    gold_stop = [c for c in curve if c["update"] <= stop][-1]["gold"]
    sft, final = curve[0]["gold"], curve[-1]["gold"]
    return {
        f"{prefix}update": float(stop),
        f"{prefix}fired": float(alarm_stop is not None),
        f"{prefix}gold": float(gold_stop),
        f"{prefix}recovered": float(recovered(curve, stop, se)),
        f"{prefix}early": float(final > sft and gold_stop - sft < 0.8 * (final - sft)),
        f"{prefix}gain": float(gold_stop - sft),
    }


def alarm_metrics(run: dict[str, Any]) -> dict[str, float]:
    """The alarm's per-run metrics (empty for a record without ``alarm_stop``: runs from before the alarm).

    ``alarm_*`` score the logged stop (every signal); with ``alarm_scaled`` in the record (runs from
    after the uncertainty signal) also ``alarm_no_uncertainty_*``, the replayed stop without it, and
    ``alarm_first_<signal>`` (1 for the largest signal at the logged stop).
    """
    if "alarm_stop" not in run:
        return {}
    curve = run["curve"]
    pp = np.asarray(run["final_gold_per_prompt"], dtype=float)
    se = float(pp.std(ddof=1) / math.sqrt(len(pp))) if len(pp) > 1 else 0.0
    peak = max(c["gold"] for c in curve)
    out = _verdicts(curve, run["alarm_stop"], se, "alarm_")
    out["alarm_near_peak"] = float(out["alarm_gold"] >= peak - 2 * se)
    out["final_gain"] = float(curve[-1]["gold"] - curve[0]["gold"])
    scaled = run.get("alarm_scaled")
    if scaled:
        out.update(_verdicts(curve, replay_stop(scaled, [k for k in scaled if k != WITHOUT]), se, NO_PREFIX))
        top = first_signal(scaled, run["alarm_stop"])
        out.update({f"alarm_first_{k}": float(k == top) for k in sorted(scaled)})
    return out


def _runs(results: dict[str, Any], key: str) -> list[dict[str, float]]:
    return [m for m in results.get("per_run", {}).get(key, {}).values() if "alarm_gold" in m]


def alarm_summary(results: dict[str, Any]) -> dict[str, Any] | None:
    """The targets over the study's runs, per variant (``all``; ``no_uncertainty`` where the runs allow).

    Per variant: the recovered fraction of unbounded runs, the early fraction of bounded runs, the
    bounded strategies whose mean stop keeps < 80 % of their mean final gain, and whether both targets
    are met.
    """
    strategies = results.get("strategies", {})
    out: dict[str, Any] = {}
    for variant, prefix in VARIANTS.items():
        unbounded, bounded_runs, early_strategies, judged = [], [], [], []
        for key, s in strategies.items():
            cls = strategy_class(s["spec"], s["group"])
            runs = [m for m in _runs(results, key) if f"{prefix}gold" in m]
            if cls is None or not runs:
                continue
            if cls == "unbounded":
                unbounded += [m[f"{prefix}recovered"] for m in runs]
            else:
                bounded_runs += [m[f"{prefix}early"] for m in runs]
                stop_gain = np.mean([m[f"{prefix}gain"] for m in runs])
                final_gain = np.mean([m["final_gain"] for m in runs])
                judged.append(key)
                if final_gain > 0 and stop_gain < 0.8 * final_gain:
                    early_strategies.append(s["label"])
        if not unbounded and not bounded_runs:
            continue
        rec = float(np.mean(unbounded)) if unbounded else math.nan
        early = float(np.mean(bounded_runs)) if bounded_runs else math.nan
        out[variant] = {
            "unbounded_runs": len(unbounded), "unbounded_recovered": rec,
            "bounded_runs": len(bounded_runs), "bounded_runs_early": early,
            "bounded_strategies": len(judged), "bounded_strategies_early": early_strategies,
            "target_met": bool(unbounded) and rec >= RECOVERED_TARGET and not early > EARLY_TARGET,
        }
    if "all" not in out:
        return None
    first: Counter[str] = Counter()
    for key, s in strategies.items():
        if strategy_class(s["spec"], s["group"]) is not None:
            first.update(first_signals(_runs(results, key)))
    # Over every group (the signal needs several heads: 2-head and ensemble runs): stops it moved.
    replayed = [m for key in strategies for m in _runs(results, key) if f"{NO_PREFIX}update" in m]
    moved = sum(m["alarm_update"] != m[f"{NO_PREFIX}update"] for m in replayed)
    return {**out["all"], "variants": out, "first_signal": dict(first),
            f"{WITHOUT}_moved_stops": [int(moved), len(replayed)]}


def first_signals(runs: list[dict[str, float]]) -> Counter[str]:
    """How many runs each signal was the largest of when the alarm first fired."""
    return Counter({k.removeprefix("alarm_first_"): int(sum(m.get(k, 0.0) for m in runs))
                    for k in sorted({k for m in runs for k in m if k.startswith("alarm_first_")})})


def alarm_table(results: dict[str, Any], keys: list[str]) -> list[list[str]]:
    """Rows per strategy: the alarm's stop, gold there, gold peak, final gold, the per-run verdicts, the
    same verdicts without the uncertainty signal ("–" for runs that did not record it) and which signal
    fired first."""
    from rewardlab.study.analysis import mean_ci
    from rewardlab.study.report import fmt_ci

    rows = [["strategy", "runs", "alarm fired", "stop (updates done)", "gold at the alarm's stop", "gold peak",
             "final gold", "recovered", "stopped early (> 20 % of final gain)",
             f"without {WITHOUT}: fired / recovered / early", "largest signal at the first firing"]]
    for k in keys:
        runs = _runs(results, k)
        if not runs:
            continue
        n = len(runs)

        def count(field: str, runs: list[dict[str, float]] = runs, n: int = n) -> str:
            if not all(field in m for m in runs):
                return "–"
            return f"{int(sum(m[field] for m in runs))}/{n}"

        first = ", ".join(f"{sig} {c}" for sig, c in first_signals(runs).most_common() if c) or "–"
        rows.append([results["strategies"][k]["label"], str(n), count("alarm_fired"),
                     fmt_ci(mean_ci([m["alarm_update"] for m in runs])), fmt_ci(mean_ci([m["alarm_gold"] for m in runs])),
                     fmt_ci(mean_ci([m["peak_gold"] for m in runs])), fmt_ci(mean_ci([m["final_gold"] for m in runs])),
                     count("alarm_recovered"), count("alarm_early"),
                     " / ".join(count(NO_PREFIX + f) for f in ("fired", "recovered", "early")), first])
    return rows


def _verdict_text(v: dict[str, Any]) -> str:
    early = v["bounded_strategies_early"]
    return (f"{100 * v['unbounded_recovered']:.0f} % of {v['unbounded_runs']} raw/whitened runs recovered; "
            + (f"{100 * v['bounded_runs_early']:.0f} % of {v['bounded_runs']} bounded runs stopped early"
               if v["bounded_runs"] else "no bounded runs")
            + (f" (strategies whose mean stop keeps < 80 % of their mean final gain: {', '.join(early)})" if early else "")
            + (". Target met." if v["target_met"] else ". Target not met."))


def alarm_text(summary: dict[str, Any] | None) -> str:
    """One paragraph: the recovery rule, the targets, and what this study's runs give with and without
    the uncertainty signal, and which signals fired first."""
    if summary is None:
        return "No run of this study recorded the alarm."
    variants = summary.get("variants", {"all": summary})
    text = (
        "The trainer's alarm (`alarm/score`, proxy-side signals only; docs/ppo.md) logged on every run; a stop is scored at "
        "the newest evaluated policy at or before it (a run it never stopped: at its final policy). A run *recovers* when "
        "the stop came before gold fell more than 2 s.e. (one evaluation's mean gold) below its best level: the gold peak "
        "if it exceeds SFT by more than 2 s.e., else SFT itself at update 0; every evaluated policy from that level's "
        "update (or the stop, if earlier) to the stop must stay within 2 s.e. of it. A bounded run is *stopped early* when "
        "its stop keeps < 80 % of a positive final gain. Targets (1-head and β-grid groups): ≥ 80 % of raw and whitened "
        f"runs recover; ≤ 10 % of bounded-strategy runs stopped early. Every signal: {_verdict_text(variants['all'])}"
    )
    nou = variants.get(f"no_{WITHOUT}")
    text += (f" Without the {WITHOUT} signal (the same runs, the alarm replayed from the logged signals): "
             f"{_verdict_text(nou)}" if nou else
             f" These runs did not record their signals per update, so the alarm without {WITHOUT} is not scored.")
    moved = summary.get(f"{WITHOUT}_moved_stops")
    if moved:
        text += (f" Over every group, the {WITHOUT} signal moved the stop of {moved[0]} of {moved[1]} runs (it needs several "
                 "heads: 2-head and ensemble runs).")
    first = summary.get("first_signal") or {}
    if any(first.values()):
        text += " Largest signal at the first firing, over those runs: " + ", ".join(
            f"{k} {c}" for k, c in sorted(first.items(), key=lambda kv: -kv[1]) if c) + "."
    return text
