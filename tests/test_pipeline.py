"""The pipeline: chains equal their steps, spec round-trips and errors, diagnostics, state."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rewardlab.errors import RewardlabError
from rewardlab.reward import transforms as T
from rewardlab.reward.pipeline import RewardPipeline, head_correlation, parse_spec
from rewardlab.reward.transforms import Context

torch.manual_seed(0)
LOGITS = torch.randn(8, 2, dtype=torch.float64)
REF = torch.randn(8, 4, 2, dtype=torch.float64)


def test_chain_equals_applying_its_steps_one_by_one():
    steps = [T.mean(), T.temperature(t=0.5), T.center(q=0.25), T.lsc(q=0.5), T.whiten(), T.clip(lo=-2.0, hi=2.0)]
    out = RewardPipeline(steps, semantics="bradley_terry")(LOGITS, ref=REF).scores
    x, r = LOGITS.float(), REF.float()
    ctx = Context("bradley_terry", 2)
    for t in steps:
        x, r, _ = t.apply(x, r, t.init(), ctx)
    torch.testing.assert_close(out, x)


def test_combine_is_the_weighted_sum_of_its_terms():
    a, b = "mean|lsc(q=0.5)", "head(k=1)|par"
    other = torch.randn(8, 2, dtype=torch.float64)
    other_ref = torch.randn(8, 4, 2, dtype=torch.float64)
    pipe = RewardPipeline.from_spec(f"0.25*[{a}] + 2.0*[{b}]", semantics="bradley_terry")
    out = pipe([LOGITS, other], ref=[REF, other_ref])
    ea = RewardPipeline.from_spec(a, semantics="bradley_terry")(LOGITS, ref=REF).scores
    eb = RewardPipeline.from_spec(b, semantics="bradley_terry")(other, ref=other_ref).scores
    torch.testing.assert_close(out.scores, 0.25 * ea + 2.0 * eb)
    assert "reward/term/rm0/final/mean" in out.diagnostics and "reward/final/mean" in out.diagnostics
    with pytest.raises(RewardlabError, match="one logits tensor per term"):
        pipe(LOGITS, ref=REF)


@pytest.mark.parametrize(
    "spec",
    [
        "raw",
        "mean|center(q=0.85)|logsigmoid",
        "head(k=1)|temperature(t=1.5)|standardize|sigmoid|running_norm(center=false)|tanh",
        "uwo(lam=0.5)|lsc(q=0.5)|whiten(keep_mean=true)|clip(lo=-5,hi=5)",
        "logodds(pos=1,neg=0)|scale(a=2.0,b=-1.0)",
        "0.5*[mean|lsc(q=0.5)] + 0.5*[min|par]",
        "standardize(mean=0.1,std=2.5)",
    ],
)
def test_canonical_specs_print_back_identically(spec):
    assert RewardPipeline.from_spec(spec).spec == spec


def test_non_canonical_specs_normalise_to_a_fixed_point():
    for text, canonical in [
        (" mean | center( q = 0.85 ) |logsigmoid ", "mean|center(q=0.85)|logsigmoid"),
        ("clip(-1, 1)", "clip(lo=-1,hi=1)"),
        ("", "raw"),
        ("[mean|lsc] + 2*[min|lsc]", "1.0*[mean|lsc] + 2.0*[min|lsc]"),
    ]:
        spec = RewardPipeline.from_spec(text).spec
        assert spec == canonical
        assert RewardPipeline.from_spec(spec).spec == spec


@pytest.mark.parametrize(
    "spec, match",
    [
        ("meen", r"unknown transform 'meen'; valid transforms: .*mean"),
        ("lsc(p=0.5)", r"unknown parameter\(s\) \['p'\] for transform 'lsc'; its parameters are: q: float = 0.5"),
        ("clip(lo=x)", "not a number"),
        ("whiten|lsc", "cannot come after 'whiten'.*head → temperature → center → shape → normalize → clip"),
        ("mean|min", "reduce heads only once"),
        ("center(q=2)", r"in \[0, 1\]"),
        ("0.5*[mean", "unbalanced"),
        ("foo*[mean]", "must be a finite number|not a number"),
        ("mean(", "unbalanced"),
        ("mean)x(", "unbalanced"),
        ("mean x", "cannot parse"),
    ],
)
def test_spec_errors_say_what_is_valid(spec, match):
    with pytest.raises(RewardlabError, match=match):
        RewardPipeline.from_spec(spec)


def test_multi_head_needs_a_declared_reducer():
    with pytest.raises(RewardlabError, match="does not say how to read them.*'mean' for this model"):
        RewardPipeline.from_spec("center", semantics="bradley_terry")(LOGITS, ref=REF)
    with pytest.raises(RewardlabError, match=r"'logodds\(pos=1,neg=0\)' for this model"):
        RewardPipeline.from_spec("raw", semantics="classifier")(LOGITS)
    with pytest.raises(RewardlabError, match="semantics are not declared"):
        RewardPipeline.from_spec("raw")(LOGITS)
    # A reducer that does not fit the declared semantics is refused at construction.
    with pytest.raises(RewardlabError, match="declared Bradley-Terry heads"):
        RewardPipeline.from_spec("logodds", semantics="bradley_terry")
    with pytest.raises(RewardlabError, match="declared a cross-entropy classifier"):
        RewardPipeline.from_spec("sum", semantics="classifier")


def test_one_head_needs_no_reducer():
    x = torch.randn(5, 1)
    torch.testing.assert_close(RewardPipeline.from_spec("raw")(x).scores, x[:, 0])


def test_non_finite_logits_name_the_rows():
    x = torch.randn(6, 1)
    x[2, 0] = float("nan")
    x[5, 0] = float("inf")
    with pytest.raises(RewardlabError, match=r"2 row\(s\): 2, 5"):
        RewardPipeline.from_spec("raw")(x)


def test_shape_errors():
    with pytest.raises(RewardlabError, match=r"\(B, H\) tensor"):
        RewardPipeline.from_spec("raw")(torch.randn(5))
    with pytest.raises(RewardlabError, match=r"must be \(B, K, H\)"):
        RewardPipeline.from_spec("center")(torch.randn(5, 1), ref=torch.randn(5, 3))


def test_diagnostics():
    x = torch.tensor([[-10.0, -9.0], [0.0, 0.5], [10.0, 11.0], [1.0, 1.5]])
    out = RewardPipeline.from_spec("mean|sigmoid", semantics="bradley_terry")(x)
    d = out.diagnostics
    assert d["reward/raw/mean"] == pytest.approx(x.mean().item())
    assert d["reward/raw/max"] == 11.0 and d["reward/raw/min"] == -10.0
    # The sigmoid's input (the head mean) is saturated in rows 0 and 2: |r| > logit(0.95) ≈ 2.94.
    assert d["reward/saturated_frac"] == pytest.approx(0.5)
    final = torch.sigmoid(x.mean(-1))
    assert d["reward/final/std"] == pytest.approx(final.double().std(correction=0).item(), rel=1e-6)
    assert d["reward/head_corr"] == pytest.approx(np.corrcoef(x.T.numpy())[0, 1], rel=1e-6)


def test_head_correlation_is_nan_when_undefined():
    assert np.isnan(head_correlation(torch.ones(4, 2)))
    assert head_correlation(torch.tensor([[1.0, -1.0], [2.0, -2.0], [3.0, -3.0]])) == pytest.approx(-1.0)


def test_state_round_trips_through_json_and_continues_identically():
    spec = "running_norm|clip(lo=-3,hi=3)"
    a = RewardPipeline.from_spec(spec)
    batches = [torch.randn(7, 1) * (i + 1) + i for i in range(5)]
    for b in batches[:3]:
        a(b)
    saved = json.loads(json.dumps(a.state_dict()))
    b_pipe = RewardPipeline.from_spec(spec)
    b_pipe.load_state_dict(saved)
    for batch in batches[3:]:
        torch.testing.assert_close(a(batch).scores, b_pipe(batch).scores)
    # ...and equals numpy over all data seen.
    allx = torch.cat(batches).double().numpy().ravel()
    last = batches[-1].double().numpy().ravel()
    expected = np.clip((last - allx.mean()) / np.sqrt(allx.var() + 1e-8), -3, 3)
    np.testing.assert_allclose(b_pipe(batches[-1], update=False).scores.numpy(), expected, rtol=1e-5)
    with pytest.raises(RewardlabError, match="resume with the same reward_pipeline"):
        RewardPipeline.from_spec("whiten").load_state_dict(saved)


def test_needs_references():
    assert RewardPipeline.from_spec("mean|lsc").needs_references
    assert not RewardPipeline.from_spec("mean|whiten").needs_references
    p = RewardPipeline.from_spec("standardize")
    assert p.needs_references
    p(torch.randn(3, 1), ref=torch.randn(3, 4, 1))
    assert not p.needs_references  # fitted and frozen


def test_parse_spec_terms():
    terms = parse_spec("2*[mean] + -1*[min]")
    assert [w for w, _ in terms] == [2.0, -1.0]


def test_saturation_is_measured_on_the_sigmoid_argument_after_centring():
    x = torch.full((4, 1), 10.0) + torch.arange(4.0).unsqueeze(-1) * 0.1
    ref = torch.full((4, 3, 1), 10.0)
    for spec in ("lsc(q=0.5)", "center|lsc(q=0.5)", "par"):
        assert RewardPipeline.from_spec(spec)(x, ref=ref).diagnostics["reward/saturated_frac"] == 0.0, spec
    assert RewardPipeline.from_spec("logsigmoid")(x).diagnostics["reward/saturated_frac"] == 1.0


def test_normalize_gain_reports_the_effective_scale():
    x = torch.tensor([[0.0], [4.0], [8.0]])
    d = RewardPipeline.from_spec("whiten")(x).diagnostics
    assert d["reward/normalize_gain"] == pytest.approx(1 / x.std(correction=0).item(), rel=1e-5)
    assert "reward/normalize_gain" not in RewardPipeline.from_spec("lsc")(x, ref=torch.zeros(3, 2, 1)).diagnostics


def test_none_parameter_prints_back():
    assert RewardPipeline.from_spec("center(q=none)").spec == "center(q=none)"


@pytest.mark.parametrize(
    "spec, match",
    [
        ("head(k=0.5)", r"head: parameter k=0.5 must be an integer"),
        ("head(k=true)", r"head: parameter k=true must be an integer"),
        ("head(k=none)", r"head: parameter k=none must be an integer"),
        ("head(k=-1)", r"head index k=-1 must be ≥ 0"),
        ("logodds(pos=1.0,neg=0)", r"logodds: parameter pos=1.0 must be an integer"),
        ("logprob(k=false)", r"logprob: parameter k=false must be an integer"),
        ("whiten(keep_mean=1)", r"whiten: parameter keep_mean=1 must be true or false"),
        ("whiten(eps=0)", r"whiten: eps=0.0 must be > 0"),
        ("running_norm(center=0.5)", r"running_norm: parameter center=0.5 must be true or false"),
        ("running_norm(eps=-1)", r"must be > 0"),
        ("uwo(lam=true)", r"uwo: parameter lam=true must be a number"),
        ("temperature(t=none)", r"temperature: parameter t=none must be a number"),
        ("mean|center(q=true)", r"center: parameter q=true must be a number or none"),
        ("mean|lsc(q=inf)", r"must be a finite number"),
        ("scale(a=true)", r"scale: parameter a=true must be a number"),
        ("clip(lo=false,hi=1)", r"clip: parameter lo=false must be a number"),
    ],
)
def test_parameters_are_typed_and_range_checked_at_parse_time(spec, match):
    with pytest.raises(RewardlabError, match=match):
        RewardPipeline.from_spec(spec, semantics="bradley_terry")


def test_head_k_true_never_reaches_the_tensor_index():
    # x[..., True] would add a dimension and return (B, 2, 1) "scores"; the factory refuses it.
    with pytest.raises(RewardlabError, match="must be an integer"):
        T.head(k=True)
    with pytest.raises(RewardlabError, match=r"out of range: the reward model has 2 outputs \(0..1\)"):
        RewardPipeline.from_spec("head(k=2)", semantics="bradley_terry")(torch.randn(3, 2))


def test_int_parameters_widen_to_float_and_print_as_written():
    pipe = RewardPipeline.from_spec("mean|temperature(t=2)|clip(lo=-1,hi=1)", semantics="bradley_terry")
    assert pipe.spec == "mean|temperature(t=2)|clip(lo=-1,hi=1)"
    x = torch.tensor([[4.0, 4.0], [-8.0, -8.0]])
    torch.testing.assert_close(pipe(x).scores, torch.tensor([1.0, -1.0]))


@pytest.mark.parametrize("shape", [(0, 2), (0, 1), (3, 0)])
def test_an_empty_batch_is_a_clear_error(shape):
    with pytest.raises(RewardlabError, match=r"are empty: a reward pipeline needs at least one row and one head"):
        RewardPipeline.from_spec("mean|whiten", semantics="bradley_terry")(torch.zeros(shape))


def test_check_fits_names_the_term_that_does_not_fit():
    RewardPipeline.from_spec("mean|lsc", semantics="bradley_terry").check_fits(2)
    with pytest.raises(RewardlabError, match=r"'head\(k=1\)' does not fit the reward outputs \(1 head\): .*out of range"):
        RewardPipeline.from_spec("head(1)", semantics="bradley_terry").check_fits(1)
    pipe = RewardPipeline.from_spec("[rm0:mean] + [rm1:head(k=2)]", semantics="bradley_terry")
    with pytest.raises(RewardlabError, match=r"does not fit the reward outputs \(term rm1, 2 heads\)"):
        pipe.check_fits([2, 2], what="reward.reward_pipeline")
    pipe.check_fits([2, None])  # a term of unknown width is not checked
    assert pipe.states == [[{}], [{}]]  # a check leaves the pipeline's own state alone
