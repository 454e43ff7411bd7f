"""The over-optimisation alarm: hand-computed signals, synthetic metric streams, exact resume, and
the trainer's early stop (it keeps the policy that produced the alarming rollout)."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

from rewardlab.errors import RewardlabError
from rewardlab.ppo.alarm import (
    SIGNALS,
    AlarmSignals,
    OveroptimisationAlarm,
    alarm_signals,
    first_trigger,
    scaled_signals,
)
from rewardlab.ppo.config import AlarmConfig, PPOConfig
from tests.test_ppo_knobs import make


def stream(proxy, kl, std=None, length=None):
    n = len(proxy)
    std = std or [1.0] * n
    length = length or [4.0] * n
    return [AlarmSignals(proxy=p, kl=k, reward_std=s, length=L) for p, k, s, L in zip(proxy, kl, std, length, strict=True)]


def run(signals, **cfg):
    alarm = OveroptimisationAlarm(AlarmConfig(**cfg))
    return alarm, [alarm.update(s) for s in signals]


def test_returns_signal_by_hand():
    # No smoothing: √KL = 0, 1, 2, 3, 4; proxy gains per √KL 2, 2, 1, 0.5 → returns 1 − slope/best after warm-up.
    signals = stream([0.0, 2.0, 4.0, 5.0, 5.5], [0.0, 1.0, 4.0, 9.0, 16.0])
    _, out = run(signals, smoothing=0.0, warmup_updates=2)
    assert [o["alarm/returns"] for o in out] == pytest.approx([0.0, 0.0, 0.0, 0.5, 0.75])
    assert [o["alarm/score"] for o in out] == pytest.approx([0.0, 0.0, 0.0, 1.0, 1.5])
    assert [o["alarm/triggered"] for o in out] == [0.0, 0.0, 0.0, 1.0, 1.0]


def test_smoothing_is_an_ema_of_proxy_and_sqrt_kl():
    # a = 0.5: proxy EMA 0, 1, 2.5; √KL EMA 0, 0.5, 1.25 → slopes 2, 2 (the second after warm-up 0: returns 0).
    signals = stream([0.0, 2.0, 4.0], [0.0, 1.0, 4.0])
    _, out = run(signals, smoothing=0.5, warmup_updates=0)
    assert out[2]["alarm/returns"] == pytest.approx(0.0)


def test_variance_length_saturation_disagreement_by_hand():
    alarm = OveroptimisationAlarm(AlarmConfig(smoothing=0.0))
    alarm.update(AlarmSignals(proxy=0.0, kl=0.0, reward_std=2.0, length=4.0))
    out = alarm.update(AlarmSignals(proxy=0.1, kl=0.01, reward_std=0.5, length=7.0, saturated_frac=0.2, head_corr=0.7))
    assert out["alarm/variance"] == pytest.approx(0.75)
    assert out["alarm/length"] == pytest.approx(0.75)
    assert out["alarm/saturation"] == pytest.approx(0.2)
    assert out["alarm/disagreement"] == pytest.approx(0.3)
    # score: the largest signal over its threshold (defaults 0.8, 0.5, 0.5, 0.5) = length 0.75 / 0.5
    assert out["alarm/score"] == pytest.approx(1.5)


def test_a_reward_saturated_from_the_start_is_not_an_alarm():
    # Only a rise of the saturated fraction counts (an uncentred sigmoid of an offset reward saturates from update 1).
    alarm = OveroptimisationAlarm(AlarmConfig(smoothing=0.0))
    outs = [alarm.update(AlarmSignals(proxy=0.0, kl=0.0, reward_std=1.0, length=4.0, saturated_frac=f)) for f in (0.9, 0.9, 1.0)]
    assert [o["alarm/saturation"] for o in outs] == pytest.approx([0.0, 0.0, 0.1])
    assert alarm.fired_at is None


def test_a_signal_switched_off_does_not_count():
    alarm = OveroptimisationAlarm(AlarmConfig(smoothing=0.0, length_threshold=None))
    alarm.update(AlarmSignals(proxy=0.0, kl=0.0, reward_std=1.0, length=4.0))
    out = alarm.update(AlarmSignals(proxy=0.0, kl=0.0, reward_std=1.0, length=40.0))
    assert out["alarm/length"] == pytest.approx(9.0) and out["alarm/score"] == 0.0


# ------------------------------------------------------------------ uncertainty: the heads' spread
def _signals(proxy, ref=None, offsets=None, from_models=True):
    b = len(proxy)
    return alarm_signals(torch.tensor(proxy), {}, torch.zeros(b), torch.full((b,), 4.0),
                         ref_proxy=None if ref is None else torch.tensor(ref), head_offsets=offsets, from_models=from_models)


def test_uncertainty_against_reference_samples_of_the_same_prompts_by_hand():
    # References (B=2, K=1, H=2) [[0, 0]], [[2, 0]]: head means (1, 0); shifted [[-1, 0], [1, 0]] → std 0.5, 0.5.
    # Policy [[1, 3], [2, 2]] shifted by (1, 0): [[0, 3], [1, 2]] → std 1.5, 0.5 → spread 1.0; rise 1.0 / 0.5 − 1 = 1.
    s = _signals([[1.0, 3.0], [2.0, 2.0]], ref=[[[0.0, 0.0]], [[2.0, 0.0]]])
    assert s.ref_head_spread == pytest.approx(0.5) and s.head_spread == pytest.approx(1.0)
    out = OveroptimisationAlarm(AlarmConfig(smoothing=0.0)).update(s)
    assert out["alarm/uncertainty"] == pytest.approx(1.0)
    assert out["alarm/score"] == pytest.approx(2.0)  # 1.0 over the default level 0.5; every other signal is 0
    assert AlarmConfig().uncertainty_threshold == 0.5


def test_uncertainty_without_references_is_against_the_first_rollout():
    # Update 0: [[0, 2], [2, 2]], head means (1, 2) → shifted [[-1, 0], [1, 0]] → spread 0.5, the baseline.
    # Update 1: [[3, 2], [3, 2]] shifted by update 0's means: [[2, 0], [2, 0]] → spread 1.0 → rise 1.0 (head 0 drifted
    # up alone; shifted by its own means the spread would be 0).
    alarm = OveroptimisationAlarm(AlarmConfig(smoothing=0.0))
    first = _signals([[0.0, 2.0], [2.0, 2.0]])
    assert first.head_spread == pytest.approx(0.5) and first.ref_head_spread is None
    assert alarm.update(first)["alarm/uncertainty"] == 0.0
    assert alarm.head_offsets == pytest.approx((1.0, 2.0))
    second = _signals([[3.0, 2.0], [3.0, 2.0]], offsets=alarm.head_offsets)
    assert second.head_spread == pytest.approx(1.0)
    assert alarm.update(second)["alarm/uncertainty"] == pytest.approx(1.0)
    # Smoothed like the other signals: a = 0.5 → spreads 0.5, 0.75 → rise 0.5.
    smooth = OveroptimisationAlarm(AlarmConfig(smoothing=0.5))
    smooth.update(first)
    assert smooth.update(second)["alarm/uncertainty"] == pytest.approx(0.5)


def test_uncertainty_needs_several_heads_of_a_reward_model():
    one_head = _signals([[1.0], [3.0]])
    rules = _signals([[1.0, 3.0], [2.0, 2.0]], from_models=False)  # a rule-only run's columns are not heads
    for s in (one_head, rules):
        assert s.head_spread is None
        alarm = OveroptimisationAlarm(AlarmConfig(smoothing=0.0))
        assert [alarm.update(s)["alarm/uncertainty"] for _ in range(2)] == [0.0, 0.0]
        assert alarm.head_offsets is None


def test_a_narrowing_spread_is_no_alarm_and_nan_rows_are_left_out():
    alarm = OveroptimisationAlarm(AlarmConfig(smoothing=0.0))
    alarm.update(_signals([[0.0, 2.0], [2.0, 2.0], [math.nan, 1.0]]))  # the NaN row is dropped: spread 0.5
    assert alarm.state["spread0"] == pytest.approx(0.5)
    assert alarm.update(_signals([[1.0, 2.0], [1.0, 2.0]], offsets=alarm.head_offsets))["alarm/uncertainty"] == 0.0


def _uncertain_stream(n: int):
    """Gao stream plus two heads whose spread grows, against references whose spread stays put."""
    out = []
    for t, s in enumerate(_gao_stream(n, saturating=True)):
        out.append(AlarmSignals(proxy=s.proxy, kl=s.kl, reward_std=s.reward_std, length=s.length,
                                head_spread=0.4 + 0.05 * t, ref_head_spread=0.4 + 0.01 * (t % 3),
                                head_means=(0.1 * t, -0.1 * t)))
    return out


def test_uncertainty_state_resumes_exactly_and_old_states_load():
    signals = _uncertain_stream(12)
    _, straight = run(signals)
    assert straight[-1]["alarm/uncertainty"] > 0.5
    first = OveroptimisationAlarm(AlarmConfig())
    for s in signals[:5]:
        first.update(s)
    second = OveroptimisationAlarm(AlarmConfig())
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert [second.update(s) for s in signals[5:]] == straight[5:]
    # A checkpoint from before the signal: its state lacks the uncertainty keys; the signal starts from there.
    old = {k: v for k, v in first.state_dict().items() if k not in ("spread", "ref_spread", "spread0", "head_offsets")}
    third = OveroptimisationAlarm(AlarmConfig())
    third.load_state_dict(old)
    assert third.update(signals[5])["alarm/uncertainty"] >= 0.0 and third.head_offsets == signals[5].head_means


def test_scaled_signals_replay_the_score():
    _, out = run(_uncertain_stream(12))
    rows = [{"update": i + 1, **o} for i, o in enumerate(out)]
    scaled = scaled_signals(rows, AlarmConfig())
    assert set(scaled) == set(SIGNALS)
    assert [max(v[i] for v in scaled.values()) for i in range(12)] == [o["alarm/score"] for o in out]
    off = scaled_signals(rows, AlarmConfig(length_threshold=None))
    assert "length" not in off
    old_rows = [{k: v for k, v in r.items() if k != "alarm/uncertainty"} for r in rows]
    assert "uncertainty" not in scaled_signals(old_rows, AlarmConfig())  # a run from before the signal


def _gao_stream(n: int, saturating: bool):
    """√KL grows linearly; the proxy grows linearly (steady) or flattens like 3·(1 − e^{−d}) (over-optimising)."""
    d = [0.25 * t for t in range(n)]
    proxy = [3 * (1 - math.exp(-x)) if saturating else 0.8 * x for x in d]
    return stream(proxy, [x * x for x in d])


def test_rising_proxy_with_flattening_slope_fires():
    alarm, out = run(_gao_stream(24, saturating=True))
    assert alarm.fired_at is not None and 3 <= alarm.fired_at < 24
    assert max(o["alarm/score"] for o in out) >= 1.0


def test_steady_improvement_does_not_fire():
    alarm, out = run(_gao_stream(24, saturating=False))
    assert alarm.fired_at is None
    assert max(o["alarm/score"] for o in out) < 0.05


def test_a_converged_run_does_not_fire():
    # KL and proxy settle: no √KL growth, so diminishing returns are not counted (not over-optimisation).
    d = [min(0.3 * t, 1.5) for t in range(30)]
    alarm, _ = run(stream([2 * x for x in d], [x * x for x in d]))
    assert alarm.fired_at is None


def test_state_resumes_exactly():
    signals = _gao_stream(20, saturating=True)
    _, straight = run(signals)
    first = OveroptimisationAlarm(AlarmConfig())
    for s in signals[:9]:
        first.update(s)
    state = json.loads(json.dumps(first.state_dict()))  # it goes through trainer_state.json
    second = OveroptimisationAlarm(AlarmConfig())
    second.load_state_dict(state)
    assert [second.update(s) for s in signals[9:]] == straight[9:]


def test_first_trigger_reads_logged_metrics():
    rows = [{"update": 1, "alarm/triggered": 0.0}, {"update": 2, "alarm/triggered": 0.0}, {"update": 3, "alarm/triggered": 1.0}]
    assert first_trigger(rows) == 2
    assert first_trigger(rows[:2]) is None


@pytest.mark.parametrize("key,value", [("alarm.smoothing", 1.0), ("alarm.returns_threshold", 0.0),
                                       ("alarm.uncertainty_threshold", -0.5),
                                       ("alarm.warmup_updates", -1), ("alarm.min_kl_growth", -0.1)])
def test_bad_alarm_settings_are_refused(key, value):
    with pytest.raises(RewardlabError, match=key.replace(".", r"\.")):
        PPOConfig.from_dict({key: value})


# ------------------------------------------------------------------ in the trainer
TRIGGER_SOON = {"alarm.smoothing": 0.0, "alarm.returns_threshold": None, "alarm.saturation_threshold": None,
                "alarm.variance_threshold": 1e-6, "alarm.length_threshold": 1e-6, "stop_token": "eos"}


def test_trainer_logs_the_alarm_every_update(tmp_path):
    history = make(tmp_path, total_episodes=24).train()
    for m in history:
        assert {"alarm/score", "alarm/returns", "alarm/variance", "alarm/length", "alarm/saturation",
                "alarm/uncertainty", "alarm/triggered"} <= set(m)
        assert m["alarm/uncertainty"] == 0.0  # a rule reward: no heads
        assert "alarm/stopped" not in m
    lines = [json.loads(x) for x in open(tmp_path / "run" / "metrics.jsonl", encoding="utf-8")]
    assert all("alarm/score" in x for x in lines)


def test_early_stop_keeps_the_policy_that_raised_the_alarm(tmp_path, capsys):
    # Without early stop: where does the alarm first trigger?
    logged = make(tmp_path / "a", total_episodes=64, **TRIGGER_SOON).train()
    k = first_trigger([{"update": i + 1, **m} for i, m in enumerate(logged)])
    assert k is not None and 1 <= k < 8
    # With early stop: the run stops before optimising on that rollout ...
    trainer = make(tmp_path / "b", total_episodes=64, **TRIGGER_SOON, **{"alarm.early_stop": True})
    history = trainer.train()
    assert trainer.update == k and len(history) == k + 1
    assert history[-1]["alarm/stopped"] == 1.0 and history[-1]["alarm/triggered"] == 1.0
    assert "ppo/loss/total" not in history[-1]
    record = json.loads((tmp_path / "b" / "run" / "alarm_stop.json").read_text(encoding="utf-8"))
    assert record["policy_after_updates"] == k and record["stopped_before_update"] == k + 1
    assert f"kept the policy after {k} updates" in capsys.readouterr().err
    # ... and its final policy is the policy after k updates of the same run.
    reference = make(tmp_path / "c", total_episodes=8 * k, **TRIGGER_SOON)
    reference.train()
    ours = load_file(os.path.join(tmp_path, "b", "run", "policy", "model.safetensors"))
    theirs = load_file(os.path.join(tmp_path, "c", "run", "policy", "model.safetensors"))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[n], theirs[n]) for n in ours)


def test_alarm_state_is_checkpointed_and_resumed(tmp_path):
    varying = {"stop_token": "eos"}  # lengths vary, so the smoothed signals carry state across the resume
    straight = make(tmp_path / "a", total_episodes=32, **varying).train()
    make(tmp_path / "b", total_episodes=16, **varying).train()
    resumed = make(tmp_path / "b", total_episodes=32, resume=True, **varying).train()
    assert any(m["alarm/length"] > 0 for m in resumed)
    for a, b in zip(straight[2:], resumed, strict=True):
        assert {k: v for k, v in a.items() if k.startswith("alarm/")} == {k: v for k, v in b.items() if k.startswith("alarm/")}


def _two_head_model(folder):
    from rewardlab.reward.metadata import RewardModelMetadata, write_metadata
    from rewardlab.tiny import build_model, build_tokenizer, tiny_config

    tok = build_tokenizer(32, padding_side="left")
    config = tiny_config("gpt2", tok, hidden=16, layers=1, num_labels=2)
    write_metadata(config, RewardModelMetadata(semantics="bradley_terry", num_heads=2))
    build_model("sequence_classification", config, seed=4).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("pipeline,refs", [("mean|center", True), ("mean|whiten", False)])
def test_trainer_feeds_the_heads_on_reference_samples(tmp_path, monkeypatch, pipeline, refs):
    import rewardlab.ppo.trainer as trainer_module

    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return alarm_signals(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "alarm_signals", spy)
    trainer = make(tmp_path, reward_fn=None, reward_model_path=_two_head_model(tmp_path / "rm"), reward_pipeline=pipeline,
                   num_reference_samples=3, total_episodes=16)
    history = trainer.train()
    assert all(kw["from_models"] for kw in seen)
    if refs:  # (B, K, H): every row's prompt's K references, on both heads, as the cache keeps them
        assert all(kw["ref_proxy"].shape == (8, 3, 2) for kw in seen)
        cached = {tuple(r) for v in trainer.reference_rewards.state_dict().values() for r in v.tolist()}
        assert all({tuple(r) for r in kw["ref_proxy"].reshape(-1, 2).tolist()} <= cached for kw in seen)
    else:  # no references kept: the first rollout's head means are the shifts from the second update on
        assert all(kw["ref_proxy"] is None for kw in seen)
        assert seen[0]["head_offsets"] is None and seen[1]["head_offsets"] == trainer.alarm.head_offsets
    assert all("alarm/uncertainty" in m for m in history)
