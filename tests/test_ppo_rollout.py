import math

import pytest
import torch

from rewardlab.errors import RewardlabError
from rewardlab.ppo.rollout import (
    SeededSampler,
    counter_uniform,
    episode_seeds,
    generate_responses,
    hf_generate_responses,
    response_logits,
    response_values,
    stop_token_ids,
    truncate_after_stop,
)
from rewardlab.tiny import build_model, build_tokenizer, tiny_config


@pytest.fixture(scope="module")
def tiny():
    tok = build_tokenizer(32, padding_side="left")
    policy = build_model("causal_lm", tiny_config("gpt2", tok, hidden=32, layers=1), seed=0)
    critic = build_model("sequence_classification", tiny_config("gpt2", tok, hidden=32, layers=1, num_labels=1), seed=1)
    enc = tok(["t1 t2 t3", "t4", "t5 t6", "t7 t8 t9 t10"], return_tensors="pt", padding=True)
    return tok, policy, critic, enc.input_ids, enc.attention_mask


def test_truncate_after_stop_hand_values():
    ids = torch.tensor([[5, 3, 7, 3], [5, 6, 7, 8], [3, 9, 9, 9]])
    out, mask, has = truncate_after_stop(ids, 3, pad_id=0)
    assert out.tolist() == [[5, 3, 0, 0], [5, 6, 7, 8], [3, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert has.tolist() == [True, False, True]
    same, full, none = truncate_after_stop(ids, None, pad_id=0)
    assert torch.equal(same, ids) and full.all() and not none.any()
    assert all(torch.equal(a, b) for a, b in zip(truncate_after_stop(ids, (), 0), (same, full, none), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(truncate_after_stop(ids, (3,), 0), (out, mask, has), strict=True))


def test_truncate_after_the_first_of_several_stop_ids():
    ids = torch.tensor([[5, 3, 7, 9], [5, 9, 3, 8], [5, 6, 7, 8], [9, 3, 9, 9]])
    out, mask, has = truncate_after_stop(ids, (3, 9), pad_id=0)
    assert out.tolist() == [[5, 3, 0, 0], [5, 9, 0, 0], [5, 6, 7, 8], [9, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert has.tolist() == [True, True, False, True]


def test_sampling_independent_of_micro_batch(tiny):
    tok, policy, _, q, qm = tiny
    kw = dict(response_length=10, temperature=1.0, top_k=0, top_p=1.0, pad_id=0, stop_ids=None,
              seeds=episode_seeds(0, 0, 0, 4))
    a = generate_responses(policy, q, qm, micro_batch=4, **kw)
    b = generate_responses(policy, q, qm, micro_batch=1, **kw)
    c = generate_responses(policy, q[2:], qm[2:], micro_batch=2, **{**kw, "seeds": kw["seeds"][2:]})
    assert a.shape == (4, 10) and torch.equal(a, b) and torch.equal(a[2:], c)
    d = generate_responses(policy, q, qm, micro_batch=4, **{**kw, "seeds": episode_seeds(1, 0, 0, 4)})
    assert not torch.equal(a, d)


def test_without_stop_token_responses_have_full_length(tiny):
    # the tiny model's generation config has eos_token_id; without a stop token it must not stop there
    tok, policy, _, q, qm = tiny
    out = generate_responses(policy, q, qm, response_length=40, temperature=3.0, top_k=0, top_p=1.0, pad_id=0,
                             stop_ids=None, seeds=episode_seeds(0, 0, 0, 4), micro_batch=4)
    eos = tok.eos_token_id
    rows, cols = (out == eos).nonzero(as_tuple=True)
    assert len(rows) > 0, "no EOS sampled at temperature 3; the test proves nothing"
    # a stopped row would be all padding after its EOS
    assert any((out[r, c + 1:] != 0).any() for r, c in zip(rows.tolist(), cols.tolist(), strict=True) if c + 1 < out.shape[1])


def test_seeded_sampler_frequencies_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    counts = torch.zeros(4)
    sampler = SeededSampler(range(4000), temperature=1.0, top_k=0, top_p=1.0, device="cpu")
    picks = sampler(None, logits.expand(4000, 4)).argmax(-1)
    counts = torch.bincount(picks, minlength=4).float() / 4000
    assert torch.allclose(counts, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03)
    top2 = SeededSampler(range(2000), 1.0, top_k=2, top_p=1.0, device="cpu")(None, logits.expand(2000, 4)).argmax(-1)
    assert set(top2.tolist()) == {0, 1}
    # top_p = 0.75: tokens 0 (0.5) and 1 (mass before it 0.5 < 0.75) stay; token 2 (mass before 0.8) goes
    nucleus = SeededSampler(range(2000), 1.0, top_k=0, top_p=0.75, device="cpu")(None, logits.expand(2000, 4)).argmax(-1)
    assert set(nucleus.tolist()) == {0, 1}
    hot = SeededSampler(range(4000), temperature=2.0, top_k=0, top_p=1.0, device="cpu")(None, logits.expand(4000, 4))
    p = torch.softmax(logits[0] / 2.0, -1)
    assert torch.allclose(torch.bincount(hot.argmax(-1), minlength=4).float() / 4000, p, atol=0.03)


def test_logits_and_values_align_with_response_tokens(tiny):
    tok, policy, critic, q, qm = tiny
    r = torch.tensor([[5, 6, 3, 0]] * 4)
    rm = torch.tensor([[1, 1, 1, 0]] * 4)
    logits = response_logits(policy, q, qm, r, rm)
    assert logits.shape == (4, 4, len(tok))
    # row 1: prompt "t4" (left-padded); the logits for response token 0 come from the last prompt token
    real = q[1][qm[1].bool()]
    manual = policy(input_ids=torch.cat([real, r[1, :2]]).unsqueeze(0)).logits[0]
    assert torch.allclose(logits[1, :3], manual[len(real) - 1:len(real) + 2], atol=1e-4)
    values = response_values(critic, q, qm, r, rm)
    assert values.shape == (4, 4)
    hidden = critic.transformer(input_ids=torch.cat([real, r[1, :2]]).unsqueeze(0)).last_hidden_state
    assert torch.allclose(values[1, :3], critic.score(hidden)[0, len(real) - 1:, 0], atol=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_response_logits_backward_allocates_no_vocabulary_sized_zeros(arch):
    # Logits sliced out of a (B, T+1, V) output have a backward that zero-fills a fresh tensor of that
    # size (and copies the gradient into it) at every update; the LM head runs at the T positions only.
    from torch.profiler import profile

    tok = build_tokenizer(32, padding_side="left")
    policy = build_model("causal_lm", tiny_config(arch, tok, hidden=32, layers=1), seed=0)
    enc = tok(["t1 t2 t3", "t4"], return_tensors="pt", padding=True)
    r, rm = torch.tensor([[5, 6, 3], [7, 8, 9]]), torch.ones(2, 3, dtype=torch.long)
    with profile(record_shapes=True) as prof:
        logits = response_logits(policy, enc.input_ids, enc.attention_mask, r, rm)
        logits.logsumexp(-1).sum().backward()
    v = len(tok)
    fills = [e.name for e in prof.events() if e.name in ("aten::slice_backward", "aten::select_backward")
             and e.input_shapes and e.input_shapes[0] and e.input_shapes[0][-1] == v]
    assert fills == []
    assert logits.shape == (2, 3, v) and logits.is_contiguous()
    full = policy(input_ids=torch.cat([enc.input_ids, r], 1), attention_mask=torch.cat([enc.attention_mask, rm], 1),
                  position_ids=(torch.cat([enc.attention_mask, rm], 1).cumsum(1) - 1).clamp(min=0)).logits
    assert torch.allclose(logits, full[:, -4:-1], atol=1e-6)


def test_episode_seeds_distinct_and_stable():
    a = episode_seeds(0, 3, 10, 50)
    assert len(set(a)) == 50 and a == episode_seeds(0, 3, 10, 50)
    assert a[5:] == episode_seeds(0, 3, 15, 45)
    assert not set(a) & set(episode_seeds(0, 4, 10, 50))
    assert all(0 <= s < 2**63 for s in a) and math.isfinite(len(a))


def test_counter_uniform_is_per_row_and_uniform():
    both = counter_uniform(torch.tensor([11, 12]), step=3, vocab_size=5000)
    alone = counter_uniform(torch.tensor([12]), step=3, vocab_size=5000)
    assert torch.equal(both[1], alone[0])  # a row's numbers do not depend on its neighbours
    assert not torch.equal(both[0], both[1])
    assert not torch.equal(alone, counter_uniform(torch.tensor([12]), step=4, vocab_size=5000))
    u = torch.cat([counter_uniform(torch.tensor([s]), t, 5000) for s in (1, 2) for t in range(20)]).flatten()
    assert 0 < u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002
    counts = torch.histc(u, bins=10, min=0, max=1)
    assert (counts / len(u) - 0.1).abs().max() < 0.005


def test_seeded_sampler_rows_are_independent_and_never_pick_zero_probability():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 50, generator=g) * 3
    logits[:, 0] = float("-inf")  # probability 0 at both ends of the cumulative sum
    logits[:, -1] = float("-inf")
    seeds = [101, 102, 103, 104, 105, 106]
    batch, alone = SeededSampler(seeds, 0.8, 0, 1.0, "cpu"), SeededSampler(seeds[3:4], 0.8, 0, 1.0, "cpu")
    picks = []
    for _ in range(40):
        out = batch(None, logits)
        assert torch.equal(out.sum(-1), torch.ones(6)) and set(out.unique().tolist()) == {0.0, 1.0}  # one-hot rows
        tok = out.argmax(-1)
        assert torch.equal(alone(None, logits[3:4]).argmax(-1), tok[3:4])  # a row's draw ignores its neighbours
        picks.append(tok)
    picks = torch.stack(picks)
    assert not ((picks == 0) | (picks == 49)).any()
    assert len(picks[:, 3].unique()) > 5  # steps draw fresh numbers
    top3 = SeededSampler(range(500), 1.0, top_k=3, top_p=1.0, device="cpu")(None, logits[:1].expand(500, 50))
    assert set(top3.argmax(-1).tolist()) <= set(logits[0].topk(3).indices.tolist())


def test_prompts_text_and_conversational(tmp_path):
    from rewardlab.ppo.config import DataConfig
    from rewardlab.ppo.prompts import load_prompts, tokenize_prompts

    tok = build_tokenizer(32)
    chat = [{"role": "user", "content": "t1 t2"}]
    ids = tokenize_prompts(tok, ["t3 t4", chat])
    assert ids[0] == tok("t3 t4")["input_ids"]
    assert tok.decode(ids[1]) == "user : t1 t2 assistant :"  # the chat template with a generation prompt
    path = tmp_path / "p.jsonl"
    path.write_text('{"q": "t1"}\n{"q": "t2 t3"}\n')
    assert load_prompts(DataConfig(dataset_name=str(path), prompt_column="q")) == ["t1", "t2 t3"]
    with pytest.raises(RewardlabError, match="not a column"):
        load_prompts(DataConfig(dataset_name=str(path), prompt_column="prompt"))
    with pytest.raises(RewardlabError, match="no prompts left"):
        tokenize_prompts(tok, ["t1 t2 t3"], max_prompt_length=2)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "mistral"])
@pytest.mark.parametrize(("temperature", "top_k", "top_p", "stop"), [(1.0, 0, 1.0, False), (2.5, 0, 1.0, True),
                                                                     (0.7, 5, 0.9, True)])
def test_decode_loop_equals_hf_generate_token_for_token(arch, temperature, top_k, top_p, stop):
    # The lean loop (StaticCache, one forward per token) against greedy generate() with the same sampler.
    from rewardlab.ppo.rollout import hf_generate_responses

    tok = build_tokenizer(32, padding_side="left")
    policy = build_model("causal_lm", tiny_config(arch, tok, hidden=32, layers=2), seed=3)
    enc = tok(["t1 t2 t3", "t4", "t5 t6", "t7 t8 t9 t10 t11", "t3", "t2 t9"], return_tensors="pt", padding=True)
    assert (enc.attention_mask == 0).any()  # left padding is exercised
    stop_id = tok.eos_token_id if stop else None
    kw = dict(response_length=24, temperature=temperature, top_k=top_k, top_p=top_p, pad_id=tok.pad_token_id,
              stop_ids=stop_id, seeds=episode_seeds(7, 2, 0, 6))
    ref = hf_generate_responses(policy, enc.input_ids, enc.attention_mask, micro_batch=4, **kw)
    new = generate_responses(policy, enc.input_ids, enc.attention_mask, micro_batch=4, **kw)
    assert new.shape == (6, 24) and torch.equal(new, ref)
    if stop:  # some row stops early and is padded after its stop token: the case is exercised
        first = [row.tolist().index(tok.eos_token_id) for row in ref if tok.eos_token_id in row.tolist()]
        assert any(c < 23 for c in first)


def test_preallocated_cache_layer_writes_in_place_and_returns_the_filled_part():
    from rewardlab.ppo.rollout import _preallocated_cache

    tok = build_tokenizer(32)
    cache = _preallocated_cache(tiny_config("llama", tok, hidden=32, layers=2), max_len=9)
    g = torch.Generator().manual_seed(0)
    k1, v1 = torch.randn(3, 2, 5, 16, generator=g), torch.randn(3, 2, 5, 16, generator=g)
    k2, v2 = torch.randn(3, 2, 1, 16, generator=g), torch.randn(3, 2, 1, 16, generator=g)
    keys, values = cache.update(k1, v1, 0)
    ptr = keys.data_ptr()
    keys, values = cache.update(k2, v2, 0)
    assert keys.data_ptr() == ptr  # the same buffer: nothing was copied into a new tensor
    assert torch.equal(keys, torch.cat([k1, k2], 2)) and torch.equal(values, torch.cat([v1, v2], 2))
    assert cache.get_seq_length(0) == 6 and cache.get_seq_length(1) == 0
    assert cache.get_mask_sizes(1, 0) == (7, 0)  # attention spans the tokens so far (+ the query), not max_len


class _GenerationConfig:
    def __init__(self, eos_token_id):
        self.eos_token_id = eos_token_id


class _Policy:
    """What `stop_token_ids` reads of a policy: its generation config and vocabulary size."""

    def __init__(self, eos_token_id, vocab_size=152_000):
        from transformers import PretrainedConfig

        self.generation_config = _GenerationConfig(eos_token_id)
        self.config = PretrainedConfig(vocab_size=vocab_size)


class _Tokenizer:
    def __init__(self, eos_token_id):
        self.eos_token_id = eos_token_id


def _gen(**fields):
    """A `GenerationConfig`; ``stop_token_ids`` set after construction (until the config's type check takes ints)."""
    from rewardlab.ppo.config import GenerationConfig

    ids = fields.pop("stop_token_ids", ())
    gen = GenerationConfig(**fields)
    object.__setattr__(gen, "stop_token_ids", tuple(ids))
    return gen


@pytest.mark.parametrize(("fields", "tok_eos", "gen_eos", "expected"), [
    # Qwen2.5-Instruct: the tokenizer's EOS is <|im_end|>, the generation config adds <|endoftext|>
    ({"stop_token": "eos"}, 151645, [151645, 151643], (151645, 151643)),
    ({"stop_token": "eos"}, 3, 3, (3,)),                                    # one id from both: once
    ({"stop_token": "eos"}, 3, None, (3,)),
    ({"stop_token": "eos", "stop_token_id": 7, "stop_token_ids": (9, 3, 7)}, 3, [3, 5], (3, 5, 7, 9)),
    ({"stop_token_id": 7}, 3, [3, 5], (7,)),                               # no 'eos': EOS ids do not count
    ({"stop_token_ids": (9, 8)}, 3, 3, (9, 8)),
    ({}, 3, [3, 5], ()),                                                   # no stop token: fixed length
])
def test_stop_token_ids_union_in_order_without_repeats(fields, tok_eos, gen_eos, expected):
    assert stop_token_ids(_gen(**fields), _Tokenizer(tok_eos), _Policy(gen_eos)) == expected


def test_stop_token_ids_are_checked():
    with pytest.raises(RewardlabError, match="neither the tokenizer nor the policy's generation config"):
        stop_token_ids(_gen(stop_token="eos"), _Tokenizer(None), _Policy(None))
    with pytest.raises(RewardlabError, match=r"\[40\] are outside the policy's vocabulary of 32"):
        stop_token_ids(_gen(stop_token_ids=(5, 40)), _Tokenizer(3), _Policy(3, vocab_size=32))


def test_stop_token_ids_of_a_tiny_policy_and_its_lora_wrapper(tiny):
    import copy

    from rewardlab.ppo.config import ModelsConfig
    from rewardlab.ppo.models import with_lora

    tok, policy, *_ = tiny
    gen = _gen(stop_token="eos", stop_token_ids=(7,))
    assert stop_token_ids(gen, tok, policy) == (tok.eos_token_id, 7)
    pytest.importorskip("peft")
    wrapped, _ = with_lora(copy.deepcopy(policy), None, ModelsConfig(use_peft=True, lora_r=2))
    assert stop_token_ids(gen, tok, wrapped) == (tok.eos_token_id, 7)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_several_stop_ids_decode_loop_equals_hf_generate(arch):
    tok = build_tokenizer(32, padding_side="left")
    policy = build_model("causal_lm", tiny_config(arch, tok, hidden=32, layers=2), seed=3)
    enc = tok(["t1 t2 t3", "t4", "t5 t6", "t7 t8 t9 t10 t11", "t3", "t2 t9"], return_tensors="pt", padding=True)
    stops = (tok.eos_token_id, 9, 17)
    kw = dict(response_length=24, temperature=2.5, top_k=0, top_p=1.0, pad_id=tok.pad_token_id,
              seeds=episode_seeds(7, 2, 0, 6))
    ref = hf_generate_responses(policy, enc.input_ids, enc.attention_mask, micro_batch=4, stop_ids=stops, **kw)
    new = generate_responses(policy, enc.input_ids, enc.attention_mask, micro_batch=4, stop_ids=stops, **kw)
    assert torch.equal(new, ref)
    r, m, has = truncate_after_stop(new, stops, tok.pad_token_id)
    assert torch.equal(r, new)  # the loop already padded after each row's first stop token
    ended = {int(row[int(m_.sum()) - 1]) for row, m_, h in zip(r, m, has, strict=True) if h}
    assert len(ended) >= 2, ended  # rows stopped at different ids of the set: the case is exercised
    # one id, as an int, a tuple or a list: the same tokens
    one = [generate_responses(policy, enc.input_ids, enc.attention_mask, micro_batch=4, **kw, **extra)
           for extra in ({"stop_ids": 9}, {"stop_ids": (9,)}, {"stop_ids": [9]})]
    assert torch.equal(one[0], one[1]) and torch.equal(one[0], one[2])
