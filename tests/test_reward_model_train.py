"""Reward-model training on tiny models: it learns a known rule, saves metadata, writes files atomically."""

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from rewardlab.errors import RewardlabError
from rewardlab.reward.metadata import read_metadata
from rewardlab.reward.scoring import RewardModel
from rewardlab.reward_model.train import RewardTrainingConfig, train_reward_model
from rewardlab.tiny import build_model, build_tokenizer, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def _example():
    spec = importlib.util.spec_from_file_location("make_tiny_rm_data", ROOT / "examples" / "make_tiny_rm_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


EXAMPLE = _example()


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
    assert {"config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl", "train_config.json"} <= names
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
    with pytest.raises(RewardlabError, match="interrupted run"):
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
    with pytest.raises(KeyboardInterrupt):
        train_reward_model(config(tmp_path, output_dir=str(tmp_path / "cut"), **kw), model=model, tokenizer=tok)
    assert os.listdir(tmp_path / "cut.partial" / "checkpoints") == ["step-0000003"]
    with pytest.raises(RewardlabError, match="--resume continues it"):
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
