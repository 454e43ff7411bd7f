"""Head readings: hand-computed values, parity with the pipeline, the principal reading, probe sequences."""

import math
import subprocess
import sys

import pytest
import torch

from rewardlab.errors import RewardlabError
from rewardlab.reward.pipeline import RewardPipeline
from rewardlab.reward.readings import (
    candidate_readings,
    candidate_specs,
    principal_reading,
    probe_sequences,
    read_heads,
)
from rewardlab.reward.transforms import REGISTRY, reduce_heads

ONE = torch.tensor([[1.0], [-2.0], [0.5]])
TWO = torch.tensor([[1.0, 3.0], [2.0, -1.0], [0.5, 0.5]])
THREE = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])


def _old_readings(logits):
    """The formulas `candidate_readings` had before it was built from the transforms, written out."""
    h = logits.shape[-1]
    out = {f"head(k={k})": logits[:, k] for k in range(h)}
    out["mean"] = logits.mean(dim=-1)
    if h > 1:
        out["sum"] = logits.sum(dim=-1)
        out["min"] = logits.amin(dim=-1)
    if h == 2:
        out["logodds(pos=1,neg=0)"] = logits[:, 1] - logits[:, 0]
    elif h > 2:
        logp = torch.log_softmax(logits, dim=-1)
        out.update({f"logprob(k={k})": logp[:, k] for k in range(h)})
    return out


@pytest.mark.parametrize("logits", [ONE, TWO, THREE, torch.randn(50, 4, generator=torch.Generator().manual_seed(0))])
def test_readings_equal_the_old_formulas_bit_for_bit(logits):
    new, old = candidate_readings(logits), _old_readings(logits)
    assert list(new) == list(old) == candidate_specs(logits.shape[-1])  # same keys, same order
    for k in old:
        assert new[k].shape == (logits.shape[0],)
        assert torch.equal(new[k], old[k]), k


def test_one_head_readings_by_hand():
    r = candidate_readings(ONE)
    assert list(r) == ["head(k=0)", "mean"]
    assert r["head(k=0)"].tolist() == r["mean"].tolist() == [1.0, -2.0, 0.5]


def test_two_head_readings_by_hand():
    r = candidate_readings(TWO)
    assert list(r) == ["head(k=0)", "head(k=1)", "mean", "sum", "min", "logodds(pos=1,neg=0)"]
    assert r["head(k=0)"].tolist() == [1.0, 2.0, 0.5]
    assert r["head(k=1)"].tolist() == [3.0, -1.0, 0.5]
    assert r["mean"].tolist() == [2.0, 0.5, 0.5]
    assert r["sum"].tolist() == [4.0, 1.0, 1.0]
    assert r["min"].tolist() == [1.0, -1.0, 0.5]
    assert r["logodds(pos=1,neg=0)"].tolist() == [2.0, -3.0, 0.0]


def test_three_head_readings_by_hand():
    r = candidate_readings(THREE)
    assert list(r) == ["head(k=0)", "head(k=1)", "head(k=2)", "mean", "sum", "min",
                       "logprob(k=0)", "logprob(k=1)", "logprob(k=2)"]
    assert r["head(k=2)"].tolist() == [0.5, -1.0]
    assert r["mean"].tolist() == pytest.approx([-0.5 / 3, 2.0 / 3])
    assert r["sum"].tolist() == [-0.5, 2.0]
    assert r["min"].tolist() == [-2.0, -1.0]
    lse = [math.log(math.exp(1.0) + math.exp(-2.0) + math.exp(0.5)), math.log(1.0 + math.exp(3.0) + math.exp(-1.0))]
    for k in range(3):
        assert r[f"logprob(k={k})"].tolist() == pytest.approx([THREE[i, k].item() - lse[i] for i in range(2)], abs=1e-6)
    # the class probabilities sum to one
    probs = torch.stack([r[f"logprob(k={k})"] for k in range(3)]).exp().sum(0)
    assert probs.tolist() == pytest.approx([1.0, 1.0], abs=1e-6)


@pytest.mark.parametrize("logits", [TWO, THREE])
def test_each_reading_is_what_the_pipeline_computes_under_its_semantics(logits):
    for spec, value in candidate_readings(logits).items():
        semantics = "classifier" if spec.startswith(("logodds", "logprob")) else "bradley_terry"
        assert torch.equal(RewardPipeline.from_spec(spec, semantics=semantics)(logits).scores, value), spec


def test_read_heads_reads_any_head_reducer_and_refuses_the_rest():
    assert read_heads("logodds(pos=0,neg=1)", TWO).tolist() == [-2.0, 3.0, 0.0]
    assert read_heads("uwo(lam=0)", TWO).tolist() == [2.0, 0.5, 0.5]
    for spec in ("lsc", "mean|logsigmoid", "raw"):
        with pytest.raises(RewardlabError, match="is not a reading"):
            read_heads(spec, TWO)
    with pytest.raises(RewardlabError, match="out of range"):
        read_heads("head(k=2)", TWO)


def test_reduce_heads_skips_only_the_semantics_check():
    # A pipeline refuses a reading of undeclared heads; reduce_heads reads them.
    with pytest.raises(RewardlabError, match="not declared"):
        RewardPipeline.from_spec("mean")(TWO)
    assert reduce_heads(REGISTRY["mean"](), TWO).tolist() == [2.0, 0.5, 0.5]
    with pytest.raises(RewardlabError, match="not a head reduction"):
        reduce_heads(REGISTRY["logsigmoid"](), TWO)


@pytest.mark.parametrize(("semantics", "num_heads", "expected"), [
    ("bradley_terry", 1, "mean"),
    ("bradley_terry", 2, "mean"),
    ("bradley_terry", 3, "mean"),
    (None, 2, "mean"),
    ("classifier", 2, "logodds(pos=1,neg=0)"),
    ("classifier", 3, "logprob(k=2)"),
])
def test_principal_reading(semantics, num_heads, expected):
    assert principal_reading(semantics, num_heads) == expected
    assert expected in candidate_specs(num_heads)


def test_probe_sequences_are_deterministic_ordinary_tokens():
    from rewardlab.tiny import build_tokenizer

    tok = build_tokenizer(32)
    seqs = probe_sequences(tok)
    assert seqs == probe_sequences(tok) and seqs != probe_sequences(tok, seed=1)
    assert len(seqs) == 64 and all(8 <= len(s) <= 32 for s in seqs)
    special = set(tok.all_special_ids)
    ordinary = set(tok.get_vocab().values()) - special
    used = {i for s in seqs for i in s}
    assert used <= ordinary and not used & special
    short = probe_sequences(tok, n=5, seed=3, lengths=(2, 2))
    assert len(short) == 5 and all(len(s) == 2 for s in short)


def test_probe_sequences_still_importable_from_inspect():
    from rewardlab.reward_model.inspect import probe_sequences as from_inspect

    assert from_inspect is probe_sequences


def test_readings_import_no_reward_model_ppo_study_or_heavy_code():
    code = (
        "import sys; import rewardlab.reward.readings; "
        "bad = [m for m in sys.modules if m.startswith(('rewardlab.reward_model', 'rewardlab.ppo', 'rewardlab.study', "
        "'transformers', 'accelerate', 'datasets'))]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"rewardlab.reward.readings imported {out}"
