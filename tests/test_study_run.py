"""A smoke study end to end: every output file, report numbers equal results.json, caching."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import pytest
import torch

from rewardlab.study import runs as study_runs
from rewardlab.study.report import STRATEGY_COLUMNS, fmt_ci
from rewardlab.study.run import PRESETS, build_jobs, run_study
from rewardlab.study.runs import eval_schedule


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


def test_smoke_study_records_the_alarm_of_every_run(smoke):
    out, results = smoke
    for r in results["runs"]:
        assert "alarm_stop" in r and (r["alarm_stop"] is None or 0 <= r["alarm_stop"] <= r["curve"][-1]["update"])
    for key, runs in results["per_run"].items():
        for m in runs.values():
            assert {"alarm_update", "alarm_gold", "alarm_recovered", "alarm_early", "alarm_near_peak"} <= set(m), key
    md = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    assert "## Over-optimisation alarm: where it would stop, against gold" in md
    assert "| strategy | runs | alarm fired | stop (updates done) | gold at the alarm's stop |" in md
    with open(next(os.path.join(out, "runs", d, "metrics.jsonl") for d in os.listdir(os.path.join(out, "runs"))),
              encoding="utf-8") as f:
        assert all("alarm/score" in json.loads(line) for line in f)


def test_report_numbers_equal_results_json(smoke):
    out, _ = smoke
    with open(os.path.join(out, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    md = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    for key, s in results["strategies"].items():
        spec = s["spec"].replace("|", "\\|")  # Markdown tables escape the pipes of a spec
        row = next(line for line in md.splitlines() if line.startswith(f"| {s['label']} | `{spec}`"))
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))]
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

    monkeypatch.setattr(study_runs, "run_job", boom)
    import rewardlab.reward_model.train as rm_train
    import rewardlab.study.sft as sft

    monkeypatch.setattr(sft, "train_sft", boom)
    monkeypatch.setattr(rm_train, "train_reward_model", boom)
    second = run_study("smoke", out, workers=1, progress=False)
    assert [r["curve"] for r in second["runs"]] == [r["curve"] for r in first["runs"]]


def test_rerender_recomputes_the_alarm_scoring(smoke, tmp_path):
    """`--rerender` rebuilds the alarm's per-run verdicts and summary from the run records."""
    import shutil

    from rewardlab.study.summary import rerender

    out, first = smoke
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("cache", "runs"))
    results = json.loads((copy / "results.json").read_text())
    results["alarm"] = None
    for runs in results["per_run"].values():
        for m in runs.values():
            m["alarm_recovered"] = -1.0
    (copy / "results.json").write_text(json.dumps(results))
    again = rerender(str(copy))
    assert json.dumps(again["alarm"], sort_keys=True) == json.dumps(first["alarm"], sort_keys=True)  # NaN-safe
    assert all(m["alarm_recovered"] in (0.0, 1.0) for runs in again["per_run"].values() for m in runs.values())


def _bench(name):
    from _scripts import load_script

    return load_script(f"bench/{name}.py", f"bench_{name}")


def test_bench_alarm_threshold_replays_a_study(smoke, capsys):
    """bench/alarm_threshold.py on the smoke study: its default level replays the logged alarm exactly."""
    from rewardlab.ppo.config import AlarmConfig

    out, results = smoke
    got = _bench("alarm_threshold").main([out, "--grid", f"0.25,{AlarmConfig().uncertainty_threshold},inf"])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(got))
    task = os.path.basename(out)
    at_default = next(lv[task] for lv in got["levels"] if lv["level"] == AlarmConfig().uncertainty_threshold)
    assert at_default["recovered"] == round(results["alarm"]["unbounded_recovered"], 3)
    assert at_default["first_signal"] == results["alarm"]["first_signal"]
    assert got["chosen"] in (0.25, AlarmConfig().uncertainty_threshold, "inf")
    with pytest.raises(SystemExit):
        _bench("alarm_threshold").main([out, "--grid", "0,1"])


def test_bench_monitor_spread_scores_the_proxy_and_its_monitors(smoke, capsys):
    out, results = smoke
    got = _bench("monitor_spread").main([out, "--task", "digits"])
    assert got["members"] == 1 + PRESETS["smoke"].monitors == 2
    assert set(got["strategies"]) == {"raw", "lsc"}
    for row in got["strategies"].values():
        assert row["seeds"] == 1 and row["spread_sft"] > 0 and row["spread_final"] > 0 and -1 <= row["corr_final"] <= 1


def test_eval_schedule_is_dense_early():
    s = eval_schedule(48, 10)
    assert s[0] == 0 and s[-1] == 48 and s[:4] == [0, 1, 2, 3]
    assert len(set(s)) == len(s)


def test_default_preset_answers_the_users_questions():
    keys = {j.key for j in build_jobs(PRESETS["default"])}
    for needed in ("1-head/raw", "1-head/logsigmoid", "1-head/lsc", "1-head/par", "2-head/mean", "2-head/logodds (wrong)",
                   "stress/logsigmoid + c(x)", "stress/sigmoid + c(x)", "stress/lsc + c(x)", "ceiling/gold (ceiling)"):
        assert needed in keys
    assert len(PRESETS["default"].seeds) >= 3 and len(PRESETS["full"].seeds) >= 5
    assert re.search(r"β grid", " ".join(j.key for j in build_jobs(PRESETS["full"])))


def test_default_preset_has_a_beta_grid_for_the_key_strategies():
    """≥ 3 β spanning ≥ 10× for raw, whiten, logsigmoid, lsc and par, each at ≥ 3 seeds at every β."""
    preset = PRESETS["default"]
    jobs = build_jobs(preset)
    for name in ("raw", "whiten", "logsigmoid", "lsc", "par"):
        betas: dict[float, set[int]] = {}
        for j in jobs:
            if j.strategy == name and j.group in ("1-head", "β grid"):
                betas.setdefault(preset.kl_coef if j.kl_coef is None else j.kl_coef, set()).add(j.seed)
        assert len(betas) >= 3 and max(betas) / min(betas) >= 10, (name, betas)
        assert len(set.intersection(*betas.values())) >= 3, (name, betas)


# A preset small enough for tests that run whole studies on other tasks.
TINY = dataclasses.replace(PRESETS["smoke"], name="tiny", jobs=(("1-head", "raw", "raw", {}),), n_pairs=120, sft_steps=30,
                           updates=1, n_eval_prompts=16, n_eval_points=2, monitors=0)


def test_monitors_feed_the_alarm_and_leave_the_reward_alone(tmp_path):
    """A proxy stacked with 2 monitors: the same training and proxy curve as the proxy alone, and the alarm's
    uncertainty signal, silent with one head, reads the three proxies' spread."""
    preset = dataclasses.replace(TINY, jobs=(("1-head", "lsc", "lsc(q=0.5)", {}),), updates=3, n_eval_points=3)
    alone = run_study(preset, str(tmp_path / "alone"), workers=1, progress=False)
    watched = run_study(dataclasses.replace(preset, monitors=2), str(tmp_path / "watched"), workers=1, progress=False)
    (a,), (w,) = alone["runs"], watched["runs"]
    assert w["job"]["monitors"] == 2 and a["job"]["monitors"] == 0
    assert [c["gold"] for c in w["curve"]] == [c["gold"] for c in a["curve"]]
    assert [c["proxy"] for c in w["curve"]] == [c["proxy"] for c in a["curve"]]
    assert not any(a["alarm_scaled"]["uncertainty"]) and any(x > 0 for x in w["alarm_scaled"]["uncertainty"])
    run_dir = next((tmp_path / "watched" / "runs").iterdir())
    cfg = json.loads((run_dir / "config.json").read_text())["ppo_config"]
    assert cfg["reward"]["reward_pipeline"] == "head(k=0)|lsc(q=0.5)"
    assert len(watched["proxies"]) == 3 and len(alone["proxies"]) == 1


def test_every_monitor_is_a_proxy_of_its_own():
    """Monitors never reuse another job's optimised proxy (seeds would no longer be independent)."""
    from rewardlab.study.run import _proxy_needs

    preset = PRESETS["default"]
    jobs = build_jobs(preset)
    optimised = {_proxy_needs(j, preset)[0] for j in jobs if j.spec != "gold"}
    for j in jobs:
        needs = _proxy_needs(j, preset)
        if j.group in ("1-head", "β grid", "stress"):
            assert j.monitors == preset.monitors >= 2 and len(set(needs)) == 1 + preset.monitors
            assert not set(needs[1:]) & optimised, j.key
        elif j.spec != "gold":
            assert j.monitors == 0 and len(needs) == (preset.ensemble_members if j.group == "ensemble" else 1)


def test_a_task_longer_than_32_tokens_runs(tmp_path):
    from rewardlab.study.tasks.base import model_positions
    from rewardlab.study.tasks.brackets import BracketTask

    task = BracketTask(min_depth=20, max_depth=24, max_response_tokens=26)
    assert model_positions(task) > 32
    results = run_study(TINY, str(tmp_path), task=task, workers=1, progress=False)
    assert results["strategies"]["1-head/raw"]["n_runs"] == 1
    assert max(len(p.split()) for p in results["eval_prompts"]) > 20


def test_a_task_whose_lengths_do_not_fit_is_refused(tmp_path):
    from rewardlab.errors import RewardlabError
    from rewardlab.study.tasks.brackets import BracketTask

    class Liar(BracketTask):
        @property
        def max_prompt_tokens(self) -> int:  # prompts have up to 9 tokens
            return 4

    with pytest.raises(RewardlabError, match="max_prompt_tokens=4"):
        run_study(TINY, str(tmp_path), task=Liar(), workers=1, progress=False)


def test_task_parameters_reach_the_ppo_workers(tmp_path):
    """run_study(task=Task(param=x)) uses x in the PPO runs, not the class's default."""
    from rewardlab.study.tasks.digits import DigitSumTask

    results = run_study(TINY, str(tmp_path), task=DigitSumTask(eos_bonus=5.0), workers=1, progress=False)
    first = results["runs"][0]
    # Update 0 is the SFT policy on the same prompts and seed as the SFT baseline: same gold, same task.
    assert first["curve"][0]["gold"] == pytest.approx(results["sft_gold"], abs=0.3)
    assert results["sft_gold"] > 2.0  # the 5.0 EOS bonus is in it


TASK_SOURCE = '''
from dataclasses import dataclass
from rewardlab.study.tasks.digits import DigitSumTask


@dataclass
class EditedTask(DigitSumTask):
    name: str = "edited"

    def gold(self, prompts, responses, finished):
        return super().gold(prompts, responses, finished) + {offset}
'''


@pytest.mark.parametrize("as_file", [True, False], ids=["path.py:Class", "module:Class"])
def test_editing_the_task_gold_invalidates_the_cache(tmp_path, monkeypatch, as_file):
    import importlib
    import sys

    import rewardlab.reward_model.train as rm_train

    name = f"edited_task_{int(as_file)}"
    path = tmp_path / f"{name}.py"
    path.write_text(TASK_SOURCE.format(offset=0.0))
    monkeypatch.syspath_prepend(str(tmp_path))

    def task():
        if as_file:
            return f"{path}:EditedTask"
        module = importlib.reload(sys.modules[name]) if name in sys.modules else importlib.import_module(name)
        return module.EditedTask()

    out = str(tmp_path / "out")
    first = run_study(TINY, out, task=task(), workers=1, progress=False)
    # The gold changed; nothing else did. (A different file size, so no stale bytecode is reused.)
    path.write_text(TASK_SOURCE.format(offset="1.000"))
    calls = {"rm": 0, "ppo": 0}
    real_train, real_job = rm_train.train_reward_model, study_runs.run_job

    def train(*a, **k):
        calls["rm"] += 1
        return real_train(*a, **k)

    def job(*a, **k):
        calls["ppo"] += 1
        return real_job(*a, **k)

    monkeypatch.setattr(rm_train, "train_reward_model", train)
    monkeypatch.setattr(study_runs, "run_job", job)
    second = run_study(TINY, out, task=task(), workers=1, progress=False)
    assert calls == {"rm": 1, "ppo": 1}  # preferences, proxy and run recomputed
    assert second["runs"][0]["curve"][0]["gold"] == pytest.approx(first["runs"][0]["curve"][0]["gold"] + 1.0, abs=0.3)


def test_user_study_on_saved_models_with_and_without_gold(tmp_path):
    """`rewardlab study --policy --reward-model --prompts` on folders saved by the test."""
    from rewardlab.cli import main
    from rewardlab.reward.metadata import RewardModelMetadata, write_metadata
    from rewardlab.tiny import build_model, build_tokenizer, tiny_config

    tok = build_tokenizer(48, padding_side="left")
    build_model("causal_lm", tiny_config("gpt2", tok), seed=0).save_pretrained(tmp_path / "policy")
    tok.save_pretrained(tmp_path / "policy")
    rm = build_model("sequence_classification", tiny_config("gpt2", tok, num_labels=2), seed=1)
    write_metadata(rm.config, RewardModelMetadata(semantics="bradley_terry", num_heads=2))
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    (tmp_path / "prompts.txt").write_text("\n".join(f"t{i} t{i + 1}" for i in range(12)))
    gold_mod = tmp_path / "my_gold.py"
    gold_mod.write_text("def gold(prompts, responses):\n    return [float(r.split().count('t3')) for r in responses]\n")
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        common = ["study", "--policy", str(tmp_path / "policy"), "--reward-model", str(tmp_path / "rm"),
                  "--prompts", str(tmp_path / "prompts.txt"), "--strategies", "raw,lsc", "--seeds", "1",
                  "--updates", "2", "--batch-size", "8", "--response-length", "4", "--workers", "1", "--no-progress"]
        assert main(common + ["--out", str(tmp_path / "no_gold"), "--device", "cpu"]) == 0
        res = json.load(open(tmp_path / "no_gold" / "results.json"))
        assert set(res["strategies"]) == {"user/raw", "user/lsc"}
        assert res["strategies"]["user/raw"]["spec"] == "mean"  # 2 BT heads read with their mean
        assert res["strategies"]["user/lsc"]["spec"] == "mean|lsc(q=0.5)"
        assert math.isnan(res["sft_gold"]) and math.isnan(res["strategies"]["user/raw"]["final_gold"][0])  # no gold
        assert main(common + ["--out", str(tmp_path / "gold"), "--gold", "my_gold:gold"]) == 0
        res = json.load(open(tmp_path / "gold" / "results.json"))
        assert math.isfinite(res["sft_gold"]) and os.path.exists(tmp_path / "gold" / "gold_vs_kl.png")
    finally:
        sys.path.remove(str(tmp_path))
    assert main(["study", "--policy", str(tmp_path / "policy")]) == 2  # the three go together
    assert main(["study", "--device", "cpu"]) == 2  # the synthetic study's tiny models run on the CPU
    if not torch.cuda.is_available():  # a device this machine lacks: refused before any work
        assert main(common + ["--out", str(tmp_path / "gpu"), "--device", "cuda"]) == 2
        assert not (tmp_path / "gpu").exists()


def test_every_group_of_the_full_preset_runs_at_tiny_size(tmp_path):
    """Ensemble, stress, 2-head, ceiling and the β grid — the full preset's paths — on smoke sizes."""
    from dataclasses import replace

    smoke = PRESETS["smoke"]
    preset = replace(
        smoke, name="tiny-full", ensemble_members=2, beta_grid=(0.05,), beta_grid_strategies=("raw",),
        jobs=(("1-head", "raw", "raw", {}), ("1-head", "lsc", "lsc(q=0.5)", {}),
              ("2-head", "mean", "mean", {"heads": 2}),
              ("2-head", "logodds (wrong)", "logodds(pos=1,neg=0)", {"heads": 2, "semantics": "classifier"}),
              ("stress", "lsc + c(x)", "lsc(q=0.5)", {"offsets": True}),
              ("ensemble", "ensemble min", "min", {"heads": 2}), ("ceiling", "gold (ceiling)", "gold", {})),
    )
    results = run_study(preset, str(tmp_path), workers=1, progress=False)
    keys = set(results["strategies"])
    assert {"ensemble/ensemble min", "stress/lsc + c(x)", "2-head/mean", "ceiling/gold (ceiling)", "β grid/raw@β=0.05"} <= keys
    # The stress test's centred run saw the offsets only through its proxy: per-prompt KL changes are recorded.
    assert "stress/lsc + c(x)" in results["stress_kl"]
    md = open(tmp_path / "report.md", encoding="utf-8").read()
    for title in ("Ensembles", "Fixed β over a grid", "Offset stress test", "2-logit proxy"):
        assert title in md
    assert results["proxies"]["2-head seed 0"]["head_correlation"] is not None


def test_report_counts_only_the_preference_pairs_used(tmp_path, monkeypatch):
    """Half the sampled pairs have two identical responses: the report says how many pairs were really used."""
    import rewardlab.study.preferences as prefs

    def fake_samples(policy, tokenizer, prompts, *, max_new_tokens, seed):
        n = len(prompts)
        texts = ["1 2"] * n if seed < 10_000 else ["1 2"] * (n // 2) + ["3 4"] * (n - n // 2)
        return texts, [True] * n

    monkeypatch.setattr(prefs, "sample_responses", fake_samples)
    results = run_study(TINY, str(tmp_path), workers=1, progress=False)
    prefs_dir = next(d for d in os.listdir(tmp_path / "cache") if d.startswith("prefs-"))
    with open(tmp_path / "cache" / prefs_dir / "train.jsonl", encoding="utf-8") as f:
        used = sum(1 for line in f if line.strip())
    counts = results["preference_pairs"]
    assert counts["train"] == used < TINY.n_pairs
    assert counts["train"] + counts["eval"] + counts["identical_dropped"] == counts["sampled"]
    assert f"trained on {used} preference pairs" in results["intro"]
    assert f"{TINY.n_pairs} preference pairs" not in results["intro"]


def test_report_only_recomposes_the_answer_from_results_json(smoke):
    from rewardlab.cli import main

    out, results = smoke
    path = os.path.join(out, "results.json")
    with open(path, encoding="utf-8") as f:
        stale = json.load(f)
    stale["answer"], stale["findings"] = "stale", []
    with open(path, "w", encoding="utf-8") as f:
        json.dump(stale, f)
    assert main(["study", "--report-only", "--out", out]) == 0
    with open(path, encoding="utf-8") as f:
        assert json.load(f)["answer"] == results["answer"]
    assert results["answer"] in open(os.path.join(out, "report.md"), encoding="utf-8").read()


def test_the_proxy_reading_is_the_principled_one_even_for_three_classes():
    """The study's proxy is read by `principal_reading`: for a 3-class classifier the log-probability of
    its last class (the study read `mean` there, which a classifier's semantics refuse)."""
    from rewardlab.reward.scoring import RewardModel
    from rewardlab.reward.side import Samples
    from rewardlab.study.runs import proxy_side
    from rewardlab.tiny import build_model, build_tokenizer, tiny_config

    tok = build_tokenizer(32)
    rm = RewardModel(build_model("sequence_classification", tiny_config("gpt2", tok, hidden=16, layers=1, num_labels=3)),
                     tok, semantics="classifier")
    side = proxy_side([rm])
    assert side.spec == "logprob(k=2)"
    out = side(Samples(["t1 t2", "t3"], [" t4", " t5 t6"]), update=False)
    expected = torch.log_softmax(rm.score_texts(["t1 t2", "t3"], [" t4", " t5 t6"]), -1)[:, 2]
    torch.testing.assert_close(out.scores, expected)
