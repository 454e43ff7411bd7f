"""Tests for rewardlab.reward.scoring: pooling parity with per-row forwards, batching, tokenizers, errors."""

from __future__ import annotations

import logging
import random
from types import SimpleNamespace

import pytest
import torch

from rewardlab.errors import RewardlabError
from rewardlab.reward.metadata import RewardModelMetadata, write_metadata
from rewardlab.reward.scoring import RewardModel, last_token_index, pool_last_token
from rewardlab.tiny import PAD_ID, build_model, build_tokenizer, tiny_config

ATOL = 1e-5


def _save(folder, arch: str, num_labels: int, *, seed: int = 1, metadata=None, tokenizer=None):
    tok = tokenizer or build_tokenizer(64)
    model = build_model("sequence_classification", tiny_config(arch, tok, num_labels=num_labels), seed=seed)
    if metadata is not None:
        write_metadata(model.config, metadata)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(arch, H) -> folder of a tiny classifier saved to disk."""
    cache = {}

    def get(arch: str, num_labels: int):
        if (arch, num_labels) not in cache:
            cache[arch, num_labels] = _save(tmp_path_factory.mktemp(f"{arch}{num_labels}"), arch, num_labels)
        return cache[arch, num_labels]

    return get


def _rows(n: int, seed: int = 0, lo: int = 1, hi: int = 20) -> list[list[int]]:
    g = random.Random(seed)
    # word ids only (4 .. 59), never the pad id
    return [[g.randrange(4, 60) for _ in range(g.randint(lo, hi))] for _ in range(n)]


def _pad(rows: list[list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), PAD_ID)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[i, sl] = torch.tensor(r)
        mask[i, sl] = 1
    return ids, mask


def _per_row(model, rows) -> torch.Tensor:
    """Reference: each row alone, unpadded, through the HF model; its own (1, H) logits."""
    with torch.no_grad():
        return torch.cat([model(input_ids=torch.tensor([r])).logits for r in rows]).float()


# ---------------------------------------------------------------------------------------- pooling
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("num_labels", [1, 2, 3])
def test_pooling_matches_per_row_forward(saved, arch, side, num_labels):
    rm = RewardModel.from_pretrained(saved(arch, num_labels), batch_size=3)
    rows = _rows(7, seed=num_labels)
    expected = _per_row(rm.model, rows)
    ids, mask = _pad(rows, side)
    got = rm.score_ids(ids, mask)
    assert got.shape == (7, num_labels) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    # The micro-batch forward itself, fed one padded batch of the given side.
    torch.testing.assert_close(rm.forward(ids, mask).float(), expected, atol=ATOL, rtol=0)
    # The text path with the tokenizer padding on this side.
    rm.tokenizer.padding_side = side
    texts = [" ".join(rm.tokenizer.convert_ids_to_tokens(r)) for r in rows]
    torch.testing.assert_close(rm.score_texts([""] * 7, texts), expected, atol=ATOL, rtol=0)


def test_left_padding_needs_position_ids(saved):
    """Guard on the test above: GPT-2 called naively on left padding is wrong, so parity is not free."""
    rm = RewardModel.from_pretrained(saved("gpt2", 1))
    rows = _rows(4, seed=3, lo=2, hi=12)
    ids, mask = _pad(rows, "left")
    with torch.no_grad():
        naive = rm.model(input_ids=ids, attention_mask=mask).logits
    assert (naive - _per_row(rm.model, rows)).abs().max() > 1e-3


def test_order_preserved_under_length_sorting(saved):
    rm = RewardModel.from_pretrained(saved("gpt2", 2), batch_size=3)
    rows = _rows(11, seed=5, lo=1, hi=30)
    random.Random(0).shuffle(rows)
    expected = _per_row(rm.model, rows)
    got = rm.score_ids(*_pad(rows, "right"))
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    # Sorting did change the processing order here (else the test proves nothing).
    assert sorted(range(11), key=lambda i: -len(rows[i])) != list(range(11))


def test_text_and_ids_paths_agree(saved):
    rm = RewardModel.from_pretrained(saved("llama", 2), batch_size=2)
    prompts = ["t1 t2 t3", "t4", "t5 t6 t7 t8 t9"]
    responses = [" t10 t11", " t12 t13 t14 t15", " t16"]
    by_text = rm.score_texts(prompts, responses)
    enc = rm.tokenizer(
        [p + r for p, r in zip(prompts, responses, strict=True)], padding=True, return_tensors="pt"
    )
    torch.testing.assert_close(by_text, rm.score_ids(enc.input_ids, enc.attention_mask), atol=ATOL, rtol=0)


def test_messages_use_chat_template(saved):
    rm = RewardModel.from_pretrained(saved("gpt2", 1))
    convs = [
        [{"role": "user", "content": "t1 t2"}, {"role": "assistant", "content": "t3"}],
        [
            {"role": "system", "content": "t9"},
            {"role": "user", "content": "t4"},
            {"role": "assistant", "content": "t5 t6"},
        ],
    ]
    rendered = [rm.tokenizer.apply_chat_template(c, tokenize=False) for c in convs]
    rows = [rm.tokenizer(t, add_special_tokens=False).input_ids for t in rendered]
    assert rm.tokenizer.convert_tokens_to_ids("assistant") in rows[0]
    torch.testing.assert_close(rm.score_messages(convs), _per_row(rm.model, rows), atol=ATOL, rtol=0)


def test_pool_last_token_by_hand():
    scores = torch.arange(2 * 5 * 2, dtype=torch.float32).reshape(2, 5, 2)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0]])  # left, right padding
    assert last_token_index(mask).tolist() == [4, 2]
    torch.testing.assert_close(pool_last_token(scores, mask), torch.stack([scores[0, 4], scores[1, 2]]))
    with pytest.raises(RewardlabError, match="all-zero attention mask"):
        last_token_index(torch.tensor([[1, 0], [0, 0]]))


class _PerTokenModel(torch.nn.Module):
    """A model with no `score` attribute whose output logits are per-token (B, T, H)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids=None, attention_mask=None, position_ids=None):
        hidden = self.inner.transformer(input_ids, attention_mask=attention_mask, position_ids=position_ids)
        return SimpleNamespace(logits=self.inner.score(hidden.last_hidden_state))


class _PooledModel(torch.nn.Module):
    """A model with no `score` attribute that returns HF's own pooled (B, H) logits."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None):
        return self.inner(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
        )


def test_per_token_outputs_pooled(saved):
    base = RewardModel.from_pretrained(saved("gpt2", 3))
    rm = RewardModel(_PerTokenModel(base.model), base.tokenizer, batch_size=2)
    assert rm._head is None  # the fallback path is the one under test
    rows = _rows(5, seed=7)
    torch.testing.assert_close(
        rm.score_ids(*_pad(rows, "right")), _per_row(base.model, rows), atol=ATOL, rtol=0
    )


def test_pooled_outputs_fallback_handles_pad_id_inside_row(saved):
    base = RewardModel.from_pretrained(saved("gpt2", 2))
    rm = RewardModel(_PooledModel(base.model), base.tokenizer, batch_size=4)
    assert rm._head is None
    rows = _rows(4, seed=8, lo=3)
    rows[1] = rows[1] + [PAD_ID]  # a real token equal to the pad id (as when pad = eos)
    # Reference per-token score at the true last position, each row alone.
    with torch.no_grad():
        expected = torch.cat(
            [
                base.model.score(base.model.transformer(torch.tensor([r])).last_hidden_state)[:, -1]
                for r in rows
            ]
        )
    got = rm.score_ids(*_pad(rows, "right"))
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    # HF's own pad-id pooling would have picked the wrong token for row 1.
    assert (_per_row(base.model, rows)[1] - expected[1]).abs().max() > 1e-4


# ---------------------------------------------------------------------------------------- tokenizers
def test_same_tokenizer_passes_ids_through(saved, monkeypatch, caplog):
    rm = RewardModel.from_pretrained(saved("gpt2", 1))
    policy_tok = build_tokenizer(64)  # a different object with the same vocabulary and specials
    monkeypatch.setattr(
        policy_tok, "decode", lambda *a, **k: pytest.fail("decoded although tokenizers match")
    )
    rows = _rows(3, seed=9)
    ids, mask = _pad(rows, "left")
    with caplog.at_level(logging.INFO, logger="rewardlab.scoring"):
        got = rm.score_policy_ids(ids, mask, policy_tok)
    assert "differ" not in caplog.text
    torch.testing.assert_close(got, _per_row(rm.model, rows), atol=ATOL, rtol=0)


@pytest.mark.parametrize("template", [False, True])
def test_different_tokenizer_retokenises(tmp_path, caplog, template):
    words = [f"w{i}" for i in range(40)]
    rm_tok = build_tokenizer(words=words, chat_template=template)
    rm = RewardModel.from_pretrained(_save(tmp_path, "gpt2", 2, tokenizer=rm_tok))
    policy_tok = build_tokenizer(words=list(reversed(words)), padding_side="left")
    prompts = ["w1 w2 w3", "w4", "w5 w6 w7 w8"]
    responses = ["w9 w10", "w11 w12 w13", "w14"]
    # Policy ids: prompt then response then EOS (a policy special token, dropped on decoding).
    rows = [
        policy_tok(p).input_ids + policy_tok(r).input_ids + [policy_tok.eos_token_id]
        for p, r in zip(prompts, responses, strict=True)
    ]
    assert (
        rows[0] != rm.tokenizer(prompts[0] + " " + responses[0]).input_ids
    )  # the vocabularies really differ
    ids, mask = _pad(rows, "left")
    plens = torch.tensor([len(policy_tok(p).input_ids) for p in prompts])
    with caplog.at_level(logging.WARNING, logger="rewardlab.scoring"):
        got = rm.score_policy_ids(ids, mask, policy_tok, plens)
        rm.score_policy_ids(ids, mask, policy_tok, plens)
    assert caplog.text.count("tokenizers differ") == 1  # detected and logged once
    if template:
        expected = rm.score_messages(
            [
                [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
                for p, r in zip(prompts, responses, strict=True)
            ]
        )
    else:
        # decode joins prompt and response tokens with a space
        expected = rm.score_texts(prompts, [" " + r for r in responses])
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    # And against the model directly on the RM's own tokens (not only self-consistency).
    if not template:
        own = [rm.tokenizer(p + " " + r).input_ids for p, r in zip(prompts, responses, strict=True)]
        torch.testing.assert_close(got, _per_row(rm.model, own), atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------- truncation
def test_long_prompt_truncated_from_left(saved, caplog):
    rm = RewardModel.from_pretrained(saved("gpt2", 1), max_length=6)
    prompt, response = "t1 t2 t3 t4 t5 t6 t7", " t8 t9 t10"
    with caplog.at_level(logging.WARNING, logger="rewardlab.scoring"):
        got = rm.score_texts([prompt], [response])
    assert "dropping the first 4 prompt tokens" in caplog.text
    kept = rm.tokenizer("t5 t6 t7 t8 t9 t10").input_ids
    torch.testing.assert_close(got, _per_row(rm.model, [kept]), atol=ATOL, rtol=0)


def test_long_ids_truncated_from_left(saved, caplog):
    rm = RewardModel.from_pretrained(saved("llama", 1), max_length=5)
    rows = _rows(2, seed=10, lo=8, hi=8)
    with caplog.at_level(logging.WARNING, logger="rewardlab.scoring"):
        got = rm.score_ids(*_pad(rows, "right"))
    assert "from the left" in caplog.text
    torch.testing.assert_close(got, _per_row(rm.model, [r[-5:] for r in rows]), atol=ATOL, rtol=0)
    with pytest.raises(RewardlabError, match="response alone needs 6 tokens"):
        rm.score_ids(*_pad(rows, "right"), prompt_lengths=torch.tensor([2, 2]))


def test_response_longer_than_max_length_errors(saved):
    rm = RewardModel.from_pretrained(saved("gpt2", 1), max_length=3)
    with pytest.raises(RewardlabError, match=r"row 1: the response alone needs 4 tokens.*max_length=3"):
        rm.score_texts(["t1", "t1 t2"], [" t3", " t4 t5 t6 t7"])


def test_default_max_length(tmp_path, saved):
    assert RewardModel.from_pretrained(saved("gpt2", 1)).max_length == 512  # n_positions < 4096
    tok = build_tokenizer(64, model_max_length=100)
    assert RewardModel.from_pretrained(_save(tmp_path, "llama", 1, tokenizer=tok)).max_length == 100


# ---------------------------------------------------------------------------------------- errors
def test_missing_path_errors(tmp_path):
    with pytest.raises(RewardlabError, match="does not exist.*save_pretrained"):
        RewardModel.from_pretrained(tmp_path / "nope")


def test_no_safetensors_errors(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(
        RewardlabError, match=r"no safetensors weights .*pytorch_model\.bin.*safetensors only"
    ):
        RewardModel.from_pretrained(tmp_path)


def test_missing_tokenizer_errors(tmp_path):
    tok = build_tokenizer(64)
    build_model("sequence_classification", tiny_config("gpt2", tok, num_labels=1)).save_pretrained(tmp_path)
    with pytest.raises(RewardlabError, match=r"no tokenizer files in .*tokenizer\.save_pretrained"):
        RewardModel.from_pretrained(tmp_path)


def test_tokenizer_without_pad_token_pads_with_eos(saved, caplog):
    base = RewardModel.from_pretrained(saved("gpt2", 1))
    want = base.score_texts(["t1 t2", "t3"], [" t4 t5 t6", " t7"])
    base.tokenizer.pad_token = None
    with caplog.at_level("WARNING", logger="rewardlab.reward.scoring"):
        rm = RewardModel(base.model, base.tokenizer)
    assert rm.tokenizer.pad_token == rm.tokenizer.eos_token
    assert [r.getMessage() for r in caplog.records if "no pad token" in r.getMessage()] == [
        f"the reward model's tokenizer has no pad token; padding with its EOS token {rm.tokenizer.eos_token!r} "
        f"(id {rm.tokenizer.eos_token_id}), as TRL does"]
    # the last real token comes from the mask, so scores are those of the model's own pad token
    torch.testing.assert_close(rm.score_texts(["t1 t2", "t3"], [" t4 t5 t6", " t7"]), want)
    base.tokenizer.pad_token, base.tokenizer.eos_token = None, None
    with pytest.raises(RewardlabError, match=r"neither a pad token nor an EOS token"):
        RewardModel(base.model, base.tokenizer)


def test_bad_arguments_error(saved):
    base = RewardModel.from_pretrained(saved("gpt2", 1))
    with pytest.raises(RewardlabError, match="unknown head semantics 'bt'"):
        RewardModel(base.model, base.tokenizer, semantics="bt")
    with pytest.raises(RewardlabError, match="nan_policy must be"):
        RewardModel(base.model, base.tokenizer, nan_policy="ignore")
    with pytest.raises(RewardlabError, match="2 prompts but 1 responses"):
        base.score_texts(["t1", "t2"], [" t3"])


def _nan_model(saved):
    """A model whose logits are NaN for every row containing word t7 (id 11)."""
    rm = RewardModel.from_pretrained(saved("gpt2", 2), batch_size=2)
    with torch.no_grad():
        rm.model.get_input_embeddings().weight[rm.tokenizer.convert_tokens_to_ids("t7")] = float("nan")
    return rm


def test_nonfinite_logits_error_names_rows(saved):
    rm = _nan_model(saved)
    with pytest.raises(RewardlabError, match=r"NaN/inf logits for 2 of 4 rows: \[1, 3\].*nan_policy='drop'"):
        rm.score_texts([""] * 4, ["t1 t2", "t7 t3", "t4", "t5 t6 t7"])


def test_nonfinite_logits_drop(saved, caplog):
    rm = _nan_model(saved)
    rm.nan_policy = "drop"
    with caplog.at_level(logging.WARNING, logger="rewardlab.scoring"):
        out = rm.score_texts([""] * 4, ["t1 t2", "t7 t3", "t4", "t5 t6 t7"])
    assert rm.last_kept_mask.tolist() == [True, False, True, False]
    assert "dropping 2 of 4 rows" in caplog.text
    assert out.shape == (4, 2) and torch.isfinite(out[rm.last_kept_mask]).all()
    clean = RewardModel.from_pretrained(saved("gpt2", 2)).score_texts(["", ""], ["t1 t2", "t4"])
    torch.testing.assert_close(out[rm.last_kept_mask], clean, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------- loading
def test_trust_remote_code_off_by_default(saved, monkeypatch):
    import transformers

    seen = []
    real_model = transformers.AutoModelForSequenceClassification.from_pretrained
    real_tok = transformers.AutoTokenizer.from_pretrained

    def spy(real):
        def wrapped(*args, **kwargs):
            seen.append(kwargs)
            return real(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", spy(real_model))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", spy(real_tok))
    RewardModel.from_pretrained(saved("gpt2", 1))
    assert [k["trust_remote_code"] for k in seen] == [False, False]
    assert seen[0]["use_safetensors"] is True
    seen.clear()
    RewardModel.from_pretrained(saved("gpt2", 1), trust_remote_code=True)
    assert [k["trust_remote_code"] for k in seen] == [True, True]


def test_semantics_from_saved_metadata(tmp_path, caplog):
    meta = RewardModelMetadata(semantics="classifier", num_heads=2, loss="cross_entropy")
    folder = _save(tmp_path / "a", "llama", 2, metadata=meta)
    rm = RewardModel.from_pretrained(folder)
    assert rm.semantics == "classifier" and rm.metadata == meta and rm.num_heads == 2
    with caplog.at_level(logging.WARNING, logger="rewardlab.scoring"):
        assert RewardModel.from_pretrained(folder, semantics="bradley_terry").semantics == "bradley_terry"
    assert "overrides" in caplog.text
    bad = _save(
        tmp_path / "b", "gpt2", 3, metadata=RewardModelMetadata(semantics="bradley_terry", num_heads=2)
    )
    with pytest.raises(RewardlabError, match="metadata says 2 heads but config.num_labels = 3"):
        RewardModel.from_pretrained(bad)


def test_semantics_undeclared_is_none(saved):
    rm = RewardModel.from_pretrained(saved("gpt2", 2))
    assert rm.semantics is None and rm.metadata is None
    assert (
        RewardModel.from_pretrained(saved("gpt2", 2), semantics="bradley_terry").semantics == "bradley_terry"
    )


def test_dtype_and_output_float32(saved):
    rows = _rows(3, seed=11)
    ref = RewardModel.from_pretrained(saved("gpt2", 2)).score_ids(*_pad(rows, "right"))
    rm = RewardModel.from_pretrained(saved("gpt2", 2), dtype=torch.float64, device="cpu")
    assert next(rm.model.parameters()).dtype == torch.float64
    got = rm.score_ids(*_pad(rows, "right"))
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
