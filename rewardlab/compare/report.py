"""The comparison's report.html: one self-contained page (plots embedded as PNG) from results.json alone.

Sections: the verdict (win rate of A over B with its 95 % interval), a table per policy (score,
raw reward, KL to the reference, length, EOS rate, gold), the plots — score histograms and ECDFs,
per-prompt paired scores, win-rate bars with intervals, length and KL histograms — and paired
samples side by side. Every number is formatted from `results` by `rewardlab.study.report.fmt`.

Example::

    write_report(json.load(open("compare_out/results.json")), "compare_out")   # → compare_out/report.html
"""

from __future__ import annotations

import base64
import html
import io
import json
import os

import numpy as np

from rewardlab.atomic import write_text
from rewardlab.ppo.samples import prompt_text
from rewardlab.study.report import fmt, fmt_ci, html_table, pyplot

__all__ = ["write_report"]

COLORS = {"a": "#1f77b4", "b": "#ff7f0e"}  # matplotlib's C0 and C1: A blue, B orange in every plot


def _values(results: dict, key: str, field: str) -> np.ndarray:
    """One field of one policy over the paired rows, NaN for null. Shapes: → (N,)."""
    return np.array([np.nan if p[key][field] is None else float(p[key][field]) for p in results["pairs"]], dtype=float)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    return base64.b64encode(buf.getvalue()).decode()


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------
def plot_distributions(results: dict, field: str = "score") -> str:
    """Histograms and ECDFs of ``field`` (score or gold) for A and B."""
    plt = pyplot()
    fig, (hist, ecdf) = plt.subplots(1, 2, figsize=(7.6, 3.0), dpi=100)
    vals = {k: _values(results, k, field) for k in ("a", "b")}
    finite = np.concatenate([v[np.isfinite(v)] for v in vals.values()])
    bins = np.histogram_bin_edges(finite, bins=24) if len(finite) else 10
    for k, v in vals.items():
        v = v[np.isfinite(v)]
        label = results["policies"][k]["label"]
        hist.hist(v, bins=bins, alpha=0.55, color=COLORS[k], label=label)
        xs = np.sort(v)
        ecdf.step(xs, np.arange(1, len(xs) + 1) / max(len(xs), 1), where="post", color=COLORS[k], label=label)
    hist.set_title(f"{field} distribution")
    hist.set_xlabel(field)
    hist.set_ylabel("prompts")
    ecdf.set_title(f"{field} ECDF (right = higher)")
    ecdf.set_xlabel(field)
    for ax in (hist, ecdf):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


def plot_paired(results: dict, field: str = "score") -> str:
    """Per-prompt scatter: B's value (x) against A's (y); points above the diagonal are prompts A wins."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3.8, 3.4), dpi=100)
    a, b = _values(results, "a", field), _values(results, "b", field)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    color = np.where(a > b, COLORS["a"], np.where(a < b, COLORS["b"], "grey"))
    ax.scatter(b, a, s=10, c=color, alpha=0.7)
    if len(a):
        lo, hi = float(min(a.min(), b.min())), float(max(a.max(), b.max()))
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--")
    la, lb = results["policies"]["a"]["label"], results["policies"]["b"]["label"]
    ax.set_xlabel(f"{field} of {lb}")
    ax.set_ylabel(f"{field} of {la}")
    ax.set_title(f"paired {field} per prompt (above: {la} wins)", fontsize=9)
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_win_rates(results: dict) -> str:
    """Win rate of A over B (ties half) with its 95 % Wilson interval, by score and by gold."""
    plt = pyplot()
    rates = [(name, w) for name, w in results["win_rate"].items() if w and w.get("win_rate") is not None]
    fig, ax = plt.subplots(figsize=(3.8, 0.9 + 0.55 * max(len(rates), 1)), dpi=100)
    for i, (_, w) in enumerate(rates):
        p = w["win_rate"]
        ax.barh(i, p, color=COLORS["a"], alpha=0.75, height=0.55)
        ax.errorbar(p, i, xerr=[[p - w["low"]], [w["high"] - p]], color="k", capsize=4, lw=1.2)
        ax.text(min(w["high"] + 0.02, 0.86), i, f"{100 * p:.1f} %", va="center", fontsize=8)
    ax.axvline(0.5, color="grey", ls="--", lw=0.8)
    ax.set_yticks(range(len(rates)), [f"by {name}" for name, _ in rates])
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    la, lb = results["policies"]["a"]["label"], results["policies"]["b"]["label"]
    ax.set_title(f"win rate of {la} over {lb} (95 % Wilson)", fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)


def plot_length_kl(results: dict) -> str:
    """Response length histograms (EOS rate in the legend) and the per-sample KL to the reference."""
    plt = pyplot()
    fig, (lax, kax) = plt.subplots(1, 2, figsize=(7.6, 2.9), dpi=100)
    lengths = {k: _values(results, k, "length") for k in ("a", "b")}
    top = int(max(np.nanmax(v) for v in lengths.values())) if results["pairs"] else 1
    bins = np.arange(0.5, top + 1.5, max(1, (top + 1) // 24))
    for k, v in lengths.items():
        pol = results["policies"][k]
        lax.hist(v, bins=bins, alpha=0.55, color=COLORS[k], label=f"{pol['label']} (EOS {100 * pol['eos_rate']:.0f} %)")
    lax.set_title("response length (tokens)")
    lax.set_xlabel("tokens")
    lax.set_ylabel("prompts")
    kls = {k: _values(results, k, "kl") for k in ("a", "b")}
    finite = np.concatenate([v[np.isfinite(v)] for v in kls.values()])
    kbins = np.histogram_bin_edges(finite, bins=24) if len(finite) and np.ptp(finite) > 0 else 10
    for k, v in kls.items():
        pol = results["policies"][k]
        kax.hist(v[np.isfinite(v)], bins=kbins, alpha=0.55, color=COLORS[k],
                 label=f"{pol['label']} (mean {fmt(pol['kl']['mean'])})")
    kax.set_title(f"KL to the reference ({results['settings']['reference_is']}), per sample", fontsize=9)
    kax.set_xlabel("Σ_t log π − log π_ref  (nats)")
    for ax in (lax, kax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


# --------------------------------------------------------------------------------------------
# Tables and the page
# --------------------------------------------------------------------------------------------
def _pm(stat: dict | None) -> str:
    """'mean ± std' of a `rewardlab.compare.stats.summary`."""
    if not stat or stat.get("mean") is None:
        return "–"
    return f"{fmt(stat['mean'])} ± {fmt(stat.get('std'))}"


def summary_rows(results: dict) -> list[list[str]]:
    """Rows: metric, A, B, A − B (score and gold differences with their 95 % paired t interval)."""
    pa, pb = results["policies"]["a"], results["policies"]["b"]
    diff = results.get("difference", {})

    def d(name: str) -> str:
        x = diff.get(name)
        return fmt_ci((x["mean"], x.get("half"), None)) if x else "–"

    def mean_of(stat: dict | None) -> float | None:
        return None if not stat else stat.get("mean")

    def minus(x: float | None, y: float | None) -> str:
        return "–" if x is None or y is None else fmt(x - y)

    rows = [["", pa["label"], pb["label"], f"{pa['label']} − {pb['label']}"],
            ["score (mean ± std)", _pm(pa["score"]), _pm(pb["score"]), d("score")],
            ["score median", fmt(pa["score"].get("q50")), fmt(pb["score"].get("q50")),
             minus(pa["score"].get("q50"), pb["score"].get("q50"))]]
    if pa.get("raw"):
        heads = [" / ".join(fmt(x) for x in p["raw"]["mean_per_head"]) for p in (pa, pb)]
        rows.append(["raw reward, mean per head", heads[0], heads[1], ""])
    rows += [["KL to the reference (mean ± std, nats)", _pm(pa["kl"]), _pm(pb["kl"]),
              minus(mean_of(pa["kl"]), mean_of(pb["kl"]))],
             ["length (mean ± std, tokens)", _pm(pa["length"]), _pm(pb["length"]),
              minus(mean_of(pa["length"]), mean_of(pb["length"]))],
             ["EOS rate", fmt(pa["eos_rate"]), fmt(pb["eos_rate"]), minus(pa["eos_rate"], pb["eos_rate"])]]
    if pa.get("gold"):
        rows.append(["gold (mean ± std)", _pm(pa["gold"]), _pm(pb["gold"]), d("gold")])
    return rows


def verdict(results: dict, field: str = "score") -> str:
    """One sentence: how often A beat B, with the interval and the counts."""
    w = results["win_rate"].get(field)
    la, lb = results["policies"]["a"]["label"], results["policies"]["b"]["label"]
    if not w or w.get("win_rate") is None:
        return f"No prompt has a {field} for both {la} and {lb}."
    return (f"By {field}, {la} beats {lb} on {100 * w['win_rate']:.1f} % of prompts (95 % Wilson interval "
            f"{100 * w['low']:.1f}–{100 * w['high']:.1f} %): {w['wins']} wins, {w['ties']} ties, "
            f"{w['losses']} losses over {w['n']} prompts, ties counted half.")


def _clip(text: str, n: int = 280) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def pairs_table(results: dict, show: int) -> str:
    """Paired samples side by side: prompt, A's response and score, B's, and the winner by score."""
    la, lb = (html.escape(results["policies"][k]["label"]) for k in ("a", "b"))
    head = (f"<tr><th>#</th><th>prompt</th><th>{la}</th><th>score</th><th>{lb}</th><th>score</th>"
            f"<th>KL {la}</th><th>wins</th></tr>")
    body = []
    for p in results["pairs"][:show]:
        a, b = p["a"], p["b"]
        if a["score"] is None or b["score"] is None:
            win, cls = "–", ""
        else:
            win, cls = (la, "a") if a["score"] > b["score"] else (lb, "b") if a["score"] < b["score"] else ("tie", "")

        def resp(s: dict) -> str:
            tail = "" if s["eos"] else " <span class='noeos'>[no EOS]</span>"
            return f"{html.escape(_clip(s['response']))}{tail}"

        body.append(
            f"<tr class='{cls}'><td>{p['index']}</td><td class='txt'>{html.escape(_clip(prompt_text(p['prompt'])))}</td>"
            f"<td class='txt'>{resp(a)}</td><td class='num'>{fmt(a['score'], 4)}</td>"
            f"<td class='txt'>{resp(b)}</td><td class='num'>{fmt(b['score'], 4)}</td>"
            f"<td class='num'>{fmt(a['kl'])}</td><td>{win}</td></tr>")
    return f"<table class='pairs'><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1140px;margin:1.5em auto;padding:0 1em;line-height:1.4;color:#222}"
    "h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.4em;border-bottom:1px solid #ddd}"
    ".meta{color:#555;font-size:13px}.verdict{font-size:1.05em;background:#f4f8fc;border-left:4px solid #1f77b4;"
    "padding:.5em .8em}table{border-collapse:collapse;font-size:13px;margin:.6em 0}"
    "td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top}th{background:#f3f3f3}"
    ".grid{display:grid;grid-template-columns:2fr 1fr;gap:8px;align-items:start}"
    ".grid img{width:100%;display:block}img{max-width:100%}"
    ".pairs td.txt{max-width:330px;overflow-wrap:anywhere;font-family:ui-monospace,monospace;font-size:12px}"
    ".pairs td.num{text-align:right;white-space:nowrap}.pairs tr.a td:last-child{color:#1f77b4;font-weight:600}"
    ".pairs tr.b td:last-child{color:#d95f02;font-weight:600}.noeos{color:#999}"
)


def render(results: dict, show_pairs: int = 24) -> str:
    """The HTML page (a string)."""
    s, pa, pb = results["settings"], results["policies"]["a"], results["policies"]["b"]
    title = f"rewardlab compare — {pa['label']} vs {pb['label']}"
    meta = (f"{html.escape(pa['label'])} = <code>{html.escape(s['policy_a'])}</code>, "
            f"{html.escape(pb['label'])} = <code>{html.escape(s['policy_b'])}</code>; reference "
            f"<code>{html.escape(s['reference'])}</code>; reward model <code>{html.escape(str(s['reward_model']))}</code>, "
            f"pipeline <code>{html.escape(s['pipeline'])}</code>"
            + (f" (centred on K={s['num_reference_samples']} reference samples per prompt)" if s["num_reference_samples"] else "")
            + (f"; gold <code>{html.escape(s['gold'])}</code>" if s.get("gold") else "")
            + f". {s['num_prompts']} prompts from <code>{html.escape(s['prompts'])}</code>, one sample each, "
            f"≤ {s['response_length']} tokens, temperature {s['temperature']:g}, seed {s['seed']}, on {html.escape(s['device'])}.")
    verdicts = [verdict(results, "score")] + ([verdict(results, "gold")] if "gold" in results["win_rate"] else [])
    img = '<img alt="{}" src="data:image/png;base64,{}"/>'.format
    body = [f"<h1>{html.escape(title)}</h1>", f"<p class='meta'>{meta}</p>",
            *(f"<p class='verdict'>{html.escape(v)}</p>" for v in verdicts),
            "<h2>Summary</h2>", html_table(summary_rows(results)),
            "<p class='meta'>A − B of score and gold: the mean paired difference with its 95 % Student-t interval. "
            "KL: Σ_t log π(y_t) − log π_ref(y_t) on each policy's own samples (k1, unbiased). Length counts the "
            "response's tokens, the stop token included; EOS rate: the share that ended with a stop token.</p>",
            "<h2>Scores</h2>", "<div class='grid'>", img("score distributions", plot_distributions(results, "score")),
            img("paired scores", plot_paired(results, "score")), "</div>",
            "<div class='grid'>", img("length and KL", plot_length_kl(results)),
            img("win rate", plot_win_rates(results)), "</div>"]
    if "gold" in results["win_rate"]:
        body += ["<h2>Gold</h2>", "<div class='grid'>", img("gold distributions", plot_distributions(results, "gold")),
                 img("paired gold", plot_paired(results, "gold")), "</div>"]
    shown = min(show_pairs, len(results["pairs"]))
    body += [f"<h2>Paired samples ({shown} of {len(results['pairs'])}; all in results.json)</h2>",
             pairs_table(results, show_pairs)]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>")


def write_report(results: dict, out_dir: str, show_pairs: int = 24) -> str:
    """Write ``<out_dir>/report.html`` and return its path."""
    path = os.path.join(out_dir, "report.html")
    write_text(path, render(results, show_pairs))
    return path


if __name__ == "__main__":  # re-render a report from its results.json: python -m rewardlab.compare.report OUT
    import sys

    folder = sys.argv[1]
    with open(os.path.join(folder, "results.json"), encoding="utf-8") as f:
        print(write_report(json.load(f), folder))
