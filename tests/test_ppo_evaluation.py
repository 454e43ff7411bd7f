"""Evaluation during PPO (rewardlab.ppo.evaluation): which prompts evaluate, when, and that every eval/
metric equals a direct computation on the evaluation's own samples."""

from __future__ import annotations

import math

import pytest
import torch

from rewardlab.atomic import write_jsonl
from rewardlab.errors import RewardlabError
from rewardlab.ppo.config import PPOConfig
from rewardlab.ppo.evaluation import eval_metrics, evaluates_after, win_rate
from rewardlab.ppo.prompts import eval_prompt_rows, hold_out
from rewardlab.ppo.samples import ScoredSamples, read_samples
from rewardlab.reward.metadata import RewardModelMetadata, write_metadata
from rewardlab.tiny import build_model, build_tokenizer, tiny_config
from rewardlab.tracking import read_metrics

PROMPTS = [{"prompt": " ".join(f"t{(i * 7 + j) % 30}" for j in range(1 + i % 3)) + f" t{i}", "id": i} for i in range(20)]
EVAL = [{"prompt": p, "id": 100 + i} for i, p in enumerate(["t3 t4", "t9 t9 t1", "t20", "t11 t2 t6 t6", "t0 t5"])]


@pytest.fixture(scope="module")
def parts():
    tok = build_tokenizer(48)
    config = tiny_config("gpt2", tok, hidden=32, layers=1, num_labels=1)
    write_metadata(config, RewardModelMetadata(semantics="bradley_terry", num_heads=1))
    return {"tok": tok, "rm": build_model("sequence_classification", config, seed=1)}


def trainer(parts, out, *, updates: int = 2, train=PROMPTS, eval_dataset=None, **kw):
    from rewardlab.ppo.trainer import PPOTrainer

    policy = build_model("causal_lm", tiny_config("gpt2", parts["tok"], hidden=32, layers=1), seed=0)
    args = PPOConfig(output_dir=str(out), total_episodes=4 * updates, per_device_train_batch_size=4,
                     response_length=5, num_ppo_epochs=1, learning_rate=5e-2, progress_bar=False,
                     reward_pipeline="whiten", stop_token="eos", **kw)
    return PPOTrainer(args, processing_class=parts["tok"], model=policy, reward_model=parts["rm"],
                      train_dataset=train, eval_dataset=eval_dataset)


def test_eval_metrics_equal_a_direct_computation_on_the_eval_samples(parts, tmp_path):
    """eval_dataset in Python, evaluation before training and after every update; samples.jsonl holds every
    evaluation prompt (num_sample_prompts ≥ 5), and each step's eval/ metrics are recomputed from those rows."""
    t = trainer(parts, tmp_path / "run", updates=3, eval_dataset=EVAL, eval_steps=2, eval_before_train=True,
                num_sample_prompts=8, sample_steps=0)
    assert t.eval_prompts.prompts == [r["prompt"] for r in EVAL]
    history = t.train()
    records = {r["step"]: r for r in read_metrics(tmp_path / "run") if "eval/score" in r}
    assert sorted(records) == [0, 2, 3]  # before training, every 2 updates, and after the last
    assert "eval/score" in history[1] and "eval/score" not in history[0]
    rows = [r for r in read_samples(tmp_path / "run") if r["split"] == "eval"]
    for step, record in records.items():
        got = [r for r in rows if r["update"] == step]
        assert [r["prompt"] for r in got] == [r["prompt"] for r in EVAL]
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        wins = [1.0 if r["raw_reward"] > r["reference"]["raw_reward"] else
                0.5 if r["raw_reward"] == r["reference"]["raw_reward"] else 0.0 for r in got]
        direct = {"eval/score": mean([r["score"] for r in got]), "eval/raw_reward": mean([r["raw_reward"] for r in got]),
                  "eval/kl": mean([r["kl"] for r in got]), "eval/length": mean([r["length"] for r in got]),
                  "eval/eos_rate": mean([float(r["finished"]) for r in got]), "eval/win_rate": mean(wins)}
        for key, value in direct.items():
            assert record[key] == pytest.approx(value, rel=1e-6, abs=1e-7), (step, key)
    # The starting policy is the reference and both sample with the same seeds: identical samples.
    assert records[0]["eval/kl"] == 0.0 and records[0]["eval/win_rate"] == 0.5
    assert all(r["response"] == r["reference"]["response"] for r in rows if r["update"] == 0)
    assert any(r["response"] != r["reference"]["response"] for r in rows if r["update"] == 3)  # it trained


def test_eval_fraction_holds_out_prompts_deterministically(parts, tmp_path):
    a = trainer(parts, tmp_path / "a", eval_fraction=0.25)
    b = trainer(parts, tmp_path / "b", eval_fraction=0.25)
    held, kept = a.eval_prompts.prompts, a.prompts.prompts
    assert len(held) == 5 and len(kept) == 15 and held == b.eval_prompts.prompts
    assert not set(held) & set(kept) and sorted(held + kept) == sorted(p["prompt"] for p in PROMPTS)
    assert a.eval_prompts.columns["id"] == [p["id"] for p in PROMPTS if p["prompt"] in held]  # rows stay whole
    # not trained on: every prompt of every update's batch is a kept one
    for update in range(8):
        _, _, rows, _ = a._prompt_batch(update)
        assert {a.prompts.prompts[i] for i in rows} <= set(kept)
    c = trainer(parts, tmp_path / "c", eval_fraction=0.25, seed=7)
    assert c.eval_prompts.prompts != held  # a seeded pick


def test_hold_out_and_its_limits():
    rows = ([f"p{i}" for i in range(10)], {"a": list(range(10))})
    state = torch.get_rng_state()
    (kept, kc), (held, hc) = hold_out(rows, 0.3, seed=1)
    assert torch.equal(state, torch.get_rng_state())
    assert len(held) == 3 and kept == [p for p in rows[0] if p not in held]
    assert hc["a"] == [int(p[1:]) for p in held] and kc["a"] == [int(p[1:]) for p in kept]
    assert hold_out(rows, 0.01, seed=1)[1][0] != []  # at least one
    # a prompt is held out with every row that repeats it, so it is never trained on
    (kept, _), (held, hc) = hold_out((["a", "b", "a", "c", "b", "a"], {"i": list(range(6))}), 0.34, seed=3)
    assert len(set(held)) == 1 and not set(held) & set(kept) and len(held) == ["a", "b", "a", "c", "b", "a"].count(held[0])
    with pytest.raises(RewardlabError, match="leaving none to train on"):
        hold_out((["a", "b"], {}), 0.9, seed=0)


def test_dataset_test_split_is_read(parts, tmp_path):
    path = tmp_path / "prompts.jsonl"
    write_jsonl(path, PROMPTS)
    t = trainer(parts, tmp_path / "run", train=None, dataset_name=str(path), dataset_train_split="train[:16]",
                dataset_test_split="train[16:]")
    assert t.prompts.prompts == [p["prompt"] for p in PROMPTS[:16]]
    assert t.eval_prompts.prompts == [p["prompt"] for p in PROMPTS[16:]]
    assert t.eval_prompts.columns["id"] == [16, 17, 18, 19]
    # eval_dataset wins over the split
    t = trainer(parts, tmp_path / "run2", train=None, dataset_name=str(path), dataset_test_split="train[16:]",
                eval_dataset=EVAL)
    assert t.eval_prompts.prompts == [r["prompt"] for r in EVAL]


def test_dataset_test_split_needs_a_dataset_name(tmp_path):
    d = PPOConfig(dataset_test_split="test").data
    with pytest.raises(RewardlabError, match="dataset_test_split='test' reads a split of data.dataset_name"):
        eval_prompt_rows(d, (["p"], {}), seed=0)
    assert eval_prompt_rows(PPOConfig().data, (["p"], {}), seed=0) == ((["p"], {}), None)


def test_no_eval_prompts_no_evaluation(parts, tmp_path):
    t = trainer(parts, tmp_path / "run", updates=1, eval_before_train=True, sample_steps=0)
    assert t.eval_prompts is None
    t.train()
    assert not any(k.startswith("eval/") for r in read_metrics(tmp_path / "run") for k in r)


def test_win_rate_counts_wins_and_half_ties():
    assert win_rate(torch.tensor([1.0, 2.0, 3.0, 0.0]), torch.tensor([0.0, 2.0, 4.0, -1.0])) == pytest.approx(2.5 / 4)
    assert win_rate(torch.tensor([1.0, float("nan")]), torch.tensor([0.0, 5.0])) == 1.0  # NaN rows left out
    assert math.isnan(win_rate(torch.tensor([float("nan")]), torch.tensor([0.0])))
    with pytest.raises(RewardlabError, match="one of each per prompt"):
        win_rate(torch.zeros(2), torch.zeros(3))


def test_eval_metrics_by_hand():
    def scored(proxy, kl=None):
        n = len(proxy)
        return ScoredSamples(["p"] * n, ["r"] * n, torch.tensor([1.0, 2.0, 3.0][:n]), {}, {}, torch.tensor(proxy),
                             None if kl is None else torch.tensor(kl), torch.tensor([2, 4, 6][:n]),
                             torch.tensor([True, False, True][:n]))

    m = eval_metrics(scored([0.5, float("nan"), 1.5], kl=[0.0, 1.0, 2.0]), scored([0.0, 0.0, 1.5]))
    assert m == pytest.approx({"eval/score": 2.0, "eval/raw_reward": 1.0, "eval/kl": 1.0, "eval/length": 4.0,
                               "eval/eos_rate": 2 / 3, "eval/win_rate": 0.75})


def test_evaluation_schedule():
    assert [u for u in range(1, 8) if evaluates_after(u, eval_steps=3, num_updates=7)] == [3, 6, 7]
    assert [u for u in range(1, 8) if evaluates_after(u, eval_steps=0, num_updates=7)] == [7]
