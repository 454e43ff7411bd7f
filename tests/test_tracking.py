"""The metrics logger: JSONL records, the log line (train.log, stdout off a terminal), trackers and their checks."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rewardlab.cli import main
from rewardlab.errors import RewardlabError
from rewardlab.tracking import (
    PPO_LINE,
    RM_LINE,
    MetricsLogger,
    ProgressBar,
    check_trackers,
    print_lines,
    read_metrics,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = str(ROOT / "examples" / "ppo_tiny.yaml")


def test_jsonl_records_and_nan_as_null(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.log({"objective/scores": 0.5, "ppo/val/error": float("nan")}, step=1)
        log.log({"objective/scores": 0.7}, step=2)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"step": 1, "objective/scores": 0.5, "ppo/val/error": None}
    assert read_metrics(tmp_path)[1] == {"step": 2, "objective/scores": 0.7}
    assert not (tmp_path / "train.log").exists()  # no log_line: no log file


def test_resume_drops_records_after_the_checkpoint(tmp_path):
    with MetricsLogger(tmp_path) as log:
        for step in range(1, 6):
            log.log({"x": step}, step=step)
    with MetricsLogger(tmp_path, resume_step=3) as log:
        log.log({"x": 40.0}, step=4)
    assert [(r["step"], r["x"]) for r in read_metrics(tmp_path)] == [(1, 1), (2, 2), (3, 3), (4, 40)]
    with MetricsLogger(tmp_path) as log:  # a fresh run in the same folder starts a new file
        log.log({"x": 7.0}, step=1)
    assert read_metrics(tmp_path) == [{"step": 1, "x": 7.0}]


def test_disabled_logger_writes_nothing(tmp_path, capsys):
    log = MetricsLogger(tmp_path / "sub", enabled=False, log_line=PPO_LINE, total_steps=2)
    log.log({"objective/scores": 1.0}, step=1)
    log.log_table("samples", [{"a": 1}], step=1)
    log.close()
    assert not (tmp_path / "sub").exists() and capsys.readouterr().out == ""


# ---------------------------------------------------------------------------------------------- log lines
PPO_RECORD = {"objective/scores": -1.4123, "reward/raw/mean": 0.5234, "objective/kl": 0.02912,
              "objective/kl_coef": 0.05, "objective/entropy": 2.3141, "objective/response_length": 12.0,
              "objective/stop_frac": 0.75, "alarm/score": 0.1234, "episodes": 96.0, "time/total": 0.5,
              "time/generate": 0.412, "time/forward": 0.1, "time/score": 0.05, "time/update": 0.625,
              "ppo/loss/policy": 0.1}


def test_ppo_line_reads_the_key_metrics():
    # tok/s: 96 episodes after 3 updates = 32 responses × 12 tokens / 0.5 s = 768
    assert PPO_LINE.format(PPO_RECORD, 3, 8) == (
        "update 3/8  score -1.41  raw 0.523  kl 0.0291  beta 0.05  entropy 2.31  len 12  eos 0.75  alarm 0.123  "
        "tok/s 768  time gen 0.41s fwd 0.10s score 0.05s update 0.62s")
    stopped = PPO_LINE.format({**PPO_RECORD, "alarm/triggered": 1.0, "alarm/stopped": 1.0}, 3, 8)
    assert stopped.endswith("STOPPED by the over-optimisation alarm")
    assert PPO_LINE.format({"eval/other": 1.0}, 3, 8) is None  # a record without the line's fields: no line
    assert RM_LINE.format({"rm/loss": 0.69315, "rm/accuracy": 0.5, "rm/learning_rate": 1e-5}, 10, None) == \
        "step 10  loss 0.693  acc 0.5  lr 1e-05"


def test_lines_go_to_stdout_unless_a_progress_bar_shows_on_a_terminal(tmp_path, monkeypatch):
    master, slave = os.openpty()
    terminal = open(slave, "w")  # a real terminal
    pipe = open(tmp_path / "out.txt", "w")
    try:
        assert print_lines(progress_bar=True, stream=pipe)
        assert not print_lines(progress_bar=True, stream=terminal)
        assert print_lines(progress_bar=False, stream=terminal)
        monkeypatch.setattr(sys, "stdout", terminal)
        assert ProgressBar(True, 4, 0).enabled
        monkeypatch.setattr(sys, "stdout", pipe)
        assert not ProgressBar(True, 4, 0).enabled  # redirected, rich would print the bar once, at the end
    finally:
        terminal.close()
        pipe.close()
        os.close(master)


def test_train_log_is_written_always_and_appended_on_resume(tmp_path, capsys):
    with MetricsLogger(tmp_path, log_line=PPO_LINE, total_steps=4, progress_bar=False) as log:
        log.log(PPO_RECORD, step=1)
        log.log(PPO_RECORD, step=2)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[0] for line in printed] == ["update 1/4", "update 2/4"]
    assert all(re.search(r"  elapsed 0m0\ds  eta \dm\d\ds$", line) for line in printed)
    with MetricsLogger(tmp_path, log_line=PPO_LINE, total_steps=4, progress_bar=False, resume_step=1) as log:
        log.log(PPO_RECORD, step=2)
        log.log(PPO_RECORD, step=4)
    text = (tmp_path / "train.log").read_text().splitlines()
    assert text[0].startswith("# started ") and text[3].startswith("# resumed after update 1, ")
    assert [line.split("  ")[0] for line in text if not line.startswith("#")] == ["update 1/4", "update 2/4",
                                                                                    "update 2/4", "update 4/4"]
    assert text[-1].endswith("s") and "  eta " not in text[-1]  # the last update: no ETA


def test_ppo_log_lines_appear_when_stdout_is_not_a_terminal(tmp_path):
    """The issue's case: output redirected as on a cluster, progress bar left on (the default)."""
    out = subprocess.run(
        [sys.executable, "-m", "rewardlab.cli", "ppo", "--make-tiny", "runs/tiny", "--config", EXAMPLE,
         "--set", "run.total_episodes=128", "--set", "run.logging_steps=2", "--set", "run.save_steps=0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("update ")]
    assert [line.split("  ")[0] for line in lines] == ["update 2/4", "update 4/4"]  # one per logging step
    for line in lines:
        for name in ("score", "raw", "kl", "beta", "entropy", "len", "eos", "alarm", "tok/s", "time gen",
                     "fwd", "update", "elapsed"):
            assert re.search(rf"(^|  |s ){re.escape(name)} ", line), (name, line)
    log = (tmp_path / "runs" / "ppo_tiny" / "train.log").read_text().splitlines()
    assert [line for line in log if not line.startswith("#")] == lines
    records = read_metrics(tmp_path / "runs" / "ppo_tiny")
    assert f"score {records[-1]['objective/scores']:.3g}" in lines[-1]


def test_train_rm_log_lines(tmp_path, capsys):
    from _scripts import load_script

    from rewardlab.reward_model.train import RewardTrainingConfig, train_reward_model
    from rewardlab.tiny import build_model, build_tokenizer, tiny_config

    data = load_script("examples/make_tiny_rm_data.py")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data.make_pairs(64, seed=1)))
    tok = build_tokenizer(32)
    model = build_model("sequence_classification", tiny_config("gpt2", tok, num_labels=1), seed=0)
    cfg = RewardTrainingConfig(model="(in memory)", train_file=str(tmp_path / "train.jsonl"),
                               output_dir=str(tmp_path / "rm"), per_device_train_batch_size=16, max_steps=4,
                               logging_steps=2, max_length=32)  # progress bar on: stdout is not a terminal here
    train_reward_model(cfg, model=model, tokenizer=tok)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ")]
    assert [line.split("  ")[0] for line in lines][:2] == ["step 2/4", "step 4/4"]
    assert all(" loss " in line and " acc " in line and " lr " in line for line in lines)
    log = (tmp_path / "rm" / "train.log").read_text().splitlines()
    assert [line for line in log if not line.startswith("#")] == lines


# ---------------------------------------------------------------------------------------------- trackers
@pytest.fixture
def hide(monkeypatch):
    """Make a package look uninstalled, as Python's import system itself allows: ``sys.modules[name] = None``
    (``find_spec`` answers None and ``import`` fails). No rewardlab code is replaced."""

    def hide_package(package: str) -> None:
        for name in [n for n in sys.modules if n.split(".")[0] == package]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, package, None)

    return hide_package


def test_check_trackers(hide):
    check_trackers(())
    with pytest.raises(RewardlabError, match="unknown tracker 'comet_ml'; trackers are mlflow, tensorboard"):
        check_trackers(["comet_ml"])
    hide("wandb")
    with pytest.raises(RewardlabError) as err:
        check_trackers(["tensorboard", "wandb"])
    assert str(err.value) == ("run.report_to=['tensorboard', 'wandb'] needs the wandb package, which is not "
                              "installed; pip install wandb (or remove it from report_to)")


def test_unknown_tracker(tmp_path):
    with pytest.raises(RewardlabError, match="trackers are mlflow, tensorboard, trackio, wandb"):
        MetricsLogger(tmp_path, report_to=("comet_ml",))
    assert not (tmp_path / "metrics.jsonl").exists()


def test_missing_tracker_is_refused_before_any_model_loads_and_the_retry_runs(tmp_path, monkeypatch, capsys, hide):
    monkeypatch.chdir(tmp_path)  # the example's paths are relative: runs/tiny, runs/ppo_tiny
    hide("wandb")
    args = ["ppo", "--make-tiny", "runs/tiny", "--config", EXAMPLE, "--set", "run.total_episodes=32",
            "--progress_bar", "false"]
    assert main([*args, "--set", "run.report_to=wandb"]) == 2
    assert "needs the wandb package, which is not installed" in capsys.readouterr().err
    out = tmp_path / "runs" / "ppo_tiny"
    assert not out.exists() or not {"run.json", "metrics.jsonl", "config.yaml"} & set(os.listdir(out))
    assert main([*args, "--set", "run.report_to=wandb", "--dry-run"]) == 2  # a dry run checks it too
    # In Python: refused at construction, before the models load and the run folder is planned.
    from rewardlab.ppo import PPOTrainer, load_config

    with pytest.raises(RewardlabError, match="needs the wandb package"):
        PPOTrainer(load_config(EXAMPLE, ["run.report_to=wandb", "models.sft_model_path=/nonexistent/policy"]))
    assert main(args) == 0  # the retry without it starts as if nothing had happened
    assert (out / "run.json").exists() and (out / "train.log").exists()


def test_train_rm_refuses_a_missing_tracker_before_the_run_folder(tmp_path, hide):
    from rewardlab.reward_model.train import RewardTrainingConfig, train_reward_model

    hide("mlflow")
    cfg = RewardTrainingConfig(model=str(tmp_path / "no-model"), train_file=str(tmp_path / "none.jsonl"),
                               output_dir=str(tmp_path / "rm"), report_to=["mlflow"])
    with pytest.raises(RewardlabError, match="report_to=\\['mlflow'\\] needs the mlflow package"):
        train_reward_model(cfg)
    assert os.listdir(tmp_path) == []


def _tensorboard_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


ROWS = [{"prompt": "2+2", "response": "4 | four", "score": 1.25}, {"prompt": "hi", "response": "a\nb", "score": -0.5}]


def test_tensorboard_gets_scalars_tables_and_the_run_name(tmp_path):
    pytest.importorskip("tensorboard")
    with MetricsLogger(tmp_path, report_to=("tensorboard",), run_name="lr-3e-6", run_config={"a": {"b": 1}}) as log:
        log.log({"objective/scores": 1.0}, step=1)
        log.log_table("samples", ROWS, step=1)
    events = _tensorboard_events(tmp_path / "tensorboard" / "lr-3e-6")
    assert [(e.step, e.value) for e in events.Scalars("objective/scores")] == [(1, 1.0)]
    table = events.Tensors("samples/text_summary")[0]
    assert table.step == 1
    assert table.tensor_proto.string_val[0].decode() == (
        "| prompt | response | score |\n|---|---|---|\n| 2+2 | 4 \\| four | 1.25 |\n| hi | a<br>b | -0.5 |")
    assert '"b": 1' in events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert read_metrics(tmp_path) == [{"step": 1, "objective/scores": 1.0}]  # the table is not a metric
    # default run name: the output folder's name
    with MetricsLogger(tmp_path / "my-run", report_to=("tensorboard",)) as log:
        log.log({"x": 1.0}, step=1)
    assert (tmp_path / "my-run" / "tensorboard" / "my-run").is_dir()


def _mlflow_run(uri, project):
    import mlflow

    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(project).experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_mlflow_gets_project_run_name_params_metrics_and_tables(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # restored after the test (the logger sets it too)
    out = tmp_path / "ppo-run"
    config = {"run": {"output_dir": str(out), "report_to": ["mlflow"]}, "kl": {"kl_coef": 0.05}}
    with MetricsLogger(out, report_to=("mlflow",), project="proj", run_config=config) as log:
        log.log({"objective/scores": 0.5, "time/total": 2.0}, step=1)
        log.log({"objective/scores": 0.75}, step=2)
        log.log_table("samples", ROWS, step=2)
    client, run = _mlflow_run((out / "mlruns").as_uri(), "proj")  # the local default, under the run's folder
    assert run.info.run_name == "ppo-run" and run.info.status == "FINISHED"
    assert run.data.params == {"run.output_dir": str(out), "run.report_to": "['mlflow']", "kl.kl_coef": "0.05"}
    history = client.get_metric_history(run.info.run_id, "objective/scores")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.75)]
    table = client.download_artifacts(run.info.run_id, "samples/step-0000002.json", str(tmp_path / "dl"))
    saved = json.loads(Path(table).read_text())
    assert saved["columns"] == ["prompt", "response", "score"] and saved["data"][1] == ["hi", "a\nb", -0.5]


def test_mlflow_tracking_uri_from_the_environment(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    store = (tmp_path / "elsewhere").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    with MetricsLogger(tmp_path / "out", report_to=("mlflow",), run_name="named") as log:
        log.log({"x": 1.0}, step=1)
    _, run = _mlflow_run(store, "rewardlab")
    assert run.info.run_name == "named" and not (tmp_path / "out" / "mlruns").exists()
