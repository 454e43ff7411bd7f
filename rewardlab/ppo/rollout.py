"""Rollout: prompts in; responses sampled over a preallocated KV cache; the per-token forward passes.

Sampling is *layout-independent*: each episode's random number at each decoding step is a pure
function of its own seed (from run seed, update, episode index) and the step (a counter-based
generator, `counter_uniform`), and the token is drawn by inverse-CDF sampling (`SeededSampler`),
in a lean decode loop over a preallocated KV cache (`generate_responses`) that gives the same tokens as
greedy ``generate`` with the sampler as logits processor (`hf_generate_responses`). The same episode
therefore gets the same response whatever the micro-batch size or the number of processes,
which makes `accelerate launch` runs comparable with one-process runs and resumed runs
identical to uninterrupted ones.

Logprobs come from a separate forward pass over prompt + response, with the same inputs
(attention mask, position ids, temperature) that the PPO update uses, so that π_old and the
first-epoch π_θ agree to float precision (dropout is off in every model).

Example::

    stop_ids = stop_token_ids(cfg.generation, tokenizer, policy)     # e.g. (3,), or Qwen's (151645, 151643)
    resp = generate_responses(policy, q_ids, q_mask, response_length=53, temperature=0.7, top_k=0, top_p=1.0,
                              seeds=seeds, pad_id=0, stop_ids=stop_ids, micro_batch=64)
    resp_ids, resp_mask, has_stop = truncate_after_stop(resp, stop_ids, pad_id=0)
    logits = response_logits(policy, q_ids, q_mask, resp_ids, resp_mask)
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache, GenerationConfig, LogitsProcessor, LogitsProcessorList
from transformers.cache_utils import DynamicLayer

from rewardlab.errors import RewardlabError


def episode_seeds(seed: int, update: int, first_episode: int, n: int) -> list[int]:
    """One 63-bit seed per episode from (seed, update, global episode index), well mixed."""
    out = []
    for i in range(first_episode, first_episode + n):
        x = (seed * 0x9E3779B97F4A7C15 + update * 0xBF58476D1CE4E5B9 + i * 0x94D049BB133111EB) & (2**64 - 1)
        x ^= x >> 31
        x = (x * 0xD6E8FEB86659FD93) & (2**64 - 1)
        out.append((x ^ (x >> 32)) & (2**63 - 1))
    return out


def _signed(c: int) -> int:
    """A 64-bit constant as the int64 value with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


_MIX1, _MIX2 = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)
_STEP, _TOKEN = _signed(0x9E3779B97F4A7C15), _signed(0xD6E8FEB86659FD93)


def _shr(x: Tensor, k: int) -> Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def counter_uniform(seeds: Tensor, step: int, vocab_size: int) -> Tensor:
    """Uniform numbers in (0, 1), a pure function of (row seed, step, token id).

    A counter-based generator: the splitmix64 finaliser applied to seed + step·c1 + token·c2 in
    wrapping int64 arithmetic, top 24 bits kept. Each row's numbers depend on its own seed only,
    never on which other rows share the batch, and one call covers the whole (B, V) block.

    Shapes: seeds (B,) int64 → (B, V) float32.
    """
    tokens = torch.arange(vocab_size, device=seeds.device, dtype=torch.int64)
    step_term = torch.tensor(step, dtype=torch.int64, device=seeds.device) * _STEP  # wraps like uint64
    x = seeds.view(-1, 1) + step_term + tokens.view(1, -1) * _TOKEN
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    x = x ^ _shr(x, 31)
    return (_shr(x, 40).float() + 0.5) / float(1 << 24)


class SeededSampler(LogitsProcessor):
    """Turns greedy decoding into sampling from softmax(z/τ) restricted by top-k / top-p.

    Inverse-CDF sampling with one uniform number per (episode, step): u from `counter_uniform`
    keyed by the row's seed and the decoding step; the sampled token is the first whose cumulative
    probability exceeds u × the row's total, and the processor returns a one-hot row for it, so
    greedy decoding's argmax is that token. Tokens of probability 0 (outside top-k / top-p) are
    never picked. An episode's sample depends on its own seed and logits only, not on its batch.
    (One number per row-step and a softmax + cumsum over the vocabulary: on CPU several times
    cheaper than per-token Gumbel noise, which needs a 64-bit hash of every token.)

    Shapes: scores (B, V) → (B, V).
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_k: int, top_p: float, device) -> None:
        self.seeds = torch.tensor([int(s) for s in seeds], dtype=torch.int64, device=device)
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.step = 0

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        """The one-hot rows of `sample` (the ``LogitsProcessor`` interface of greedy ``generate``)."""
        token = self.sample(scores)
        return torch.zeros_like(scores, dtype=torch.float32).scatter_(-1, token.unsqueeze(-1), 1.0)

    def sample(self, scores: Tensor) -> Tensor:
        """The sampled token of each row at the current step (and advance the step). Shapes: (B, V) → (B,)."""
        z = scores.float() / self.temperature
        v = z.shape[-1]
        if 0 < self.top_k < v:
            kth = torch.topk(z, self.top_k, dim=-1).values[:, -1:]
            z = z.masked_fill(z < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_z, order = torch.sort(z, dim=-1, descending=True)
            probs = torch.softmax(sorted_z, dim=-1)
            # drop a token when the mass strictly before it already reaches top_p (the first one stays)
            drop_sorted = (probs.cumsum(-1) - probs) >= self.top_p
            z = z.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
        cdf = torch.softmax(z, dim=-1).cumsum_(dim=-1)
        u = counter_uniform(self.seeds.to(z.device), self.step, 1)  # (B, 1)
        self.step += 1
        return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=v - 1).squeeze(-1)


def stop_token_ids(gen_cfg: Any, tokenizer: Any, policy: Any = None) -> tuple[int, ...]:
    """The token ids that end a response: the union, in this order and without repeats, of

    1. with ``stop_token: eos``, the tokenizer's EOS and every ``eos_token_id`` of the policy's
       generation config (a chat model's end-of-turn token: Qwen2.5-Instruct's config lists
       ``[151645, 151643]``, ``<|im_end|>`` and ``<|endoftext|>``; Llama 3 Instruct's ``<|eot_id|>``);
    2. ``stop_token_id`` (TRL 1.10's single id);
    3. ``stop_token_ids``.

    An empty tuple: responses run to ``response_length`` (no stop token).

    Args:
        gen_cfg: the run's ``generation`` section (`rewardlab.ppo.config.GenerationConfig`).
        tokenizer: the policy's tokenizer (its ``eos_token_id``).
        policy: the policy (its ``generation_config`` and vocabulary size), or None.

    Raises:
        RewardlabError: ``stop_token: eos`` where neither names an EOS token, or an id outside the
            policy's vocabulary.
    """
    ids: list[int] = []
    if gen_cfg.stop_token == "eos":
        ids += _as_list(getattr(tokenizer, "eos_token_id", None))
        ids += _as_list(getattr(getattr(policy, "generation_config", None), "eos_token_id", None))
        if not ids:
            raise RewardlabError("generation.stop_token='eos' but neither the tokenizer nor the policy's generation "
                                 "config names an EOS token; set generation.stop_token_ids")
    ids += _as_list(gen_cfg.stop_token_id) + list(gen_cfg.stop_token_ids)
    out = tuple(dict.fromkeys(int(i) for i in ids))
    config = getattr(policy, "config", None)
    vocab = getattr(config.get_text_config(), "vocab_size", None) if config is not None else None
    bad = [i for i in out if vocab is not None and not 0 <= i < vocab]
    if bad:
        raise RewardlabError(f"stop token ids {bad} are outside the policy's vocabulary of {vocab} tokens; check "
                             "generation.stop_token_id(s)")
    return out


def _as_list(ids: int | Sequence[int] | None) -> list[int]:
    return [] if ids is None else [int(ids)] if isinstance(ids, int) else [int(i) for i in ids]


def as_stop_ids(stop_ids: int | Sequence[int] | None = None) -> tuple[int, ...]:
    """``stop_ids`` (one id, several, or None) as one tuple of distinct ids."""
    return tuple(dict.fromkeys(_as_list(stop_ids)))


@torch.no_grad()
def generate_responses(
    policy, query_ids: Tensor, query_mask: Tensor, *, response_length: int, temperature: float, top_k: int,
    top_p: float, seeds: Sequence[int], pad_id: int, stop_ids: int | Sequence[int] | None = None, micro_batch: int,
) -> Tensor:
    """Sample ``response_length`` new tokens per prompt: one prefill, then one KV-cached forward per token.

    The same tokens as `hf_generate_responses` (greedy ``generate`` with `SeededSampler`), which the
    tests pin it against, with less work per token: the keys and values go into buffers allocated
    once per micro-batch (`_PreallocatedLayer`; ``generate``'s dynamic cache concatenates, i.e.
    copies, every layer's whole cache at every step), the LM head runs at the last position only,
    and there is no logits-processor or stopping-criteria machinery. Rows that emit any of ``stop_ids``
    (`stop_token_ids`) are padded with ``pad_id`` after it and
    decoding ends when every row has stopped; without stop ids every response has exactly
    ``response_length`` sampled tokens. Decoder-only models only (encoder-decoder models go through
    ``generate``).

    Shapes: query_ids, query_mask (B, Tq) → response ids (B, response_length).
    """
    stops = as_stop_ids(stop_ids)
    if getattr(policy.config, "is_encoder_decoder", False):
        return hf_generate_responses(policy, query_ids, query_mask, response_length=response_length,
                                     temperature=temperature, top_k=top_k, top_p=top_p, seeds=seeds, pad_id=pad_id,
                                     stop_ids=stops, micro_batch=micro_batch)
    stop = torch.tensor(stops, dtype=query_ids.dtype, device=query_ids.device) if stops else None
    out = []
    for start in range(0, query_ids.shape[0], micro_batch):
        sl = slice(start, start + micro_batch)
        sampler = SeededSampler(seeds[sl], temperature, top_k, top_p, query_ids.device)
        out.append(_decode(policy, query_ids[sl], query_mask[sl], sampler, response_length, pad_id, stop))
    return torch.cat(out)


def _decode(policy, query_ids: Tensor, query_mask: Tensor, sampler: SeededSampler, response_length: int,
            pad_id: int, stop: Tensor | None) -> Tensor:
    """One micro-batch of `generate_responses`: the decode loop over a preallocated KV cache.

    Inputs as ``generate`` builds them: position ids count real tokens (left padding), every new
    token is attended to (also the padding after a row's stop token, whose logits are never used).

    Shapes: (B, Tq), (B, Tq), stop (S,) or None → (B, response_length).
    """
    b, tq = query_ids.shape
    cache = _preallocated_cache(policy.config, tq + response_length)
    # One 2D mask of the final length, sliced per step (generate appends a column of ones per step).
    full_mask = torch.cat([query_mask, query_mask.new_ones(b, response_length)], dim=1)
    positions = (query_mask.cumsum(dim=1) - 1).masked_fill(query_mask == 0, 0)  # (B, Tq)
    keep = {"logits_to_keep": 1} if _accepts_logits_to_keep(policy) else {}
    out = torch.full((b, response_length), pad_id, dtype=query_ids.dtype, device=query_ids.device)
    unfinished = torch.ones(b, dtype=torch.bool, device=query_ids.device)
    tokens, step_positions = query_ids, positions
    next_position = positions[:, -1:] + 1  # (B, 1)
    for t in range(response_length):
        logits = policy(input_ids=tokens, attention_mask=full_mask[:, :tq + t], position_ids=step_positions,
                        cache=cache, use_cache=True, **keep).logits[:, -1].float()  # (B, V)
        token = sampler.sample(logits)
        if stop is not None:
            token = token.masked_fill(~unfinished, pad_id)
            unfinished &= ~torch.isin(token, stop)
        out[:, t] = token
        if stop is not None and not unfinished.any():
            break
        tokens, step_positions = token.unsqueeze(1), next_position
        next_position = next_position + 1
    return out


class _PreallocatedLayer(DynamicLayer):
    """A full-attention cache layer writing into buffers of ``max_len`` positions, allocated once.

    It returns views of the filled part of its buffers, so attention runs over the tokens seen so
    far (as with ``generate``'s cache, hence the same numbers) without copying the cache per step.
    """

    def __init__(self, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        b, h = key_states.shape[:2]
        self._k = key_states.new_empty(b, h, self.max_len, key_states.shape[-1])  # (B, H, max_len, D)
        self._v = value_states.new_empty(b, h, self.max_len, value_states.shape[-1])
        self.device, self.is_initialized = key_states.device, True
        self.keys, self.values = self._k[:, :, :0], self._v[:, :, :0]

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        self._k[:, :, start:end] = key_states
        self._v[:, :, start:end] = value_states
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values


def _preallocated_cache(config, max_len: int) -> DynamicCache:
    """transformers' ``DynamicCache`` for ``config`` with its full-attention layers preallocated.

    Sliding-window layers (Mistral-style) keep transformers' own class.
    """
    cache = DynamicCache(config=config)
    cache.layers = [_PreallocatedLayer(max_len) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


@torch.no_grad()
def hf_generate_responses(
    policy, query_ids: Tensor, query_mask: Tensor, *, response_length: int, temperature: float, top_k: int,
    top_p: float, seeds: Sequence[int], pad_id: int, stop_ids: int | Sequence[int] | None = None, micro_batch: int,
) -> Tensor:
    """`generate_responses` through the policy's ``generate`` (greedy, `SeededSampler` as logits processor).

    The reference implementation: `generate_responses` is tested against it token for token, and
    ``bench/generation.py --backend hf-generate`` times it. Encoder-decoder policies use it.

    Shapes: query_ids, query_mask (B, Tq) → response ids (B, response_length).
    """
    stops = as_stop_ids(stop_ids)
    eos = None if not stops else stops[0] if len(stops) == 1 else list(stops)
    gen_cfg = GenerationConfig(
        max_new_tokens=response_length, min_new_tokens=0, do_sample=False, num_beams=1, use_cache=True,
        pad_token_id=pad_id, eos_token_id=eos, bos_token_id=None, temperature=None, top_k=None, top_p=None,
    )
    out = []
    # generate() fills an unset eos_token_id from the model's own generation config; without a
    # stop token we want fixed-length responses, so the model's default is lifted for the call.
    model_eos = policy.generation_config.eos_token_id
    policy.generation_config.eos_token_id = eos
    try:
        for start in range(0, query_ids.shape[0], micro_batch):
            sl = slice(start, start + micro_batch)
            sampler = SeededSampler(seeds[sl], temperature, top_k, top_p, query_ids.device)
            seq = policy.generate(
                input_ids=query_ids[sl], attention_mask=query_mask[sl], generation_config=gen_cfg,
                logits_processor=LogitsProcessorList([sampler]),
            )
            resp = seq[:, query_ids.shape[1]:]
            if resp.shape[1] < response_length:  # every row stopped early
                resp = torch.nn.functional.pad(resp, (0, response_length - resp.shape[1]), value=pad_id)
            out.append(resp)
    finally:
        policy.generation_config.eos_token_id = model_eos
    return torch.cat(out)


def truncate_after_stop(response_ids: Tensor, stop_ids: int | Sequence[int] | None,
                        pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Keep each response up to and including its first stop token (any of ``stop_ids``); pad the rest.

    Returns:
        (response_ids, response_mask, contains_stop). Without stop ids (None or empty) every token is
        kept and ``contains_stop`` is False.

    Shapes: response_ids (B, T) → (B, T) int64, (B, T) int64, (B,) bool.
    """
    b, t = response_ids.shape
    stops = as_stop_ids(stop_ids)
    if not stops:
        return response_ids, torch.ones_like(response_ids), torch.zeros(b, dtype=torch.bool, device=response_ids.device)
    is_stop = torch.isin(response_ids, torch.tensor(stops, dtype=response_ids.dtype, device=response_ids.device))
    contains_stop = is_stop.any(dim=1)
    first = torch.where(contains_stop, is_stop.float().argmax(dim=1), torch.full_like(contains_stop, t - 1, dtype=torch.long))
    mask = (torch.arange(t, device=response_ids.device).view(1, t) <= first.view(b, 1)).long()
    return response_ids.masked_fill(mask == 0, pad_id), mask, contains_stop


def _inputs(query_ids: Tensor, query_mask: Tensor, response_ids: Tensor, response_mask: Tensor):
    """Concatenated ids, attention mask and position ids (counting real tokens only, as generate does)."""
    input_ids = torch.cat([query_ids, response_ids], dim=1)
    attention_mask = torch.cat([query_mask, response_mask], dim=1)
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


def response_logits(
    policy, query_ids: Tensor, query_mask: Tensor, response_ids: Tensor, response_mask: Tensor, *, return_hidden: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Policy logits at the positions that predict each response token (and the last hidden states there).

    Shapes: (B, Tq), (B, Tq), (B, T), (B, T) → (B, T, V) [, (B, T, D) with ``return_hidden``].
    """
    input_ids, attention_mask, position_ids = _inputs(query_ids, query_mask, response_ids, response_mask)
    n, t = input_ids.shape[1], response_ids.shape[1]
    predicting = slice(n - t - 1, n - 1)  # the T positions whose next token is a response token
    # The LM head runs at those positions only, given as positions: the logits are then a whole tensor,
    # not a slice of (B, T+1, V) whose backward would zero-fill a fresh tensor of that size at every
    # update. Models without `logits_to_keep` give all positions.
    positions_only = _accepts_logits_to_keep(policy)
    keep = {"logits_to_keep": torch.arange(n - t - 1, n - 1, device=input_ids.device)} if positions_only else {}
    out = policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                 output_hidden_states=return_hidden, **keep)
    logits = out.logits if positions_only else out.logits[:, predicting]
    return (logits, out.hidden_states[-1][:, predicting]) if return_hidden else logits


def _accepts_logits_to_keep(model) -> bool:
    """Whether a causal LM's forward takes ``logits_to_keep`` (transformers ≥ 4.50 models do).

    PEFT wrappers pass keyword arguments through to the model they wrap, so that model decides.
    """
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    cls = type(model)
    if cls not in _LOGITS_TO_KEEP:
        _LOGITS_TO_KEEP[cls] = "logits_to_keep" in inspect.signature(model.forward).parameters
    return _LOGITS_TO_KEEP[cls]


_LOGITS_TO_KEEP: dict[type, bool] = {}


def score_head(value_model) -> torch.nn.Module:
    """The linear head of a sequence-classification model (``score`` or ``classifier``)."""
    for name in ("score", "classifier"):
        head = getattr(value_model, name, None)
        if isinstance(head, torch.nn.Module):
            return head
    raise RewardlabError(
        f"{type(value_model).__name__} has no `score` or `classifier` head; the critic must be an "
        "AutoModelForSequenceClassification with num_labels=1"
    )


def response_values(value_model, query_ids: Tensor, query_mask: Tensor, response_ids: Tensor, response_mask: Tensor) -> Tensor:
    """Per-token critic values V(s_t): the score head applied to the backbone's hidden states.

    The value of token t is read at the position that predicts it (the state before y_t).

    Shapes: (B, Tq), (B, Tq), (B, T), (B, T) → (B, T) float32.
    """
    hidden = response_hidden(backbone(value_model), query_ids, query_mask, response_ids, response_mask)
    return score_head(value_model)(hidden)[..., 0].float()


def backbone(model) -> torch.nn.Module:
    """The transformer body (no head) of a transformers model or of a PEFT model wrapping one.

    ``getattr(model, model.base_model_prefix)`` is not enough under PEFT: the wrapper forwards the
    attribute to its tuner, whose ``.model`` is the whole wrapped model for Llama-style models
    (prefix ``model``), head included.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix)


def response_hidden(backbone, query_ids: Tensor, query_mask: Tensor, response_ids: Tensor, response_mask: Tensor) -> Tensor:
    """A transformer body's last hidden states at the positions that predict each response token.

    Shapes: (B, Tq), (B, Tq), (B, T), (B, T) → (B, T, D).
    """
    input_ids, attention_mask, position_ids = _inputs(query_ids, query_mask, response_ids, response_mask)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    return hidden.last_hidden_state[:, query_ids.shape[1] - 1 : -1]
