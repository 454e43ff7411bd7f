"""A smoke study end to end: every output file, report numbers equal results.json, caching."""

from __future__ import annotations

import json
import os
import re

import pytest

from rewardlab.study import run as study_run
from rewardlab.study.report import STRATEGY_COLUMNS, fmt_ci
from rewardlab.study.run import PRESETS, build_jobs, eval_schedule, run_study


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("study"))
    results = run_study("smoke", out, workers=1, progress=False)
    return out, results


def test_smoke_study_writes_every_output(smoke):
    out, results = smoke
    for name in ("report.html", "report.md", "results.json", "gold_vs_kl_1head.png", "proxy_vs_kl_1head.png", "gao_fit.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    runs = os.listdir(os.path.join(out, "runs"))
    assert len(runs) == len(build_jobs(PRESETS["smoke"]))
    for r in runs:
        for name in ("metrics.jsonl", "config.json", "result.json"):
            assert os.path.exists(os.path.join(out, "runs", r, name)), (r, name)
    html = open(os.path.join(out, "report.html"), encoding="utf-8").read()
    assert "data:image/png;base64," in html and "<script" not in html  # self-contained


def test_report_numbers_equal_results_json(smoke):
    out, _ = smoke
    with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    md = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    for key, s in results["strategies"].items():
        row = next(line for line in md.splitlines() if line.startswith(f"| {s['label']} | `{s['spec']}`"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[3:] == [fmt_ci(s[field]) for _, field in STRATEGY_COLUMNS], key
    # The answer is in both documents and quotes numbers of this run.
    assert results["answer"] in md
    sft = f"{results['sft_gold']:.3f}"
    assert sft in results["answer"]


def test_curves_start_at_the_sft_policy(smoke):
    _, results = smoke
    for r in results["runs"]:
        assert r["curve"][0]["update"] == 0 and r["curve"][0]["kl"] == pytest.approx(0.0, abs=1e-4)
        assert [c["update"] for c in r["curve"]] == eval_schedule(PRESETS["smoke"].updates, PRESETS["smoke"].n_eval_points)


def test_rerun_reuses_every_cached_stage(smoke, monkeypatch):
    out, first = smoke

    def boom(*args, **kwargs):
        raise AssertionError("a cached stage was recomputed")

    monkeypatch.setattr(study_run, "run_job", boom)
    import rewardlab.reward_model.train as rm_train
    import rewardlab.study.sft as sft

    monkeypatch.setattr(sft, "train_sft", boom)
    monkeypatch.setattr(rm_train, "train_reward_model", boom)
    second = run_study("smoke", out, workers=1, progress=False)
    assert [r["curve"] for r in second["runs"]] == [r["curve"] for r in first["runs"]]


def test_eval_schedule_is_dense_early():
    s = eval_schedule(48, 10)
    assert s[0] == 0 and s[-1] == 48 and s[:4] == [0, 1, 2, 3]
    assert len(set(s)) == len(s)


def test_default_preset_answers_the_users_questions():
    keys = {j.key for j in build_jobs(PRESETS["default"])}
    for needed in ("1-head/raw", "1-head/logsigmoid", "1-head/lsc", "1-head/par", "2-head/mean", "2-head/logodds (wrong)",
                   "stress/logsigmoid + c(x)", "stress/lsc + c(x)", "ceiling/gold (ceiling)"):
        assert needed in keys
    assert len(PRESETS["default"].seeds) >= 3 and len(PRESETS["full"].seeds) >= 5
    assert re.search(r"β grid", " ".join(j.key for j in build_jobs(PRESETS["full"])))
