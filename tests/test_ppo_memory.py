"""Memory options: activation checkpointing (same gradients, fewer saved activations), dtype, attention."""

from __future__ import annotations

import pytest
import torch

from rewardlab.errors import RewardlabError
from rewardlab.ops.logprobs import logprobs_from_logits
from rewardlab.ppo.memory import (
    check_attn_implementation,
    enable_gradient_checkpointing,
    load_kwargs,
    resolve_dtype,
)
from rewardlab.ppo.rollout import response_logits
from rewardlab.tiny import build_model, build_tokenizer, tiny_config


def _policy(arch: str, dropout: float = 0.0):
    tok = build_tokenizer(32)
    cfg = tiny_config(arch, tok, hidden=32, layers=3, max_positions=256)
    if arch == "gpt2":  # GPT-2's default dropout: checkpointing must not switch it on
        cfg.resid_pdrop = cfg.embd_pdrop = cfg.attn_pdrop = dropout
    return build_model("causal_lm", cfg, seed=0)


def _batch(length: int):
    g = torch.Generator().manual_seed(0)
    q = torch.randint(4, 30, (4, 8), generator=g)
    r = torch.randint(4, 30, (4, length), generator=g)
    return q, torch.ones_like(q), r, torch.ones_like(r)


def _loss(model, batch) -> torch.Tensor:
    q, qm, r, rm = batch
    return logprobs_from_logits(response_logits(model, q, qm, r, rm), r).sum()


def _saved_bytes(model, batch) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = _loss(model, batch)
    loss.backward()
    return total


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_checkpointing_gives_the_same_gradients(arch):
    batch = _batch(16)
    plain, ckpt = _policy(arch, dropout=0.1), _policy(arch, dropout=0.1)
    assert enable_gradient_checkpointing(ckpt) == 3
    _loss(plain, batch).backward()
    _loss(ckpt, batch).backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=1e-5, msg=name)
    # dropout stayed off: two forwards agree exactly
    with torch.no_grad():
        assert torch.equal(response_logits(ckpt, *batch), response_logits(ckpt, *batch))


def test_checkpointing_keeps_at_least_40_percent_fewer_activations_at_length_128():
    batch = _batch(128)
    plain, ckpt = _policy("llama"), _policy("llama")
    enable_gradient_checkpointing(ckpt)
    full, kept = _saved_bytes(plain, batch), _saved_bytes(ckpt, batch)
    assert kept <= 0.6 * full, (kept, full)


def test_without_the_layer_flag_checkpointing_would_be_a_no_op():
    # transformers checkpoints only layers in training mode; PPO's models stay in eval mode
    batch = _batch(64)
    model = _policy("llama")
    full = _saved_bytes(model, batch)
    enable_gradient_checkpointing(model)
    for m in model.modules():
        m.training = False
    assert _saved_bytes(model, batch) == full


def test_dtype_names_and_the_float16_rule():
    assert resolve_dtype("bfloat16", trained=True) is torch.bfloat16
    assert resolve_dtype("float16", trained=False) is torch.float16
    assert resolve_dtype("auto", trained=True) == "auto"
    with pytest.raises(RewardlabError, match="float16.*underflow"):
        resolve_dtype("float16", trained=True)
    with pytest.raises(RewardlabError, match="models.dtype='fp32'.*float32"):
        resolve_dtype("fp32", trained=False)


def test_attention_implementations():
    with pytest.raises(RewardlabError, match="not an attention implementation"):
        check_attn_implementation("flash")
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        with pytest.raises(RewardlabError, match="flash_attn package"):
            check_attn_implementation("flash_attention_2")
    assert load_kwargs("float32", "eager", trained=True) == {"dtype": torch.float32, "attn_implementation": "eager"}


def test_eager_and_sdpa_agree(tmp_path):
    from transformers import AutoModelForCausalLM

    _policy("llama").save_pretrained(tmp_path / "p")
    batch = _batch(12)
    out = {}
    for impl in ("eager", "sdpa"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "p", **load_kwargs("auto", impl, trained=True))
        assert model.config._attn_implementation == impl
        with torch.no_grad():
            out[impl] = logprobs_from_logits(response_logits(model, *batch), batch[2])
    torch.testing.assert_close(out["eager"], out["sdpa"], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- in the PPO trainer
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from rewardlab.ppo.commands import make_tiny

    folder = tmp_path_factory.mktemp("tiny")
    make_tiny(str(folder), num_prompts=32)
    return folder


def _cfg(tiny_dir, out, **overrides):
    from rewardlab.ppo.config import PPOConfig

    settings = {"sft_model_path": str(tiny_dir / "policy"), "reward_model_path": str(tiny_dir / "reward"),
                "dataset_name": str(tiny_dir / "prompts.jsonl"), "reward_pipeline": "mean", "response_length": 8,
                "temperature": 1.0, "batch_size": 8, "per_device_train_batch_size": 4, "num_mini_batches": 2,
                "num_ppo_epochs": 1, "learning_rate": 1e-2, "total_episodes": 16, "output_dir": str(out),
                "progress_bar": False, "save_steps": 0, "kl_coef": 0.1, "lr_scheduler_type": "constant"}
    settings.update(overrides)
    return PPOConfig.from_dict(settings)


def _final_weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "checkpoints" / "update-2" / "policy" / "model.safetensors"))


def test_ppo_with_gradient_checkpointing_follows_the_same_trajectory(tiny_dir, tmp_path):
    from rewardlab.ppo.trainer import PPOTrainer

    plain = PPOTrainer(_cfg(tiny_dir, tmp_path / "plain")).train()
    trainer = PPOTrainer(_cfg(tiny_dir, tmp_path / "ckpt", gradient_checkpointing=True))
    ckpt = trainer.train()
    layers = [m for m in trainer.model.policy.modules() if getattr(m, "gradient_checkpointing", False)
              and type(m).__name__ == "GPT2Block"]
    assert layers and all(m.training for m in layers)  # still recomputing after the trainer's eval() calls
    assert not any(m.training for m in trainer.model.policy.modules() if isinstance(m, torch.nn.Dropout))
    for a, b in zip(plain, ckpt, strict=True):
        for k in a:
            if not k.startswith("time/"):
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k
    for k, v in _final_weights(tmp_path / "plain").items():
        torch.testing.assert_close(v, _final_weights(tmp_path / "ckpt")[k], atol=1e-6, rtol=1e-5)


def test_lora_reference_is_the_disabled_adapter_and_matches_a_separate_base(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from rewardlab.ppo.models import AdapterDisabled
    from rewardlab.ppo.trainer import PPOTrainer

    trainer = PPOTrainer(_cfg(tiny_dir, tmp_path / "lora", use_peft=True, lora_r=4, lora_alpha=8))
    assert isinstance(trainer.ref_policy, AdapterDisabled)
    trainer.train()  # the adapter has moved: policy ≠ base
    base = AutoModelForCausalLM.from_pretrained(tiny_dir / "policy", dtype=torch.float32).eval()
    batch = _batch(6)
    with torch.no_grad():
        ref = logprobs_from_logits(response_logits(trainer.ref_policy, *batch), batch[2])
        expected = logprobs_from_logits(response_logits(base, *batch), batch[2])
        moved = logprobs_from_logits(response_logits(trainer.model.policy, *batch), batch[2])
    torch.testing.assert_close(ref, expected, atol=1e-5, rtol=0)
    assert (moved - expected).abs().max() > 1e-3
    # one base in memory: no reference model of its own
    base_params = sum(p.numel() for p in base.parameters())
    held = sum(p.numel() for p in trainer.model.parameters()) + sum(
        p.numel() for p in trainer.reward.reward_models[0].model.parameters())
    assert held < 3.5 * base_params  # policy (+LoRA), critic (+LoRA), reward model: 3 copies, not 4


def test_critic_as_a_second_adapter(tiny_dir, tmp_path):
    from rewardlab.ppo.trainer import PPOTrainer

    trainer = PPOTrainer(_cfg(tiny_dir, tmp_path / "adapter", use_peft=True, critic="adapter", lora_r=4, lora_alpha=8,
                              critic_learning_rate=5e-2))
    m = trainer.model
    assert m.critic is None and m.value_head is not None and m.critic_adapter == "critic"
    assert set(m.policy.peft_config) == {"default", "critic"}
    # the value head starts from the reward model's score head (same hidden size here): mean over its 2 heads
    rm_head = trainer.reward.reward_models[0].model.score.weight.float()
    torch.testing.assert_close(m.value_head.weight.detach(), rm_head.mean(0, keepdim=True))
    policy_group, critic_group = trainer.optimizer.param_groups
    assert critic_group["lr"] == 5e-2
    names = {id(p): n for n, p in m.policy.named_parameters()}
    assert all(".critic." in names[id(p)] for p in critic_group["params"] if id(p) in names)
    assert all(".default." in names[id(p)] for p in policy_group["params"])
    before = {n: p.detach().clone() for n, p in m.policy.named_parameters() if "lora_B" in n}
    hist = trainer.train()
    assert "ppo/loss/value" in hist[0] and all(abs(h["ppo/loss/value"]) < 1e6 for h in hist)
    after = dict(m.policy.named_parameters())
    for adapter in ("default", "critic"):  # both adapters trained
        assert any(not torch.equal(before[n], after[n]) for n in before if f".{adapter}." in n), adapter
    # outputs: the policy's adapter in policy/, the critic's in critic/ (an ordinary PEFT folder), the head beside
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "adapter"
    assert not (out / "policy" / "critic").exists() and (out / "value_head.safetensors").is_file()
    critic = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir / "policy"), out / "critic")
    trained = {n.replace(".critic.", ".default."): p for n, p in m.policy.named_parameters() if ".critic." in n}
    for n, p in critic.named_parameters():
        if "lora_" in n:
            torch.testing.assert_close(p, trained[n])


def test_bfloat16_frozen_models(tiny_dir, tmp_path):
    from rewardlab.ppo.trainer import PPOTrainer

    trainer = PPOTrainer(_cfg(tiny_dir, tmp_path / "bf16", dtype="bfloat16"))
    assert next(trainer.ref_policy.parameters()).dtype == torch.bfloat16
    assert next(trainer.reward.reward_models[0].model.parameters()).dtype == torch.bfloat16
    assert next(trainer.model.policy.parameters()).dtype == torch.bfloat16
    hist = trainer.train()
    assert all(torch.isfinite(torch.tensor(v)) for k, v in hist[-1].items() if not k.startswith("time/"))


@pytest.mark.parametrize("overrides,match", [
    ({"dtype": "float16"}, "models.dtype"),
    ({"critic": "adapter"}, "use_peft"),
    ({"dtype": "fp32"}, "models.dtype"),
])
def test_memory_options_are_checked_before_loading(overrides, match):
    from rewardlab.ppo.config import PPOConfig

    with pytest.raises(RewardlabError, match=match):
        PPOConfig.from_dict(overrides)


def test_auto_dtype_refuses_a_float16_checkpoint_to_train(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rewardlab.ppo.trainer import PPOTrainer

    half = tmp_path / "half"
    AutoModelForCausalLM.from_pretrained(tiny_dir / "policy").half().save_pretrained(half)
    AutoTokenizer.from_pretrained(tiny_dir / "policy").save_pretrained(half)
    with pytest.raises(RewardlabError, match="float16 weights to train"):
        PPOTrainer(_cfg(tiny_dir, tmp_path / "run", sft_model_path=str(half), dtype="auto"))
