import json
import os

import pytest
import torch

from rewardlab.cli import main
from rewardlab.tracking import read_metrics

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "ppo_tiny.yaml")




def test_tiny_example_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the example's paths are relative: runs/tiny, runs/ppo_tiny
    rc = main(["ppo", "--make-tiny", "runs/tiny", "--config", EXAMPLE, "--set", "total_episodes=64",
               "--progress_bar", "false", "--save_steps", "1"])
    assert rc == 0
    out = tmp_path / "runs" / "ppo_tiny"
    for name in ("policy/model.safetensors", "policy/tokenizer.json", "critic", "config.yaml", "pipeline.txt",
                 "versions.json", "metrics.jsonl", "checkpoints/update-2/trainer_state.json"):
        assert (out / name).exists(), name
    assert (out / "pipeline.txt").read_text().strip() == "mean|lsc(q=0.5)"
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2]
    for key in ("objective/kl", "objective/kl_k3", "objective/scores", "reward/raw/mean", "ppo/policy/clipfrac",
                "ppo/val/explained_variance", "time/generate", "time/score", "time/update"):
        assert key in records[0], key
    state = json.loads((out / "checkpoints" / "update-2" / "trainer_state.json").read_text())
    assert state["pipeline"]["spec"] == "mean|lsc(q=0.5)"
    assert (out / "checkpoints" / "update-2" / "reference_rewards.safetensors").exists()
    # --resume after the end does nothing more and keeps the metrics
    assert main(["ppo", "--config", EXAMPLE, "--set", "total_episodes=64", "--progress_bar", "false", "--resume"]) == 0
    assert [r["step"] for r in read_metrics(out)] == [1, 2]
    # one run per folder: a new run is refused, unless it replaces the old one
    first = json.loads((out / "run.json").read_text())["run_id"]
    again = ["ppo", "--config", EXAMPLE, "--set", "total_episodes=32", "--progress_bar", "false", "--seed", "1"]
    assert main(again) == 2
    assert f"already holds the files of run {first}" in capsys.readouterr().err
    assert main([*again, "--overwrite-output-dir"]) == 0
    assert json.loads((out / "run.json").read_text())["run_id"] != first
    assert [r["step"] for r in read_metrics(out)] == [1] and not (out / ".replaced").exists()
    assert sorted(os.listdir(out / "checkpoints")) == ["update-1"]


def test_config_errors_come_before_model_loading(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("sft_model_path: /nonexistent/policy\nreward_model_path: /nonexistent/rm\ncliprange: 0\n")
    assert main(["ppo", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "ppo.cliprange=0" in err and "nonexistent" not in err
    assert main(["ppo", "--config", str(cfg), "--cliprange", "0.2", "--batch_size", "7", "--num_mini_batches", "2"]) == 2
    assert "optim.batch_size=7" in capsys.readouterr().err
    assert main(["ppo", "--config", str(cfg), "--cliprange", "0.2"]) == 2
    assert "/nonexistent/policy" in capsys.readouterr().err  # valid config: now the paths are checked


def test_pipeline_that_does_not_fit_the_reward_model(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # the tiny reward model has 2 Bradley-Terry heads; a pipeline without a head reducer cannot read them
    assert main(["ppo", "--make-tiny", "runs/tiny", "--config", EXAMPLE, "--set", "reward_pipeline=lsc(q=0.5)"]) == 2
    err = capsys.readouterr().err
    assert "does not fit the reward outputs (2 heads)" in err and "mean" in err


def test_dry_run_and_help(capsys):
    assert main(["ppo", "--dry-run", "--set", "kl.kl_coef=0.3", "--cliprange", "0.1"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["kl"]["kl_coef"] == 0.3 and resolved["ppo"]["cliprange"] == 0.1
    with pytest.raises(SystemExit):
        main(["ppo", "--help"])
    assert "value clip" in capsys.readouterr().out  # field docs become --help


def test_several_reward_models_from_folders(tmp_path, monkeypatch):
    import shutil

    monkeypatch.chdir(tmp_path)
    from rewardlab.ppo.commands import make_tiny

    make_tiny("runs/tiny")
    shutil.copytree("runs/tiny/reward", "runs/tiny/reward_b")
    common = ["ppo", "--config", EXAMPLE, "--set", "total_episodes=32", "--progress_bar", "false",
              "--set", "reward_model_path=null", "--set", "reward_model_paths=[runs/tiny/reward, runs/tiny/reward_b]"]
    spec = "0.5*[mean|lsc(q=0.5)] + 0.5*[mean]"
    assert main([*common, "--set", f"reward_pipeline={spec}", "--set", "output_dir=runs/combined"]) == 0
    rec = read_metrics(tmp_path / "runs" / "combined")[0]
    assert {"reward/term/rm0/final/mean", "reward/term/rm1/final/mean", "reward/final/mean"} <= set(rec)
    # the same weights twice: the un-centred term reads the same raw rewards as the centred one
    assert rec["reward/term/rm1/raw/mean"] == pytest.approx(rec["reward/term/rm0/raw/mean"], rel=1e-5)
    assert main([*common, "--set", "reward_pipeline=min", "--set", "output_dir=runs/ensemble"]) == 0  # 4 stacked heads
    assert "reward/final/mean" in read_metrics(tmp_path / "runs" / "ensemble")[0]


def test_monitor_models_leave_the_reward_alone(tmp_path, monkeypatch):
    """docs/ppo.md's recipe: list monitor models after yours and read your column, `head(k=0)|…`: the same
    training as your model alone; the alarm's head signals read every column."""
    import shutil

    monkeypatch.chdir(tmp_path)
    from rewardlab.ppo.commands import make_tiny

    make_tiny("runs/tiny")
    shutil.copytree("runs/tiny/reward", "runs/tiny/monitor")
    from safetensors.torch import load_file, save_file

    weights = load_file("runs/tiny/monitor/model.safetensors")
    score = next(k for k in weights if k.startswith("score."))
    weights[score] = torch.flip(weights[score], dims=[0]) * 3.0  # another model: its heads swapped and scaled
    save_file(weights, "runs/tiny/monitor/model.safetensors", metadata={"format": "pt"})
    common = ["ppo", "--config", EXAMPLE, "--set", "total_episodes=32", "--progress_bar", "false",
              "--set", "reward_pipeline=head(k=0)|whiten", "--set", "reward_semantics=bradley_terry"]
    assert main([*common, "--set", "output_dir=runs/alone"]) == 0
    assert main([*common, "--set", "reward_model_path=null", "--set", "output_dir=runs/watched",
                 "--set", "reward_model_paths=[runs/tiny/reward, runs/tiny/monitor]"]) == 0
    alone, watched = read_metrics(tmp_path / "runs" / "alone"), read_metrics(tmp_path / "runs" / "watched")
    for a, w in zip(alone, watched, strict=True):
        for key in ("objective/scores", "objective/kl", "ppo/returns/mean"):
            assert w[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key
        assert "alarm/uncertainty" in w and "alarm/disagreement" in w


def test_reward_model_paths_errors_before_loading(tmp_path, capsys):
    base = ["ppo", "--set", "sft_model_path=/nonexistent/policy"]
    assert main([*base, "--set", "reward_model_path=/x", "--set", "reward_model_paths=[/a, /b]"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main([*base, "--set", "reward_model_paths=[/a, /b, /c]", "--set", "reward_pipeline=0.5*[raw] + 0.5*[raw]"]) == 2
    err = capsys.readouterr().err
    assert "2 terms but there are 3 reward model(s); give 2 reward models" in err and "nonexistent" not in err


def test_output_dir_overlapping_an_input_model_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    import rewardlab.ppo.trainer as trainer_mod
    from rewardlab.ppo.commands import make_tiny

    monkeypatch.chdir(tmp_path)
    make_tiny("runs/tiny")

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the output folder was checked")

    for name in ("build_models", "load_tokenizer", "build_reward_side"):
        monkeypatch.setattr(trainer_mod, name, no_loading)
    before = sorted(os.listdir("runs/tiny/policy"))
    assert main(["ppo", "--config", EXAMPLE, "--set", "output_dir=runs/tiny/policy"]) == 2
    assert "run.output_dir='runs/tiny/policy' is the input models.sft_model_path" in capsys.readouterr().err
    assert sorted(os.listdir("runs/tiny/policy")) == before
    assert main(["ppo", "--config", EXAMPLE, "--set", "output_dir=runs"]) == 2  # contains every input
    assert "contains the input" in capsys.readouterr().err


def _signal_a_running_ppo(tmp_path, sig: str, *, ignored: tuple[str, ...] = ()):
    """Start a 64-update `rewardlab ppo` (long enough to still be going, whatever the load), send
    `sig` once a checkpoint exists, and return (exit code, stderr). The child starts with the
    signals in `ignored` ignored (as under nohup) and SIGINT, SIGTERM and SIGHUP otherwise at their
    defaults (a foreground run), whatever this test process inherited: under nohup, or as a
    background job of a non-interactive shell (SIGINT ignored), the suite would otherwise pass its
    own dispositions on."""
    import signal
    import subprocess
    import sys
    import time

    from rewardlab.ppo.commands import make_tiny

    def dispositions():
        for name in ("SIGINT", "SIGTERM", "SIGHUP"):
            signal.signal(getattr(signal, name), signal.SIG_IGN if name in ignored else signal.SIG_DFL)

    make_tiny(str(tmp_path / "runs" / "tiny"))
    proc = subprocess.Popen([sys.executable, "-m", "rewardlab.cli", "ppo", "--config", EXAMPLE, "--save_steps", "1",
                             "--total_episodes", "2048", "--progress_bar", "false"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=dispositions)
    checkpoints = tmp_path / "runs" / "ppo_tiny" / "checkpoints"
    deadline = time.time() + 120
    # Any checkpoint will do: with save_steps=1 older ones are pruned, so update-1 may be gone already.
    while not any(checkpoints.glob("update-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be signalled"
    proc.send_signal(getattr(signal, sig))
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_interrupt_exits_130_naming_the_last_checkpoint(tmp_path, sig):
    code, err = _signal_a_running_ppo(tmp_path, sig)
    assert code == 130, err[-2000:]
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("rewardlab ppo: interrupted at update ") and "continue with --resume" in line, line
    last = line.split("the last checkpoint is ")[1].split()[0]
    assert (tmp_path / "runs" / "ppo_tiny" / "checkpoints" / last / "trainer_state.json").exists()
    assert not (tmp_path / "runs" / "ppo_tiny" / "policy").exists()


def test_sighup_under_nohup_does_not_stop_the_run(tmp_path):
    """A run started with SIGHUP ignored (``nohup rewardlab ppo … &``) survives the terminal closing."""
    code, err = _signal_a_running_ppo(tmp_path, "SIGHUP", ignored=("SIGHUP",))
    assert code == 0, err[-2000:]
    assert (tmp_path / "runs" / "ppo_tiny" / "policy").is_dir()  # it ran to the end
