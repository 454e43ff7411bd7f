"""Tests for `rewardlab score` (rewardlab.reward.commands): end to end on a tiny saved reward model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from rewardlab.cli import main
from rewardlab.reward.metadata import RewardModelMetadata, write_metadata
from rewardlab.reward.scoring import RewardModel
from rewardlab.tiny import build_model, build_tokenizer, tiny_config

PROMPTS = ["t1 t2 t3", "t4 t5"]


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    """A 2-head Bradley-Terry GPT-2 reward model saved with rewardlab metadata."""
    folder = tmp_path_factory.mktemp("rm")
    tok = build_tokenizer(64)
    model = build_model("sequence_classification", tiny_config("gpt2", tok, num_labels=2), seed=3)
    write_metadata(model.config, RewardModelMetadata(semantics="bradley_terry", num_heads=2))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _inputs(tmp_path):
    rows = [
        {"prompt": PROMPTS[0], "response": " t10 t11", "id": "a"},
        {"prompt": PROMPTS[1], "response": " t12"},
        {"prompt": PROMPTS[0], "response": " t13 t14 t15"},
    ]
    return rows, _write(tmp_path / "in.jsonl", rows)


def _refs(tmp_path, k=3):
    rows = [{"prompt": p, "response": f" t{20 + 3 * j + i}"} for i, p in enumerate(PROMPTS) for j in range(k)]
    return rows, _write(tmp_path / "refs.jsonl", rows)


def _read(path):
    return [json.loads(line) for line in open(path)]


def test_score_with_references_end_to_end(rm_dir, tmp_path, capsys):
    rows, inp = _inputs(tmp_path)
    ref_rows, refs = _refs(tmp_path)
    out = tmp_path / "out" / "scored.jsonl"
    code = main(
        [
            "score",
            "--reward-model",
            rm_dir,
            "--pipeline",
            "mean|center|logsigmoid",
            "--input",
            inp,
            "--references",
            refs,
            "--output",
            str(out),
            "--batch-size",
            "2",
        ]
    )
    assert code == 0
    written = _read(out)
    assert [{k: r[k] for k in rows[i]} for i, r in enumerate(written)] == rows  # input fields kept, in order
    # Independent computation: the logits straight from the model, the maths written out by hand.
    rm = RewardModel.from_pretrained(rm_dir)
    logits = rm.score_texts([r["prompt"] for r in rows], [r["response"] for r in rows])
    ref = rm.score_texts([r["prompt"] for r in ref_rows], [r["response"] for r in ref_rows])
    torch.testing.assert_close(torch.tensor([r["logits"] for r in written]), logits, atol=1e-5, rtol=0)
    ref_mean = {
        p: ref[[i for i, r in enumerate(ref_rows) if r["prompt"] == p]].mean(-1).mean() for p in PROMPTS
    }
    expected = F.logsigmoid(logits.mean(-1) - torch.stack([ref_mean[r["prompt"]] for r in rows]))
    torch.testing.assert_close(torch.tensor([r["score"] for r in written]), expected, atol=1e-5, rtol=0)
    stdout = capsys.readouterr().out
    assert "3/3 rows scored" in stdout and "mean|center|logsigmoid" in stdout and "K=3" in stdout
    assert "reward/final/mean" in stdout and "reward/raw/std" in stdout
    assert os.listdir(out.parent) == ["scored.jsonl"]  # atomic write leaves no temporary file


def test_messages_rows(rm_dir, tmp_path):
    conv = [{"role": "user", "content": "t1 t2"}, {"role": "assistant", "content": "t3 t4"}]
    inp = _write(tmp_path / "in.jsonl", [{"messages": conv}, {"prompt": "t5", "response": " t6"}])
    out = tmp_path / "o.jsonl"
    assert (
        main(
            [
                "score",
                "--reward-model",
                rm_dir,
                "--pipeline",
                "head(k=1)",
                "--input",
                inp,
                "--output",
                str(out),
            ]
        )
        == 0
    )
    written = _read(out)
    rm = RewardModel.from_pretrained(rm_dir)
    torch.testing.assert_close(
        torch.tensor(written[0]["logits"]), rm.score_messages([conv])[0], atol=1e-5, rtol=0
    )
    assert written[1]["score"] == pytest.approx(rm.score_texts(["t5"], [" t6"])[0, 1].item(), abs=1e-5)


def test_centred_pipeline_without_references_errors(rm_dir, tmp_path, capsys):
    _, inp = _inputs(tmp_path)
    code = main(
        [
            "score",
            "--reward-model",
            rm_dir,
            "--pipeline",
            "mean|lsc(q=0.5)",
            "--input",
            inp,
            "--output",
            str(tmp_path / "o.jsonl"),
        ]
    )
    assert code == 2
    assert "pass --references FILE" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_prompt_without_references_errors(rm_dir, tmp_path, capsys):
    _, inp = _inputs(tmp_path)
    refs = _write(tmp_path / "refs.jsonl", [{"prompt": PROMPTS[0], "response": " t30"}])
    code = main(
        [
            "score",
            "--reward-model",
            rm_dir,
            "--pipeline",
            "mean|center",
            "--input",
            inp,
            "--references",
            refs,
            "--output",
            str(tmp_path / "o.jsonl"),
        ]
    )
    assert code == 2
    assert (
        "1 input row(s) have no reference samples for their prompt (first: 't4 t5')"
        in capsys.readouterr().err
    )


def test_bad_input_row_errors(rm_dir, tmp_path, capsys):
    inp = _write(
        tmp_path / "in.jsonl", [{"prompt": "t1", "response": " t2"}, {"prompt": "t1", "answer": "t2"}]
    )
    code = main(
        [
            "score",
            "--reward-model",
            rm_dir,
            "--pipeline",
            "mean",
            "--input",
            inp,
            "--output",
            str(tmp_path / "o.jsonl"),
        ]
    )
    assert code == 2
    assert (
        "in.jsonl:2 has ['answer', 'prompt']; each row needs string 'prompt' and 'response'"
        in capsys.readouterr().err
    )


def test_unknown_transform_and_missing_model_error(rm_dir, tmp_path, capsys):
    _, inp = _inputs(tmp_path)
    assert (
        main(
            [
                "score",
                "--reward-model",
                rm_dir,
                "--pipeline",
                "mean|bogus",
                "--input",
                inp,
                "--output",
                str(tmp_path / "o.jsonl"),
            ]
        )
        == 2
    )
    assert "unknown transform 'bogus'" in capsys.readouterr().err
    assert (
        main(
            [
                "score",
                "--reward-model",
                str(tmp_path / "none"),
                "--pipeline",
                "mean",
                "--input",
                inp,
                "--output",
                str(tmp_path / "o.jsonl"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_nan_rows_dropped_with_null_score(rm_dir, tmp_path, capsys):
    # A copy of the model whose embedding of t7 is NaN: rows containing t7 give NaN logits.
    rm = RewardModel.from_pretrained(rm_dir)
    with torch.no_grad():
        rm.model.get_input_embeddings().weight[rm.tokenizer.convert_tokens_to_ids("t7")] = float("nan")
    bad_dir = tmp_path / "bad"
    rm.model.save_pretrained(bad_dir)
    rm.tokenizer.save_pretrained(bad_dir)
    inp = _write(
        tmp_path / "in.jsonl", [{"prompt": "t1", "response": " t2"}, {"prompt": "t1", "response": " t7"}]
    )
    args = [
        "score",
        "--reward-model",
        str(bad_dir),
        "--pipeline",
        "mean",
        "--input",
        inp,
        "--output",
        str(tmp_path / "o.jsonl"),
    ]
    assert main(args) == 2
    assert "NaN/inf logits for 1 of 2 rows: [1]" in capsys.readouterr().err
    assert main(args + ["--nan-policy", "drop"]) == 0
    written = _read(tmp_path / "o.jsonl")
    assert written[1]["score"] is None and written[1]["logits"] is None
    assert written[0]["score"] == pytest.approx(sum(written[0]["logits"]) / 2, abs=1e-6)
    assert "dropped       1 row(s)" in capsys.readouterr().out


def test_help_runs_as_a_program():
    proc = subprocess.run(
        [sys.executable, "-m", "rewardlab.cli", "score", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "--references" in proc.stdout and "Centred pipelines" in proc.stdout
