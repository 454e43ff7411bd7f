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
from rewardlab.study.analysis import Curve, band


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
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curves(results: dict, key: str) -> list[Curve]:
    return [Curve.from_rows(r["curve"]) for r in results["runs"] if r["key"] == key and r.get("curve")]


def plot_frontier(results: dict, keys: Sequence[str], path: str, title: str, field: str = "gold") -> str:
    """Gold (or proxy) against √KL, mean and 95% band over seeds, one line per strategy."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    reach = [c.sqrt_kl.max() for k in keys for c in _curves(results, k) if len(c.sqrt_kl)]
    grid = np.linspace(0.0, max(reach) if reach else 1.0, 60)
    for k in keys:
        curves = _curves(results, k)
        if not curves:
            continue
        m, lo, hi = band(curves, grid, field)
        ok = np.isfinite(m)
        (line,) = ax.plot(grid[ok], m[ok], label=results["strategies"][k]["label"])
        ax.fill_between(grid[ok], lo[ok], hi[ok], color=line.get_color(), alpha=0.15)
    if field == "gold" and "sft_gold" in results:
        ax.axhline(results["sft_gold"], color="grey", lw=0.8, ls="--", label="SFT")
    ax.set_xlabel("√KL(π ‖ π_SFT)  (nats^½)")
    ax.set_ylabel(f"{field} reward")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_gao(results: dict, key: str, path: str) -> str:
    """The raw strategy's gold gain against √KL with Gao et al.'s fitted d(α − β log d)."""
    plt = _plt()
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
    plt = _plt()
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


def _html_table(rows: list[list[str]]) -> str:
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
            body.append(_html_table(sec["table"]))
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
