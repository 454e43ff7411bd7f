"""Reward transforms: the primitives the reward pipeline chains.

A transform is a pair of pure functions with explicit state, as in optax:
``init() -> state`` and ``apply(x, ref, state, ctx) -> (x', ref', state')``.

- ``x`` is the reward of each row at the current stage: ``(B, H)`` raw head logits before head
  reduction, ``(B,)`` after it.
- ``ref`` holds the reference rewards of each row's prompt at the *same* stage: ``(B, K, H)``
  before head reduction, ``(B, K)`` after (K reference-policy samples per prompt), or None. Every
  transform maps ``ref`` exactly as it maps ``x`` (centring subtracts the same baseline from both,
  an affine normaliser applies the same map), so a later centred transform always compares like
  with like.
- ``state`` is a dict of tensors (empty for stateless transforms); it never mutates in place.

Stages, in the only order a chain may use them (`Stage`):

    raw score at the last token → HEAD reduction → TEMPERATURE → CENTER / standardise
    → SHAPE (lsc, par, logsigmoid, sigmoid) → NORMALIZE (whiten, running_norm, scale) → CLIP

KL and missing-EOS penalties come later, in PPO's reward shaping. This module imports only
torch (a test enforces it). Each factory's docstring gives its formula; `docs/pipeline.md` has
the full reference and `docs/reward-calculation.md` the theory.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import torch
import torch.nn.functional as F

from rewardlab.errors import RewardlabError
from rewardlab.reward.baselines import reference_baseline

State = dict[str, torch.Tensor]

# logit(0.95): a reward whose sigmoid is > 0.95 or < 0.05 counts as saturated.
SATURATION_LOGIT = math.log(0.95 / 0.05)


class Stage(IntEnum):
    """Where a transform sits in the chain; a chain's stages never decrease."""

    HEAD = 0
    TEMPERATURE = 1
    CENTER = 2
    SHAPE = 3
    NORMALIZE = 4
    CLIP = 5


@dataclass(frozen=True)
class Context:
    """What a transform may read besides the rewards.

    Attributes:
        semantics: "bradley_terry", "classifier" or None (undeclared).
        num_heads: H, the reward model's number of output logits.
        update: whether stateful transforms (running_norm) update their statistics.
    """

    semantics: str | None
    num_heads: int
    update: bool = True


ApplyFn = Callable[[torch.Tensor, "torch.Tensor | None", State, Context], "tuple[torch.Tensor, torch.Tensor | None, State]"]


def _no_state() -> State:
    return {}


@dataclass(frozen=True)
class Transform:
    """One pipeline primitive.

    Attributes:
        name: the spec name, e.g. ``"lsc"``.
        params: the parameters given explicitly, in order, as ``(name, value)``; only these are
            printed in the spec, so a spec prints back exactly as written.
        stage: its `Stage`.
        apply: ``(x, ref, state, ctx) -> (x', ref', state')``.
        init: ``() -> state``.
        needs_ref: whether `apply` reads reference rewards (given the current state).
        sigmoid_arg: for transforms built on a sigmoid, ``(x, ref) -> argument`` of that sigmoid,
            whose saturation the diagnostics report (None for other transforms).
    """

    name: str
    params: tuple[tuple[str, Any], ...]
    stage: Stage
    apply: ApplyFn = field(repr=False, compare=False)
    init: Callable[[], State] = field(default=_no_state, repr=False, compare=False)
    needs_ref: Callable[[State], bool] = field(default=lambda state: False, repr=False, compare=False)
    sigmoid_arg: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = field(default=None, repr=False, compare=False)

    @property
    def spec(self) -> str:
        """Canonical text form, e.g. ``lsc(q=0.85)``."""
        if not self.params:
            return self.name
        return f"{self.name}({','.join(f'{k}={format_value(v)}' for k, v in self.params)})"


def format_value(value: Any) -> str:
    """Print a parameter value the way the spec parser reads it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return repr(value)
    return str(value)


# --------------------------------------------------------------------------------------------
# Registry: spec name -> factory. The decorator records which parameters were given explicitly.
# --------------------------------------------------------------------------------------------
REGISTRY: dict[str, Callable[..., Transform]] = {}


def _register(name: str) -> Callable[[Callable[..., Transform]], Callable[..., Transform]]:
    def deco(factory: Callable[..., Transform]) -> Callable[..., Transform]:
        sig = inspect.signature(factory)

        def make(*args: Any, **kwargs: Any) -> Transform:
            try:
                bound = sig.bind(*args, **kwargs)
            except TypeError as err:
                raise RewardlabError(
                    f"bad parameters for transform {name!r}: {err}; its parameters are: {describe(name)}"
                ) from None
            typed = {p: _typed_param(name, p, v, sig.parameters[p].annotation) for p, v in bound.arguments.items()}
            t = factory(**typed)  # the params keep the values as written, so the spec prints back the same
            return Transform(
                name=name, params=tuple(bound.arguments.items()), stage=t.stage, apply=t.apply,
                init=t.init, needs_ref=t.needs_ref, sigmoid_arg=t.sigmoid_arg,
            )

        make.__doc__ = factory.__doc__
        make.__name__ = factory.__name__
        make.__signature__ = sig  # type: ignore[attr-defined]
        REGISTRY[name] = make
        return make

    return deco


_HEAD_INDEX_PARAMS = {("head", "k"), ("logodds", "pos"), ("logodds", "neg"), ("logprob", "k")}


def _typed_param(name: str, pname: str, value: Any, annotation: Any) -> Any:
    """Check one parameter against its annotation (``"int"``, ``"float | None"``, ``"bool"``).

    ``true``/``false`` are accepted only where a flag is expected, whole numbers where an int is
    (``head(k=0.5)`` and ``head(k=true)`` are refused), any finite number where a float is (ints are
    widened); a head index must also be ≥ 0 (its upper bound, H − 1, is checked against the model).
    """
    allowed = {a.strip() for a in str(annotation).split("|")}

    def bad() -> RewardlabError:
        words = {"int": "an integer", "float": "a number", "bool": "true or false"}
        what = " or ".join(words.get(a, a) for a in sorted(allowed - {"None"})) + (" or none" if "None" in allowed else "")
        return RewardlabError(f"{name}: parameter {pname}={format_value(value)} must be {what}; "
                              f"its parameters are: {describe(name)}")

    if value is None:
        if "None" not in allowed:
            raise bad()
        return None
    if isinstance(value, bool):
        if "bool" not in allowed:
            raise bad()
        return value
    if isinstance(value, int):
        if "int" in allowed:
            if (name, pname) in _HEAD_INDEX_PARAMS and value < 0:
                raise RewardlabError(f"{name}: head index {pname}={value} must be ≥ 0 (heads are numbered 0..H−1)")
            return value
        if "float" in allowed:
            return float(value)
        raise bad()
    if isinstance(value, float):
        if "float" not in allowed:
            if "int" in allowed:
                raise RewardlabError(f"{name}: parameter {pname}={format_value(value)} must be an integer; "
                                     f"its parameters are: {describe(name)}")
            raise bad()
        if not math.isfinite(value):
            raise RewardlabError(f"{name}: parameter {pname}={format_value(value)} must be a finite number")
        return value
    raise bad()


def describe(name: str) -> str:
    """``"q: float | None = None"`` style description of a transform's parameters."""
    sig = inspect.signature(REGISTRY[name])
    parts = []
    for p in sig.parameters.values():
        text = f"{p.name}: {p.annotation}" if p.annotation is not inspect.Parameter.empty else p.name
        parts.append(text if p.default is inspect.Parameter.empty else f"{text} = {format_value(p.default)}")
    return ", ".join(parts) if parts else "(none)"


def _t(stage: Stage, apply: ApplyFn, **kw: Any) -> Transform:
    """Build the unnamed transform a factory returns (the decorator names it)."""
    return Transform(name="", params=(), stage=stage, apply=apply, **kw)


def _pointwise(stage: Stage, fn: Callable[[torch.Tensor], torch.Tensor], **kw: Any) -> Transform:
    """A transform applying ``fn`` elementwise to rewards and references alike."""

    def apply(x: torch.Tensor, ref: torch.Tensor | None, state: State, ctx: Context):
        return fn(x), (None if ref is None else fn(ref)), state

    return _t(stage, apply, **kw)


def _require_ref(name: str, ref: torch.Tensor | None) -> torch.Tensor:
    if ref is None:
        raise RewardlabError(
            f"transform {name!r} centres each reward on its prompt's reference rewards, but none were "
            "given. Score K reference-policy samples per prompt (rewardlab.reward.baselines.ReferenceRewards; "
            "PPO does this when `num_reference_samples` > 0) and pass them as `ref`, or drop the transform."
        )
    return ref


def _check_finite_param(name: str, **values: float) -> None:
    for k, v in values.items():
        if not math.isfinite(v):
            raise RewardlabError(f"{name}: parameter {k}={v} must be a finite number")


def _check_positive_eps(name: str, eps: float) -> None:
    if not eps > 0:
        raise RewardlabError(f"{name}: eps={eps} must be > 0 (it keeps the division finite for a constant batch)")


# --------------------------------------------------------------------------------------------
# HEAD stage: (B, H) -> (B,), references (B, K, H) -> (B, K).
# --------------------------------------------------------------------------------------------
_BT_READINGS = ("head", "mean", "sum", "min", "uwo")
_CLASSIFIER_READINGS = ("logodds", "logprob")


def _check_reading(name: str, ctx: Context) -> None:
    """Refuse a head reading that does not fit the declared head semantics."""
    if ctx.semantics == "bradley_terry" and name in _CLASSIFIER_READINGS:
        raise RewardlabError(
            f"{name!r} reads classifier logits, but this reward model's {ctx.num_heads} outputs are declared "
            "Bradley-Terry heads: each head is a reward of its own, and the difference or softmax of two BT "
            "heads cancels their shared signal. Use 'mean' (the principled reading of several BT heads), "
            "'head(k=…)', 'min' or 'uwo(lam=…)'."
        )
    if ctx.semantics == "classifier" and name in _BT_READINGS:
        raise RewardlabError(
            f"{name!r} reads Bradley-Terry heads, but this reward model is declared a cross-entropy classifier: "
            "its logits are defined only up to a constant per sample, so a single logit, their mean or sum is "
            "arbitrary. Use 'logodds(pos=…,neg=…)' (l_pos − l_neg) or 'logprob(k=…)' (log-softmax of class k)."
        )
    if ctx.semantics is None and ctx.num_heads > 1:
        raise RewardlabError(
            f"the reward model has {ctx.num_heads} outputs but its head semantics are not declared, so no "
            "reading of them can be checked. Declare them as bradley_terry (independent BT heads; read with "
            "'mean') or classifier (cross-entropy classes; read with 'logodds'): `--semantics` for rewardlab "
            "score / inspect / evaluate-rm, `reward.reward_semantics` in a PPO config, `semantics=` in Python. "
            "`rewardlab inspect MODEL` infers which it is."
        )


def reduce_heads(t: Transform, logits: torch.Tensor) -> torch.Tensor:
    """A head reducer on its own: ``t``'s reduction of the logits, read under the semantics it is written for.

    For comparing every reading of a model whose semantics are undecided (`rewardlab.reward.readings`):
    unlike in a pipeline, the reading is not checked against the model's semantics; head indices are
    still checked against H.

    Shapes: logits (..., H) → (...).
    """
    if t.stage != Stage.HEAD:
        raise RewardlabError(f"'{t.spec}' is not a head reduction (it belongs to the {t.stage.name.lower()} stage)")
    semantics = "classifier" if t.name in _CLASSIFIER_READINGS else "bradley_terry"
    x, _, _ = t.apply(logits, None, t.init(), Context(semantics=semantics, num_heads=logits.shape[-1]))
    return x


def _check_index(name: str, k: int, ctx: Context) -> None:
    if not 0 <= k < ctx.num_heads:
        raise RewardlabError(f"{name}: head index {k} is out of range: the reward model has {ctx.num_heads} outputs (0..{ctx.num_heads - 1})")


def _reducer(name: str, fn: Callable[[torch.Tensor, Context], torch.Tensor]) -> Transform:
    def apply(x: torch.Tensor, ref: torch.Tensor | None, state: State, ctx: Context):
        _check_reading(name, ctx)
        return fn(x, ctx), (None if ref is None else fn(ref, ctx)), state

    return _t(Stage.HEAD, apply)


@_register("head")
def head(k: int) -> Transform:
    """One head: r = l_k.

    For BT models each head is a reward of its own (valid, but noisier than their mean).
    """

    def fn(x: torch.Tensor, ctx: Context) -> torch.Tensor:
        _check_index("head", k, ctx)
        return x[..., k]

    return _reducer("head", fn)


@_register("mean")
def mean() -> Transform:
    """Mean over heads: r = (1/H) Σ_h l_h — the principled reading of H Bradley-Terry heads."""
    return _reducer("mean", lambda x, ctx: x.mean(dim=-1))


@_register("sum")
def sum_() -> Transform:
    """Sum over heads: r = Σ_h l_h = H · mean; against a fixed KL coefficient β it acts like β/H."""
    return _reducer("sum", lambda x, ctx: x.sum(dim=-1))


@_register("min")
def min_() -> Transform:
    """Worst case over heads (ensembles, Coste et al. 2023): r = min_h l_h."""
    return _reducer("min", lambda x, ctx: x.amin(dim=-1))


@_register("uwo")
def uwo(lam: float = 0.5) -> Transform:
    """Uncertainty-weighted optimisation (Coste et al. 2023): r = mean_h l_h − λ · Var_h l_h.

    Var is the population variance over the H heads.
    """
    _check_finite_param("uwo", lam=lam)
    if lam < 0:
        raise RewardlabError(f"uwo: lam={lam} must be ≥ 0 (it penalises disagreement between heads)")
    return _reducer("uwo", lambda x, ctx: x.mean(dim=-1) - lam * x.var(dim=-1, correction=0))


@_register("logodds")
def logodds(pos: int = 1, neg: int = 0) -> Transform:
    """Classifier log-odds: r = l_pos − l_neg = log p(pos|x,y) − log p(neg|x,y). Classifier models only."""
    if pos == neg:
        raise RewardlabError(f"logodds: pos and neg must differ (both are {pos})")

    def fn(x: torch.Tensor, ctx: Context) -> torch.Tensor:
        _check_index("logodds", pos, ctx)
        _check_index("logodds", neg, ctx)
        return x[..., pos] - x[..., neg]

    return _reducer("logodds", fn)


@_register("logprob")
def logprob(k: int = 1) -> Transform:
    """Classifier log-probability of class k: r = log softmax(l)_k. Classifier models only."""

    def fn(x: torch.Tensor, ctx: Context) -> torch.Tensor:
        _check_index("logprob", k, ctx)
        return torch.log_softmax(x, dim=-1)[..., k]

    return _reducer("logprob", fn)


# --------------------------------------------------------------------------------------------
# TEMPERATURE
# --------------------------------------------------------------------------------------------
@_register("temperature")
def temperature(t: float) -> Transform:
    """Temperature: r = r / T (e.g. the T fitted on held-out preferences, so σ(r_1 − r_2) is calibrated)."""
    _check_finite_param("temperature", t=t)
    if t <= 0:
        raise RewardlabError(f"temperature: t={t} must be > 0")
    return _pointwise(Stage.TEMPERATURE, lambda x: x / t)


# --------------------------------------------------------------------------------------------
# CENTER stage: per-prompt centring and the frozen reference standardisation.
# --------------------------------------------------------------------------------------------
def _check_quantile(name: str, q: float | None) -> None:
    if q is not None and not 0.0 <= q <= 1.0:
        raise RewardlabError(f"{name}: q={q} must lie in [0, 1] (a quantile of the reference rewards)")


@_register("center")
def center(q: float | None = None) -> Transform:
    """Per-prompt centring: r = r − b(x), b(x) = mean (or q-quantile) of the K reference rewards of x.

    A Bradley-Terry reward is identified only up to a per-prompt constant c(x); centring removes it.
    References are centred with the same b(x).
    """
    _check_quantile("center", q)

    def apply(x: torch.Tensor, ref: torch.Tensor | None, state: State, ctx: Context):
        ref = _require_ref("center", ref)
        b = reference_baseline(ref, q)
        return x - b, ref - b.unsqueeze(-1), state

    return _t(Stage.CENTER, apply, needs_ref=lambda state: True)


@_register("standardize")
def standardize(mean: float | None = None, std: float | None = None) -> Transform:
    """Frozen affine map (Ziegler et al. 2019): r = (r − μ₀) / σ₀.

    μ₀, σ₀ are the mean and std of the reference-policy rewards, fitted on the first call that has
    references (or given as parameters) and then kept fixed, so that β keeps one meaning all run.
    Unlike whitening, later batches do not move it.
    """
    if (mean is None) != (std is None):
        raise RewardlabError("standardize: give both mean and std, or neither (then they are fitted on reference rewards)")
    if std is not None:
        _check_finite_param("standardize", mean=mean, std=std)  # type: ignore[arg-type]
        if std <= 0:
            raise RewardlabError(f"standardize: std={std} must be > 0")

    def init() -> State:
        if mean is None:
            return {}
        return {"mean": torch.tensor(float(mean), dtype=torch.float64), "std": torch.tensor(float(std), dtype=torch.float64)}

    def apply(x: torch.Tensor, ref: torch.Tensor | None, state: State, ctx: Context):
        if "mean" not in state:
            ref_ = _require_ref("standardize", ref).to(torch.float64)
            mu, sd = ref_.mean(), ref_.std(correction=0)
            if not sd > 0:
                raise RewardlabError("standardize: the reference rewards are all equal (std 0); cannot fit a scale")
            state = {"mean": mu, "std": sd}
        mu, sd = state["mean"].to(x.dtype), state["std"].to(x.dtype)
        return (x - mu) / sd, (None if ref is None else (ref - mu) / sd), state

    return _t(Stage.CENTER, apply, init=init, needs_ref=lambda state: "mean" not in state)


# --------------------------------------------------------------------------------------------
# SHAPE stage
# --------------------------------------------------------------------------------------------
def _identity_arg(x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
    return x


@_register("logsigmoid")
def logsigmoid() -> Transform:
    """r = log σ(r). Uncentred, this depends on the arbitrary per-prompt offset of a BT reward."""
    return _pointwise(Stage.SHAPE, F.logsigmoid, sigmoid_arg=_identity_arg)


@_register("sigmoid")
def sigmoid() -> Transform:
    """r = σ(r). Uncentred, this depends on the arbitrary per-prompt offset of a BT reward."""
    return _pointwise(Stage.SHAPE, torch.sigmoid, sigmoid_arg=_identity_arg)


@_register("lsc")
def lsc(q: float = 0.5) -> Transform:
    """Log-sigmoid-centred reward (Wang et al. 2024): r = log σ(r − Q_q(x)).

    Q_q(x) is the q-quantile of the K reference rewards of prompt x; r is then the log-probability
    (under the BT model) that the response beats that reference level.
    """
    _check_quantile("lsc", q)

    def apply(x: torch.Tensor, ref: torch.Tensor | None, state: State, ctx: Context):
        ref = _require_ref("lsc", ref)
        b = reference_baseline(ref, q)
        return F.logsigmoid(x - b), F.logsigmoid(ref - b.unsqueeze(-1)), state

    def arg(x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        return x - reference_baseline(_require_ref("lsc", ref), q)

    return _t(Stage.SHAPE, apply, needs_ref=lambda state: True, sigmoid_arg=arg)


@_register("par")
def par() -> Transform:
    """Preference as reward (Fu et al. 2025): r = (1/K) Σ_m σ(r − r_ref,m(x)).

    The BT probability of beating each of the K reference responses of x, averaged: bounded in
    (0, 1), centred per prompt, with its steepest slope where the policy matches the reference.
    """

    def apply(x: torch.Tensor, ref: torch.Tensor | None, state: State, ctx: Context):
        ref = _require_ref("par", ref)
        new_x = torch.sigmoid(x.unsqueeze(-1) - ref).mean(dim=-1)  # (B, K) -> (B,)
        new_ref = torch.sigmoid(ref.unsqueeze(-1) - ref.unsqueeze(-2)).mean(dim=-1)  # (B, K, K) -> (B, K)
        return new_x, new_ref, state

    def arg(x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        return x.unsqueeze(-1) - _require_ref("par", ref)

    return _t(Stage.SHAPE, apply, needs_ref=lambda state: True, sigmoid_arg=arg)


# --------------------------------------------------------------------------------------------
# NORMALIZE stage. Batch whitening and running normalisation move with the policy's rewards, so
# the effective KL coefficient (β relative to the reward scale) drifts as training goes.
# --------------------------------------------------------------------------------------------
def _affine(x: torch.Tensor, ref: torch.Tensor | None, shift: torch.Tensor, scale: torch.Tensor):
    return (x - shift) * scale, (None if ref is None else (ref - shift) * scale)


@_register("whiten")
def whiten(keep_mean: bool = False, eps: float = 1e-8) -> Transform:
    """Batch whitening: r = (r − μ_B) / √(σ²_B + ε), plus μ_B again if ``keep_mean``.

    μ_B, σ²_B: mean and population variance over the batch. A constant batch maps to 0 (or to its
    mean with ``keep_mean``), never NaN. Changes the effective β as the reward distribution moves.
    """
    _check_positive_eps("whiten", eps)

    def apply(x: torch.Tensor, ref: torch.Tensor | None, state: State, ctx: Context):
        mu = x.mean()
        inv = torch.rsqrt(x.var(correction=0) + eps)
        y, r = _affine(x, ref, mu, inv)
        if keep_mean:
            y, r = y + mu, (None if r is None else r + mu)
        return y, r, state

    return _t(Stage.NORMALIZE, apply)


@_register("running_norm")
def running_norm(center: bool = True, eps: float = 1e-8) -> Transform:
    """Running normalisation (PPO-max, Zheng et al. 2023): r = (r − μ) / √(σ² + ε).

    μ, σ² are the mean and population variance of every reward seen so far, this batch included,
    updated with Welford/Chan's parallel formula; ``center=False`` only divides. The state (count,
    mean, M2) is saved and restored with checkpoints. Changes the effective β as training goes.
    """
    _check_positive_eps("running_norm", eps)

    def init() -> State:
        z = torch.zeros((), dtype=torch.float64)
        return {"count": z.clone(), "mean": z.clone(), "m2": z.clone()}

    def apply(x: torch.Tensor, ref: torch.Tensor | None, state: State, ctx: Context):
        n, mu, m2 = state["count"], state["mean"], state["m2"]
        if ctx.update:
            xb = x.detach().to(torch.float64).reshape(-1)
            nb = torch.tensor(float(xb.numel()), dtype=torch.float64)
            mb = xb.mean()
            m2b = ((xb - mb) ** 2).sum()
            tot = n + nb
            delta = mb - mu
            mu = mu + delta * nb / tot
            m2 = m2 + m2b + delta**2 * n * nb / tot
            n = tot
            state = {"count": n, "mean": mu, "m2": m2}
        if n <= 0:
            raise RewardlabError("running_norm: no statistics yet (the first call must have update=True)")
        var = m2 / n
        shift = mu.to(x.dtype) if center else torch.zeros((), dtype=x.dtype)
        y, r = _affine(x, ref, shift, torch.rsqrt(var + eps).to(x.dtype))
        return y, r, state

    return _t(Stage.NORMALIZE, apply, init=init)


@_register("scale")
def scale(a: float = 1.0, b: float = 0.0) -> Transform:
    """Affine map: r = a · r + b."""
    _check_finite_param("scale", a=a, b=b)
    return _pointwise(Stage.NORMALIZE, lambda x: a * x + b)


# --------------------------------------------------------------------------------------------
# CLIP stage
# --------------------------------------------------------------------------------------------
@_register("clip")
def clip(lo: float = -5.0, hi: float = 5.0) -> Transform:
    """Hard clip: r = min(max(r, lo), hi)."""
    _check_finite_param("clip", lo=lo, hi=hi)
    if not lo < hi:
        raise RewardlabError(f"clip: lo={lo} must be < hi={hi}")
    return _pointwise(Stage.CLIP, lambda x: x.clamp(lo, hi))


@_register("tanh")
def tanh() -> Transform:
    """Soft clip: r = tanh(r), in (−1, 1)."""
    return _pointwise(Stage.CLIP, torch.tanh)

