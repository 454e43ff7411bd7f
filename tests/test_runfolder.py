"""The run folder: up-front checks, one run per folder, replacing, pruning, leftovers, the resume rule."""

import json
import os
import subprocess
import sys

import pytest

from rewardlab.errors import RewardlabError
from rewardlab.runfolder import (
    PPO_RESUMABLE,
    check_output_dir,
    list_checkpoints,
    plan_run,
    prune_checkpoints,
    record_checkpoints,
    remove_leftovers,
    resume_config,
    write_checkpoint_info,
)

KW = dict(command="ppo", prefix="update-", state_file="trainer_state.json")


def _checkpoint(folder, n, run_id):
    path = folder / "checkpoints" / f"update-{n}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text("{}")
    write_checkpoint_info(str(path), run_id, n, {"run": {"seed": 0}})
    return path


def _dead_pid():
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_output_dir_overlapping_an_input_is_refused(tmp_path):
    policy = tmp_path / "sft"
    policy.mkdir()
    inputs = {"models.sft_model_path": str(policy)}
    with pytest.raises(RewardlabError, match=r"is the input models.sft_model_path"):
        check_output_dir(str(policy), inputs)
    with pytest.raises(RewardlabError, match="lies inside the input"):
        check_output_dir(str(policy / "out"), inputs)
    with pytest.raises(RewardlabError, match="contains the input"):
        check_output_dir(str(tmp_path), inputs)
    check_output_dir(str(tmp_path / "elsewhere"), inputs)  # a sibling is fine
    # an adapter folder brings its base model along
    adapter, base = tmp_path / "lora", tmp_path / "base"
    adapter.mkdir()
    base.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    with pytest.raises(RewardlabError, match="adapter's base model"):
        check_output_dir(str(base / "run"), {"models.reward_model_path": str(adapter)})


def test_output_dir_that_is_a_file_or_not_writable(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(RewardlabError, match="is a file"):
        check_output_dir(str(tmp_path / "f"), {})
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(RewardlabError, match="not writable"):
            check_output_dir(str(locked / "run"), {})
    finally:
        locked.chmod(0o700)


def test_another_runs_folder_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    assert plan_run(str(out), resume=False, overwrite=False, **KW).checkpoint is None  # missing: fine
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"run_id": "A"}))
    (out / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(RewardlabError, match=r"holds the files of run A .*--resume.*--overwrite-output-dir"):
        plan_run(str(out), resume=False, overwrite=False, **KW)
    with pytest.raises(RewardlabError, match="no checkpoint to continue"):
        plan_run(str(out), resume=True, overwrite=False, **KW)
    auto = plan_run(str(out), resume="auto", overwrite=False, **KW)
    assert auto.checkpoint is None and "starting a fresh run" in auto.note and auto.run_id != "A"
    _checkpoint(out, 2, "A")
    plan = plan_run(str(out), resume=True, overwrite=False, **KW)
    assert plan.run_id == "A" and plan.checkpoint.endswith("update-2") and plan.saved_config == {"run": {"seed": 0}}


def test_overwrite_keeps_the_old_run_until_the_first_checkpoint(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"run_id": "A"}))
    (out / "policy").mkdir()
    _checkpoint(out, 8, "A")
    plan = plan_run(str(out), resume=False, overwrite=True, **KW)
    plan.start({"run": {}})
    assert sorted(os.listdir(out / ".replaced")) == ["checkpoints", "policy", "run.json"]
    assert json.loads((out / "run.json").read_text())["run_id"] == plan.run_id != "A"
    assert list_checkpoints(str(out / "checkpoints"), "update-", "trainer_state.json") == []
    # killed before its first checkpoint, then replaced again: the first run's files are still kept
    (out / "metrics.jsonl").write_text("{}\n")
    again = plan_run(str(out), resume=False, overwrite=True, **KW)
    again.start({"run": {}})
    assert (out / ".replaced" / "policy").is_dir() and not (out / "metrics.jsonl").exists()
    again.output_complete()
    assert not (out / ".replaced").exists()


def test_pruning_touches_only_this_runs_checkpoints(tmp_path):
    for n, owner in ((4, "old"), (8, "old"), (1, "new"), (2, "new"), (3, "new")):
        _checkpoint(tmp_path, n, owner)
    root = str(tmp_path / "checkpoints")
    prune_checkpoints(root, "update-", "trainer_state.json", "new", keep=2)
    assert sorted(os.listdir(root)) == ["update-2", "update-3", "update-4", "update-8"]
    assert [n for n, _ in list_checkpoints(root, "update-", "trainer_state.json", "new")] == [2, 3]


def test_pruning_keeps_protected_checkpoints_and_none_keeps_all(tmp_path):
    for n in (1, 2, 3, 4):
        _checkpoint(tmp_path, n, "r")
    root = str(tmp_path / "checkpoints")
    assert prune_checkpoints(root, "update-", "trainer_state.json", "r", keep=None) == []
    assert len(os.listdir(root)) == 4
    prune_checkpoints(root, "update-", "trainer_state.json", "r", keep=1, protect={"update-2"})
    assert sorted(os.listdir(root)) == ["update-2", "update-4"]
    with pytest.raises(RewardlabError, match="save_total_limit=0"):
        prune_checkpoints(root, "update-", "trainer_state.json", "r", keep=0)


def test_run_json_lists_the_kept_checkpoints(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "r", "resumes": []}))
    for n in (2, 4):
        path = tmp_path / "checkpoints" / f"update-{n}"
        path.mkdir(parents=True)
        (path / "trainer_state.json").write_text("{}")
        write_checkpoint_info(str(path), "r", n, None, {"metrics": {"objective/scores": n / 10}, "alarm_score": 0.5})
    _checkpoint(tmp_path, 9, "another run")
    listed = record_checkpoints(str(tmp_path), "update-", "trainer_state.json", "r", unit="update",
                                alarm_checkpoint="update-2")
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["run_id"] == "r" and info["resumes"] == [] and info["alarm_checkpoint"] == "update-2"
    assert info["checkpoints"] == listed == [
        {"name": "update-2", "update": 2, "path": os.path.join("checkpoints", "update-2"),
         "metrics": {"objective/scores": 0.2}, "alarm_score": 0.5},
        {"name": "update-4", "update": 4, "path": os.path.join("checkpoints", "update-4"),
         "metrics": {"objective/scores": 0.4}, "alarm_score": 0.5}]


def test_leftovers_of_dead_processes_are_removed(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".tmp-{dead}-0123abcd-update-3").mkdir()
    (tmp_path / f".tmp-{dead}-0123abcd-metrics.jsonl").write_text("")
    (tmp_path / f".old-{dead}-0123abcd-policy").mkdir()
    mine = tmp_path / f".tmp-{os.getpid()}-0123abcd-update-4"  # a write in progress in a live process
    mine.mkdir()
    assert len(remove_leftovers(str(tmp_path))) == 3
    assert os.listdir(tmp_path) == [mine.name]


def test_resume_rule_applies_listed_changes_and_refuses_others():
    saved = {"run": {"total_episodes": 64, "seed": 0, "output_dir": "a", "report_to": []}, "kl": {"kl_coef": 0.05}}
    current = {"run": {"total_episodes": 128, "seed": 0, "output_dir": "b", "report_to": ["tensorboard"]},
               "kl": {"kl_coef": 0.05}}
    merged, changes = resume_config(saved, current, PPO_RESUMABLE, command="ppo", output_dir="b")
    assert merged["run"] == {"total_episodes": 128, "seed": 0, "output_dir": "b", "report_to": ["tensorboard"]}
    assert changes == {"run.total_episodes": (64, 128), "run.report_to": ([], ["tensorboard"])}
    current["kl"]["kl_coef"], current["run"]["seed"] = 0.1, 1
    with pytest.raises(RewardlabError) as err:
        resume_config(saved, current, PPO_RESUMABLE, command="ppo", output_dir="b")
    msg = str(err.value)
    assert "kl.kl_coef: 0.05 -> 0.1" in msg and "run.seed: 0 -> 1" in msg and "total_episodes" not in msg.split(";")[0]
    assert "--overwrite-output-dir" in msg and "run.logging_steps" in msg
