import os

import torch

from rewardlab.ops import AdaptiveKLController
from rewardlab.ppo.checkpoint import TrainingState, latest_checkpoint, load_checkpoint, save_checkpoint
from rewardlab.reward.baselines import ReferenceRewards
from rewardlab.reward.pipeline import RewardPipeline


def _state(seed: int) -> TrainingState:
    torch.manual_seed(seed)
    policy, critic = torch.nn.Linear(3, 2), torch.nn.Linear(3, 1)
    params = list(policy.parameters()) + list(critic.parameters())
    opt = torch.optim.AdamW(params, lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return TrainingState(policy, critic, opt, sched, AdaptiveKLController(0.1, 6.0, 100),
                         RewardPipeline.from_spec("running_norm"), ReferenceRewards())


def _train(state: TrainingState, steps: int) -> None:
    for _ in range(steps):
        x = torch.randn(4, 3)
        loss = state.policy(x).pow(2).mean() + state.critic(x).pow(2).mean()
        loss.backward()
        state.optimizer.step()
        state.scheduler.step()
        state.optimizer.zero_grad()
        state.kl_controller.update(9.0, 10)
        state.pipeline(torch.randn(4, 1))


def test_round_trip_restores_everything(tmp_path):
    a = _state(0)
    _train(a, 3)
    a.reference_rewards.add(["p1", "p1"], torch.tensor([[1.0], [2.0]]))
    save_checkpoint(str(tmp_path), 3, a, {"episodes": 12})
    expected_rng = torch.rand(3)  # what the RNG gives right after the checkpoint
    b = _state(1)
    state = load_checkpoint(latest_checkpoint(str(tmp_path)), b)
    assert state["update"] == 3 and state["episodes"] == 12
    assert torch.equal(torch.rand(3), expected_rng)
    for pa, pb in zip(list(a.policy.parameters()) + list(a.critic.parameters()),
                      list(b.policy.parameters()) + list(b.critic.parameters()), strict=True):
        assert torch.equal(pa, pb)
    assert b.kl_controller.value == a.kl_controller.value
    assert b.pipeline.state_dict() == a.pipeline.state_dict()
    assert b.scheduler.state_dict()["last_epoch"] == 3
    assert torch.equal(b.reference_rewards.gather(["p1"]), a.reference_rewards.gather(["p1"]))
    # continuing both gives the same parameters (optimizer moments restored too)
    torch.manual_seed(5)
    _train(a, 2)
    torch.manual_seed(5)
    _train(b, 2)
    assert all(torch.equal(x, y) for x, y in zip(a.policy.parameters(), b.policy.parameters(), strict=True))


def test_keeps_latest_and_ignores_partial_folders(tmp_path):
    s = _state(0)
    for update in (1, 2, 3):
        save_checkpoint(str(tmp_path), update, s, {}, keep=2)
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert names == ["update-2", "update-3"]
    os.makedirs(tmp_path / "checkpoints" / ".tmp-update-9-123")  # what a kill mid-write leaves behind
    assert latest_checkpoint(str(tmp_path)).endswith("update-3")
    assert latest_checkpoint(str(tmp_path / "nothing")) is None
