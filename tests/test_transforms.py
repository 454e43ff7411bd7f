"""Every transform against a plain numpy computation, plus invariances and edge cases."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from rewardlab.errors import RewardlabError
from rewardlab.reward import transforms as T
from rewardlab.reward.transforms import Context

RNG = np.random.default_rng(0)
B, K, H = 6, 5, 3


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_logsigmoid(x):
    return -np.logaddexp(0.0, -x)


def _run(t, x, ref=None, state=None, semantics="bradley_terry", heads=H, update=True):
    ctx = Context(semantics=semantics, num_heads=heads, update=update)
    state = t.init() if state is None else state
    xt = torch.as_tensor(x, dtype=torch.float64)
    rt = None if ref is None else torch.as_tensor(ref, dtype=torch.float64)
    y, r, s = t.apply(xt, rt, state, ctx)
    return y.numpy(), (None if r is None else r.numpy()), s


LOGITS = RNG.normal(size=(B, H))
REF_LOGITS = RNG.normal(size=(B, K, H))


@pytest.mark.parametrize(
    "transform, expected",
    [
        (T.head(k=2), lambda z: z[..., 2]),
        (T.mean(), lambda z: z.mean(-1)),
        (T.sum_(), lambda z: z.sum(-1)),
        (T.min_(), lambda z: z.min(-1)),
        (T.uwo(lam=0.7), lambda z: z.mean(-1) - 0.7 * z.var(-1)),
    ],
)
def test_bt_head_reducers_match_numpy(transform, expected):
    y, r, _ = _run(transform, LOGITS, REF_LOGITS)
    np.testing.assert_allclose(y, expected(LOGITS), rtol=1e-12)
    np.testing.assert_allclose(r, expected(REF_LOGITS), rtol=1e-12)


def test_classifier_readers_match_numpy():
    y, _, _ = _run(T.logodds(pos=2, neg=0), LOGITS, semantics="classifier")
    np.testing.assert_allclose(y, LOGITS[:, 2] - LOGITS[:, 0])
    y, _, _ = _run(T.logprob(k=1), LOGITS, semantics="classifier")
    logp = LOGITS - np.log(np.exp(LOGITS).sum(-1, keepdims=True))
    np.testing.assert_allclose(y, logp[:, 1], rtol=1e-10)


def test_readings_must_fit_semantics():
    with pytest.raises(RewardlabError, match="Bradley-Terry heads.*Use 'mean'"):
        _run(T.logodds(), LOGITS, semantics="bradley_terry")
    with pytest.raises(RewardlabError, match="cross-entropy classifier.*logodds"):
        _run(T.mean(), LOGITS, semantics="classifier")
    with pytest.raises(RewardlabError, match="not declared"):
        _run(T.mean(), LOGITS, semantics=None)
    # One output needs no declaration.
    y, _, _ = _run(T.mean(), LOGITS[:, :1], semantics=None, heads=1)
    np.testing.assert_allclose(y, LOGITS[:, 0])
    with pytest.raises(RewardlabError, match="out of range"):
        _run(T.head(k=3), LOGITS)


X = RNG.normal(size=B) * 3
REF = RNG.normal(size=(B, K)) * 3 + 1.0


@pytest.mark.parametrize(
    "transform, expected",
    [
        (T.temperature(t=2.5), lambda x, r: (x / 2.5, r / 2.5)),
        (T.logsigmoid(), lambda x, r: (_np_logsigmoid(x), _np_logsigmoid(r))),
        (T.sigmoid(), lambda x, r: (_np_sigmoid(x), _np_sigmoid(r))),
        (T.clip(lo=-1.0, hi=2.0), lambda x, r: (np.clip(x, -1, 2), np.clip(r, -1, 2))),
        (T.tanh(), lambda x, r: (np.tanh(x), np.tanh(r))),
        (T.scale(a=-2.0, b=0.5), lambda x, r: (-2 * x + 0.5, -2 * r + 0.5)),
        (T.center(), lambda x, r: (x - r.mean(1), r - r.mean(1, keepdims=True))),
        (
            T.center(q=0.85),
            lambda x, r: (x - np.quantile(r, 0.85, axis=1), r - np.quantile(r, 0.85, axis=1, keepdims=True)),
        ),
        (
            T.lsc(q=0.3),
            lambda x, r: (
                _np_logsigmoid(x - np.quantile(r, 0.3, axis=1)),
                _np_logsigmoid(r - np.quantile(r, 0.3, axis=1, keepdims=True)),
            ),
        ),
        (
            T.par(),
            lambda x, r: (
                _np_sigmoid(x[:, None] - r).mean(1),
                _np_sigmoid(r[:, :, None] - r[:, None, :]).mean(2),
            ),
        ),
        (
            T.whiten(),
            lambda x, r: ((x - x.mean()) / np.sqrt(x.var() + 1e-8), (r - x.mean()) / np.sqrt(x.var() + 1e-8)),
        ),
        (
            T.whiten(keep_mean=True),
            lambda x, r: ((x - x.mean()) / np.sqrt(x.var() + 1e-8) + x.mean(), None),
        ),
    ],
)
def test_scalar_transforms_match_numpy(transform, expected):
    y, r, _ = _run(transform, X, REF)
    ey, er = expected(X, REF)
    np.testing.assert_allclose(y, ey, rtol=1e-9, atol=1e-12)
    if er is not None:
        np.testing.assert_allclose(r, er, rtol=1e-9, atol=1e-12)


def test_standardize_fits_once_on_references_then_freezes():
    t = T.standardize()
    y, r, state = _run(t, X, REF)
    mu, sd = REF.mean(), REF.std()
    np.testing.assert_allclose(y, (X - mu) / sd, rtol=1e-9)
    np.testing.assert_allclose(r.mean(), 0.0, atol=1e-9)
    np.testing.assert_allclose(r.std(), 1.0, rtol=1e-9)
    # Frozen: new references (and no references) do not move it.
    y2, _, state2 = _run(t, X, REF * 10 + 5, state=state)
    np.testing.assert_allclose(y2, y)
    y3, _, _ = _run(t, X, None, state=state2)
    np.testing.assert_allclose(y3, y)
    assert not t.needs_ref(state2) and t.needs_ref(t.init())
    # Given parameters: no fitting at all.
    y4, _, _ = _run(T.standardize(mean=1.0, std=2.0), X, None)
    np.testing.assert_allclose(y4, (X - 1.0) / 2.0)


def test_running_norm_equals_numpy_over_all_data_seen():
    t = T.running_norm()
    state = t.init()
    seen = []
    for i in range(4):
        batch = RNG.normal(loc=i, scale=1 + i, size=7 + i)
        seen.append(batch)
        y, _, state = _run(t, batch, state=state)
        allx = np.concatenate(seen)
        np.testing.assert_allclose(y, (batch - allx.mean()) / np.sqrt(allx.var() + 1e-8), rtol=1e-9)
    assert state["count"].item() == sum(len(s) for s in seen)
    # update=False leaves the statistics alone.
    _, _, frozen = _run(t, np.ones(3) * 100, state=state, update=False)
    assert torch.equal(frozen["mean"], state["mean"])
    # center=False only divides.
    y, _, _ = _run(T.running_norm(center=False), X)
    np.testing.assert_allclose(y, X / np.sqrt(X.var() + 1e-8), rtol=1e-9)


def test_logsigmoid_and_sigmoid_are_finite_at_extremes():
    x = torch.tensor([-1e4, -50.0, 0.0, 50.0, 1e4])
    for t in (T.logsigmoid(), T.sigmoid(), T.lsc(), T.par()):
        ref = torch.zeros(5, 3)
        y, r, _ = t.apply(x, ref, t.init(), Context("bradley_terry", 1))
        assert torch.isfinite(y).all() and torch.isfinite(r).all(), t.name
    y, _, _ = T.logsigmoid().apply(x, None, {}, Context(None, 1))
    assert y[0].item() == pytest.approx(-1e4) and y[-1].item() == 0.0


@pytest.mark.parametrize("t", [T.center(), T.center(q=0.7), T.lsc(q=0.85), T.par()])
def test_centred_transforms_ignore_a_per_prompt_constant(t):
    offsets = RNG.normal(size=B) * 50  # c(x): invisible to Bradley-Terry
    y0, r0, _ = _run(t, X, REF)
    y1, r1, _ = _run(t, X + offsets, REF + offsets[:, None])
    np.testing.assert_allclose(y1, y0, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(r1, r0, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("t", [T.logsigmoid(), T.sigmoid()])
def test_uncentred_shaping_depends_on_the_offset(t):
    offsets = RNG.normal(size=B) * 3
    y0, _, _ = _run(t, X, None)
    y1, _, _ = _run(t, X + offsets, None)
    assert np.abs(y1 - y0).max() > 1e-3


def test_whiten_constant_batch_gives_no_nan():
    for keep in (False, True):
        y, _, _ = _run(T.whiten(keep_mean=keep), np.full(5, 3.0))
        assert np.isfinite(y).all()
        np.testing.assert_allclose(y, 3.0 if keep else 0.0)
    y, _, _ = _run(T.whiten(), np.array([2.0]))  # a batch of one
    assert np.isfinite(y).all()


def test_centring_without_references_is_an_error():
    for t in (T.center(), T.lsc(), T.par(), T.standardize()):
        with pytest.raises(RewardlabError, match="reference rewards"):
            _run(t, X, None)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: T.temperature(t=0), "must be > 0"),
        (lambda: T.clip(lo=1, hi=1), "must be < hi"),
        (lambda: T.center(q=1.5), r"in \[0, 1\]"),
        (lambda: T.lsc(q=-0.1), r"in \[0, 1\]"),
        (lambda: T.uwo(lam=-1), "≥ 0"),
        (lambda: T.logodds(pos=1, neg=1), "must differ"),
        (lambda: T.standardize(mean=1.0), "both mean and std"),
        (lambda: T.standardize(mean=1.0, std=0.0), "> 0"),
        (lambda: T.scale(a=float("nan")), "finite"),
        (lambda: T.head(k=0, j=1), "parameters are"),
    ],
)
def test_bad_parameters_are_errors(make, match):
    with pytest.raises(RewardlabError, match=match):
        make()


def test_transforms_and_pipeline_import_nothing_heavier_than_torch():
    code = (
        "import sys; import rewardlab.reward.pipeline, rewardlab.reward.transforms, "
        "rewardlab.reward.baselines, rewardlab.reward.strategies; "
        "heavy = [m for m in ('transformers', 'accelerate', 'datasets', 'safetensors', 'yaml', 'rich', 'tokenizers') "
        "if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"reward maths imported {out}"


def test_uwo_by_hand_and_the_scale_of_its_penalty():
    """uwo(lam) = mean_h l_h − lam · Var_h l_h with the population variance (1/H, Coste et al. 2023, §3):
    the penalty is in squared reward units, so lam has units of 1/reward."""
    logits = torch.tensor([[1.0, 2.0, 3.0],    # mean 2, Var = (1 + 0 + 1)/3 = 2/3
                           [2.0, 2.0, 2.0],    # mean 2, Var 0: the heads agree
                           [0.0, 4.0, 2.0]],   # mean 2, Var = (4 + 4 + 0)/3 = 8/3
                          dtype=torch.float64)
    y, _, _ = _run(T.uwo(lam=0.5), logits)
    np.testing.assert_allclose(y, [2 - 0.5 * 2 / 3, 2.0, 2 - 0.5 * 8 / 3], rtol=1e-12)
    # not the sample variance (1/(H−1)) nor the std
    assert y[0] != pytest.approx(2 - 0.5 * 1.0) and y[0] != pytest.approx(2 - 0.5 * np.sqrt(2 / 3))
    # same mean, more disagreement → lower reward
    assert y[2] < y[0] < y[1]
    # adding a constant to every head shifts the reward and leaves the penalty alone
    shifted, _, _ = _run(T.uwo(lam=0.5), logits + 7.0)
    np.testing.assert_allclose(shifted, y + 7.0, rtol=1e-12)
    # multiplying every logit by c scales the mean by c but the penalty by c²: uwo_lam(c·l) = c · uwo_(c·lam)(l),
    # so a temperature or another reward scale needs lam rescaled
    c = 3.0
    scaled, _, _ = _run(T.uwo(lam=0.5), c * logits)
    np.testing.assert_allclose(scaled, c * _run(T.uwo(lam=0.5 * c), logits)[0], rtol=1e-12)
    penalty = lambda z: z.mean(-1).numpy() - _run(T.uwo(lam=0.5), z)[0]  # noqa: E731
    np.testing.assert_allclose(penalty(c * logits), c**2 * penalty(logits), rtol=1e-12)
    # lam = 0 is the mean
    np.testing.assert_allclose(_run(T.uwo(lam=0.0), logits)[0], logits.mean(-1).numpy())
