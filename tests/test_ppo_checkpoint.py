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


# ---------------------------------------------------------------------- final outputs: save_dtype, merge_adapter
import copy  # noqa: E402
import json  # noqa: E402

import pytest  # noqa: E402

from rewardlab.errors import RewardlabError  # noqa: E402
from rewardlab.ppo.checkpoint import save_final_models  # noqa: E402
from rewardlab.ppo.models import PolicyAndCritic  # noqa: E402
from rewardlab.tiny import build_model, build_tokenizer, tiny_config  # noqa: E402

IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits.float()


def _load(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder)  # dtype 'auto': what config.json says


def _lora_policy(arch: str, critic_adapter: bool = False):
    """A LoRA policy whose adapter has moved (B ≠ 0), so merging matters; with a critic adapter beside it."""
    pytest.importorskip("peft")
    from rewardlab.ppo.config import ModelsConfig
    from rewardlab.ppo.models import with_lora

    tok = build_tokenizer(32)
    base = build_model("causal_lm", tiny_config(arch, tok, hidden=32, layers=2), seed=0)
    base.generation_config.eos_token_id = [tok.eos_token_id, 7]  # a chat model's several end-of-turn ids
    m = ModelsConfig(use_peft=True, lora_r=4, critic="adapter" if critic_adapter else "model")
    policy, _ = with_lora(base, None, m)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    value_head = torch.nn.Linear(32, 1) if critic_adapter else None
    return PolicyAndCritic(policy, None, value_head, "critic" if critic_adapter else None), tok


def test_save_dtype_casts_the_final_policy_only(tmp_path):
    tok = build_tokenizer(32)
    policy = build_model("causal_lm", tiny_config("gpt2", tok, hidden=32, layers=1), seed=0)
    critic = build_model("sequence_classification", tiny_config("gpt2", tok, hidden=32, layers=1, num_labels=1), seed=1)
    save_final_models(str(tmp_path), PolicyAndCritic(policy, critic), tok, save_dtype="bfloat16")
    loaded = _load(tmp_path / "policy")
    assert loaded.dtype == torch.bfloat16
    assert json.loads((tmp_path / "policy" / "config.json").read_text())["dtype"] == "bfloat16"
    for name, p in loaded.state_dict().items():
        assert torch.equal(p, policy.state_dict()[name].to(torch.bfloat16)), name
    assert loaded.lm_head.weight is loaded.get_input_embeddings().weight  # still tied, written once
    assert policy.dtype == torch.float32  # the trained module is not cast
    torch.testing.assert_close(_logits(loaded), _logits(policy), atol=0.05, rtol=0.05)
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(tmp_path / "critic" / "model.safetensors")).values()} == {torch.float32}
    assert (tmp_path / "policy" / "tokenizer_config.json").is_file()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_merge_adapter_writes_a_full_model_beside_the_adapter(tmp_path, arch):
    model, tok = _lora_policy(arch)
    before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    save_final_models(str(tmp_path), model, tok, merge_adapter=True)
    assert (tmp_path / "policy" / "adapter_config.json").is_file()  # policy/: the adapter, as before
    merged = _load(tmp_path / "policy_merged")
    assert merged.dtype == torch.float32 and not hasattr(merged, "peft_config")
    assert not any("lora" in k for k in merged.state_dict())
    torch.testing.assert_close(_logits(merged), _logits(model.policy), atol=1e-5, rtol=1e-5)
    assert merged.generation_config.eos_token_id == [tok.eos_token_id, 7]  # the policy's stop tokens go with it
    assert (tmp_path / "policy_merged" / "tokenizer_config.json").is_file()
    assert all(torch.equal(v, before[k]) for k, v in model.policy.state_dict().items())  # nothing merged in place
    # and policy/ still loads as adapter + base, with the same logits
    from peft import PeftModel

    base = build_model("causal_lm", tiny_config(arch, tok, hidden=32, layers=2), seed=0)
    adapter = PeftModel.from_pretrained(base, tmp_path / "policy")
    torch.testing.assert_close(_logits(adapter), _logits(model.policy), atol=1e-6, rtol=1e-6)


def test_merged_and_adapter_in_save_dtype(tmp_path):
    model, tok = _lora_policy("llama")
    save_final_models(str(tmp_path), model, tok, merge_adapter=True, save_dtype="bfloat16")
    merged = _load(tmp_path / "policy_merged")
    assert merged.dtype == torch.bfloat16
    torch.testing.assert_close(_logits(merged), _logits(model.policy), atol=0.05, rtol=0.05)
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(tmp_path / "policy" / "adapter_model.safetensors")).values()} == {torch.bfloat16}


def test_merge_takes_the_policy_adapter_not_the_critic_adapter(tmp_path):
    model, tok = _lora_policy("gpt2", critic_adapter=True)
    with torch.no_grad():
        for name, p in model.policy.named_parameters():
            if "lora_B" in name and ".critic." in name:
                p.fill_(0.3)  # a critic adapter that would change the logits if it were merged
    save_final_models(str(tmp_path), model, tok, merge_adapter=True)
    torch.testing.assert_close(_logits(_load(tmp_path / "policy_merged")), _logits(model.policy), atol=1e-5, rtol=1e-5)


def test_merge_adapter_needs_a_lora_policy(tmp_path):
    tok = build_tokenizer(32)
    policy = build_model("causal_lm", tiny_config("gpt2", tok, hidden=32, layers=1), seed=0)
    with pytest.raises(RewardlabError, match="merge_adapter.*models.use_peft"):
        save_final_models(str(tmp_path), PolicyAndCritic(copy.deepcopy(policy)), tok, merge_adapter=True)


def test_ppo_run_writes_outputs_in_save_dtype_and_keeps_checkpoints_full(tmp_path):
    """The trainer passes run.save_dtype and run.merge_adapter to `save_final_models`."""
    from rewardlab.ppo.commands import make_tiny
    from rewardlab.ppo.config import PPOConfig
    from rewardlab.ppo.trainer import PPOTrainer

    make_tiny(str(tmp_path / "tiny"), num_prompts=8)
    d = tmp_path / "tiny"
    cfg = PPOConfig.from_dict({"sft_model_path": str(d / "policy"), "reward_model_path": str(d / "reward"),
                               "dataset_name": str(d / "prompts.jsonl"), "response_length": 4, "batch_size": 4,
                               "per_device_train_batch_size": 4, "num_ppo_epochs": 1, "total_episodes": 4,
                               "output_dir": str(tmp_path / "run"), "progress_bar": False, "use_peft": True,
                               "lora_r": 2, "learning_rate": 1e-2, "save_dtype": "bfloat16", "merge_adapter": True})
    trainer = PPOTrainer(cfg)
    trainer.train()
    out = tmp_path / "run"
    assert _load(out / "policy_merged").dtype == torch.bfloat16
    from safetensors.torch import load_file

    kept = load_file(str(out / "checkpoints" / "update-1" / "policy.safetensors"))
    assert {t.dtype for t in kept.values()} == {torch.float32}  # checkpoints: full precision, to resume from
    # under LoRA a checkpoint's policy/ is the adapter, which loads with its base (named in adapter_config.json)
    adapter = _load(out / "checkpoints" / "update-1" / "policy")
    assert hasattr(adapter, "peft_config")
    torch.testing.assert_close(_logits(adapter), _logits(trainer.model.policy), atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------- checkpoints to go back to
import shutil  # noqa: E402

from safetensors.torch import load_file, save_model  # noqa: E402

from rewardlab.ppo.alarm import OveroptimisationAlarm  # noqa: E402
from rewardlab.ppo.config import AlarmConfig  # noqa: E402


def _run_json(folder) -> dict:
    return json.loads((folder / "run.json").read_text(encoding="utf-8"))


def test_alarm_checkpoint_is_kept_and_run_json_lists_metrics(tmp_path):
    """save_total_limit 1: the newest checkpoint, plus the last one saved before the alarm fired."""
    s = _state(0)
    s.alarm = OveroptimisationAlarm(AlarmConfig())
    for update in (1, 2, 3, 4):
        if update == 3:
            s.alarm.state["fired_at"] = 2  # the rollout after update 2 raised the alarm
        save_checkpoint(str(tmp_path), update, s, {}, keep=1, run_id="r",
                        metrics={"objective/scores": update / 10, "objective/kl": 0.5, "alarm/score": update / 4,
                                 "ppo/lr": 0.1})
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["update-2", "update-4"]
    info = _run_json(tmp_path)
    assert info["alarm_checkpoint"] == "update-2"
    assert [(c["name"], c["update"], c["alarm_score"]) for c in info["checkpoints"]] == \
        [("update-2", 2, 0.5), ("update-4", 4, 1.0)]
    assert info["checkpoints"][0]["metrics"] == {"objective/scores": 0.2, "objective/kl": 0.5}  # headline only
    assert latest_checkpoint(str(tmp_path), "r").endswith("update-4")


def _knobs(tmp_path, **kw):
    from tests.test_ppo_knobs import make

    return make(tmp_path, **kw)


def test_checkpoint_policy_folder_loads_with_from_pretrained(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer = _knobs(tmp_path / "a", total_episodes=16, save_steps=1)  # 2 updates, a checkpoint after each
    trainer.train()
    one = _knobs(tmp_path / "b", total_episodes=8)  # the same run, stopped after its first update
    one.train()
    ckpts = tmp_path / "a" / "run" / "checkpoints"
    for folder, expected in ((ckpts / "update-1" / "policy", one.model.policy),
                             (ckpts / "update-2" / "policy", trainer.model.policy)):
        loaded = AutoModelForCausalLM.from_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        assert tok("t5 t6").input_ids == trainer.tokenizer("t5 t6").input_ids
        want = expected.state_dict()
        assert loaded.state_dict().keys() == want.keys()
        assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items()), folder
    assert not (ckpts / "update-2" / "policy.safetensors").exists()  # the policy is stored once
    listed = _run_json(tmp_path / "a" / "run")["checkpoints"]
    assert [(c["name"], c["update"], c["policy"]) for c in listed] == \
        [(f"update-{n}", n, os.path.join("checkpoints", f"update-{n}", "policy")) for n in (1, 2)]


TRIGGER_SOON = {"alarm.smoothing": 0.0, "alarm.returns_threshold": None, "alarm.saturation_threshold": None,
                "alarm.variance_threshold": 1e-6, "alarm.length_threshold": 1e-6, "stop_token": "eos"}


def test_the_alarms_checkpoint_survives_pruning_with_save_total_limit_1(tmp_path):
    trainer = _knobs(tmp_path, total_episodes=64, save_steps=1, save_total_limit=1, **TRIGGER_SOON)
    history = trainer.train()
    k = trainer.alarm.fired_at  # updates done before the first alarming rollout
    assert k is not None and 1 <= k < 6, k  # fired early: pruning would have deleted its checkpoint
    assert history[k]["alarm/triggered"] == 1.0 and not any(m["alarm/triggered"] for m in history[:k])
    out = tmp_path / "run"
    assert sorted(os.listdir(out / "checkpoints")) == [f"update-{k}", "update-8"]
    info = _run_json(out)
    assert info["alarm_checkpoint"] == f"update-{k}"
    assert [c["update"] for c in info["checkpoints"]] == [k, 8]
    assert all({"name", "path", "policy", "metrics", "alarm_score"} <= set(c) for c in info["checkpoints"])
    for c in info["checkpoints"]:  # each checkpoint lists the metrics of the update that made it
        assert c["alarm_score"] == pytest.approx(history[c["update"] - 1]["alarm/score"])
        assert c["metrics"]["objective/scores"] == pytest.approx(history[c["update"] - 1]["objective/scores"])


def test_save_total_limit_none_keeps_every_checkpoint(tmp_path):
    _knobs(tmp_path, total_episodes=32, save_steps=1, save_total_limit=None).train()
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == [f"update-{n}" for n in (1, 2, 3, 4)]
    assert [c["update"] for c in _run_json(tmp_path / "run")["checkpoints"]] == [1, 2, 3, 4]
    assert _run_json(tmp_path / "run")["alarm_checkpoint"] is None


def test_a_checkpoint_with_a_bare_policy_file_still_resumes_exactly(tmp_path):
    """Checkpoints written before policy/ existed hold policy.safetensors; they resume bit-for-bit."""
    _knobs(tmp_path / "straight", total_episodes=16).train()
    _knobs(tmp_path / "old", total_episodes=8, save_steps=1).train()
    ckpt = tmp_path / "old" / "run" / "checkpoints" / "update-1"
    save_model(_load(ckpt / "policy"), str(ckpt / "policy.safetensors"))  # the old layout: a bare weights file
    shutil.rmtree(ckpt / "policy")
    _knobs(tmp_path / "old", total_episodes=16, resume=True).train()
    a = load_file(str(tmp_path / "straight" / "run" / "policy" / "model.safetensors"))
    b = load_file(str(tmp_path / "old" / "run" / "policy" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

