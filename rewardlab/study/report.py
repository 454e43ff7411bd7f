"""Study report: plots (PNG), report.md and a self-contained report.html, from results.json alone.

Every number in the report is formatted from `results` by `fmt`, so a test can check the report
against results.json. The closing answer is composed from this run's numbers.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from rewardlab.atomic import write_text
from rewardlab.study.analysis import Curve, curve_band


def fmt(x: Any, digits: int = 3) -> str:
    """Format a number for the report ('–' for missing)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    return f"{float(x):.{digits}f}"


def fmt_ci(stat: Sequence[float]) -> str:
    """'mean ± half-width' from a (mean, half-width, n) triple."""
    m, h, _ = stat
    if m is None or not math.isfinite(m):
        return "–"
    return fmt(m) if h is None or not math.isfinite(h) else f"{fmt(m)} ± {fmt(h)}"


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------
def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curves(results: dict, key: str) -> list[Curve]:
    return [Curve.from_rows(r["curve"]) for r in results["runs"] if r["key"] == key and r.get("curve")]


def _alarm_stops(results: dict, key: str) -> list[int | None]:
    """Each run's alarm stop (updates done before its first alarming rollout; None: never fired), as `_curves`."""
    return [r.get("alarm_stop") for r in results["runs"] if r["key"] == key and r.get("curve")]


MIN_BAND_RUNS = 3  # fewer seeds give no band: the 95% t quantile is 4.3 at 3 runs, 12.7 at 2


def _fit_limits(values: list[float], extra: list[float], margin: float = 0.06) -> tuple[float, float] | None:
    """Axis limits around `values` (what is drawn as lines and points), letting bands (`extra`) widen them by at
    most a quarter of the data's range, so that one wide band cannot flatten every curve."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    if len(v) == 0:
        return None
    lo, hi = float(v.min()), float(v.max())
    span = hi - lo if hi > lo else max(abs(hi), 1.0) * 0.1
    e = np.asarray([x for x in extra if np.isfinite(x)], dtype=float)
    if len(e):
        lo, hi = max(min(lo, float(e.min())), lo - 0.25 * span), min(max(hi, float(e.max())), hi + 0.25 * span)
    pad = margin * (hi - lo)
    return lo - pad, hi + pad


def _panel(ax: Any, results: dict, keys: Sequence[str], x: str, field: str) -> tuple[list[float], list[float]]:
    """One panel: `field` against `x` ("sqrt_kl" or "update") for each strategy; returns (drawn values, band values).

    Mean over seeds where at least MIN_BAND_RUNS runs (or all of a strategy's runs, if fewer) contribute,
    with its 95% band only where MIN_BAND_RUNS do; where there is no band each run is drawn on its own, thin.
    Against updates, each run's alarm stop is a triangle on its own curve.
    """
    curves_by_key = {k: [c for c in _curves(results, k) if np.isfinite(getattr(c, field)).any()] for k in keys}
    xs = [v for cs in curves_by_key.values() for c in cs for v in getattr(c, x) if np.isfinite(v)]
    if x == "sqrt_kl":
        grid = np.linspace(0.0, max(xs) if xs else 1.0, 80)
    else:
        grid = np.unique(np.asarray(xs, dtype=float)) if xs else np.zeros(1)
    drawn: list[float] = []
    banded: list[float] = []
    for i, k in enumerate(keys):
        curves, color = curves_by_key[k], f"C{i % 10}"
        if not curves:
            continue
        b = curve_band(curves, grid, field, x=x, min_runs=MIN_BAND_RUNS)
        line = b.n >= min(MIN_BAND_RUNS, len(curves))
        ax.plot(grid[line], b.mean[line], color=color, lw=1.6, label=results["strategies"][k]["label"])
        ax.fill_between(grid, b.lo, b.hi, where=np.isfinite(b.lo), color=color, alpha=0.15, lw=0)
        drawn += list(b.mean[line])
        banded += list(b.lo[np.isfinite(b.lo)]) + list(b.hi[np.isfinite(b.hi)])
        banded_x = grid[np.isfinite(b.lo)]
        reach = banded_x.max() if len(banded_x) else -np.inf
        for c in curves:  # where no band is drawn: each run on its own
            cx, cy = getattr(c, x), getattr(c, field)
            beyond = np.flatnonzero(np.maximum.accumulate(cx) > reach)
            if len(beyond):
                idx = np.arange(max(beyond[0] - 1, 0), len(cx))
                ax.plot(cx[idx], cy[idx], color=color, lw=0.8, alpha=0.5)
                drawn += list(cy[idx])
        if x == "update":
            for c, stop in zip(curves, _alarm_stops(results, k)):
                if stop is None or c.update is None:
                    continue
                at = min(float(stop), float(np.nanmax(c.update)))
                y = float(np.interp(at, c.update, getattr(c, field)))
                ax.plot([at], [y], marker="v", ms=7, color=color, mec="k", mew=0.6, ls="none", zorder=5)
                drawn.append(y)
    if field == "gold" and math.isfinite(results.get("sft_gold", math.nan)):
        ax.axhline(results["sft_gold"], color="grey", lw=0.8, ls="--")
        drawn.append(results["sft_gold"])
    if xs:
        hi = max(xs)
        ax.set_xlim(-0.02 * hi, 1.03 * hi if hi > 0 else 1.0)
    if x == "update" and xs and max(xs) > 8:
        # The evaluation schedule is geometric (the gold peak comes early): a log scale past 1 update shows it.
        ax.set_xscale("symlog", linthresh=1.0, linscale=0.6)
        ax.set_xlim(0, 1.05 * max(xs))
        ticks = [t for t in (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if t <= max(xs)] + [int(max(xs))]
        ax.set_xticks(sorted(set(ticks)))
        ax.set_xticklabels([str(t) for t in sorted(set(ticks))])
    limits = _fit_limits(drawn, banded)
    if limits:
        ax.set_ylim(*limits)
    ax.set_xlabel("√KL(π ‖ π_SFT)  (nats^½)" if x == "sqrt_kl" else "PPO updates")
    ax.set_ylabel(f"{field} reward")
    ax.set_title(f"{field} vs {'√KL' if x == 'sqrt_kl' else 'updates'}", fontsize=10)
    ax.grid(alpha=0.3)
    return drawn, banded


def frontier_figure(results: dict, keys: Sequence[str], title: str, field: str = "gold") -> Any:
    """The figure of `plot_frontier`: `field` vs √KL, then gold and proxy (or the proxy alone) vs updates."""
    from matplotlib.lines import Line2D

    plt = pyplot()
    fields = ("gold", "proxy") if field == "gold" else (field,)
    panels = [("sqrt_kl", field)] + [("update", f) for f in fields]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4.6), dpi=110, squeeze=False)
    for ax, (x, f) in zip(axes[0], panels):
        _panel(ax, results, keys, x, f)
    handles, labels = axes[0][0].get_legend_handles_labels()
    extra = [(Line2D([], [], color="grey", lw=0.8, alpha=0.7), f"one run (where < {MIN_BAND_RUNS} seeds: no band)"),
             (Line2D([], [], marker="v", color="grey", mec="k", ls="none"), "alarm stop (on that run's own value)")]
    if field == "gold" and math.isfinite(results.get("sft_gold", math.nan)):
        extra.insert(0, (Line2D([], [], color="grey", lw=0.8, ls="--"), "SFT"))
    handles += [h for h, _ in extra]
    labels += [lab for _, lab in extra]
    ncol = min(len(labels), 3 * len(panels))
    rows = -(-len(labels) // ncol)
    fig.suptitle(f"{title}: means over seeds, 95% bands where ≥ {MIN_BAND_RUNS} seeds contribute", fontsize=11)
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.045 * rows + 0.02, 1, 0.97))
    return fig


def plot_frontier(results: dict, keys: Sequence[str], path: str, title: str, field: str = "gold") -> str:
    """`field` against √KL and, beside it, gold and proxy (for `field="proxy"`: the proxy) against PPO updates.

    One line per strategy: the mean over seeds, with a 95% band only where at least MIN_BAND_RUNS seeds
    contribute; where there is no band (past the reach of that many seeds, or a strategy with fewer) each
    run is drawn thin on its own. Each run's alarm stop
    is marked on its curve against updates. Axes are fitted to the drawn data, not to the bands.
    """
    plt = pyplot()
    fig = frontier_figure(results, keys, title, field)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_gao(results: dict, key: str, path: str) -> str:
    """The raw strategy's gold gain against √KL with Gao et al.'s fitted d(α − β log d)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.8), dpi=110)
    base = results.get("sft_gold", 0.0)
    for c in _curves(results, key):
        ax.scatter(c.sqrt_kl, c.gold - base, s=6, alpha=0.5)
    fit = results.get("gao_fit") or {}
    if fit.get("alpha") is not None and math.isfinite(fit["alpha"]):
        d = np.linspace(1e-3, max(c.sqrt_kl.max() for c in _curves(results, key)), 100)
        ax.plot(d, d * (fit["alpha"] - fit["beta"] * np.log(d)), color="k",
                label=f"d(α − β log d): α={fmt(fit['alpha'])}, β={fmt(fit['beta'])}, R²={fmt(fit['r2'])}")
        ax.legend(fontsize=7)
    ax.set_xlabel("d = √KL")
    ax.set_ylabel("gold − gold(SFT)")
    ax.set_title(f"Over-optimisation of the raw proxy ({results['strategies'][key]['label']})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_scatter(points: Sequence[dict], path: str, title: str, xlabel: str, ylabel: str) -> str:
    """Scatter of labelled point series: points = [{label, x: [...], y: [...]}]."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.8), dpi=110)
    for p in points:
        ax.plot(p["x"], p["y"], "o-", ms=4, lw=0.8, alpha=0.8, label=p["label"])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------
# Tables and documents
# --------------------------------------------------------------------------------------------
STRATEGY_COLUMNS = [
    ("gold at √KL=1", "gold_at_1"),
    ("gold at √KL=2", "gold_at_2"),
    ("gold at √KL=3", "gold_at_3"),
    ("peak gold", "peak_gold"),
    ("final gold", "final_gold"),
    ("final √KL", "final_sqrt_kl"),
    ("win rate vs SFT", "win_rate"),
    ("proxy gain", "proxy_gain"),
]


def strategy_table(results: dict, keys: Sequence[str]) -> list[list[str]]:
    """Rows: strategy, spec, then each STRATEGY_COLUMNS statistic as 'mean ± 95% half-width'."""
    rows = [["strategy", "pipeline spec", "runs"] + [c for c, _ in STRATEGY_COLUMNS]]
    for k in keys:
        s = results["strategies"][k]
        rows.append([s["label"], f"`{s['spec']}`", str(s["n_runs"])] + [fmt_ci(s[f]) for _, f in STRATEGY_COLUMNS])
    return rows


def _md_table(rows: list[list[str]]) -> str:
    """A Markdown table; a ``|`` inside a cell (pipeline specs) is escaped so it stays in its cell."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(rows[0]), "|" + "---|" * len(rows[0])] + [line(r) for r in rows[1:]])


def html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c).replace('`', '')}</td>" for c in r) + "</tr>" for r in rows[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(results: dict, out_dir: str, sections: list[dict]) -> tuple[str, str]:
    """Write report.md and report.html.

    `sections` is a list of {title, text, table (rows) or None, images [paths]}; the closing
    answer is results["answer"].
    """
    md = [f"# rewardlab study — {results['title']}", "", results["intro"], ""]
    body = [f"<h1>rewardlab study — {html.escape(results['title'])}</h1>", f"<p>{html.escape(results['intro'])}</p>"]
    for sec in sections:
        md += [f"## {sec['title']}", "", sec.get("text", ""), ""]
        body.append(f"<h2>{html.escape(sec['title'])}</h2>")
        if sec.get("text"):
            body.append(f"<p>{html.escape(sec['text'])}</p>")
        if sec.get("table"):
            md += [_md_table(sec["table"]), ""]
            body.append(html_table(sec["table"]))
        for img in sec.get("images", []):
            name = os.path.basename(img)
            md += [f"![{name}]({name})", ""]
            with open(img, "rb") as f:
                data = base64.b64encode(f.read()).decode()
            body.append(f'<img alt="{html.escape(name)}" src="data:image/png;base64,{data}"/>')
    md += ["## Which logit, and should I use logsigmoid?", "", results["answer"], ""]
    body.append("<h2>Which logit, and should I use logsigmoid?</h2>")
    body += [f"<p>{html.escape(p)}</p>" for p in results["answer"].split("\n\n")]
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}"
        "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 6px}"
        "th{background:#f3f3f3}img{max-width:100%;display:block;margin:1em 0}"
    )
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>rewardlab study</title><style>{style}</style></head><body>{''.join(body)}</body></html>"
    md_path, html_path = os.path.join(out_dir, "report.md"), os.path.join(out_dir, "report.html")
    for path, text in ((md_path, "\n".join(md)), (html_path, page)):
        write_text(path, text)
    return md_path, html_path
