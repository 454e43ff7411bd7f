"""Samples tables during PPO (rewardlab.ppo.samples): what samples.jsonl holds, and that drawing them
leaves the training trajectory exactly as it is."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rewardlab.ppo.config import PPOConfig
from rewardlab.ppo.samples import (
    SamplesFile,
    print_samples,
    proxy_reading,
    read_samples,
    resolve_sample_steps,
    sample_prompt_indices,
    table_rows,
)
from rewardlab.reward.metadata import RewardModelMetadata, write_metadata
from rewardlab.tiny import build_model, build_tokenizer, tiny_config

PROMPTS = [{"prompt": " ".join(f"t{(i * 5 + j) % 30}" for j in range(2 + i % 3)), "answer": f"t{i % 30}"}
           for i in range(16)]
FIELDS = {"update", "split", "prompt", "response", "raw", "terms", "score", "raw_reward", "kl", "length", "finished"}


@pytest.fixture(scope="module")
def parts():
    tok = build_tokenizer(48)
    config = tiny_config("gpt2", tok, hidden=32, layers=1, num_labels=2)
    write_metadata(config, RewardModelMetadata(semantics="bradley_terry", num_heads=2))
    return {"tok": tok, "rm": build_model("sequence_classification", config, seed=1)}


def has_t5(prompts, completions, answer, **kw):
    """A rule term that reads a dataset column: 1 when the response holds the row's answer."""
    return [float(a in c.split()) for c, a in zip(completions, answer, strict=True)]


def trainer(parts, out, *, updates: int, eval_dataset=None, **kw):
    from rewardlab.ppo.trainer import PPOTrainer

    policy = build_model("causal_lm", tiny_config("gpt2", parts["tok"], hidden=32, layers=1), seed=0)
    args = PPOConfig(output_dir=str(out), total_episodes=4 * updates, per_device_train_batch_size=4,
                     response_length=4, num_ppo_epochs=1, learning_rate=3e-2, progress_bar=False, seed=2,
                     reward_pipeline="0.8*[rm:mean|lsc(q=0.5)] + 0.2*[fn:has_t5]", num_reference_samples=2,
                     stop_token="eos", **kw)
    return PPOTrainer(args, processing_class=parts["tok"], model=policy, reward_model=parts["rm"],
                      train_dataset=PROMPTS, eval_dataset=eval_dataset, reward_funcs=[has_t5])


def test_samples_jsonl_holds_what_the_config_asked(parts, tmp_path, capsys):
    t = trainer(parts, tmp_path / "run", updates=5, sample_steps=2, num_sample_prompts=3)
    t.train()
    rows = read_samples(tmp_path / "run")
    assert [r["update"] for r in rows] == [2] * 3 + [4] * 3 + [5] * 3  # every 2 updates, and after the last
    assert all(set(r) == FIELDS and r["split"] == "samples" for r in rows)
    by_update = [rows[i:i + 3] for i in (0, 3, 6)]
    prompts = [[r["prompt"] for r in group] for group in by_update]
    assert prompts[0] == prompts[1] == prompts[2]  # the same fixed prompts every time
    idx = sample_prompt_indices(len(PROMPTS), 3, seed=2, first=False)
    assert prompts[0] == [PROMPTS[i]["prompt"] for i in idx]
    for r in rows:
        assert set(r["terms"]) == set(r["raw"]) == {"rm", "has_t5"}
        assert len(r["raw"]["rm"]) == 2 and len(r["raw"]["has_t5"]) == 1  # every head of the reward model
        assert r["raw_reward"] == pytest.approx(sum(r["raw"]["rm"]) / 2)
        assert isinstance(r["response"], str) and 0 < r["length"] <= 4
        assert isinstance(r["finished"], bool) and isinstance(r["kl"], float) and isinstance(r["score"], float)
        # the score is the weighted terms (no penalties configured)
        assert r["score"] == pytest.approx(0.8 * r["terms"]["rm"] + 0.2 * r["terms"]["has_t5"], abs=1e-5)
    assert "samples after update 2" in capsys.readouterr().out  # the table, as plain lines off a terminal


def test_default_sample_steps_is_about_ten_per_run():
    assert resolve_sample_steps(None, 100) == 10
    assert resolve_sample_steps(None, 3) == 1
    assert resolve_sample_steps(0, 100) == 0 and resolve_sample_steps(7, 100) == 7


def test_sampling_and_evaluation_leave_the_trajectory_unchanged(parts, tmp_path):
    """Samples every update and evaluation (before training and after every update) on: the same metrics, the
    same final weights, reference-reward cache and global RNG state after training, as with both off."""
    runs = {}
    for name, kw in (("off", {"sample_steps": 0}),
                     ("on", {"sample_steps": 1, "eval_steps": 1, "eval_before_train": True,
                             "eval_dataset": PROMPTS[:3] + [{"prompt": "t7 t7", "answer": "t1"}]})):
        torch.manual_seed(123)
        history = trainer(parts, tmp_path / name, updates=3, save_steps=1, **kw).train()
        runs[name] = ([{k: v for k, v in m.items() if not k.startswith(("time/", "eval/"))} for m in history],
                      load_file(str(tmp_path / name / "policy" / "model.safetensors")),
                      load_file(str(tmp_path / name / "checkpoints" / "update-3" / "reference_rewards.safetensors")),
                      torch.get_rng_state())
    (h_off, w_off, ref_off, rng_off), (h_on, w_on, ref_on, rng_on) = runs["off"], runs["on"]
    assert h_on == h_off
    assert w_on.keys() == w_off.keys() and all(torch.equal(w_on[k], w_off[k]) for k in w_off)
    # the checkpointed reference-reward cache holds the training prompts' only
    assert ref_on.keys() == ref_off.keys() and all(torch.equal(ref_on[k], ref_off[k]) for k in ref_off)
    assert torch.equal(rng_on, rng_off)
    assert not (tmp_path / "off" / "samples.jsonl").exists() or read_samples(tmp_path / "off") == []
    assert {r["update"] for r in read_samples(tmp_path / "on") if r["split"] == "samples"} == {1, 2, 3}


def test_samples_file_keeps_rows_up_to_the_checkpoint_on_resume(tmp_path):
    f = SamplesFile(tmp_path, resume_update=None)
    f.append([{"update": u, "x": u} for u in (1, 2, 3)])
    SamplesFile(tmp_path, resume_update=2).append([{"update": 3, "x": 30}])
    assert [(r["update"], r["x"]) for r in read_samples(tmp_path)] == [(1, 1), (2, 2), (3, 30)]
    SamplesFile(tmp_path, resume_update=None)  # a new run starts the file afresh
    assert read_samples(tmp_path) == []
    SamplesFile(tmp_path / "x", resume_update=None, enabled=False).append([{"update": 1}])  # other processes
    assert not (tmp_path / "x").exists()


def test_sample_prompts_are_a_fixed_seeded_pick():
    assert sample_prompt_indices(10, 4, seed=0, first=True) == [0, 1, 2, 3]
    assert sample_prompt_indices(3, 4, seed=0, first=True) == [0, 1, 2]
    state = torch.get_rng_state()
    pick = sample_prompt_indices(10, 4, seed=5, first=False)
    assert pick == sample_prompt_indices(10, 4, seed=5, first=False) and len(set(pick)) == 4
    assert torch.equal(state, torch.get_rng_state())  # its own generator


def test_proxy_reading_averages_the_finite_heads():
    got = proxy_reading(torch.tensor([[1.0, 3.0], [2.0, float("nan")], [float("nan"), float("nan")]]))
    assert got[:2].tolist() == [2.0, 2.0] and torch.isnan(got[2])


def test_table_rows_and_plain_print():
    row = {"update": 3, "split": "samples", "prompt": [{"role": "user", "content": "hi there"}], "response": "a " * 40,
           "raw": {"rm": [0.5, None]}, "terms": {"rm": 0.25}, "score": 0.25, "raw_reward": 0.5, "kl": None,
           "length": 40, "finished": False}
    flat = table_rows([row])[0]
    assert flat["prompt"] == "user: hi there" and flat["term/rm"] == 0.25 and json.loads(flat["raw/rm"]) == [0.5, None]
    assert all(isinstance(v, (str, int, float, bool, type(None))) for v in flat.values())
    import io

    buf = io.StringIO()
    print_samples([row], title="samples after update 3", width=20, file=buf)
    text = buf.getvalue()
    assert text.splitlines()[0] == "samples after update 3"
    assert "score 0.25 " in text and "kl -" in text and "(no eos)" in text and "…" in text
