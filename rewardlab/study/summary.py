"""Study summary: per-strategy statistics, the proxies' diagnostics, and the answer, from the runs.

`summarise` turns run records into the results dict written to results.json; `write_outputs`
renders plots and the report from it. The closing answer is composed from this run's numbers:
every comparison it states is computed here, and its wording follows the comparison's sign.
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
from rewardlab.study.analysis import Curve, fit_gao, gold_at, mean_ci, win_rate
from rewardlab.study.report import (
    fmt,
    plot_frontier,
    plot_gao,
    plot_scatter,
    strategy_table,
    write_report,
)
from rewardlab.study.runs import prompt_offset
from rewardlab.tracking import library_versions

MATCHED_KL = (1.0, 2.0, 3.0)


def _strategy_stats(runs: Sequence[dict], sft_gold_per_prompt: np.ndarray) -> dict[str, Any]:
    curves = [Curve.from_rows(r["curve"]) for r in runs]
    stats: dict[str, Any] = {}
    for d in MATCHED_KL:
        stats[f"gold_at_{d:g}"] = mean_ci([gold_at(c, d) for c in curves])
    stats["peak_gold"] = mean_ci([float(c.gold.max()) for c in curves])
    stats["final_gold"] = mean_ci([float(c.gold[-1]) for c in curves])
    stats["final_sqrt_kl"] = mean_ci([float(c.sqrt_kl[-1]) for c in curves])
    stats["win_rate"] = mean_ci([win_rate(np.array(r["final_gold_per_prompt"]), sft_gold_per_prompt) for r in runs])
    stats["proxy_gain"] = mean_ci([float(c.proxy[-1] - c.proxy[0]) for c in curves])
    stats["peak_sqrt_kl"] = mean_ci([float(c.sqrt_kl[int(np.argmax(c.gold))]) for c in curves])
    return stats


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
    strategies = {}
    for k in keys:
        runs = [r for r in results if r["key"] == k]
        job = runs[0]["job"]
        strategies[k] = {"label": job["strategy"] + ("" if job.get("kl_coef") is None else f" (β={job['kl_coef']:g})"),
                         "group": job["group"], "spec": job["spec"], "n_runs": len(runs),
                         **_strategy_stats(runs, sft_gold_pp)}
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
        "strategies": strategies,
        "gao_fit": gao,
        "proxies": _proxy_diagnostics(proxies, prefs_dir) if prefs_dir else {},
        "stress_offsets": {p: prompt_offset(p, preset.offset_scale) for p in eval_prompts},
    }
    out["stress_kl"] = _stress_kl(out)
    out["intro"] = (
        f"PPO with your policy ({task.describe().get('policy')}) against your reward model, one run per reward calculation "
        f"and seed ({len(preset.seeds)} seeds, {preset.updates} updates of {preset.prompts_per_update} prompts, β={preset.kl_coef}); "
        f"proxy reward (the reward model's principled reading) and KL(π‖π_start) measured on {len(eval_prompts)} evaluation prompts"
        + ("" if math.isfinite(out["sft_gold"]) else "; no gold function was given")
        + f". Intervals are 95% normal intervals across seeds. Wall time {wall_seconds:.0f} s."
    ) if preset.name == "user" else (
        f"PPO against proxy reward models trained on {preset.n_pairs} preference pairs sampled from a known gold "
        f"reward (Bradley-Terry labels, τ={preset.label_tau}), compared with the gold reward itself as a ceiling. "
        f"{len(preset.seeds)} seeds per strategy (proxy and PPO seeded together), {preset.updates} updates of "
        f"{preset.prompts_per_update} prompts, KL coefficient β={preset.kl_coef}; gold, raw proxy and KL(π‖π_SFT) "
        f"measured on {len(eval_prompts)} fixed evaluation prompts. Intervals are 95% normal intervals across seeds. "
        f"SFT policy: gold {fmt(out['sft_gold'])}. Wall time {wall_seconds:.0f} s."
    )
    out["answer"] = compose_answer(out)
    return out


# --------------------------------------------------------------------------------------------
# The answer
# --------------------------------------------------------------------------------------------
def _m(results: dict, key: str, stat: str) -> float:
    s = results["strategies"].get(key)
    return math.nan if s is None else s[stat][0]


def _vs(a: float, b: float, tol: float = 0.02) -> str:
    if not (math.isfinite(a) and math.isfinite(b)):
        return "could not be compared with"
    if a > b + tol:
        return "above"
    if a < b - tol:
        return "below"
    return "level with"


def compose_answer(results: dict) -> str:
    """Plain-language answer to "which logit, and should I use logsigmoid?" from this run's numbers."""
    paras = []
    sft = results["sft_gold"]
    two = [k for k in results["strategies"] if k.startswith("2-head/")]
    if two:
        corr = [p["head_correlation"] for p in results["proxies"].values() if p["num_heads"] == 2 and p["head_correlation"] is not None]
        acc = {r: float(np.mean([p["accuracy"][r] for p in results["proxies"].values() if p["num_heads"] == 2 and r in p["accuracy"]]))
               for r in ("head 0", "head 1", "mean", "sum", "logodds(pos=1,neg=0)")
               if any(r in p["accuracy"] for p in results["proxies"].values() if p["num_heads"] == 2)}
        mean_peak = _m(results, "2-head/mean", "peak_gold")
        text = (
            f"Which logit. The 2-logit reward model trained with the mean Bradley-Terry loss is two BT heads: "
            f"their outputs correlated r = {fmt(float(np.mean(corr)) if corr else math.nan)} here. "
            f"Reading their mean, PPO peaked at gold {fmt(mean_peak)} (SFT {fmt(sft)})"
        )
        if "2-head/head 0" in results["strategies"]:
            text += f"; a single head peaked at {fmt(_m(results, '2-head/head 0', 'peak_gold'))}, {_vs(_m(results, '2-head/head 0', 'peak_gold'), mean_peak)} the mean"
        if "2-head/sum" in results["strategies"]:
            text += (
                f"; their sum peaked at {fmt(_m(results, '2-head/sum', 'peak_gold'))} and drifted to √KL "
                f"{fmt(_m(results, '2-head/sum', 'final_sqrt_kl'))} against {fmt(_m(results, '2-head/mean', 'final_sqrt_kl'))} "
                f"for the mean — the same reward at twice the scale, i.e. half the effective β"
            )
        text += "."
        if "2-head/logodds (wrong)" in results["strategies"]:
            lo_acc, mean_acc = acc.get("logodds(pos=1,neg=0)", math.nan), acc.get("mean", math.nan)
            lo_peak = _m(results, "2-head/logodds (wrong)", "peak_gold")
            text += (
                f" The classifier reading l1 − l0 reached peak gold {fmt(lo_peak)}, {_vs(lo_peak, mean_peak)} the mean, with a "
                f"held-out preference accuracy of {fmt(100 * lo_acc, 1)}% against {fmt(100 * mean_acc, 1)}% for the mean"
            )
            if lo_acc < mean_acc - 0.05 or lo_peak < mean_peak - 0.02:
                text += (": for BT heads the difference cancels the signal both heads share, so it is the wrong reading "
                         "(it is right only for a cross-entropy classifier). Use `mean` for BT heads.")
            else:
                text += ": on this run the wrong reading was not distinguishable from the mean; the theory still says `mean`."
        paras.append(text)
    if "1-head/logsigmoid" in results["strategies"] and "1-head/lsc" in results["strategies"]:
        ls, lsc, raw = "1-head/logsigmoid", "1-head/lsc", "1-head/raw"
        text = (
            f"Should I use logsigmoid? Uncentred, logsigmoid ended at gold {fmt(_m(results, ls, 'final_gold'))} and LSC "
            f"(logsigmoid centred on reference samples of the same prompt) at {fmt(_m(results, lsc, 'final_gold'))}, "
            f"against {fmt(_m(results, raw, 'final_gold'))} for the raw proxy, at the same β and number of steps."
        )
        if "stress/logsigmoid + c(x)" in results["strategies"]:
            a0, a1 = _m(results, ls, "final_gold"), _m(results, "stress/logsigmoid + c(x)", "final_gold")
            b0, b1 = _m(results, lsc, "final_gold"), _m(results, "stress/lsc + c(x)", "final_gold")
            text += (
                f" Adding a constant c(x) per prompt to the proxy — which a Bradley-Terry model cannot see, so it is an "
                f"equally valid proxy — moved uncentred logsigmoid's final gold from {fmt(a0)} to {fmt(a1)} "
                f"(Δ {fmt(a1 - a0)}), while LSC went from {fmt(b0)} to {fmt(b1)} (Δ {fmt(b1 - b0)})."
            )
            sk = results.get("stress_kl", {})
            if "stress/logsigmoid + c(x)" in sk and "stress/lsc + c(x)" in sk:
                a, b = sk["stress/logsigmoid + c(x)"], sk["stress/lsc + c(x)"]
                text += (
                    f" Per prompt, the offset changed uncentred logsigmoid's final KL by {fmt(a['mean_abs_delta_kl'])} nats on average "
                    f"(correlation with c(x): {fmt(a['corr'], 2)}) against {fmt(b['mean_abs_delta_kl'])} nats for LSC "
                    f"(correlation {fmt(b['corr'], 2)})"
                )
                if a["mean_abs_delta_kl"] > 2 * b["mean_abs_delta_kl"]:
                    text += (": uncentred logsigmoid lets an arbitrary constant decide how hard each prompt is optimised — a "
                             "negative c(x) puts the reward on the steep part of logσ, a positive one saturates it — while "
                             "centring on reference samples of the same prompt removes the constant. Use logsigmoid only centred "
                             "(LSC), or PAR.")
                else:
                    text += ": on this run the offsets did not change uncentred logsigmoid much more than LSC (LSC is invariant by construction)."
        if "1-head/par" in results["strategies"]:
            text += f" PAR, the other centred bounded transform, ended at {fmt(_m(results, '1-head/par', 'final_gold'))}."
        paras.append(text)
    norm = [k for k in ("1-head/whiten", "1-head/running_norm+clip") if k in results["strategies"]]
    if norm and "1-head/raw" in results["strategies"]:
        d1 = [(results["strategies"][k]["label"], _m(results, k, "gold_at_1"), _m(results, k, "final_gold")) for k in norm]
        raw1 = _m(results, "1-head/raw", "gold_at_1")
        parts = "; ".join(f"{lab}: gold {fmt(g1)} at √KL = 1 (raw {fmt(raw1)}), final {fmt(gf)}" for lab, g1, gf in d1)
        raw_final, raw_peak = _m(results, "1-head/raw", "final_gold"), _m(results, "1-head/raw", "peak_gold")
        fell = all(gf < raw_peak - 0.05 for _, _, gf in d1)
        paras.append(
            "Whitening and running normalisation rescale the reward, and with it the effective β: "
            f"{parts} (raw final {fmt(raw_final)}, raw peak {fmt(raw_peak)}). "
            + ("Both still over-optimised — their final gold fell well below the raw proxy's peak: they condition the optimiser, "
               "they do not stop reward hacking." if fell else
               "On this run they did not fall far below the raw peak.")
            + " Compare strategies at matched KL (the gold-vs-√KL curves) as well as at a fixed budget."
        )
    if "ceiling/gold (ceiling)" in results["strategies"]:
        paras.append(f"The gold reward itself, optimised the same way, peaked at {fmt(_m(results, 'ceiling/gold (ceiling)', 'peak_gold'))}.")
    user = [k for k, v in results["strategies"].items() if v["group"] == "user"]
    if user:
        rows = sorted(((_m(results, k, "proxy_gain"), _m(results, k, "final_sqrt_kl"), results["strategies"][k]["label"]) for k in user),
                      reverse=True)
        paras.append("On your models, proxy gain and final √KL per reward calculation: "
                     + "; ".join(f"{lab} {g:+.3f} at √KL {fmt(d)}" for g, d, lab in rows)
                     + ". A larger proxy gain at a larger KL is not a better policy: without a gold reward, prefer the "
                       "calculation whose gain comes at the smaller KL, and check samples.")
    ranked = sorted(((s["final_gold"][0], s["label"]) for s in results["strategies"].values() if math.isfinite(s["final_gold"][0])), reverse=True)
    if ranked:
        paras.append("Final gold at the same β and number of steps, best first: "
                     + "; ".join(f"{label} {fmt(g)}" for g, label in ranked) + f" (SFT {fmt(sft)}).")
    return "\n\n".join(paras)


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------
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
        rows = [["strategy", "β values", "worst final gold across β", "mean final gold across β"]]
        by: dict[str, list[str]] = {}
        for k in grid + one:
            by.setdefault(results["strategies"][k]["spec"], []).append(k)
        for spec, ks in by.items():
            if not any(k in grid for k in ks):
                continue
            finals = [results["strategies"][k]["final_gold"][0] for k in ks]
            rows.append([f"`{spec}`", str(len(ks)), fmt(min(finals)), fmt(float(np.mean(finals)))])
        sections.append({"title": "Fixed β over a grid: robustness", "table": rows})
    write_report(results, out_dir, sections)
