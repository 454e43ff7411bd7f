"""The reward pipeline: a validated chain of transforms, or a weighted sum of chains, with a spec.

A spec is the text form of a pipeline, read from YAML or the command line and printed back
identically (for specs in canonical form)::

    mean|center(q=0.85)|logsigmoid            one chain: transforms joined by "|"
    raw                                       the empty chain (a 1-head model's raw score)
    0.5*[mean|lsc] + 0.5*[head(k=0)|lsc]      combine: a weighted sum of chains, one per reward model

Example::

    pipe = RewardPipeline.from_spec("mean|center|lsc(q=0.5)", semantics="bradley_terry")
    out = pipe(logits, ref=ref_logits)      # logits (B, H), ref (B, K, H)
    out.scores                              # (B,) what PPO receives at the last response token
    out.diagnostics["reward/saturated_frac"]

The pipeline object holds the transforms' state (running statistics, a fitted standardisation);
`state_dict` / `load_state_dict` save and restore it with checkpoints. This module imports only
torch (a test enforces it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rewardlab.errors import RewardlabError
from rewardlab.reward.transforms import (
    REGISTRY,
    SATURATION_LOGIT,
    Context,
    Stage,
    State,
    Transform,
    _check_reading,
    describe,
    format_value,
)

EMPTY_SPEC = "raw"
_STAGE_ORDER = " → ".join(s.name.lower() for s in Stage)


@dataclass(frozen=True)
class PipelineOutput:
    """Result of one pipeline application.

    Attributes:
        scores: (B,) float32, the reward of each sequence.
        diagnostics: scalar statistics, keys ``reward/...`` (see docs/metrics.md).
    """

    scores: torch.Tensor
    diagnostics: dict[str, float]


# --------------------------------------------------------------------------------------------
# Chains
# --------------------------------------------------------------------------------------------
def _validate_chain(transforms: Sequence[Transform]) -> tuple[Transform, ...]:
    """Check the stage order: never decreasing, at most one head reduction."""
    for prev, cur in zip(transforms, transforms[1:]):
        if cur.stage < prev.stage:
            raise RewardlabError(
                f"'{cur.spec}' ({cur.stage.name.lower()} stage) cannot come after '{prev.spec}' "
                f"({prev.stage.name.lower()} stage): a pipeline's stages go {_STAGE_ORDER}"
            )
    if sum(t.stage == Stage.HEAD for t in transforms) > 1:
        raise RewardlabError("a pipeline may reduce heads only once; drop one of the head reducers")
    return tuple(transforms)


def _chain_spec(transforms: Sequence[Transform]) -> str:
    return "|".join(t.spec for t in transforms) if transforms else EMPTY_SPEC


def _stats(prefix: str, x: torch.Tensor) -> dict[str, float]:
    x = x.detach().to(torch.float64).reshape(-1)
    if x.numel() == 0:
        return {}
    return {
        f"{prefix}/mean": x.mean().item(),
        f"{prefix}/std": x.std(correction=0).item(),
        f"{prefix}/min": x.min().item(),
        f"{prefix}/max": x.max().item(),
    }


def head_correlation_matrix(logits: torch.Tensor) -> torch.Tensor:
    """Pearson correlation matrix of the H heads over the rows (NaN entries for a constant head).

    Shapes: logits (N, H) -> (H, H) float64.
    """
    x = logits.detach().to(torch.float64)
    x = x - x.mean(dim=0)
    norm = x.norm(dim=0)
    return (x.T @ x) / (norm[:, None] * norm[None, :])


def head_correlation(logits: torch.Tensor) -> float:
    """Mean pairwise Pearson correlation between heads over the batch; NaN when undefined.

    Shapes: logits (B, H) with H > 1.
    """
    if logits.shape[0] < 2:
        return math.nan
    corr = head_correlation_matrix(logits)
    h = corr.shape[0]
    return ((corr.sum() - corr.diagonal().sum()) / (h * (h - 1))).item()


def _check_finite(logits: torch.Tensor, what: str) -> None:
    bad = ~torch.isfinite(logits).reshape(logits.shape[0], -1).all(dim=-1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        shown = ", ".join(map(str, rows[:10])) + (" …" if len(rows) > 10 else "")
        raise RewardlabError(
            f"{what} contain NaN or inf in {len(rows)} row(s): {shown}. Check the reward model's dtype "
            "(fp16 overflow) and inputs; RewardModel(nan_policy='drop') drops such rows with a logged count."
        )


def _apply_chain(
    transforms: Sequence[Transform],
    states: list[State],
    logits: torch.Tensor,
    ref: torch.Tensor | None,
    ctx: Context,
    prefix: str,
) -> tuple[torch.Tensor, list[State], dict[str, float]]:
    """Run one chain. Shapes: logits (B, H), ref (B, K, H) or None -> (B,)."""
    diag = _stats(f"{prefix}raw", logits)
    if ctx.num_heads > 1:
        diag[f"{prefix}head_corr"] = head_correlation(logits)
    x, r = logits, ref
    if not transforms or transforms[0].stage != Stage.HEAD:
        if ctx.num_heads > 1:
            _check_reading("raw", ctx)  # undeclared semantics gets its own message
            choice = "'logodds(pos=1,neg=0)'" if ctx.semantics == "classifier" else "'mean'"
            raise RewardlabError(
                f"the reward model has {ctx.num_heads} outputs ({ctx.semantics or 'undeclared'} heads) and the "
                f"pipeline '{_chain_spec(transforms)}' does not say how to read them. Start it with a head "
                f"reducer: {choice} for this model (mean for Bradley-Terry heads, logodds for a classifier; "
                "also head(k=…), min, uwo(lam=…), logprob(k=…))."
            )
        x, r = x[..., 0], (None if r is None else r[..., 0])
    saturation_arg: torch.Tensor | None = None
    new_states = []
    for t, state in zip(transforms, states):
        if t.sigmoid_arg is not None and saturation_arg is None:
            saturation_arg = t.sigmoid_arg(x, r)
        before = x
        x, r, state = t.apply(x, r, state, ctx)
        new_states.append(state)
        if t.stage == Stage.NORMALIZE:
            # The factor a normaliser multiplies the reward by: the effective KL coefficient is β / gain.
            spread = before.double().std(correction=0)
            if spread > 0:
                gain = (x.double().std(correction=0) / spread).item()
                diag[f"{prefix}normalize_gain"] = diag.get(f"{prefix}normalize_gain", 1.0) * gain
    if saturation_arg is None:
        saturation_arg = x  # how saturated a sigmoid of the final reward would be
    diag[f"{prefix}saturated_frac"] = (saturation_arg.abs() > SATURATION_LOGIT).double().mean().item()
    diag.update(_stats(f"{prefix}final", x))
    return x, new_states, diag


# --------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------
class RewardPipeline:
    """A reward pipeline: one chain of transforms, or a weighted sum of chains (one per reward model).

    Args:
        terms: a sequence of transforms (one chain), or of ``(weight, transforms)`` pairs.
        semantics: head semantics of the reward model (or a list, one per term), used to refuse
            readings that do not fit; None = undeclared (then a model with H > 1 outputs is refused).
    """

    def __init__(
        self,
        terms: Sequence[Transform] | Sequence[tuple[float, Sequence[Transform]]],
        *,
        semantics: str | None | Sequence[str | None] = None,
    ) -> None:
        if terms and isinstance(terms[0], Transform):
            terms = [(1.0, terms)]  # type: ignore[list-item]
        self.terms: list[tuple[float, tuple[Transform, ...]]] = [
            (float(w), _validate_chain(list(c))) for w, c in terms  # type: ignore[misc]
        ] or [(1.0, ())]
        sem = [semantics] * len(self.terms) if semantics is None or isinstance(semantics, str) else list(semantics)
        if len(sem) != len(self.terms):
            raise RewardlabError(f"got {len(sem)} head semantics for {len(self.terms)} pipeline terms")
        self.semantics: list[str | None] = sem
        for s, (_, chain) in zip(sem, self.terms):
            if s is not None and chain and chain[0].stage == Stage.HEAD:
                _check_reading(chain[0].name, Context(semantics=s, num_heads=2))
        self.states: list[list[State]] = [[t.init() for t in c] for _, c in self.terms]

    @classmethod
    def from_spec(cls, spec: str, *, semantics: str | None | Sequence[str | None] = None) -> RewardPipeline:
        """Parse a spec string (see the module docstring)."""
        return cls(parse_spec(spec), semantics=semantics)

    @property
    def spec(self) -> str:
        """The canonical spec; `from_spec(p.spec)` rebuilds an equal pipeline."""
        if len(self.terms) == 1 and self.terms[0][0] == 1.0:
            return _chain_spec(self.terms[0][1])
        return " + ".join(f"{format_value(w)}*[{_chain_spec(c)}]" for w, c in self.terms)

    def __repr__(self) -> str:
        return f"RewardPipeline({self.spec!r})"

    @property
    def needs_references(self) -> bool:
        """Whether the next call needs per-prompt reference rewards."""
        return any(t.needs_ref(s) for (_, c), st in zip(self.terms, self.states) for t, s in zip(c, st))

    def __call__(
        self,
        logits: torch.Tensor | Sequence[torch.Tensor],
        ref: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
        *,
        update: bool = True,
    ) -> PipelineOutput:
        """Apply the pipeline.

        Args:
            logits: (B, H) raw reward-model outputs at the last token, or one such tensor per term.
            ref: (B, K, H) raw outputs for K reference-policy samples of each row's prompt (or one
                per term; None where unused).
            update: whether stateful transforms update their statistics (False for evaluation).

        Returns:
            `PipelineOutput` with scores (B,) float32 and diagnostics.
        """
        many = len(self.terms) > 1
        logits_l = list(logits) if many or not isinstance(logits, torch.Tensor) else [logits]
        ref_l = list(ref) if isinstance(ref, (list, tuple)) else [ref] * len(logits_l)
        if len(logits_l) != len(self.terms) or len(ref_l) != len(self.terms):
            raise RewardlabError(
                f"pipeline '{self.spec}' has {len(self.terms)} term(s) and takes one logits tensor per term; "
                f"got {len(logits_l)} logits and {len(ref_l)} reference tensors"
            )
        total: torch.Tensor | None = None
        diagnostics: dict[str, float] = {}
        new_states = []
        for i, ((w, chain), states, sem, lg, rf) in enumerate(zip(self.terms, self.states, self.semantics, logits_l, ref_l)):
            lg, rf = _check_shapes(lg, rf)
            ctx = Context(semantics=sem, num_heads=lg.shape[-1], update=update)
            x, st, diag = _apply_chain(chain, states, lg, rf, ctx, prefix=f"reward/term{i}/" if many else "reward/")
            new_states.append(st)
            diagnostics.update(diag)
            total = w * x if total is None else total + w * x
        assert total is not None
        self.states = new_states
        if many:
            diagnostics.update(_stats("reward/final", total))
        return PipelineOutput(scores=total.to(torch.float32), diagnostics=diagnostics)

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: the spec and every transform's state."""
        return {
            "spec": self.spec,
            "states": [[{k: v.tolist() for k, v in s.items()} for s in st] for st in self.states],
        }

    def load_state_dict(self, data: dict[str, Any]) -> None:
        """Restore state saved by `state_dict`; the spec must match."""
        if data.get("spec") != self.spec:
            raise RewardlabError(
                f"saved pipeline state is for '{data.get('spec')}', not '{self.spec}'; "
                "resume with the same reward_pipeline"
            )
        self.states = [
            [{k: torch.tensor(v, dtype=torch.float64) for k, v in s.items()} for s in st] for st in data["states"]
        ]


def _check_shapes(logits: torch.Tensor, ref: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise RewardlabError(
            f"pipeline logits must be a (B, H) tensor of reward-model outputs; got {shape}. "
            "For a 1-head model use logits.unsqueeze(-1)."
        )
    if logits.shape[0] == 0 or logits.shape[1] == 0:
        raise RewardlabError(
            f"pipeline logits {tuple(logits.shape)} are empty: a reward pipeline needs at least one row and one head "
            "(batch statistics such as whiten or running_norm are undefined on no rows). Skip the call for an "
            "empty batch."
        )
    logits = logits.detach().to(torch.float32)
    _check_finite(logits, "reward-model logits")
    if ref is not None:
        if ref.dim() != 3 or ref.shape[0] != logits.shape[0] or ref.shape[2] != logits.shape[1] or ref.shape[1] == 0:
            raise RewardlabError(
                f"reference logits must be (B, K, H) = ({logits.shape[0]}, K ≥ 1, {logits.shape[1]}) to match the "
                f"logits {tuple(logits.shape)}; got {tuple(ref.shape)}"
            )
        ref = ref.detach().to(torch.float32)
        _check_finite(ref, "reference logits")
    return logits, ref


# --------------------------------------------------------------------------------------------
# Spec parsing
# --------------------------------------------------------------------------------------------
_NAME = re.compile(r"^([a-z_][a-z0-9_]*)\s*(?:\((.*)\))?$", re.S)
_INT = re.compile(r"^[+-]?\d+$")


def _split_top(text: str, sep: str) -> list[str]:
    """Split at `sep` outside brackets and parentheses (and not in a number's exponent)."""
    parts, depth, cur = [], 0, ""
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
            if depth < 0:
                raise RewardlabError(f"unbalanced brackets in pipeline spec {text!r}")
        is_exp = sep == "+" and i > 0 and text[i - 1] in "eE" and i > 1 and text[i - 2].isdigit()
        if ch == sep and depth == 0 and not is_exp:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if depth != 0:
        raise RewardlabError(f"unbalanced brackets in pipeline spec {text!r}")
    return parts + [cur]


def _parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    if _INT.match(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        raise RewardlabError(f"parameter value {text!r} is not a number, true/false or none") from None


def _parse_transform(text: str) -> Transform:
    text = text.strip()
    m = _NAME.match(text)
    if not m:
        raise RewardlabError(f"cannot parse transform {text!r}; expected name or name(key=value, ...)")
    name, arg_text = m.group(1), m.group(2)
    if name not in REGISTRY:
        valid = ", ".join(sorted(REGISTRY))
        raise RewardlabError(f"unknown transform {name!r}; valid transforms: {valid}")
    args, kwargs = [], {}
    if arg_text is not None and arg_text.strip():
        for item in arg_text.split(","):
            item = item.strip()
            if "=" in item:
                k, v = (s.strip() for s in item.split("=", 1))
                kwargs[k] = _parse_value(v)
            elif kwargs:
                raise RewardlabError(f"in {text!r}: positional value {item!r} after a keyword argument")
            else:
                args.append(_parse_value(item))
    params = list(REGISTRY[name].__signature__.parameters)  # type: ignore[attr-defined]
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise RewardlabError(f"unknown parameter(s) {unknown} for transform {name!r}; its parameters are: {describe(name)}")
    return REGISTRY[name](*args, **kwargs)


def parse_chain(text: str) -> list[Transform]:
    """Parse ``"a|b(k=v)|c"`` into transforms (validated by the pipeline)."""
    text = text.strip()
    if text in ("", EMPTY_SPEC):
        return []
    return [_parse_transform(part) for part in _split_top(text, "|")]


def parse_spec(spec: str) -> list[tuple[float, list[Transform]]]:
    """Parse a full spec into ``(weight, chain)`` terms."""
    if not isinstance(spec, str):
        raise RewardlabError(f"a pipeline spec is a string like 'mean|center|lsc'; got {type(spec).__name__}")
    if "[" not in spec:
        return [(1.0, parse_chain(spec))]
    terms = []
    for term in _split_top(spec, "+"):
        term = term.strip()
        m = re.match(r"^(?:([^*\[]+)\*)?\s*\[(.*)\]$", term, re.S)
        if not m:
            raise RewardlabError(f"cannot parse combined term {term!r}; expected weight*[chain], e.g. 0.5*[mean|lsc]")
        weight = 1.0 if m.group(1) is None else _parse_value(m.group(1).strip())
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise RewardlabError(f"weight {m.group(1)!r} of term {term!r} must be a finite number")
        terms.append((float(weight), parse_chain(m.group(2))))
    return terms
