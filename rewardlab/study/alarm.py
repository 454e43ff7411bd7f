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
the alarm with every signal, without ``uncertainty`` and without both head signals (``VARIANTS``), with
the signal that fired first per strategy; `replayed_summary` and `choose_level` replay the alarm at other
thresholds and pick one (bench/alarm_threshold.py).
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
HEAD_SIGNALS = ("uncertainty", "disagreement")  # the signals that read several heads (a lone 1-head proxy has neither)
NO_HEADS_PREFIX = "alarm_no_head_signals_"  # per-run metrics of the alarm replayed without both
VARIANTS = {"all": "alarm_", f"no_{WITHOUT}": NO_PREFIX, "no_head_signals": NO_HEADS_PREFIX}  # variant -> metric prefix
REPLAYS = {NO_PREFIX: (WITHOUT,), NO_HEADS_PREFIX: HEAD_SIGNALS}  # replayed variant's prefix -> the signals it drops


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


def best_level(curve: Sequence[dict[str, float]], se: float) -> tuple[float, int]:
    """The run's best level B and its update (module docstring): the peak if it beats SFT by > 2 s.e., else SFT."""
    sft, peak = curve[0]["gold"], max(c["gold"] for c in curve)
    if peak - sft > 2 * se:
        return peak, next(c["update"] for c in curve if c["gold"] == peak)
    return sft, 0


def band_exit(curve: Sequence[dict[str, float]], se: float) -> int | None:
    """The first evaluated update after B's where gold is below B − 2 s.e. (None: it never left the band)."""
    best, at = best_level(curve, se)
    return next((c["update"] for c in curve if c["update"] > at and c["gold"] < best - 2 * se - 1e-12), None)


def recovered(curve: Sequence[dict[str, float]], stop: int, se: float) -> bool:
    """The stated recovery rule (module docstring) for a stop after ``stop`` updates."""
    best, at = best_level(curve, se)
    kept = [c for c in curve if c["update"] <= stop][-1]["update"]
    return all(c["gold"] >= best - 2 * se - 1e-12 for c in curve if min(at, kept) <= c["update"] <= kept)


def _verdicts(curve: Sequence[dict[str, float]], alarm_stop: int | None, se: float, prefix: str,
              exit_at: int | None) -> dict[str, float]:
    """One stop's verdicts under ``prefix``; ``exit_at`` is the run's `band_exit`."""
    last = curve[-1]["update"]
    stop = last if alarm_stop is None else min(int(alarm_stop), last)
    kept_row = [c for c in curve if c["update"] <= stop][-1]  # the evaluated policy the stop keeps
    gold_stop, kept = kept_row["gold"], kept_row["update"]
    sft, final = curve[0]["gold"], curve[-1]["gold"]
    ok = recovered(curve, stop, se)
    return {
        f"{prefix}update": float(stop),
        f"{prefix}fired": float(alarm_stop is not None),
        f"{prefix}gold": float(gold_stop),
        f"{prefix}recovered": float(ok),
        # Why a run did not recover: its kept policy comes after gold left the band (late), or not (too soon).
        f"{prefix}late": float(not ok and exit_at is not None and kept >= exit_at),
        f"{prefix}early": float(final > sft and gold_stop - sft < 0.8 * (final - sft)),
        f"{prefix}gain": float(gold_stop - sft),
    }


def alarm_metrics(run: dict[str, Any], rescale: dict[str, float] | None = None) -> dict[str, float]:
    """The alarm's per-run metrics (empty for a record without ``alarm_stop``: runs from before the alarm).

    ``alarm_*`` score the logged stop (every signal): ``update``, ``fired``, ``gold``, ``recovered``, ``late``
    (unrecovered, the kept policy after gold left the band), ``early``, ``gain``, ``near_peak``; per run also
    ``final_gain``, ``best_at_sft`` and ``band_exit`` (`band_exit`, NaN: never). With ``alarm_scaled`` in the
    record (runs from after the uncertainty signal) also the replays of `REPLAYS` (``alarm_no_uncertainty_*``,
    ``alarm_no_head_signals_*``), ``alarm_first_<signal>`` (1 for the largest signal at the stop) and
    ``uncertainty_peak`` (its largest value over the run, in units of its level).

    ``rescale``: {signal: logged threshold / new threshold}: the alarm replayed with those thresholds
    (``alarm_*`` then score the replayed stop; needs ``alarm_scaled``).
    """
    if "alarm_stop" not in run:
        return {}
    curve = run["curve"]
    pp = np.asarray(run["final_gold_per_prompt"], dtype=float)
    se = float(pp.std(ddof=1) / math.sqrt(len(pp))) if len(pp) > 1 else 0.0
    peak = max(c["gold"] for c in curve)
    scaled, stop = run.get("alarm_scaled"), run["alarm_stop"]
    if rescale:
        if not scaled:
            raise ValueError(f"run {run.get('key')!r} did not record its signals per update; it cannot be replayed")
        scaled = {k: [x * rescale.get(k, 1.0) for x in v] for k, v in scaled.items()}
        stop = replay_stop(scaled, list(scaled))
    exit_at = band_exit(curve, se)
    out = _verdicts(curve, stop, se, "alarm_", exit_at)
    out["alarm_near_peak"] = float(out["alarm_gold"] >= peak - 2 * se)
    out["final_gain"] = float(curve[-1]["gold"] - curve[0]["gold"])
    out["best_at_sft"] = float(best_level(curve, se)[1] == 0)
    out["band_exit"] = math.nan if exit_at is None else float(exit_at)
    if scaled:
        if scaled.get(WITHOUT):
            out[f"{WITHOUT}_peak"] = float(max(scaled[WITHOUT]))  # in units of its level (1 = would fire)
        for prefix, dropped in REPLAYS.items():
            out.update(_verdicts(curve, replay_stop(scaled, [k for k in scaled if k not in dropped]), se, prefix, exit_at))
        top = first_signal(scaled, stop)
        out.update({f"alarm_first_{k}": float(k == top) for k in sorted(scaled)})
    return out


def replayed_summary(results: dict[str, Any], thresholds: dict[str, float]) -> dict[str, Any] | None:
    """`alarm_summary` of a study's runs with the alarm replayed at other ``thresholds`` ({signal: level}).

    The runs logged their signals against `AlarmConfig`'s defaults (the study sets no alarm field), so a
    signal's scaled values are multiplied by default / new level; training does not depend on the alarm
    (``early_stop`` off), so the replay is what the run would have logged.
    """
    from rewardlab.ppo.config import AlarmConfig

    logged = AlarmConfig()
    rescale = {}
    for k, level in thresholds.items():
        was = getattr(logged, f"{k}_threshold")
        if was is None or not level > 0:
            raise ValueError(f"signal {k!r}: logged threshold {was}, new {level}; both must be positive")
        rescale[k] = was / level
    per_run: dict[str, dict[Any, dict[str, float]]] = {}
    for run in results["runs"]:
        per_run.setdefault(run["key"], {})[run["job"]["seed"]] = alarm_metrics(run, rescale)
    return alarm_summary({"strategies": results["strategies"], "per_run": per_run})


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
        late, at_sft, exits, stops = [], [], [], []
        for key, s in strategies.items():
            cls = strategy_class(s["spec"], s["group"])
            runs = [m for m in _runs(results, key) if f"{prefix}gold" in m]
            if cls is None or not runs:
                continue
            if cls == "unbounded":
                unbounded += [m[f"{prefix}recovered"] for m in runs]
                late += [m.get(f"{prefix}late", 0.0) for m in runs]
                at_sft += [m.get("best_at_sft", 0.0) for m in runs]
                exits += [m["band_exit"] for m in runs if "band_exit" in m]
                stops += [m[f"{prefix}update"] for m in runs]
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
            "unbounded_late": int(sum(late)), "unbounded_too_soon": int(len(unbounded) - sum(unbounded) - sum(late)),
            "unbounded_best_at_sft": int(sum(at_sft)),
            "unbounded_median_exit": _median(exits), "unbounded_median_stop": _median(stops),
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
    peaks = [m[f"{WITHOUT}_peak"] for key, s in strategies.items() if strategy_class(s["spec"], s["group"])
             for m in _runs(results, key) if f"{WITHOUT}_peak" in m]
    return {**out["all"], "variants": out, "first_signal": dict(first),
            f"{WITHOUT}_moved_stops": [int(moved), len(replayed)],
            f"{WITHOUT}_peaks": {"runs": len(peaks), "median": _median(peaks), "max": max(peaks, default=math.nan)}}


def _median(xs: Sequence[float]) -> float:
    """Median of the finite values (NaN: none; a run whose gold never left the band has no exit)."""
    finite = [x for x in xs if math.isfinite(x)]
    return float(np.median(finite)) if finite else math.nan


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


def _verdict_text(v: dict[str, Any], why: bool = True) -> str:
    early = v["bounded_strategies_early"]
    text = (f"{100 * v['unbounded_recovered']:.0f} % of {v['unbounded_runs']} raw/whitened runs recovered; "
            + (f"{100 * v['bounded_runs_early']:.0f} % of {v['bounded_runs']} bounded runs stopped early"
               if v["bounded_runs"] else "no bounded runs")
            + (f" (strategies whose mean stop keeps < 80 % of their mean final gain: {', '.join(early)})" if early else "")
            + (". Target met." if v["target_met"] else ". Target not met."))
    missed = v["unbounded_runs"] - round(v["unbounded_recovered"] * v["unbounded_runs"]) if v["unbounded_runs"] else 0
    if why and missed and "unbounded_late" in v:  # why: which way the unrecovered runs missed, from the runs themselves
        text += (f" Of the {missed} raw/whitened runs that did not recover, {v['unbounded_late']} stopped after gold had "
                 f"left the band and {v['unbounded_too_soon']} before reaching it; in {v['unbounded_best_at_sft']} of "
                 f"{v['unbounded_runs']} the best level is SFT itself. Gold left the band after a median of "
                 f"{_fmt_updates(v['unbounded_median_exit'])}, the alarm stopped after a median of "
                 f"{_fmt_updates(v['unbounded_median_stop'])}.")
    return text


def _fmt_updates(x: float) -> str:
    return "– (never)" if not math.isfinite(x) else f"{x:g} updates"


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
             f"{_verdict_text(nou, why=False)}" if nou else
             f" These runs did not record their signals per update, so the alarm without {WITHOUT} is not scored.")
    noh = variants.get("no_head_signals")
    if noh:
        text += (f" Without either signal that reads several heads ({' and '.join(HEAD_SIGNALS)}: the alarm a single-head "
                 f"proxy without monitors has): {_verdict_text(noh, why=False)}")
    moved = summary.get(f"{WITHOUT}_moved_stops")
    if moved:
        text += (f" Over every group, the {WITHOUT} signal moved the stop of {moved[0]} of {moved[1]} runs (it needs several "
                 "heads: 2-head and ensemble proxies, and single-head proxies read beside their monitors).")
    peaks = summary.get(f"{WITHOUT}_peaks") or {}
    if peaks.get("runs"):
        text += (f" On the {peaks['runs']} judged runs whose proxy has several heads, the {WITHOUT} signal's largest value "
                 f"over the run was a median {peaks['median']:.2f} of its level (largest {peaks['max']:.2f}; 1 fires).")
    first = summary.get("first_signal") or {}
    if any(first.values()):
        text += " Largest signal at the first firing, over those runs: " + ", ".join(
            f"{k} {c}" for k, c in sorted(first.items(), key=lambda kv: -kv[1]) if c) + "."
    return text


def choose_level(sweep: dict[float, dict[str, dict[str, Any]]], current: float | None = None) -> float:
    """The threshold a sweep over tuning tasks picks ({level: {task: `replayed_summary`}}), by the rule fixed
    before the held-out run (docs/study.md):

    1. among the levels at which both targets are met on every tuning task, the current one, else the largest
       (fewest alarms);
    2. else, among levels with ≤ 10 % bounded runs stopped early on every task, the one whose worst task
       recovers the most raw/whitened runs;
    3. else, the level with the largest worst-task (recovered − early).

    Ties: the ``current`` level (today's default) when it is among the best, so a flat sweep moves nothing;
    else the larger level. ``math.inf`` (the signal off) is a level like any other.
    """
    def worst(level: float, field: str, sign: float = 1.0) -> float:
        return min(sign * _finite(s[field]) for s in sweep[level].values())

    # Candidates in preference order: the current level first, then larger before smaller (max keeps the first).
    levels = sorted(sweep, key=lambda lv: (lv != current, -lv))
    met = [lv for lv in levels if all(s["target_met"] for s in sweep[lv].values())]
    if met:
        return current if current in met else max(met)
    calm = [lv for lv in levels if worst(lv, "bounded_runs_early", -1.0) >= -EARLY_TARGET]
    if calm:
        return max(calm, key=lambda lv: worst(lv, "unbounded_recovered"))
    return max(levels, key=lambda lv: min(_finite(s["unbounded_recovered"]) - _finite(s["bounded_runs_early"])
                                          for s in sweep[lv].values()))


def _finite(x: float) -> float:
    return 0.0 if x is None or not math.isfinite(x) else float(x)
