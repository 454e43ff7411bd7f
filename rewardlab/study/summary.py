"""Study summary: per-run metrics, per-strategy statistics, the proxies' diagnostics, from the runs.

`summarise` turns run records into the results dict written to results.json; `write_outputs`
renders plots and the report from it. Each run's metrics come from one function, `run_metrics`
(add a metric there and it reaches results.json, the per-strategy statistics and the paired
comparisons); the closing answer is composed in `rewardlab.study.answer` from paired comparisons.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from rewardlab.atomic import write_text
from rewardlab.study.alarm import alarm_metrics, alarm_summary, alarm_table, alarm_text
from rewardlab.study.analysis import Curve, fit_gao, gold_at, mean_ci, win_rate
from rewardlab.study.answer import compose_answer, findings, grid_summary
from rewardlab.study.report import (
    fmt,
    fmt_ci,
    plot_frontier,
    plot_gao,
    plot_scatter,
    strategy_table,
    write_report,
)
from rewardlab.study.runs import prompt_offset
from rewardlab.tracking import library_versions

MATCHED_KL = (1.0, 2.0, 3.0)


def run_metrics(run: dict, sft_gold_per_prompt: np.ndarray) -> dict[str, float]:
    """The scalar metrics of one run (one record per run, keyed by seed in results["per_run"])."""
    c = Curve.from_rows(run["curve"])
    m = {f"gold_at_{d:g}": gold_at(c, d) for d in MATCHED_KL}
    m["peak_gold"] = float(c.gold.max())
    m["final_gold"] = float(c.gold[-1])
    m["final_sqrt_kl"] = float(c.sqrt_kl[-1])
    m["win_rate"] = win_rate(np.array(run["final_gold_per_prompt"]), sft_gold_per_prompt)
    m["proxy_gain"] = float(c.proxy[-1] - c.proxy[0])
    m["peak_sqrt_kl"] = float(c.sqrt_kl[int(np.argmax(c.gold))])
    m.update(alarm_metrics(run))
    return m


def _proxy_diagnostics(proxies: dict[str, str], prefs_dir: str) -> dict[str, Any]:
    """Held-out accuracy per reading, calibration and head correlation of each proxy model."""
    from rewardlab.reward_model.evaluate import evaluate_reward_model

    out = {}
    eval_file = os.path.join(prefs_dir, "eval.jsonl")
    for name, path in sorted(proxies.items()):
        rep = evaluate_reward_model(path, eval_file, semantics="bradley_terry")
        corr = rep.head_correlation
        off = [corr[i][j] for i in range(len(corr)) for j in range(len(corr)) if i != j] if corr else []
        out[name] = {
            "num_heads": rep.num_heads,
            "accuracy": {k: v.accuracy for k, v in rep.readings.items()},
            "ece": rep.readings[rep.principal].ece,
            "temperature": rep.temperature,
            "head_correlation": float(np.mean(off)) if off else None,
        }
    return out


def _per_prompt_kl(results: dict, key: str) -> dict[str, float]:
    """Mean final KL per distinct evaluation prompt, over its samples and seeds (one sample is noisy)."""
    acc: dict[str, list[float]] = {}
    for r in results["runs"]:
        if r["key"] == key:
            for p, kl in zip(results["eval_prompts"], r["final_kl_per_prompt"]):
                acc.setdefault(p, []).append(kl)
    return {p: float(np.mean(v)) for p, v in acc.items()}


def _stress_kl(results: dict) -> dict[str, dict[str, Any]]:
    """For each stress strategy: per prompt, c(x) and the change of final KL that c(x) caused.

    Compared with the same spec on the same proxy without offsets; `corr` is the Pearson
    correlation between c(x) and that change (≈ 0 for a centred transform).
    """
    out = {}
    strategies = results["strategies"]
    for k, s in strategies.items():
        if s["group"] != "stress":
            continue
        twin = next((b for b, t in strategies.items() if t["group"] == "1-head" and t["spec"] == s["spec"]), None)
        if twin is None:
            continue
        with_c, without = _per_prompt_kl(results, k), _per_prompt_kl(results, twin)
        pts = sorted((results["stress_offsets"][p], with_c[p] - without[p]) for p in with_c if p in without)
        x, y = np.array([a for a, _ in pts]), np.array([b for _, b in pts])
        corr = float(np.corrcoef(x, y)[0, 1]) if len(x) > 2 and x.std() > 0 and y.std() > 0 else math.nan
        out[k] = {"offsets": x.tolist(), "delta_kl": y.tolist(), "corr": corr, "mean_abs_delta_kl": float(np.abs(y).mean()) if len(y) else math.nan}
    return out


def summarise(
    results: Sequence[dict],
    *,
    preset: Any,
    task: Any,
    eval_prompts: list[str],
    sft_eval: dict[str, Any],
    proxies: dict[str, str],
    prefs_dir: str | None,
    wall_seconds: float,
) -> dict[str, Any]:
    """The results dict: runs, per-strategy statistics, Gao fit, proxies, offsets, answer."""
    sft_gold_pp = np.asarray(sft_eval["gold"], dtype=float)
    keys = list(dict.fromkeys(r["key"] for r in results))
    strategies, per_run = {}, {}
    for k in keys:
        runs = [r for r in results if r["key"] == k]
        job = runs[0]["job"]
        per_run[k] = {int(r["job"]["seed"]): run_metrics(r, sft_gold_pp) for r in runs}
        names = list(next(iter(per_run[k].values())))
        strategies[k] = {"label": job["strategy"] + ("" if job.get("kl_coef") is None else f" (β={job['kl_coef']:g})"),
                         "group": job["group"], "spec": job["spec"], "kl_coef": job.get("kl_coef"), "n_runs": len(runs),
                         **{m: mean_ci([v[m] for v in per_run[k].values()]) for m in names}}
    gao = {"alpha": math.nan, "beta": math.nan, "r2": math.nan}
    if "1-head/raw" in strategies:
        pts = [(row["sqrt_kl"], row["gold"]) for r in results if r["key"] == "1-head/raw" for row in r["curve"]]
        a, b, r2 = fit_gao(np.array([p[0] for p in pts]), np.array([p[1] for p in pts]) - float(sft_gold_pp.mean()))
        gao = {"alpha": a, "beta": b, "r2": r2}
    out: dict[str, Any] = {
        "title": f"task '{task.name}', preset '{preset.name}'",
        "preset": {k: v for k, v in asdict(preset).items() if k != "jobs"},
        "task": task.describe(),
        "versions": library_versions(),
        "wall_seconds": wall_seconds,
        "sft_gold": float(sft_gold_pp.mean()),
        "sft_proxy": float(np.mean(sft_eval["proxy"])) if "proxy" in sft_eval else None,
        "eval_prompts": eval_prompts,
        "runs": list(results),
        "per_run": per_run,
        "strategies": strategies,
        "gao_fit": gao,
        "proxies": _proxy_diagnostics(proxies, prefs_dir) if prefs_dir else {},
        "stress_offsets": {p: prompt_offset(p, preset.offset_scale) for p in eval_prompts},
    }
    out["stress_kl"] = _stress_kl(out)
    out["alarm"] = alarm_summary(out)
    pairs = _preference_counts(prefs_dir)
    out["preference_pairs"] = pairs
    out["intro"] = (
        f"PPO with your policy ({task.describe().get('policy')}) against your reward model, one run per reward calculation "
        f"and seed ({len(preset.seeds)} seeds, {preset.updates} updates of {preset.prompts_per_update} prompts, β={preset.kl_coef}); "
        f"proxy reward (the reward model's principled reading) and KL(π‖π_start) measured on {len(eval_prompts)} evaluation prompts"
        + ("" if math.isfinite(out["sft_gold"]) else "; no gold function was given")
        + f". Intervals are 95% Student-t intervals across seeds. Wall time {wall_seconds:.0f} s."
    ) if preset.name == "user" else (
        f"PPO against proxy reward models trained on {_pairs_text(pairs, preset.n_pairs)} sampled from a known gold "
        f"reward (Bradley-Terry labels, τ={preset.label_tau}), compared with the gold reward itself as a ceiling. "
        f"{len(preset.seeds)} seeds per strategy (proxy and PPO seeded together), {preset.updates} updates of "
        f"{preset.prompts_per_update} prompts, KL coefficient β={preset.kl_coef}; gold, raw proxy and KL(π‖π_SFT) "
        f"measured on {len(eval_prompts)} fixed evaluation prompts. Intervals are 95% Student-t intervals across seeds. "
        f"SFT policy: gold {fmt(out['sft_gold'])}. Wall time {wall_seconds:.0f} s."
    )
    out["findings"] = findings(out)
    out["answer"] = compose_answer(out)
    return out


def _preference_counts(prefs_dir: str | None) -> dict[str, int] | None:
    """The preference pairs actually used: sampled, identical pairs dropped, train and eval sizes."""
    if not prefs_dir:
        return None
    path = os.path.join(prefs_dir, "counts.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    counts = {}
    for split in ("train", "eval"):
        with open(os.path.join(prefs_dir, f"{split}.jsonl"), encoding="utf-8") as f:
            counts[split] = sum(1 for line in f if line.strip())
    return counts


def _pairs_text(pairs: dict[str, int] | None, requested: int) -> str:
    if not pairs:
        return f"{requested} preference pairs"
    text = f"{pairs['train']} preference pairs (plus {pairs['eval']} held out"
    if pairs.get("sampled"):
        text += f"; {pairs['identical_dropped']} of {pairs['sampled']} sampled pairs had two identical responses and were dropped"
    return text + ")"


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------
def rerender(out_dir: str) -> dict[str, Any]:
    """Recompose the findings, the answer and the report from ``<out_dir>/results.json``; no run is repeated.

    For a report whose wording or alarm scoring changed after its runs (the numbers stay those of the runs; the
    alarm's per-run verdicts and summary are recomputed from the run records).
    """
    from rewardlab.errors import RewardlabError

    path = os.path.join(out_dir, "results.json")
    if not os.path.exists(path):
        raise RewardlabError(f"{path} does not exist; run the study into {out_dir!r} first")
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    # The alarm's scoring is a function of the runs' records: recomputed, so a changed rule re-renders too.
    for run in results["runs"]:
        per_run = results["per_run"].get(run["key"], {}).get(str(run["job"]["seed"]))
        if per_run is not None:
            per_run.update(alarm_metrics(run))
    results["alarm"] = alarm_summary(results)
    results["findings"] = findings(results)
    results["answer"] = compose_answer(results)
    write_outputs(results, out_dir)
    return results


def _keys(results: dict, group: str) -> list[str]:
    return [k for k, s in results["strategies"].items() if s["group"] == group]


def write_outputs(results: dict, out_dir: str) -> None:
    """results.json, the PNG plots, report.md and report.html."""
    os.makedirs(out_dir, exist_ok=True)
    write_text(os.path.join(out_dir, "results.json"), json.dumps(results, indent=1, default=float))
    ceiling = _keys(results, "ceiling")
    sections = []
    one = _keys(results, "1-head")
    if one:
        sections.append({
            "title": "1-head proxy: reward transforms",
            "text": "Gold (top) and raw proxy reward (bottom) against √KL(π‖π_SFT); lines are means over seeds, bands 95% intervals. "
                    "Columns 'gold at √KL=d' compare strategies at matched KL; 'final gold' at the same β and number of steps.",
            "table": strategy_table(results, one + ceiling),
            "images": [plot_frontier(results, one + ceiling, os.path.join(out_dir, "gold_vs_kl_1head.png"), "Gold vs √KL, 1-head proxy"),
                       plot_frontier(results, one, os.path.join(out_dir, "proxy_vs_kl_1head.png"), "Proxy vs √KL, 1-head proxy", field="proxy")],
        })
        if "1-head/raw" in results["strategies"]:
            fit = results["gao_fit"]
            sections.append({
                "title": "Over-optimisation of the raw proxy (Gao et al. 2022)",
                "text": f"Gold gain over SFT fitted with d(α − β log d), d = √KL: α = {fmt(fit['alpha'])}, β = {fmt(fit['beta'])}, R² = {fmt(fit['r2'])}.",
                "images": [plot_gao(results, "1-head/raw", os.path.join(out_dir, "gao_fit.png"))],
            })
    two = _keys(results, "2-head")
    if two:
        prox = [["proxy", "heads", "held-out accuracy per reading", "ECE (mean)", "head correlation"]]
        for name, p in results["proxies"].items():
            acc = ", ".join(f"{r}: {fmt(100 * a, 1)}%" for r, a in p["accuracy"].items())
            prox.append([name, str(p["num_heads"]), acc, fmt(p["ece"]), fmt(p["head_correlation"])])
        sections.append({
            "title": "2-logit proxy (mean BT loss): which logit",
            "text": "The same comparison for readings of a 2-head Bradley-Terry model. logodds is run by declaring the model a classifier, which it is not.",
            "table": strategy_table(results, two),
            "images": [plot_frontier(results, two, os.path.join(out_dir, "gold_vs_kl_2head.png"), "Gold vs √KL, 2-head proxy readings")],
        })
        sections.append({"title": "Proxy reward models", "text": "Held-out preference accuracy of each reading, calibration of the principal reading, mean head correlation.", "table": prox})
    stress = _keys(results, "stress")
    if stress:
        base = [k for k in ("1-head/logsigmoid", "1-head/sigmoid", "1-head/lsc", "1-head/par") if k in results["strategies"]]
        series = [{"label": results["strategies"][k]["label"], "x": v["offsets"], "y": v["delta_kl"]}
                  for k, v in results.get("stress_kl", {}).items()]
        sections.append({
            "title": "Offset stress test: per-prompt constants c(x)",
            "text": "The proxy plus a constant c(x) per prompt (invisible to Bradley-Terry). Centred transforms (LSC, PAR) are unchanged by construction; "
                    "uncentred logsigmoid/sigmoid are not. The last plot shows, for each distinct prompt, how much the offset changed its final KL "
                    "(mean over its evaluation samples and seeds, with c(x) minus without) against c(x).",
            "table": strategy_table(results, base + stress),
            "images": [plot_frontier(results, base + stress, os.path.join(out_dir, "gold_vs_kl_stress.png"), "Gold vs √KL, with and without c(x)"),
                       plot_scatter(series, os.path.join(out_dir, "kl_vs_offset.png"), "Effect of c(x) on each prompt's final KL", "c(x)", "KL with c(x) − KL without")],
        })
    user = _keys(results, "user")
    if user:
        no_gold = not math.isfinite(results["sft_gold"])
        sections.append({
            "title": "Your models: reward calculations compared",
            "text": ("No gold function was given, so gold columns are empty: compare proxy gain against KL, and read the "
                     "reward diagnostics in each run's metrics.jsonl." if no_gold else
                     "Gold from your function, proxy from your reward model, against √KL(π‖π_policy)."),
            "table": strategy_table(results, user),
            "images": [plot_frontier(results, user, os.path.join(out_dir, "proxy_vs_kl.png"), "Proxy vs √KL", field="proxy")]
            + ([] if no_gold else [plot_frontier(results, user, os.path.join(out_dir, "gold_vs_kl.png"), "Gold vs √KL")]),
        })
    ens = _keys(results, "ensemble")
    if ens:
        sections.append({"title": "Ensembles (Coste et al. 2023)", "table": strategy_table(results, ens),
                         "images": [plot_frontier(results, ens, os.path.join(out_dir, "gold_vs_kl_ensemble.png"), "Gold vs √KL, ensemble readings")]})
    grid = _keys(results, "β grid")
    if grid:
        rows = [["strategy", "β values", "seeds", "worst final gold over β (per seed)", "mean final gold over β (per seed)"]]
        for k in one:
            g = grid_summary(results, results["strategies"][k]["spec"])
            if g is None:
                continue
            worst, mean, betas = g
            rows.append([results["strategies"][k]["label"], ", ".join(f"{b:g}" for b in betas), str(len(worst)),
                         fmt_ci(mean_ci(list(worst.values()))), fmt_ci(mean_ci(list(mean.values())))])
        sections.append({"title": "Fixed β over a grid: robustness", "table": rows,
                         "text": "For each seed, the worst and the mean final gold over the β values; then mean ± 95% interval over seeds."})
    alarm_keys = [k for k in results["strategies"] if results["strategies"][k]["group"] != "ceiling"]
    if any("alarm_gold" in m for k in alarm_keys for m in results["per_run"].get(k, {}).values()):
        sections.append({"title": "Over-optimisation alarm: where it would stop, against gold",
                         "text": alarm_text(results.get("alarm")), "table": alarm_table(results, alarm_keys)})
    fs = results.get("findings") or []
    if fs:
        rows = [["question", "comparison", "metric", "difference (paired)", "% of gold range", "seeds", "verdict"]]
        for f in fs:
            pct = "–" if f.get("scaled") is None else f"{100 * f['scaled']:+.0f}" + ("" if f.get("scaled_half") is None else f" ± {100 * f['scaled_half']:.0f}")
            rows.append([f["question"], f"{f['a']} vs {f['b']}", f["metric"], fmt_ci((f["diff"], f["half"], f["n"])), pct, str(f["n"]), f["verdict"]])
        sections.append({"title": "Paired comparisons behind the answer", "table": rows,
                         "text": "Each row: the difference a − b over seeds run with the same proxy and PPO seed, with its 95% t interval; "
                                 "'not distinguishable' when the interval covers 0."})
    write_report(results, out_dir, sections)
