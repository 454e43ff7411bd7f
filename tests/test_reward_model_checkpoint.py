import os

import pytest
import torch

from rewardlab.errors import RewardlabError
from rewardlab.reward_model.checkpoint import EpochOrder, latest_checkpoint, load_checkpoint, save_checkpoint
from rewardlab.tiny import build_model, build_tokenizer, tiny_config


def test_epoch_order_is_a_function_of_seed_and_epoch():
    a, b = EpochOrder(50, seed=3), EpochOrder(50, seed=3)
    first = list(a)
    assert sorted(first) == list(range(50)) and first == list(b)
    a.use_epoch(1)
    assert list(a) != first and sorted(a) == list(range(50))
    b.use_epoch(1)
    assert list(a) == list(b)
    assert list(EpochOrder(50, seed=4)) != first


def test_checkpoints_round_trip_and_latest_skips_unfinished(tmp_path):
    tok = build_tokenizer(32)
    model = build_model("sequence_classification", tiny_config("gpt2", tok, num_labels=2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    partial = str(tmp_path / "rm.partial")
    assert latest_checkpoint(partial) is None
    for step in (2, 4):
        save_checkpoint(partial, step, model, tok, opt, sched, keep=2)
    os.makedirs(os.path.join(partial, "checkpoints", "step-0000006"))  # a folder without its state: not finished
    path = latest_checkpoint(partial)
    assert path.endswith("step-0000004")
    other = build_model("sequence_classification", tiny_config("gpt2", tok, num_labels=2), seed=5)
    state = load_checkpoint(path, other)
    assert state["step"] == 4 and "optimizer" in state and "rng" in state
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), other.state_dict().values(), strict=True))
    save_checkpoint(partial, 8, model, tok, opt, sched, keep=1)
    assert sorted(os.listdir(os.path.join(partial, "checkpoints")))[-1] == "step-0000008"
    assert not os.path.exists(os.path.join(partial, "checkpoints", "step-0000002"))
    three = build_model("sequence_classification", tiny_config("gpt2", tok, num_labels=3))
    with pytest.raises(RewardlabError, match="does not match the model being trained .*size mismatch for score.weight"):
        load_checkpoint(latest_checkpoint(partial), three)
