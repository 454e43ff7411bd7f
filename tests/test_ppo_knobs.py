"""The peers' PPO knobs, wired into the trainer: KL estimator k2, advantage estimators, dual clip,
critic warm-up and learning rate, DAPO's overlong penalty. The maths of each is tested by hand in
tests/test_ops_*.py; these tests check that the trainer runs what the config names."""

from __future__ import annotations

import pytest
import torch

from rewardlab.ops.kl import kl_k1, kl_k2, kl_k3
from rewardlab.ppo.config import PPOConfig
from rewardlab.ppo.trainer import PPOTrainer
from rewardlab.tiny import build_model, build_tokenizer, tiny_config

PROMPTS = [" ".join(f"t{(i * 7 + j) % 20}" for j in range(3 + i % 3)) for i in range(32)]


def zero_reward(prompts, responses):
    return [0.0] * len(responses)


def count_t5(prompts, responses):
    return [r.split().count("t5") / max(1, len(r.split())) for r in responses]


def make(tmp_path, reward_fn=count_t5, resume: bool | str = False, **overrides) -> PPOTrainer:
    tok = build_tokenizer(32, padding_side="left")
    mc = tiny_config("gpt2", tok, hidden=16, layers=1)
    policy, ref = build_model("causal_lm", mc, seed=0), build_model("causal_lm", mc, seed=5)  # π ≠ π_ref: KL > 0
    critic = build_model("sequence_classification", tiny_config("gpt2", tok, hidden=16, layers=1, num_labels=1), seed=1)
    settings = {"response_length": 6, "temperature": 1.0, "batch_size": 8, "per_device_train_batch_size": 8,
                "num_mini_batches": 1, "num_ppo_epochs": 1, "learning_rate": 1e-2, "total_episodes": 16,
                "kl_coef": 0.5, "output_dir": str(tmp_path / "run"), "progress_bar": False, "save_steps": 0,
                "lr_scheduler_type": "constant"}
    settings.update(overrides)
    cfg = PPOConfig.from_dict(settings)
    use_critic = cfg.ppo.advantage_estimator == "gae" and cfg.models.critic == "model"
    return PPOTrainer(cfg, policy=policy, ref_policy=ref, critic=critic if use_critic else None, tokenizer=tok,
                      reward_fn=reward_fn, prompts=PROMPTS, resume=resume)


@pytest.mark.parametrize("name,fn", [("k1", kl_k1), ("k2", kl_k2), ("k3", kl_k3)])
def test_the_configured_kl_estimator_shapes_the_reward(tmp_path, name, fn):
    trainer = make(tmp_path, kl_estimator=name)
    assert trainer.kl_estimator is fn
    seen = []

    def spy(logprobs, ref_logprobs):
        out = fn(logprobs, ref_logprobs)
        seen.append(out)
        return out

    trainer.kl_estimator = spy
    metrics = trainer.step()
    (per_token,) = seen
    mask = (per_token != 0).float()  # padding contributes 0 to every estimator
    expected = -0.5 * (per_token * mask).sum(1).mean().item()
    assert metrics["objective/non_score_reward"] == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert expected < 0


def test_k2_as_a_loss(tmp_path):
    metrics = make(tmp_path, kl_estimator="k2", kl_penalty="loss").step()
    assert metrics["ppo/loss/kl"] > 0 and metrics["objective/non_score_reward"] == 0.0


@pytest.mark.parametrize("estimator", ["reinforce_pp", "dr_grpo", "rloo", "group"])
def test_critic_free_estimators_run(tmp_path, estimator):
    trainer = make(tmp_path, advantage_estimator=estimator, num_samples_per_prompt=2)
    assert trainer.model.critic is None and not trainer.use_critic
    hist = trainer.train()
    assert len(hist) == 2 and "ppo/loss/value" not in hist[0]
    assert all(torch.isfinite(torch.tensor(v)) for k, v in hist[-1].items() if not k.startswith("time/"))


def test_dual_clip_is_logged(tmp_path):
    metrics = make(tmp_path, dual_clip=3.0, num_ppo_epochs=2).step()
    assert 0.0 <= metrics["ppo/policy/dual_clipfrac"] <= 1.0


def _weights(module):
    return [p.detach().clone() for p in module.parameters()]


def test_critic_warmup_freezes_the_policy_only(tmp_path):
    trainer = make(tmp_path, critic_warmup_updates=1)
    policy0, critic0 = _weights(trainer.model.policy), _weights(trainer.model.critic)
    m1 = trainer.step()
    trainer.update += 1
    assert m1["ppo/critic_warmup"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(policy0, trainer.model.policy.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(critic0, trainer.model.critic.parameters(), strict=True))
    m2 = trainer.step()
    assert m2["ppo/critic_warmup"] == 0.0
    assert not all(torch.equal(a, b) for a, b in zip(policy0, trainer.model.policy.parameters(), strict=True))


@pytest.mark.parametrize("critic", ["model", "policy_head"])
def test_critic_warmup_holds_the_policy_when_the_optimiser_steps_inside_backward(tmp_path, monkeypatch, critic):
    # DeepSpeed's order: accelerate's backward() runs the optimiser step itself, before the update could drop the
    # policy's gradients. Weight decay and a second minibatch (AdamW state) are the terms that would move it.
    trainer = make(tmp_path, critic_warmup_updates=1, critic=critic, weight_decay=0.1, num_mini_batches=2,
                   per_device_train_batch_size=4)
    backward, steps = trainer.accelerator.backward, []

    def deepspeed_backward(loss, **kwargs):
        backward(loss, **kwargs)
        policy_grads = [p.grad for p in trainer.ppo_update.policy_params if p.grad is not None]
        steps.append(max((float(g.abs().max()) for g in policy_grads), default=0.0))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()

    monkeypatch.setattr(trainer.accelerator, "backward", deepspeed_backward)
    head = trainer.model.value_head if critic == "policy_head" else trainer.model.critic
    policy0, critic0 = _weights(trainer.model.policy), _weights(head)
    m1 = trainer.step()
    trainer.update += 1
    assert m1["ppo/critic_warmup"] == 1.0 and len(steps) == 2
    if critic == "model":  # no policy gradient flowed (with a value head the value loss reaches the shared backbone)
        assert steps == [0.0, 0.0]
    assert all(torch.equal(a, b) for a, b in zip(policy0, trainer.model.policy.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(critic0, head.parameters(), strict=True))
    assert trainer.optimizer.param_groups[0]["lr"] == 1e-2  # the schedule's value again after the warm-up
    trainer.step()  # warm-up over: the policy moves
    assert not all(torch.equal(a, b) for a, b in zip(policy0, trainer.model.policy.parameters(), strict=True))


def test_critic_warmup_logs_the_policy_loss_it_does_not_optimise(tmp_path):
    trainer = make(tmp_path, critic_warmup_updates=1, entropy_coef=0.01)
    m = trainer.step()
    assert m["ppo/loss/policy"] != 0.0 and m["ppo/policy/entropy"] > 0
    # the optimised loss is the value term alone
    assert m["ppo/loss/total"] == pytest.approx(0.1 * m["ppo/loss/value"], rel=1e-5)


def test_critic_learning_rate_is_its_own_group(tmp_path):
    trainer = make(tmp_path, learning_rate=1e-3, critic_learning_rate=5e-2)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [1e-3, 5e-2]
    metrics = trainer.step()
    assert metrics["ppo/lr"] == pytest.approx(1e-3) and metrics["ppo/lr_critic"] == pytest.approx(5e-2)
    # the critic group holds exactly the critic's parameters
    assert sum(p.numel() for p in trainer.optimizer.param_groups[1]["params"]) == sum(
        p.numel() for p in trainer.model.critic.parameters())


def test_overlong_penalty_lowers_the_score_of_long_responses(tmp_path):
    # No stop token: every response fills response_length = 6, so with a buffer of 3 the penalty is the full factor.
    metrics = make(tmp_path, reward_fn=zero_reward, overlong_buffer_len=3, overlong_penalty_factor=0.25).step()
    assert metrics["objective/scores"] == pytest.approx(-0.25)


@pytest.mark.parametrize("field,value,match", [
    ("dual_clip", 1.0, "ppo.dual_clip"),
    ("critic_warmup_updates", -1, "ppo.critic_warmup_updates"),
    ("overlong_buffer_len", 7, "reward.overlong_buffer_len"),
    ("critic_learning_rate", 0.0, "optim.critic_learning_rate"),
])
def test_knob_values_are_checked(field, value, match):
    from rewardlab.errors import RewardlabError

    with pytest.raises(RewardlabError, match=match):
        PPOConfig.from_dict({"response_length": 6, field: value})


def test_critic_warmup_needs_a_critic():
    from rewardlab.errors import RewardlabError

    with pytest.raises(RewardlabError, match="critic_warmup_updates"):
        PPOConfig.from_dict({"advantage_estimator": "rloo", "num_samples_per_prompt": 2, "critic_warmup_updates": 2})
