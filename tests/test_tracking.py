import json

import pytest

from rewardlab.errors import RewardlabError
from rewardlab.tracking import MetricsLogger, read_metrics


def test_jsonl_records_and_nan_as_null(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.log({"objective/scores": 0.5, "ppo/val/error": float("nan")}, step=1)
        log.log({"objective/scores": 0.7}, step=2)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == {"step": 1, "objective/scores": 0.5, "ppo/val/error": None}
    assert read_metrics(tmp_path)[1] == {"step": 2, "objective/scores": 0.7}


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


def test_disabled_logger_writes_nothing(tmp_path):
    log = MetricsLogger(tmp_path / "sub", enabled=False)
    log.log({"x": 1.0}, step=1)
    log.close()
    assert not (tmp_path / "sub").exists()


def test_unknown_tracker(tmp_path):
    with pytest.raises(RewardlabError, match="tensorboard"):
        MetricsLogger(tmp_path, report_to=("mlflow",))


def test_tensorboard_tracker_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    with MetricsLogger(tmp_path, report_to=("tensorboard",)) as log:
        log.log({"objective/scores": 1.0}, step=1)
    assert any((tmp_path / "tensorboard").iterdir())
