"""Reward-model training on tiny models: it learns a known rule, saves metadata, writes files atomically."""

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from _scripts import load_script

from rewardlab.errors import RewardlabError, RunInterrupted
from rewardlab.reward.metadata import read_metadata
from rewardlab.reward.scoring import RewardModel
from rewardlab.reward_model.train import RewardTrainingConfig, train_reward_model
from rewardlab.tiny import build_model, build_tokenizer, tiny_config

ROOT = Path(__file__).resolve().parents[1]


EXAMPLE = load_script("examples/make_tiny_rm_data.py")


def write_jsonl(path, rows):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def tiny(num_labels=1, seed=0):
    tok = build_tokenizer(32)
    return build_model("sequence_classification", tiny_config("gpt2", tok, num_labels=num_labels), seed=seed), tok


def config(tmp_path, **kw):
    base = dict(model="(in memory)", train_file=str(tmp_path / "train.jsonl"), eval_file=str(tmp_path / "eval.jsonl"),
                output_dir=str(tmp_path / "rm"), learning_rate=3e-3, per_device_train_batch_size=32,
                num_train_epochs=2, max_length=64, logging_steps=5, progress=False)
    base.update(kw)
    return RewardTrainingConfig(**base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One BT model trained on 'more t1 wins', shared by several tests."""
    tmp = tmp_path_factory.mktemp("rm")
    write_jsonl(tmp / "train.jsonl", EXAMPLE.make_pairs(640, seed=1))
    write_jsonl(tmp / "eval.jsonl", EXAMPLE.make_pairs(200, seed=2))
    model, tok = tiny()
    result = train_reward_model(config(tmp), model=model, tokenizer=tok)
    return tmp, result


def test_learns_the_rule_on_held_out_pairs(trained):
    tmp, result = trained
    rm = RewardModel.from_pretrained(result.output_dir)
    rows = [json.loads(line) for line in open(tmp / "eval.jsonl")]
    chosen = rm.score_texts([r["prompt"] for r in rows], [r["chosen"] for r in rows])
    rejected = rm.score_texts([r["prompt"] for r in rows], [r["rejected"] for r in rows])
    accuracy = (chosen[:, 0] > rejected[:, 0]).float().mean().item()
    assert accuracy >= 0.95
    assert result.metrics["rm/eval/accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_metadata_survives_save_and_load(trained):
    _, result = trained
    rm = RewardModel.from_pretrained(result.output_dir)
    meta = read_metadata(rm.model.config)
    assert meta == result.metadata
    assert rm.semantics == "bradley_terry" and meta.num_heads == 1 and meta.loss == "bradley_terry"
    assert meta.extra["eval_accuracy"] == result.metrics["rm/eval/accuracy"]
    # reward mean/std are those of the saved model on the training pairs.
    rows = [json.loads(line) for line in open(Path(result.output_dir).parent / "train.jsonl")]
    scores = torch.cat([rm.score_texts([r["prompt"] for r in rows], [r[k] for r in rows]) for k in ("chosen", "rejected")])
    assert meta.reward_mean == pytest.approx(scores.mean().item(), abs=1e-4)
    assert meta.reward_std == pytest.approx(scores.std(correction=0).item(), rel=1e-4)


def test_output_folder_contents_and_metrics(trained):
    _, result = trained
    out = Path(result.output_dir)
    names = set(os.listdir(out))
    assert {"config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl", "train_config.json", "run.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    assert not Path(str(out) + ".partial").exists()
    lines = [json.loads(x) for x in open(out / "metrics.jsonl")]
    assert all(k == "step" or k.startswith("rm/") for line in lines for k in line)
    assert lines[-1]["rm/reward_mean"] == pytest.approx(result.metadata.reward_mean)
    # Loss goes down.
    losses = [line["rm/loss"] for line in lines if "rm/loss" in line]
    assert losses[-1] < 0.75 * losses[0]


def test_existing_output_dir_is_refused(trained):
    tmp, result = trained
    model, tok = tiny()
    with pytest.raises(RewardlabError, match="already exists"):
        train_reward_model(config(tmp, output_dir=result.output_dir, max_steps=1), model=model, tokenizer=tok)


def test_margin_changes_training_and_checkpoints_are_written(tmp_path):
    rows = EXAMPLE.make_pairs(64, seed=3)
    write_jsonl(tmp_path / "train.jsonl", [dict(r, margin=3.0) for r in rows])
    runs = {}
    for use_margin in (False, True):
        model, tok = tiny()
        runs[use_margin] = train_reward_model(
            config(tmp_path, eval_file=None, output_dir=str(tmp_path / f"rm{use_margin}"), use_margin=use_margin,
                   max_steps=4, save_steps=2, save_total_limit=1, per_device_train_batch_size=16),
            model=model, tokenizer=tok)
    # Same data order and init: the first logged loss differs only through the margin.
    assert runs[True].metrics["rm/loss"] != pytest.approx(runs[False].metrics["rm/loss"])
    assert runs[True].metadata.extra["use_margin"] is True
    ckpts = os.listdir(tmp_path / "rmTrue" / "checkpoints")
    assert ckpts == ["step-0000002"]
    state = torch.load(tmp_path / "rmTrue" / "checkpoints" / "step-0000002" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 2


def test_two_heads_and_classifier_mode(tmp_path):
    rows = EXAMPLE.make_pairs(64, seed=4)
    write_jsonl(tmp_path / "train.jsonl", rows)
    model, tok = tiny(num_labels=2)
    res = train_reward_model(config(tmp_path, eval_file=None, num_heads=2, max_steps=3), model=model, tokenizer=tok)
    assert res.metadata.num_heads == 2 and res.metadata.semantics == "bradley_terry"
    labelled = [{"text": r["prompt"] + r[k], "label": int(k == "chosen")} for r in rows for k in ("chosen", "rejected")]
    write_jsonl(tmp_path / "labels.jsonl", labelled)
    model, tok = tiny(num_labels=2)
    res = train_reward_model(
        config(tmp_path, mode="classifier", train_file=str(tmp_path / "labels.jsonl"), eval_file=str(tmp_path / "labels.jsonl"),
               output_dir=str(tmp_path / "cls"), max_steps=3), model=model, tokenizer=tok)
    assert res.metadata.semantics == "classifier" and res.metadata.loss == "cross_entropy"
    assert "rm/eval/accuracy" in res.metrics


def test_config_errors(tmp_path):
    with pytest.raises(RewardlabError, match="label_smoothing=0.7"):
        config(tmp_path, label_smoothing=0.7).validate()
    with pytest.raises(RewardlabError, match="mode='ppo'"):
        config(tmp_path, mode="ppo").validate()
    with pytest.raises(RewardlabError, match="unknown train-rm option"):
        RewardTrainingConfig.from_dict({"model": "x", "lr": 1})
    with pytest.raises(RewardlabError, match="Bradley-Terry pairs only"):
        config(tmp_path, mode="classifier", center_rewards_coefficient=0.1).validate()


def test_cli_trains_from_yaml(tmp_path):
    from rewardlab.cli import main

    write_jsonl(tmp_path / "train.jsonl", EXAMPLE.make_pairs(32, seed=5))
    model, tok = tiny()
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    (tmp_path / "run.yaml").write_text(
        f"model: {tmp_path / 'base'}\ntrain_file: {tmp_path / 'train.jsonl'}\noutput_dir: {tmp_path / 'out'}\n"
        "learning_rate: 1e-3\nmax_steps: 2\nper_device_train_batch_size: 8\n"
    )
    assert main(["train-rm", "--config", str(tmp_path / "run.yaml"), "--no-progress", "--max-length", "32"]) == 0
    assert read_metadata(RewardModel.from_pretrained(tmp_path / "out").model.config).semantics == "bradley_terry"
    # Bad data through the CLI: a clean error, exit status 2.
    (tmp_path / "bad.jsonl").write_text('{"prompt": "t2 ", "chosen": "t1"}\n')
    assert main(["train-rm", "--config", str(tmp_path / "run.yaml"), "--train-file", str(tmp_path / "bad.jsonl"),
                 "--output-dir", str(tmp_path / "out2"), "--no-progress"]) == 2


def test_interrupted_run_folder_is_not_silently_reused(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", EXAMPLE.make_pairs(32, seed=6))
    (tmp_path / "rm.partial").mkdir()
    (tmp_path / "rm.partial" / "metrics.jsonl").write_text("{}\n")
    model, tok = tiny()
    with pytest.raises(RewardlabError, match="unfinished run folder .*rm.partial already holds"):
        train_reward_model(config(tmp_path, eval_file=None, max_steps=1), model=model, tokenizer=tok)
    res = train_reward_model(config(tmp_path, eval_file=None, max_steps=1, overwrite_output_dir=True),
                             model=model, tokenizer=tok)
    assert Path(res.output_dir).is_dir() and not (tmp_path / "rm.partial").exists()


def test_eval_fraction_holds_out_prompts(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", EXAMPLE.make_pairs(64, seed=8))
    model, tok = tiny()
    res = train_reward_model(config(tmp_path, eval_file=None, eval_fraction=0.25, max_steps=2), model=model, tokenizer=tok)
    resolved = json.loads((Path(res.output_dir) / "train_config.json").read_text())["resolved"]
    assert resolved["eval_rows"] == 16 and resolved["train_rows"] == 48
    assert "rm/eval/accuracy" in res.metrics


def test_conversational_pairs_train_and_score_like_score_messages(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": r["prompt"].strip()}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in EXAMPLE.make_pairs(32, seed=9)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    model, tok = tiny()
    res = train_reward_model(config(tmp_path, eval_file=None, max_steps=2, per_device_train_batch_size=8),
                             model=model, tokenizer=tok)
    # The stored reward mean is that of RewardModel.score_messages on the same conversations.
    rm = RewardModel.from_pretrained(res.output_dir)
    convs = [r["prompt"] + r[k] for k in ("chosen", "rejected") for r in rows]
    assert res.metadata.reward_mean == pytest.approx(rm.score_messages(convs).mean().item(), abs=1e-4)


def test_killed_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import rewardlab.reward_model.train as train_mod
    from rewardlab.tracking import read_metrics

    write_jsonl(tmp_path / "train.jsonl", EXAMPLE.make_pairs(64, seed=7))
    # 64 pairs / 16 per batch = 4 batches per epoch; 2 per step: 2 steps per epoch, 6 steps = 3 epochs.
    kw = dict(eval_file=None, max_steps=6, per_device_train_batch_size=16, gradient_accumulation_steps=2,
              save_steps=3, logging_steps=1)
    model, tok = tiny(seed=4)
    whole = train_reward_model(config(tmp_path, output_dir=str(tmp_path / "whole"), **kw), model=model, tokenizer=tok)

    real_loss, calls = train_mod.reward_model_loss, []

    def dies_in_step_5(*args, **kwargs):  # micro-batch 9 = the first of step 5, after the step-3 checkpoint
        calls.append(1)
        if len(calls) == 9:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_mod, "reward_model_loss", dies_in_step_5)
    model, tok = tiny(seed=4)
    with pytest.raises((RunInterrupted, KeyboardInterrupt)) as stopped:  # (a bare KeyboardInterrupt would end pytest)
        train_reward_model(config(tmp_path, output_dir=str(tmp_path / "cut"), **kw), model=model, tokenizer=tok)
    assert stopped.type is RunInterrupted
    assert str(stopped.value).startswith("interrupted at step 5; the last checkpoint is step-0000003 in ")
    assert os.listdir(tmp_path / "cut.partial" / "checkpoints") == ["step-0000003"]
    with pytest.raises(RewardlabError, match="Pass --resume to continue that run"):
        train_reward_model(config(tmp_path, output_dir=str(tmp_path / "cut"), **kw), model=tiny(seed=4)[0], tokenizer=tok)
    monkeypatch.setattr(train_mod, "reward_model_loss", real_loss)
    model, tok = tiny(seed=9)  # other initial weights: the checkpoint's must replace them
    resumed = train_reward_model(config(tmp_path, output_dir=str(tmp_path / "cut"), resume=True, **kw),
                                 model=model, tokenizer=tok)
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.steps == whole.steps == 6
    steps = [r["step"] for r in read_metrics(tmp_path / "cut")]
    assert steps == [r["step"] for r in read_metrics(tmp_path / "whole")]  # steps 4-5 of the killed run not repeated
    assert steps[:6] == [1, 2, 3, 4, 5, 6]
    with pytest.raises(RewardlabError, match="nothing to resume"):
        train_reward_model(config(tmp_path, output_dir=str(tmp_path / "cut"), resume=True, **kw),
                           model=tiny()[0], tokenizer=tok)


# --------------------------------------------------------------------------------------------
# Exact resume with dropout on (GPT-2's default 0.1) and gradient accumulation
# --------------------------------------------------------------------------------------------
KILL_SCRIPT = r'''
import os, signal, sys
import torch
torch.set_num_threads(1)
from rewardlab.reward_model.train import RewardTrainingConfig, train_reward_model
from rewardlab.tiny import build_model, build_tokenizer, tiny_config

kill_at, kw = int(sys.argv[1]), eval(sys.argv[2])
real_save = torch.save
def dies_while_writing(obj, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("step") == kill_at:  # the trainer state: the model files are written
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, *args, **kwargs)
torch.save = dies_while_writing
tok = build_tokenizer(32)
cfg = tiny_config("gpt2", tok, num_labels=1)
cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.1
train_reward_model(RewardTrainingConfig(**kw), model=build_model("sequence_classification", cfg, seed=4), tokenizer=tok)
'''


def _dropout_model(seed=4):
    tok = build_tokenizer(32)
    cfg = tiny_config("gpt2", tok, num_labels=1)
    cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = 0.1  # GPT-2's defaults
    return build_model("sequence_classification", cfg, seed=seed), tok


def _comparable(records):
    return [{k: v for k, v in r.items() if k not in ("rm/rows_per_second", "rm/train_seconds")} for r in records]


@pytest.fixture(scope="module")
def dropout_run(tmp_path_factory):
    """The uninterrupted run every interrupted one must equal: 64 pairs, 16 per micro-batch, 2 per step."""
    tmp = tmp_path_factory.mktemp("dropout")
    write_jsonl(tmp / "train.jsonl", EXAMPLE.make_pairs(64, seed=7))
    write_jsonl(tmp / "eval.jsonl", EXAMPLE.make_pairs(32, seed=8))
    kw = dict(max_steps=8, per_device_train_batch_size=16, gradient_accumulation_steps=2, save_steps=3,
              save_total_limit=2, logging_steps=2, eval_steps=4)
    model, tok = _dropout_model()
    whole = train_reward_model(config(tmp, output_dir=str(tmp / "whole"), **kw), model=model, tokenizer=tok)
    return tmp, kw, whole


def _assert_same_as_whole(tmp, whole, out):
    from safetensors.torch import load_file

    from rewardlab.tracking import read_metrics

    a, b = load_file(tmp / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), \
        max((a[k] - b[k]).abs().max().item() for k in a)
    assert read_metadata(RewardModel.from_pretrained(out).model.config).temperature == whole.metadata.temperature
    # every logged window, including the one spanning the resume, as in the uninterrupted run
    assert _comparable(read_metrics(out)) == _comparable(read_metrics(tmp / "whole"))


# Checkpoints at steps 3 and 6, logs every 2 steps (the step-4 line spans the step-3 checkpoint), eval at 4.
# Micro-batch 7 is the first after the step-3 checkpoint, 8 the second of step 4 (mid-accumulation),
# 11 the first of step 6 (after the step-4 log and eval); each run resumes from step 3.
@pytest.mark.parametrize("micro_batch", [7, 8, 11])
def test_ctrl_c_then_resume_is_bitwise_exact_with_dropout(dropout_run, micro_batch, monkeypatch):
    tmp, kw, whole = dropout_run
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.1 for m in _dropout_model()[0].modules())
    out = tmp / f"cut{micro_batch}"
    # What Ctrl-C does is tested above; here: exactness.
    _train_interrupted(monkeypatch, config(tmp, output_dir=str(out), **kw), *_dropout_model(), at=micro_batch)
    model, tok = _dropout_model(seed=9)  # other initial weights: the checkpoint's must replace them
    train_reward_model(config(tmp, output_dir=str(out), resume=True, **kw), model=model, tokenizer=tok)
    _assert_same_as_whole(tmp, whole, out)


def test_sigkill_during_a_checkpoint_write_then_resume_is_exact_and_leaves_no_tmp(dropout_run):
    import subprocess
    import sys

    tmp, kw, whole = dropout_run
    out = tmp / "killed"
    args = {**vars(config(tmp, output_dir=str(out), **kw))}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, "6", repr(args)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    root = tmp / "killed.partial" / "checkpoints"
    assert [n for n in os.listdir(root) if n.startswith(".tmp-")], "the kill did not hit the checkpoint write"
    assert sorted(n for n in os.listdir(root) if not n.startswith(".")) == ["step-0000003"]
    model, tok = _dropout_model(seed=9)
    train_reward_model(config(tmp, output_dir=str(out), resume=True, **kw), model=model, tokenizer=tok)
    _assert_same_as_whole(tmp, whole, out)
    names = [n for _, dirs, files in os.walk(out) for n in dirs + files]
    assert not [n for n in names if n.startswith((".tmp-", ".old-", ".replaced"))], names


def _interrupted_at_step_3(tmp_path, out, monkeypatch, **kw):
    """Train until micro-batch 5 (the first of step 3, after the step-2 checkpoint), then Ctrl-C."""
    import rewardlab.reward_model.train as train_mod

    real_loss, calls = train_mod.reward_model_loss, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_mod, "reward_model_loss", interrupted)
    with pytest.raises((RunInterrupted, KeyboardInterrupt)):
        train_reward_model(config(tmp_path, output_dir=str(out), **kw), model=tiny(seed=4)[0], tokenizer=tiny()[1])
    monkeypatch.setattr(train_mod, "reward_model_loss", real_loss)


RESUME_KW = dict(eval_file=None, max_steps=4, per_device_train_batch_size=16, gradient_accumulation_steps=2,
                 save_steps=2, logging_steps=1)


def test_resume_with_a_forbidden_change_is_refused(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "train.jsonl", EXAMPLE.make_pairs(64, seed=7))
    out = tmp_path / "rm"
    _interrupted_at_step_3(tmp_path, out, monkeypatch, **RESUME_KW)
    kw = {**RESUME_KW, "per_device_train_batch_size": 8, "learning_rate": 1e-3}
    with pytest.raises(RewardlabError, match=r"learning_rate: 0.003 -> 0.001; per_device_train_batch_size: 16 -> 8.*"
                                             r"only max_steps, num_train_epochs.*--overwrite-output-dir"):
        train_reward_model(config(tmp_path, output_dir=str(out), resume=True, **kw), model=tiny()[0], tokenizer=tiny()[1])


def test_resume_with_an_allowed_change_takes_effect_and_is_recorded(tmp_path, monkeypatch):
    from rewardlab.tracking import read_metrics

    write_jsonl(tmp_path / "train.jsonl", EXAMPLE.make_pairs(64, seed=7))
    out = tmp_path / "rm"
    _interrupted_at_step_3(tmp_path, out, monkeypatch, **RESUME_KW)
    kw = {**RESUME_KW, "max_steps": 6, "logging_steps": 2}
    res = train_reward_model(config(tmp_path, output_dir=str(out), resume=True, **kw), model=tiny()[0], tokenizer=tiny()[1])
    assert res.steps == 6
    records = [r for r in read_metrics(out) if "rm/loss" in r and "rm/reward_mean" not in r]  # not the summary
    assert [r["step"] for r in records] == [1, 2, 4, 6]
    # the linear schedule is that of 6 steps: after 4 of them the LR is 3e-3 · 2/6
    assert records[2]["rm/learning_rate"] == pytest.approx(3e-3 * 2 / 6)
    run = json.loads((out / "run.json").read_text())
    assert run["resumes"][-1]["changes"] == {"logging_steps": {"old": 1, "new": 2}, "max_steps": {"old": 4, "new": 6}}
    assert json.loads((out / "train_config.json").read_text())["run_id"] == run["run_id"]


def test_resume_without_a_checkpoint(tmp_path, capsys):
    write_jsonl(tmp_path / "train.jsonl", EXAMPLE.make_pairs(32, seed=7))
    with pytest.raises(RewardlabError, match=r"no checkpoint to continue in the unfinished run folder .*rm.partial"):
        train_reward_model(config(tmp_path, eval_file=None, max_steps=1, resume=True), model=tiny()[0], tokenizer=tiny()[1])
    res = train_reward_model(config(tmp_path, eval_file=None, max_steps=1, resume="auto"), model=tiny()[0],
                             tokenizer=tiny()[1])
    assert res.steps == 1 and "--resume=auto: no checkpoint" in capsys.readouterr().out


def test_output_dir_inside_the_base_model_is_refused_before_loading(tmp_path, monkeypatch):
    import rewardlab.reward_model.train as train_mod

    write_jsonl(tmp_path / "train.jsonl", EXAMPLE.make_pairs(32, seed=5))
    model, tok = tiny()
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(train_mod, "_load_model", no_loading)
    monkeypatch.setattr(train_mod, "_load_tokenizer", no_loading)
    for out, how in ((tmp_path / "base" / "rm", "lies inside the input model="), (tmp_path, "contains the input")):
        with pytest.raises(RewardlabError, match=how):
            train_reward_model(RewardTrainingConfig(model=str(tmp_path / "base"), train_file=str(tmp_path / "train.jsonl"),
                                                    output_dir=str(out), max_steps=1, progress=False))


def test_cli_resume_flag(tmp_path, capsys):
    from rewardlab.cli import main

    write_jsonl(tmp_path / "train.jsonl", EXAMPLE.make_pairs(32, seed=5))
    model, tok = tiny()
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    common = ["train-rm", "--model", str(tmp_path / "base"), "--train-file", str(tmp_path / "train.jsonl"),
              "--output-dir", str(tmp_path / "out"), "--max-steps", "1", "--no-progress"]
    assert main([*common, "--resume"]) == 2
    assert "no checkpoint to continue" in capsys.readouterr().err
    assert main([*common, "--resume=auto"]) == 0
    assert "starting a fresh run" in capsys.readouterr().out


def test_a_finished_run_ends_its_process_group(tmp_path, monkeypatch):
    # Under `accelerate launch` a Gloo group left alive can abort a process at interpreter exit
    # (pytorch#190489), after every file is written; a finished run destroys it (end_training).
    from accelerate import Accelerator

    calls = []
    monkeypatch.setattr(Accelerator, "end_training", lambda self: calls.append(self))
    write_jsonl(tmp_path / "train.jsonl", EXAMPLE.make_pairs(64, seed=1))
    write_jsonl(tmp_path / "eval.jsonl", EXAMPLE.make_pairs(16, seed=2))
    model, tok = tiny()
    train_reward_model(config(tmp_path, max_steps=1), model=model, tokenizer=tok)
    assert len(calls) == 1


# --------------------------------------------------------------------------------------------
# Large-model options: mixed precision, LoRA, gradient checkpointing, attention kernel
# --------------------------------------------------------------------------------------------
@pytest.fixture
def seen(monkeypatch):
    """Every `PooledRewardModel` the run builds, with what its score head saw in each forward pass."""
    import rewardlab.reward_model.train as train_mod

    built = []

    class Spy(train_mod.PooledRewardModel):
        def __init__(self, model, tokenizer):
            super().__init__(model, tokenizer)
            self.calls = []
            self.trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}  # before a merge
            built.append(self)

            def record(module, args, output):
                self.calls.append({"out": output.dtype, "in": args[0].dtype, "device": output.device.type,
                                   "weights": {p.dtype for p in module.parameters()},
                                   "autocast": torch.is_autocast_enabled("cpu"), "grad": torch.is_grad_enabled()})

            self._scorer._head.register_forward_hook(record)

    monkeypatch.setattr(train_mod, "PooledRewardModel", Spy)
    return built


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one precision per process: later tests (the PPO ones) get a clean state back."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()


def _pairs(tmp_path, n=64, seed=11):
    write_jsonl(tmp_path / "train.jsonl", EXAMPLE.make_pairs(n, seed=seed))


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
@pytest.mark.parametrize("use_peft", [False, True])
def test_dtype_device_and_autocast_each_configuration_gives_the_model(tmp_path, seen, fresh_accelerate_state,
                                                                     mixed_precision, use_peft):
    from safetensors.torch import load_file

    _pairs(tmp_path)
    model, tok = tiny()
    train_reward_model(config(tmp_path, eval_file=None, max_steps=2, per_device_train_batch_size=16,
                              mixed_precision=mixed_precision, use_peft=use_peft), model=model, tokenizer=tok)
    training = [c for c in seen[0].calls if c["grad"]]
    assert training, "no training forward pass was recorded"
    bf16 = mixed_precision == "bf16"
    for call in seen[0].calls + [c for s in seen[1:] for c in s.calls]:  # training, then the final statistics
        # float32 master weights on the CPU whatever the precision; autocast runs the head in bf16
        assert call["weights"] == {torch.float32} and call["device"] == "cpu"
        assert call["autocast"] is bf16
        assert call["out"] == (torch.bfloat16 if bf16 else torch.float32)
    saved = load_file(tmp_path / "rm" / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}


def test_fp16_on_the_cpu_is_refused_before_the_model_loads(tmp_path, monkeypatch, fresh_accelerate_state):
    import rewardlab.reward_model.train as train_mod

    _pairs(tmp_path, 16)
    monkeypatch.setattr(train_mod, "_load_model", lambda *a: pytest.fail("the model loaded"))
    with pytest.raises(RewardlabError, match="mixed_precision='fp16' needs a GPU.*use bf16"):
        train_reward_model(config(tmp_path, model="never-loaded", eval_file=None, max_steps=1, mixed_precision="fp16"))


def test_lora_trains_adapters_and_head_only_and_saves_a_merged_classifier(tmp_path, seen):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    _pairs(tmp_path, 128)
    model, tok = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = train_reward_model(config(tmp_path, eval_file=None, max_steps=12, per_device_train_batch_size=16,
                                    logging_steps=3, learning_rate=1e-2, use_peft=True, lora_r=4, lora_alpha=8),
                             model=model, tokenizer=tok)
    trainable = list(seen[0].trainable)
    assert trainable and all(".lora_A." in n or ".lora_B." in n or "score.modules_to_save" in n for n in trainable)
    assert any("score.modules_to_save" in n for n in trainable) and any("c_attn.lora_A" in n for n in trainable)
    resolved = json.loads((tmp_path / "rm" / "train_config.json").read_text())["resolved"]
    assert resolved["trainable_parameters"] == sum(seen[0].trainable.values())
    assert 0 < resolved["trainable_parameters"] < resolved["parameters"] / 5
    losses = [r["rm/loss"] for r in map(json.loads, open(tmp_path / "rm" / "metrics.jsonl")) if "rm/loss" in r]
    assert losses[-1] < 0.9 * losses[0]

    # One complete classifier: no adapter files, every weight present, the head and the adapted
    # matrices changed, the rest of the base as it was.
    out = Path(res.output_dir)
    assert not [n for n in os.listdir(out) if n.startswith("adapter_")]
    after = load_file(out / "model.safetensors")
    assert after.keys() == before.keys() - {k for k in before if k not in after and k.endswith("lm_head.weight")}
    assert not torch.equal(after["score.weight"], before["score.weight"])
    assert not torch.equal(after["transformer.h.0.attn.c_attn.weight"], before["transformer.h.0.attn.c_attn.weight"])
    assert torch.equal(after["transformer.h.0.mlp.c_fc.weight"], before["transformer.h.0.mlp.c_fc.weight"])
    hf, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    rm = RewardModel.from_pretrained(out)
    rows = [json.loads(line) for line in open(tmp_path / "train.jsonl")]
    scores = torch.cat([rm.score_texts([r["prompt"] for r in rows], [r[k] for r in rows]) for k in ("chosen", "rejected")])
    assert res.metadata.reward_mean == pytest.approx(scores.mean().item(), abs=1e-4)  # those of the merged model


def test_lora_ctrl_c_then_resume_is_bitwise_exact(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    _pairs(tmp_path, 64, seed=7)
    kw = {**RESUME_KW, "use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.1}
    whole = train_reward_model(config(tmp_path, output_dir=str(tmp_path / "whole"), **kw), model=tiny(seed=4)[0],
                               tokenizer=tiny()[1])
    out = tmp_path / "cut"
    _interrupted_at_step_3(tmp_path, out, monkeypatch, **kw)
    ckpt = tmp_path / "cut.partial" / "checkpoints" / "step-0000002"
    assert "adapter_model.safetensors" in os.listdir(ckpt) and "model.safetensors" not in os.listdir(ckpt)
    resumed = train_reward_model(config(tmp_path, output_dir=str(out), resume=True, **kw), model=tiny(seed=4)[0],
                                 tokenizer=tiny()[1])
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.metrics["rm/loss"] == whole.metrics["rm/loss"]


def test_lora_resume_from_another_base_model_is_refused(tmp_path, monkeypatch):
    _pairs(tmp_path, 64, seed=7)
    kw = {**RESUME_KW, "use_peft": True, "lora_r": 4}
    _interrupted_at_step_3(tmp_path, tmp_path / "cut", monkeypatch, **kw)
    tok = build_tokenizer(32)
    wider = build_model("sequence_classification", tiny_config("gpt2", tok, hidden=48, num_labels=1), seed=4)
    with pytest.raises(RewardlabError, match="does not match the model being trained"):
        train_reward_model(config(tmp_path, output_dir=str(tmp_path / "cut"), resume=True, **kw), model=wider,
                           tokenizer=tok)


def test_gradient_checkpointing_recomputes_layers_with_the_same_loss_and_gradients():
    import rewardlab.reward_model.train as train_mod
    from rewardlab.reward_model.evaluate import pad_right

    def loss_and_grads(checkpointing):
        model, tok = _dropout_model()  # dropout on: the recomputation must replay the same masks
        model = train_mod._memory_options(model, RewardTrainingConfig(gradient_checkpointing=checkpointing))
        calls = []
        model.transformer.h[0].attn.register_forward_hook(lambda *a: calls.append(1))
        scorer = train_mod.PooledRewardModel(model, tok).train()
        ids, mask = pad_right([[5, 6, 7, 8], [9, 10], [11, 12, 13]], tok.pad_token_id)
        torch.manual_seed(0)
        loss = scorer(ids, mask).float().pow(2).sum()
        loss.backward()
        layers = [layer.gradient_checkpointing for layer in model.transformer.h]
        return loss.detach(), {n: p.grad for n, p in model.named_parameters()}, layers, len(calls)

    loss_off, grads_off, layers_off, calls_off = loss_and_grads(False)
    loss_on, grads_on, layers_on, calls_on = loss_and_grads(True)
    assert layers_on == [True, True] and layers_off == [False, False]
    assert (calls_off, calls_on) == (1, 2)  # each checkpointed layer runs again in the backward pass
    torch.testing.assert_close(loss_on, loss_off)
    for name, grad in grads_off.items():
        torch.testing.assert_close(grads_on[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_gradient_checkpointing_and_lora_train_like_the_plain_run(tmp_path):
    _pairs(tmp_path)
    losses = {}
    for gc in (False, True):
        model, tok = tiny()
        res = train_reward_model(config(tmp_path, eval_file=None, output_dir=str(tmp_path / f"rm{gc}"), max_steps=3,
                                        per_device_train_batch_size=16, logging_steps=1, use_peft=True, lora_r=4,
                                        gradient_checkpointing=gc), model=model, tokenizer=tok)
        losses[gc] = [r["rm/loss"] for r in map(json.loads, open(Path(res.output_dir) / "metrics.jsonl")) if "rm/loss" in r]
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


def test_attn_implementation_reaches_the_model_in_memory_and_from_a_folder(tmp_path, seen):
    from rewardlab.cli import main

    _pairs(tmp_path, 16)
    model, tok = tiny()
    assert model.config._attn_implementation == "sdpa"
    train_reward_model(config(tmp_path, eval_file=None, max_steps=1, attn_implementation="eager"), model=model,
                       tokenizer=tok)
    assert seen[0].model.config._attn_implementation == "eager"
    model, tok = tiny()
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    assert main(["train-rm", "--model", str(tmp_path / "base"), "--train-file", str(tmp_path / "train.jsonl"),
                 "--output-dir", str(tmp_path / "cli"), "--max-steps", "1", "--no-progress", "--attn-implementation",
                 "eager", "--use-peft", "--lora-r", "2", "--lora-target-modules", "c_attn,c_proj",
                 "--gradient-checkpointing"]) == 0
    peft_model = seen[1].model
    assert peft_model.config._attn_implementation == "eager"
    assert peft_model.peft_config["default"].target_modules == {"c_attn", "c_proj"}
    assert peft_model.peft_config["default"].r == 2
    assert all(layer.gradient_checkpointing for layer in peft_model.get_base_model().transformer.h)
    assert RewardModel.from_pretrained(tmp_path / "cli").num_heads == 1


def test_memory_option_errors(tmp_path):
    for kw, message in [
        ({"lora_r": 0}, "lora_r=0 is invalid; use a LoRA rank ≥ 1"),
        ({"lora_alpha": 0}, "lora_alpha=0 is invalid; use a scaling α > 0"),
        ({"lora_dropout": 1.0}, r"lora_dropout=1.0 is invalid; use a dropout probability in \[0, 1\)"),
        ({"attn_implementation": "flash"}, "attn_implementation='flash' is not an attention implementation; choose "
                                           "one of sdpa, eager"),
        ({"mixed_precision": "fp8"}, "mixed_precision='fp8' is invalid; choose no, fp16 or bf16"),
    ]:
        with pytest.raises(RewardlabError, match=message):
            config(tmp_path, **kw)
    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(RewardlabError, match="'flash_attention_2' needs the flash_attn package"):
            config(tmp_path, attn_implementation="flash_attention_2")


def test_cli_help_lists_the_memory_options(capsys):
    from rewardlab.cli import main

    with pytest.raises(SystemExit):
        main(["train-rm", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--mixed-precision", "--gradient-checkpointing", "--no-gradient-checkpointing", "--attn-implementation",
                 "--use-peft", "--lora-r", "--lora-alpha", "--lora-dropout", "--lora-target-modules"):
        assert flag in text, flag
    assert "float32 master weights" in text and "merged model" in text


# --------------------------------------------------------------------------------------------
# bench/gpu_check.sh's reward-model cases, tiny and on the CPU
# --------------------------------------------------------------------------------------------
def _bench_train_rm():
    return load_script("bench/train_rm.py", "bench_train_rm")


def test_gpu_check_rm_cases_run_tiny_on_the_cpu(tmp_path, capsys, fresh_accelerate_state):
    import argparse

    bench = _bench_train_rm()
    rows = {}
    for case in ("rm_fixture", "rm_lora", "rm_lora_trl", "rm_score"):
        bench.run_gpu_case(argparse.Namespace(case=case, dir=str(tmp_path), size="tiny", length=16, steps=2,
                                              device="cpu", batch_size=8))
        rows[case] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert all(r["ok"] and r["case"] == case for case, r in rows.items()), rows
    for case in ("rm_lora", "rm_lora_trl"):  # same settings on both sides
        assert rows[case]["steps"] == 2 and rows[case]["s_per_step"] > 0 and "peak_gpu_mem_gib" in rows[case]
        assert {k: rows[case][k] for k in ("lora_r", "lora_alpha", "lora_dropout", "bf16", "batch_size")} == \
            {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "bf16": True, "batch_size": 8}
    assert rows["rm_score"]["rows"] == 32 and rows["rm_score"]["model"] == "rm_lora"
    assert rows["rm_score"]["model_device"] == "cpu" and rows["rm_score"]["finite"]


def test_gpu_check_script_parses_selects_cases_and_skips_gpu_ones_in_a_dry_run(tmp_path):
    import subprocess
    import sys

    script = str(ROOT / "bench" / "gpu_check.sh")
    subprocess.run(["bash", "-n", script], check=True)
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(tmp_path), RM_DIR=str(tmp_path / "rm"))
    proc = subprocess.run(["bash", script, "--dry-run", "--cases", "ppo,rm_nothing"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [json.loads(x) for x in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert [x["case"] for x in lines] == ["versions", "ppo_single", "ppo_fsdp", "ppo_fsdp_cli", "ppo_zero2", "ppo_zero3"]
    assert all(x["ok"] is None and x["skipped"].startswith("dry-run") for x in lines[1:])


def test_a_checkpoint_from_before_newer_options_resumes(tmp_path, monkeypatch):
    """A checkpoint's config written before an option existed resumes with that option's default."""
    write_jsonl(tmp_path / "train.jsonl", EXAMPLE.make_pairs(64, seed=7))
    kw = dict(eval_file=None, max_steps=4, per_device_train_batch_size=16, save_steps=2, logging_steps=1)
    model, tok = tiny(seed=4)
    _train_interrupted(monkeypatch, config(tmp_path, output_dir=str(tmp_path / "cut"), **kw), model, tok, at=3)
    info_path = next((tmp_path / "cut.partial" / "checkpoints").iterdir()) / "run.json"
    info = json.loads(info_path.read_text())
    for key in ("device", "use_peft", "lora_r", "gradient_checkpointing", "attn_implementation", "dataset_name",
                "dataset_test_split"):
        del info["config"][key]
    info_path.write_text(json.dumps(info))
    resumed = train_reward_model(config(tmp_path, output_dir=str(tmp_path / "cut"), resume=True, **kw),
                                 model=tiny(seed=4)[0], tokenizer=tok)
    assert resumed.steps == 4


# --------------------------------------------------------------------------------------------
# Bootstrap heads (issue 27): each head trains on its own resample of the pairs
# --------------------------------------------------------------------------------------------
def test_bootstrap_weights_are_seeded_multinomial_counts_one_resample_per_head():
    from rewardlab.reward_model.loss import bootstrap_weights

    w = bootstrap_weights(200, 3, seed=5)
    assert w.shape == (200, 3) and w.dtype == torch.float32
    assert torch.equal(w, bootstrap_weights(200, 3, seed=5))  # deterministic
    assert not torch.equal(w, bootstrap_weights(200, 3, seed=6))
    assert torch.equal(w, w.round()) and (w >= 0).all()
    assert w.sum(0).tolist() == [200.0] * 3  # each head's resample holds exactly N pairs
    assert not torch.equal(w[:, 0], w[:, 1]) and not torch.equal(w[:, 1], w[:, 2])  # a resample per head
    drawn = (w > 0).float().mean(0)  # about 1 − 1/e of the rows appear in a resample
    assert ((drawn > 0.55) & (drawn < 0.72)).all(), drawn
    # torch's global generator (dropout's) is neither used nor moved
    state = torch.get_rng_state()
    bootstrap_weights(50, 2, seed=0)
    assert torch.equal(state, torch.get_rng_state())


def test_bootstrap_loss_of_each_head_is_its_weighted_mean_by_hand():
    import math

    from rewardlab.reward_model.loss import bradley_terry_loss, centering_penalty, reward_model_loss

    chosen = torch.tensor([[1.0, 0.5], [0.0, -1.0]], dtype=torch.float64)  # (B=2, H=2)
    rejected = torch.tensor([[0.0, 0.5], [1.0, 1.0]], dtype=torch.float64)
    weights = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)  # head 0 drew pair 0 twice, head 1 pair 1 once

    def nll(d):
        return math.log1p(math.exp(-d))  # −log σ(d)

    # head 0: (2·nll(1) + 0·nll(−1)) / 2; head 1: (0·nll(0) + 1·nll(−2)) / 2; the loss is their mean
    head0, head1 = (2 * nll(1.0)) / 2, nll(-2.0) / 2
    assert bradley_terry_loss(chosen, rejected, weights=weights).item() == pytest.approx((head0 + head1) / 2, rel=1e-12)
    # margin m = 0.5 and label smoothing ε = 0.1, weighted the same way
    eps, m = 0.1, 0.5

    def smoothed(d):
        return (1 - eps) * nll(d - m) + eps * nll(-(d - m))

    by_hand = ((2 * smoothed(1.0)) / 2 + smoothed(-2.0) / 2) / 2
    got = bradley_terry_loss(chosen, rejected, torch.tensor([m, m]), eps, weights=weights).item()
    assert got == pytest.approx(by_hand, rel=1e-12)
    # centring: head 0 (2·(1+0)²)/2, head 1 (1·(−1+1)²)/2
    assert centering_penalty(chosen, rejected, weights).item() == pytest.approx((2 * 1.0 / 2 + 0.0) / 2, rel=1e-12)
    total = reward_model_loss(chosen, rejected, None, 0.0, 0.01, weights=weights).item()
    assert total == pytest.approx((head0 + head1) / 2 + 0.01 * 0.5, rel=1e-12)
    # weights of one are bit for bit the unweighted loss, and no weights the loss as before
    g = torch.Generator().manual_seed(0)
    c, r = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    assert torch.equal(reward_model_loss(c, r, None, 0.1, 0.01, weights=torch.ones(8, 3)),
                       reward_model_loss(c, r, None, 0.1, 0.01))
    d = c - r
    before = ((1 - 0.1) * -torch.nn.functional.logsigmoid(d) - 0.1 * torch.nn.functional.logsigmoid(-d)).mean()
    assert torch.equal(reward_model_loss(c, r, None, 0.1, 0.01), before + 0.01 * ((c + r) ** 2).mean())
    with pytest.raises(ValueError, match="weights must be"):
        bradley_terry_loss(c, r, weights=torch.ones(8, 2))


def _record_loss_weights(monkeypatch):
    import rewardlab.reward_model.train as train_mod

    seen, real_loss = [], train_mod.reward_model_loss

    def recording(*args, **kwargs):
        seen.append(kwargs.get("weights"))
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_mod, "reward_model_loss", recording)
    return seen


def test_bootstrap_off_is_the_run_without_the_flag_and_passes_no_weights(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    write_jsonl(tmp_path / "train.jsonl", EXAMPLE.make_pairs(48, seed=3))
    seen = _record_loss_weights(monkeypatch)
    kw = dict(eval_file=None, num_heads=2, max_steps=3, per_device_train_batch_size=16)
    absent = train_reward_model(config(tmp_path, output_dir=str(tmp_path / "absent"), **kw), model=tiny(2)[0],
                                tokenizer=tiny()[1])
    assert seen and all(w is None for w in seen)
    off = train_reward_model(config(tmp_path, output_dir=str(tmp_path / "off"), bootstrap=False, **kw),
                             model=tiny(2)[0], tokenizer=tiny()[1])
    a, b = load_file(tmp_path / "absent" / "model.safetensors"), load_file(tmp_path / "off" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert absent.metrics["rm/loss"] == off.metrics["rm/loss"]
    assert absent.metadata.ensemble is None and "ensemble" not in absent.metadata.to_dict()
    assert "bootstrap" not in absent.metadata.extra


def test_bootstrap_run_weights_each_pair_by_its_counts_and_records_the_ensemble(tmp_path, monkeypatch):
    from rewardlab.reward.pipeline import RewardPipeline
    from rewardlab.reward_model.loss import bootstrap_weights

    write_jsonl(tmp_path / "train.jsonl", EXAMPLE.make_pairs(48, seed=3))
    seen = _record_loss_weights(monkeypatch)
    # one epoch: 3 micro-batches of 16 pairs, accumulated 3 to a step
    res = train_reward_model(config(tmp_path, eval_file=None, num_heads=3, bootstrap=True, seed=7, num_train_epochs=1,
                                    per_device_train_batch_size=16, gradient_accumulation_steps=3),
                             model=tiny(3)[0], tokenizer=tiny()[1])
    assert res.steps == 1 and len(seen) == 3 and all(w.shape == (16, 3) for w in seen)
    expected = bootstrap_weights(48, 3, seed=7)
    # every pair once in the epoch, with its own row of counts: the sums are each head's resample size
    assert torch.stack(seen).sum((0, 1)).tolist() == expected.sum(0).tolist() == [48.0] * 3
    assert sorted(map(tuple, torch.cat(seen).tolist())) == sorted(map(tuple, expected.tolist()))
    meta = read_metadata(RewardModel.from_pretrained(res.output_dir).model.config)
    assert meta == res.metadata and meta.ensemble == "bootstrap" and meta.num_heads == 3
    assert meta.semantics == "bradley_terry" and meta.extra["bootstrap"] == {"weights": "multinomial", "seed": 7}
    # the heads read as BT ensemble members: mean, min and uwo all apply
    rm = RewardModel.from_pretrained(res.output_dir)
    logits = rm.score_texts(["t2 t3 "] * 2, ["t1 t1 t4", "t4 t5 t6"])  # (2, 3)
    for spec in ("mean", "min", "uwo(lam=0.5)"):
        RewardPipeline.from_spec(spec, semantics=rm.semantics)
    assert rm.semantics == "bradley_terry" and logits.shape == (2, 3)


def test_bootstrap_ctrl_c_then_resume_is_bitwise_exact(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from rewardlab.tracking import read_metrics

    write_jsonl(tmp_path / "train.jsonl", EXAMPLE.make_pairs(64, seed=7))
    kw = {**RESUME_KW, "num_heads": 3, "bootstrap": True, "seed": 3}
    whole = train_reward_model(config(tmp_path, output_dir=str(tmp_path / "whole"), **kw), model=tiny(3, seed=4)[0],
                               tokenizer=tiny()[1])
    out = tmp_path / "cut"  # interrupted in micro-batch 6: the second of step 3, after the step-2 checkpoint
    _train_interrupted(monkeypatch, config(tmp_path, output_dir=str(out), **kw), tiny(3, seed=4)[0], tiny()[1], at=6)
    resumed = train_reward_model(config(tmp_path, output_dir=str(out), resume=True, **kw), model=tiny(3, seed=9)[0],
                                 tokenizer=tiny()[1])
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _comparable(read_metrics(out)) == _comparable(read_metrics(tmp_path / "whole"))
    assert resumed.metadata.ensemble == whole.metadata.ensemble == "bootstrap"
    # bootstrap cannot be switched on or off by a resume
    with pytest.raises(RewardlabError, match="bootstrap"):
        _interrupted_then(tmp_path, monkeypatch, kw)


def _interrupted_then(tmp_path, monkeypatch, kw):
    out = tmp_path / "switch"
    _train_interrupted(monkeypatch, config(tmp_path, output_dir=str(out), **kw), tiny(3, seed=4)[0], tiny()[1], at=5)
    train_reward_model(config(tmp_path, output_dir=str(out), resume=True, **{**kw, "bootstrap": False}),
                       model=tiny(3, seed=4)[0], tokenizer=tiny()[1])


def test_metadata_ensemble_round_trips_and_older_metadata_reads():
    from rewardlab.reward.metadata import RewardModelMetadata

    meta = RewardModelMetadata(semantics="bradley_terry", num_heads=3, ensemble="bootstrap")
    assert RewardModelMetadata.from_dict(meta.to_dict()) == meta
    old = {"semantics": "bradley_terry", "num_heads": 2, "loss": "bradley_terry", "temperature": None,
           "reward_mean": 0.1, "reward_std": 1.0, "extra": {}}  # written before the field existed
    assert RewardModelMetadata.from_dict(old).ensemble is None
    assert RewardModelMetadata.from_dict(old).to_dict() == old  # and written back the same
    with pytest.raises(ValueError, match="unknown ensemble"):
        RewardModelMetadata(semantics="bradley_terry", num_heads=3, ensemble="bagging")
    with pytest.raises(ValueError, match="needs bradley_terry heads and num_heads ≥ 2"):
        RewardModelMetadata(semantics="classifier", num_heads=2, ensemble="bootstrap")


def _train_interrupted(monkeypatch, cfg, model, tokenizer, at: int) -> None:
    """Train until the loss of micro-batch ``at`` raises KeyboardInterrupt (a Ctrl-C mid-run), as a user's
    interrupted run ends; the real loss is restored afterwards."""
    import rewardlab.reward_model.train as train_mod

    real_loss, calls = train_mod.reward_model_loss, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_mod, "reward_model_loss", interrupted)
    with pytest.raises((RunInterrupted, KeyboardInterrupt)):
        train_reward_model(cfg, model=model, tokenizer=tokenizer)
    monkeypatch.setattr(train_mod, "reward_model_loss", real_loss)
