"""The study's closing answer, composed from paired, interval-aware comparisons of this run.

Every comparative word in the answer comes from a `Finding`: a paired difference across seeds
(two strategies' runs with the same seed share the proxy model and the PPO seed), its 95% t
interval, and the difference as a fraction of this run's own gold range (ceiling peak − SFT).
When the interval covers 0 the answer says "not distinguishable"; no sentence is printed whatever
the numbers say. The questions, and the data that separate them:

- **which logit** — readings of one 2-head BT proxy (mean, one head, sum, the wrong log-odds);
- **bounding** — bounded transforms (sigmoid, logsigmoid, LSC, PAR) against the raw proxy;
- **centring** — each transform with and without per-prompt offsets c(x) (same proxy, same seed);
- **normalisation** — whitening / running normalisation against raw, and against raw's peak;
- **robustness over β** — worst-case and mean final gold over the β grid, per seed;
- **frontier** — each final policy against the same-seed raw run at the same √KL.

`findings(results)` returns the structured records (kept in results.json, compared across tasks
by `rewardlab.study.multi`); `compose_answer(results)` writes them as prose.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from rewardlab.study.analysis import Curve, gold_at, paired
from rewardlab.study.report import fmt

BOUNDED = ("sigmoid", "logsigmoid", "lsc", "par")
CENTRED = ("lsc", "par")
GRID_BASE_GROUP = "1-head"


# --------------------------------------------------------------------------------------------
# Per-seed values
# --------------------------------------------------------------------------------------------
def per_seed(results: dict, key: str, metric: str) -> dict[int, float]:
    """{seed: metric} of one strategy's runs (from results["per_run"])."""
    rows = results.get("per_run", {}).get(key, {})
    return {int(s): float(m[metric]) if m.get(metric) is not None else math.nan for s, m in rows.items()}


def _curves_by_seed(results: dict, key: str) -> dict[int, Curve]:
    return {int(r["job"]["seed"]): Curve.from_rows(r["curve"]) for r in results.get("runs", []) if r["key"] == key and r.get("curve")}


def frontier_gap(results: dict, key: str, raw_key: str) -> dict[int, float]:
    """Per seed: final gold of `key` minus the same-seed raw run's gold at the same √KL (NaN if raw never got there)."""
    mine, raw = _curves_by_seed(results, key), _curves_by_seed(results, raw_key)
    out = {}
    for s, c in mine.items():
        if s in raw and len(c.gold):
            out[s] = float(c.gold[-1]) - gold_at(raw[s], float(c.sqrt_kl[-1]))
    return out


def grid_finals(results: dict, spec: str) -> dict[float, dict[int, float]]:
    """{β: {seed: final gold}} of the 1-head runs of `spec` at the preset β and on the β grid."""
    base_beta = results.get("preset", {}).get("kl_coef")
    out: dict[float, dict[int, float]] = {}
    for k, s in results["strategies"].items():
        if s["spec"] != spec or s["group"] not in (GRID_BASE_GROUP, "β grid"):
            continue
        beta = s.get("kl_coef") if s["group"] == "β grid" else base_beta
        if beta is not None:
            out[float(beta)] = per_seed(results, k, "final_gold")
    return out


def grid_summary(results: dict, spec: str) -> tuple[dict[int, float], dict[int, float], list[float]] | None:
    """Per seed worst and mean final gold over the β values (seeds run at every β), and the βs; None without a grid."""
    by_beta = grid_finals(results, spec)
    if len(by_beta) < 2:
        return None
    seeds = set.intersection(*(set(v) for v in by_beta.values()))
    worst = {s: min(v[s] for v in by_beta.values()) for s in seeds}
    mean = {s: float(np.mean([v[s] for v in by_beta.values()])) for s in seeds}
    return worst, mean, sorted(by_beta)


# --------------------------------------------------------------------------------------------
# Findings
# --------------------------------------------------------------------------------------------
def gold_range(results: dict) -> float | None:
    """This run's own scale: the gold ceiling's mean peak minus the SFT gold (None without a ceiling)."""
    ceiling = next((s for s in results["strategies"].values() if s["group"] == "ceiling"), None)
    if ceiling is None or not math.isfinite(results.get("sft_gold", math.nan)):
        return None
    r = ceiling["peak_gold"][0] - results["sft_gold"]
    return r if math.isfinite(r) and r > 0 else None


def _finding(fid: str, question: str, a: str, b: str, metric: str, av: dict[int, float], bv: dict[int, float], scale: float | None) -> dict[str, Any]:
    p = paired(av, bv, scale if "gold" in metric else None)  # only gold differences are read against the gold range
    return {"id": fid, "question": question, "a": a, "b": b, "metric": metric, "diff": p.diff, "half": p.half, "n": p.n,
            "seeds": p.seeds, "scaled": p.scaled, "scaled_half": p.scaled_half, "verdict": p.verdict}


def findings(results: dict) -> list[dict[str, Any]]:
    """Every paired comparison the answer states, as records (see the module docstring)."""
    st, scale, out = results["strategies"], gold_range(results), []
    sft = results.get("sft_gold", math.nan)

    def add(fid: str, q: str, a: str, b: str, metric: str, b_metric: str | None = None) -> None:
        if a in st and b in st:
            out.append(_finding(fid, q, a, b, metric if b_metric is None else f"{metric} − {b_metric}",
                                per_seed(results, a, metric), per_seed(results, b, b_metric or metric), scale))

    def add_const(fid: str, q: str, a: str, metric: str, value: float, label: str) -> None:
        if a in st and math.isfinite(value):
            av = per_seed(results, a, metric)
            out.append(_finding(fid, q, a, label, metric, av, {s: value for s in av}, scale))

    # Which logit.
    add("logit:head0-vs-mean:peak_gold", "which logit", "2-head/head 0", "2-head/mean", "peak_gold")
    add("logit:sum-vs-mean:final_sqrt_kl", "which logit", "2-head/sum", "2-head/mean", "final_sqrt_kl")
    add("logit:logodds-vs-mean:peak_gold", "which logit", "2-head/logodds (wrong)", "2-head/mean", "peak_gold")
    add("logit:logodds-vs-mean:final_gold", "which logit", "2-head/logodds (wrong)", "2-head/mean", "final_gold")
    # Bounding: bounded transforms against raw, and against SFT.
    for name in BOUNDED:
        add(f"bounding:{name}-vs-raw:final_gold", "bounding", f"1-head/{name}", "1-head/raw", "final_gold")
    for name in ("raw",) + BOUNDED:
        add_const(f"sft:{name}:final_gold", "bounding", f"1-head/{name}", "final_gold", sft, "SFT")
    # Centring: the same transform with and without offsets c(x).
    for name in BOUNDED:
        add(f"centring:{name}+c-vs-{name}:final_gold", "centring", f"stress/{name} + c(x)", f"1-head/{name}", "final_gold")
    # Normalisation.
    for name in ("whiten", "running_norm+clip"):
        add(f"norm:{name}-vs-raw:final_gold", "normalisation", f"1-head/{name}", "1-head/raw", "final_gold")
        add(f"norm:{name}-vs-rawpeak:final_gold", "normalisation", f"1-head/{name}", "1-head/raw", "final_gold", "peak_gold")
        add_const(f"sft:{name}:final_gold", "normalisation", f"1-head/{name}", "final_gold", sft, "SFT")
    # Robustness over β: per-seed worst and mean final gold over the grid, against raw's.
    raw_grid = grid_summary(results, "raw")
    for k, s in st.items():
        if s["group"] != GRID_BASE_GROUP or s["spec"] == "raw":
            continue
        mine = grid_summary(results, s["spec"])
        if mine is None or raw_grid is None:
            continue
        name = k.split("/", 1)[1]
        out.append(_finding(f"grid:{name}-vs-raw:worst_final_gold", "robustness over β", k, "1-head/raw", "worst final gold over β",
                            mine[0], raw_grid[0], scale))
        out.append(_finding(f"grid:{name}-vs-raw:mean_final_gold", "robustness over β", k, "1-head/raw", "mean final gold over β",
                            mine[1], raw_grid[1], scale))
    # Frontier: final policies against the same-seed raw run at equal √KL.
    if "1-head/raw" in st:
        for k, s in st.items():
            if s["group"] in ("1-head", "stress") and k != "1-head/raw":
                gap = frontier_gap(results, k, "1-head/raw")
                if gap:
                    name = k.split("/", 1)[1]
                    out.append(_finding(f"frontier:{name}-vs-raw", "frontier", k, "1-head/raw at the same √KL",
                                        "final gold − raw's gold at equal √KL", gap, {s_: 0.0 for s_ in gap}, scale))
    # Along the way: gold at √KL = 1 against raw.
    for name in BOUNDED + ("whiten",):
        add(f"matched:{name}-vs-raw:gold_at_1", "frontier", f"1-head/{name}", "1-head/raw", "gold_at_1")
    return [f for f in out if f["n"] > 0]  # a comparison no seed could make (e.g. raw never reached that √KL) is left out


# --------------------------------------------------------------------------------------------
# Prose
# --------------------------------------------------------------------------------------------
def _label(results: dict, key: str) -> str:
    s = results["strategies"].get(key)
    return s["label"] if s else key


def describe(f: dict[str, Any]) -> str:
    """'+0.120 ± 0.050 (18% ± 7% of the gold range), 4 seeds' for a finding."""
    if f["n"] < 2 or not math.isfinite(f["half"]):
        return f"{fmt(f['diff'])} from {f['n']} seed{'s' if f['n'] != 1 else ''}, no interval"
    text = f"{f['diff']:+.3f} ± {f['half']:.3f}"
    if f.get("scaled") is not None and f.get("scaled_half") is not None:
        text += f" ({100 * f['scaled']:+.0f}% ± {100 * f['scaled_half']:.0f}% of the gold range)"
    return text + f", {f['n']} paired seeds"


def _word(f: dict[str, Any], above: str, below: str, same: str) -> str:
    return {"above": above, "below": below}.get(f["verdict"], same)


def _by_id(fs: list[dict]) -> dict[str, dict]:
    return {f["id"]: f for f in fs}


def compose_answer(results: dict) -> str:
    """Plain-language answer to "which logit, and should I use logsigmoid?" from this run's paired comparisons."""
    fs = results.get("findings") or findings(results)
    by = _by_id(fs)
    st, paras = results["strategies"], []
    sft = results.get("sft_gold", math.nan)
    scale = gold_range(results)
    if scale is not None:
        paras.append(
            f"How to read this: every comparison below is a paired difference over seeds (same proxy model, same PPO seed) with a "
            f"95% t interval; gold differences are also given as a percentage of this run's gold range, from SFT ({fmt(sft)}) to the "
            f"gold-trained ceiling's peak ({fmt(sft + scale)}). \"Not distinguishable\" means the interval covers 0.")

    # Which logit.
    if any(k.startswith("2-head/") for k in st):
        two = [p for p in results.get("proxies", {}).values() if p.get("num_heads") == 2]
        corr = [p["head_correlation"] for p in two if p.get("head_correlation") is not None]
        text = (f"Which logit. The 2-logit reward model trained with the mean Bradley-Terry loss is two BT heads: their outputs "
                f"correlated r = {fmt(float(np.mean(corr)) if corr else math.nan)} here.")
        f = by.get("logit:head0-vs-mean:peak_gold")
        if f:
            text += " One head's peak gold was " + _word(f, "above", "below", "not distinguishable from") + f" the mean's ({describe(f)})."
        f = by.get("logit:sum-vs-mean:final_sqrt_kl")
        if f:
            text += (" Their sum " + _word(
                f, "drifted further from SFT than the mean (final √KL " + describe(f) + "): the same reward at twice the scale, i.e. half the effective β.",
                "stayed closer to SFT than the mean (final √KL " + describe(f) + "), which a doubled reward does not predict.",
                "ended at a final √KL not distinguishable from the mean's (" + describe(f) + "): at this β, doubling the reward did not measurably move the policy further."))
        fp, ff = by.get("logit:logodds-vs-mean:peak_gold"), by.get("logit:logodds-vs-mean:final_gold")
        if fp and ff:
            acc = [(p["accuracy"].get("logodds(pos=1,neg=0)", math.nan), p["accuracy"].get("mean", math.nan)) for p in two]
            lo_acc = float(np.mean([a for a, _ in acc])) if acc else math.nan
            mean_acc = float(np.mean([b for _, b in acc])) if acc else math.nan
            text += (f" The classifier reading l1 − l0 (held-out preference accuracy {fmt(100 * lo_acc, 1)}% against "
                     f"{fmt(100 * mean_acc, 1)}% for the mean) had a peak gold " + _word(fp, "above", "below", "not distinguishable from")
                     + f" the mean's ({describe(fp)}) and a final gold " + _word(ff, "above", "below", "not distinguishable from")
                     + f" it ({describe(ff)}).")
            if "below" in (fp["verdict"], ff["verdict"]):
                text += " The data agree with the theory: for BT heads the difference cancels the signal both heads share. Use `mean` for BT heads."
            else:
                text += (" On this run the data do not show the wrong reading doing worse; the theory still says `mean` for BT heads "
                         "(l1 − l0 is right only for a cross-entropy classifier).")
        paras.append(text)

    # Bounding.
    bound = [(n, by[f"bounding:{n}-vs-raw:final_gold"]) for n in BOUNDED if f"bounding:{n}-vs-raw:final_gold" in by]
    if bound:
        parts = [f"{_label(results, f['a'])} " + _word(f, "above", "below", "not distinguishable from") + f" raw ({describe(f)})"
                 for _, f in bound]
        text = "Bounding (final gold at the same β and steps, against the raw proxy): " + "; ".join(parts) + "."
        vs_sft: dict[str, list[str]] = {"below": [], "not distinguishable": [], "above": []}
        for n in ("raw",) + BOUNDED:
            if f"sft:{n}:final_gold" in by:
                vs_sft[by[f"sft:{n}:final_gold"]["verdict"]].append(n)
        text += " Against SFT's gold: " + "; ".join(
            f"{word} {', '.join(names)}" for word, names in (("below", vs_sft["below"]), ("not distinguishable", vs_sft["not distinguishable"]),
                                                             ("above", vs_sft["above"])) if names) + "."
        paras.append(text)

    # Centring.
    cent = [(n, by[f"centring:{n}+c-vs-{n}:final_gold"]) for n in BOUNDED if f"centring:{n}+c-vs-{n}:final_gold" in by]
    if cent:
        parts = [f"{n} ({'centred' if n in CENTRED else 'uncentred'}): " + _word(f, "higher", "lower", "not distinguishable")
                 + f" with c(x) ({describe(f)})" for n, f in cent]
        text = ("Centring (a constant c(x) per prompt added to the proxy — invisible to Bradley-Terry, so an equally valid proxy — "
                "final gold with c(x) minus without, same proxy and seed): " + "; ".join(parts) + ".")
        moved_unc = [n for n, f in cent if n not in CENTRED and f["verdict"] != "not distinguishable"]
        moved_cen = [n for n, f in cent if n in CENTRED and f["verdict"] != "not distinguishable"]
        if moved_unc and not moved_cen:
            text += (f" The offsets changed the uncentred {' and '.join(moved_unc)}, and no centred transform: centring on reference "
                     "samples of the same prompt is what removes c(x). Use logsigmoid only centred (LSC), or PAR.")
        elif not moved_unc and not moved_cen:
            text += (" No transform's final gold moved distinguishably with the offsets on this run, so the data do not separate a "
                     "centring effect here (LSC and PAR are invariant to c(x) by construction).")
        else:
            text += f" Distinguishable changes: {', '.join(moved_unc + moved_cen)}."
        sk = results.get("stress_kl", {})
        kl_parts = [f"{_label(results, k)} {fmt(v['mean_abs_delta_kl'])} nats (correlation with c(x) {fmt(v['corr'], 2)})" for k, v in sk.items()]
        if kl_parts:
            text += " Mean per-prompt change of final KL caused by c(x): " + "; ".join(kl_parts) + "."
        paras.append(text)

    # Normalisation.
    norm = [n for n in ("whiten", "running_norm+clip") if f"norm:{n}-vs-raw:final_gold" in by]
    if norm:
        parts = []
        for n in norm:
            f, fpk, fs_ = by[f"norm:{n}-vs-raw:final_gold"], by[f"norm:{n}-vs-rawpeak:final_gold"], by.get(f"sft:{n}:final_gold")
            part = (f"{n}'s final gold was " + _word(f, "above", "below", "not distinguishable from") + f" raw's final ({describe(f)}) and "
                    + _word(fpk, "above", "below", "not distinguishable from") + f" raw's peak ({describe(fpk)})")
            if fs_:
                part += ", " + _word(fs_, "above", "below", "not distinguishable from") + f" SFT ({describe(fs_)})"
            parts.append(part)
        text = "Normalisation rescales the reward, and with it the effective β: " + "; ".join(parts) + "."
        if all(by[f"norm:{n}-vs-rawpeak:final_gold"]["verdict"] == "below" for n in norm):
            text += " Normalising conditions the optimiser; it did not stop over-optimisation here."
        paras.append(text)

    # Robustness over β.
    grid = [f for f in fs if f["question"] == "robustness over β"]
    if grid:
        betas = grid_summary(results, "raw")
        rows = []
        for s in st.values():
            g = grid_summary(results, s["spec"]) if s["group"] == GRID_BASE_GROUP else None
            if g is not None:
                w, m = np.mean(list(g[0].values())), np.mean(list(g[1].values()))
                rows.append(f"{s['label']} worst {fmt(float(w))}, mean {fmt(float(m))}")
        text = (f"Over the β grid ({', '.join(f'{b:g}' for b in (betas[2] if betas else []))}), per seed worst-case and mean final gold: "
                + "; ".join(rows) + ". Against raw: ")
        text += "; ".join(f"{_label(results, f['a'])} {f['metric'].split(' ')[0]} " + _word(f, "above", "below", "not distinguishable")
                          + f" ({describe(f)})" for f in grid) + "."
        paras.append(text)
    elif bound:
        paras.append("This preset has a single β, so it says nothing about robustness across β; run a preset with a β grid.")

    # Frontier.
    front = [f for f in fs if f["id"].startswith("frontier:")]
    if front:
        text = ("Frontier: each final policy against the same-seed raw run's gold at the same √KL — "
                + "; ".join(f"{_label(results, f['a'])} " + _word(f, "above raw's frontier", "below raw's frontier",
                                                                  "on raw's frontier (not distinguishable)")
                            + f" ({describe(f)})" for f in front) + ".")
        matched = [f for f in fs if f["id"].startswith("matched:")]
        if matched:
            text += (" Along the way, gold at √KL = 1 against raw: "
                     + "; ".join(f"{_label(results, f['a'])} " + _word(f, "above", "below", "not distinguishable") + f" ({describe(f)})"
                                 for f in matched) + ".")
        above = [f for f in front if f["verdict"] == "above"]
        text += (" A final policy above raw's frontier is a shaping effect beyond a change of KL budget; "
                 "not distinguishable means the same gold as raw at that KL." if above else
                 " No final policy was distinguishably off raw's frontier at equal √KL on this run.")
        paras.append(text)

    ceiling = next((k for k, s in st.items() if s["group"] == "ceiling"), None)
    if ceiling:
        paras.append(f"The gold reward itself, optimised the same way, peaked at {fmt(st[ceiling]['peak_gold'][0])}.")

    user = [k for k, v in st.items() if v["group"] == "user"]
    if user:
        rows = sorted(((st[k]["proxy_gain"][0], st[k]["final_sqrt_kl"][0], st[k]["label"]) for k in user), reverse=True)
        paras.append("On your models, proxy gain and final √KL per reward calculation: "
                     + "; ".join(f"{lab} {g:+.3f} at √KL {fmt(d)}" for g, d, lab in rows)
                     + ". A larger proxy gain at a larger KL is not a better policy: without a gold reward, prefer the "
                       "calculation whose gain comes at the smaller KL, and check samples.")

    # The best final gold, and what cannot be told apart from it.
    cands = [k for k, s in st.items() if s["group"] not in ("ceiling", "β grid", "user") and math.isfinite(s["final_gold"][0])]
    if cands:
        best = max(cands, key=lambda k: st[k]["final_gold"][0])
        same, below = [], []
        for k in cands:
            if k == best:
                continue
            f = _finding("", "", best, k, "final_gold", per_seed(results, best, "final_gold"), per_seed(results, k, "final_gold"), scale)
            (below if f["verdict"] == "above" else same).append(st[k]["label"])
        paras.append(f"Highest mean final gold: {st[best]['label']} ({fmt(st[best]['final_gold'][0])}; SFT {fmt(sft)}). "
                     + (f"Not distinguishable from it (paired): {', '.join(same)}. " if same else "")
                     + (f"Distinguishably below it: {', '.join(below)}." if below else ""))
    return "\n\n".join(p.strip() for p in paras)
