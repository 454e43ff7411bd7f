"""The reward pipeline: a validated chain of transforms, or a weighted sum of chains, with a spec.

A spec is the text form of a pipeline, read from YAML or the command line and printed back
identically (for specs in canonical form)::

    mean|center(q=0.85)|logsigmoid            one chain: transforms joined by "|"
    raw                                       the empty chain (a 1-head model's raw score)
    0.5*[mean|lsc] + 0.5*[head(k=0)|lsc]      combine: a weighted sum of chains, one per reward model
    0.7*[rm:mean|lsc] + 0.3*[fn:rules:correct]  terms that name what they read (a *source*)

A term may start with its source: ``rm:`` (the reward model; several are read side by side),
``rm<i>:`` (the i-th reward model), ``fn:NAME``, ``fn:module:function`` or ``fn:path/rules.py:function``
(a rule function, up to the first ``|``). The pipeline only carries sources and prints them back; `rewardlab.reward.side`
decides what each one reads. A term without a source is read as before: one term reads the
reward model (or the only rule function), term i of several reads reward model i.

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

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
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
        scores: (B,) float32, the reward of each sequence: Σ_i w_i · term_i over the terms that apply.
        diagnostics: scalar statistics, keys ``reward/...`` (see docs/metrics.md).
        terms: each term's value after its chain, (B,) float32, NaN where the term does not apply.
    """

    scores: torch.Tensor
    diagnostics: dict[str, float]
    terms: list[torch.Tensor] = field(default_factory=list)


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
    mean, std, lo, hi = torch.stack([x.mean(), x.std(correction=0), x.min(), x.max()]).tolist()  # one sync
    return {f"{prefix}/mean": mean, f"{prefix}/std": std, f"{prefix}/min": lo, f"{prefix}/max": hi}


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
    """A reward pipeline: one chain of transforms, or a weighted sum of chains (one per term).

    Args:
        terms: a sequence of transforms (one chain), of ``(weight, transforms)`` pairs, or of
            `TermSpec` (weight, source, chain) as `parse_terms` returns them.
        semantics: head semantics of the reward model (or a list, one per term), used to refuse
            readings that do not fit; None = undeclared (then a model with H > 1 outputs is refused).
    """

    def __init__(
        self,
        terms: Sequence[Transform] | Sequence[tuple[float, Sequence[Transform]]] | Sequence[TermSpec],
        *,
        semantics: str | None | Sequence[str | None] = None,
    ) -> None:
        if terms and isinstance(terms[0], Transform):
            terms = [(1.0, terms)]  # type: ignore[list-item]
        specs = [t if isinstance(t, TermSpec) else TermSpec(float(t[0]), None, tuple(t[1])) for t in terms]  # type: ignore[index]
        specs = specs or [TermSpec(1.0, None, ())]
        self.terms: list[tuple[float, tuple[Transform, ...]]] = [(float(t.weight), _validate_chain(list(t.chain))) for t in specs]
        self.sources: list[str | None] = [t.source for t in specs]
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
        return cls(parse_terms(spec), semantics=semantics)

    @property
    def spec(self) -> str:
        """The canonical spec; `from_spec(p.spec)` rebuilds an equal pipeline."""
        chains = [_term_text(src, c) for src, (_, c) in zip(self.sources, self.terms)]
        if len(self.terms) == 1 and self.terms[0][0] == 1.0:
            return chains[0]
        return " + ".join(f"{format_value(w)}*[{text}]" for (w, _), text in zip(self.terms, chains))

    @property
    def term_names(self) -> list[str]:
        """A unique name per term, from its source (``rm``, ``rm1``, a rule function's name), as logged
        under ``reward/term/<name>/``; a term without a source is ``rm<i>`` (term i reads reward model i)."""
        return term_names(self.sources)

    def __repr__(self) -> str:
        return f"RewardPipeline({self.spec!r})"

    @property
    def needs_references(self) -> bool:
        """Whether the next call needs per-prompt reference rewards."""
        return any(self.term_needs_references(i) for i in range(len(self.terms)))

    def term_needs_references(self, i: int) -> bool:
        """Whether term ``i``'s next call reads reference rewards."""
        return any(t.needs_ref(s) for t, s in zip(self.terms[i][1], self.states[i]))

    def __call__(
        self,
        logits: torch.Tensor | Sequence[torch.Tensor],
        ref: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
        *,
        update: bool = True,
        applies: Sequence[torch.Tensor | None] | None = None,
    ) -> PipelineOutput:
        """Apply the pipeline.

        Args:
            logits: (B, H) raw reward-model outputs at the last token, or one such tensor per term.
            ref: (B, K, H) raw outputs for K reference-policy samples of each row's prompt (or one
                per term; None where unused).
            update: whether stateful transforms update their statistics (False for evaluation).
            applies: per term, a (B,) bool mask of the rows it applies to, or None (every row). A
                term's chain runs on its rows only (batch statistics and running state see those
                rows); elsewhere it adds nothing to the score (TRL's rule for a reward function that
                returns None) and its value is NaN.

        Returns:
            `PipelineOutput` with scores (B,) float32, diagnostics and each term's values.
        """
        many = len(self.terms) > 1
        logits_l = list(logits) if many or not isinstance(logits, torch.Tensor) else [logits]
        ref_l = list(ref) if isinstance(ref, (list, tuple)) else [ref] * len(logits_l)
        masks = list(applies) if applies is not None else [None] * len(logits_l)
        if len(logits_l) != len(self.terms) or len(ref_l) != len(self.terms) or len(masks) != len(self.terms):
            raise RewardlabError(
                f"pipeline '{self.spec}' has {len(self.terms)} term(s) and takes one logits tensor per term; "
                f"got {len(logits_l)} logits, {len(ref_l)} reference tensors and {len(masks)} masks"
            )
        names = self.term_names
        total: torch.Tensor | None = None
        diagnostics: dict[str, float] = {}
        new_states, values = [], []
        for i, ((w, chain), states, sem, lg, rf, rows) in enumerate(
                zip(self.terms, self.states, self.semantics, logits_l, ref_l, masks)):
            prefix = f"reward/term/{names[i]}/" if many else "reward/"
            if rows is not None and (many or not bool(rows.all())):
                diagnostics[f"{prefix}applied_frac"] = rows.double().mean().item()
            if rows is not None and bool(rows.all()):
                rows = None
            if rows is not None:  # the term applies to some rows only: its chain sees those
                if not bool(rows.any()):
                    new_states.append(states)
                    values.append(torch.full((rows.shape[0],), math.nan))
                    total = torch.zeros(rows.shape[0]) if total is None else total
                    continue
                lg, rf = lg[rows], (None if rf is None else rf[rows])
            lg, rf = _check_shapes(lg, rf)
            ctx = Context(semantics=sem, num_heads=lg.shape[-1], update=update)
            x, st, diag = _apply_chain(chain, states, lg, rf, ctx, prefix=prefix)
            new_states.append(st)
            diagnostics.update(diag)
            if rows is not None:  # scatter back: NaN where the term does not apply, adding 0 to the score
                full = torch.full((rows.shape[0],), math.nan, dtype=x.dtype)
                full[rows] = x
                x = full
                contribution = w * full.nan_to_num(0.0)
            else:
                contribution = w * x
            values.append(x.to(torch.float32))
            total = contribution if total is None else total + contribution
        assert total is not None
        self.states = new_states
        if many:
            diagnostics.update(_stats("reward/final", total))
        return PipelineOutput(scores=total.to(torch.float32), diagnostics=diagnostics, terms=values)

    def check_fits(self, num_heads: int | Sequence[int | None], *, num_references: int = 2,
                   what: str = "the pipeline") -> None:
        """Apply a fresh copy of each term's chain to made-up outputs of its shape, ``(4, H)`` (and
        references when it reads them), so a reading that does not fit the reward outputs
        (``head(k=2)`` on 2 heads, ``logodds`` on 1) fails now, naming ``what`` and the term. A term
        whose H is None is not checked.
        """
        heads = [num_heads] * len(self.terms) if isinstance(num_heads, int) else list(num_heads)
        names = self.term_names
        for i, (((_, chain), sem), h) in enumerate(zip(zip(self.terms, self.semantics), heads)):
            if h is None:
                continue
            probe = RewardPipeline(list(chain), semantics=sem)
            lg = torch.linspace(-1.0, 1.0, 4 * h).view(4, h)
            k = num_references
            ref = lg.unsqueeze(1).expand(4, k, h) + torch.linspace(-0.5, 0.5, k).view(1, k, 1)
            try:
                probe(lg, ref=ref if probe.needs_references else None)
            except RewardlabError as err:
                term = "" if len(self.terms) == 1 else f"term {names[i]}, "
                raise RewardlabError(f"{what} {self.spec!r} does not fit the reward outputs ({term}{h} "
                                     f"head{'s' if h > 1 else ''}): {err}") from None

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
    """Parse ``"a|b(k=v)|c"`` into transforms (validated by the pipeline); no source allowed here."""
    source, chain = _parse_term_text(text)
    if source is not None:
        raise RewardlabError(f"{text!r}: a source ({source}:) belongs to a pipeline spec's term, not to a chain")
    return list(chain)


@dataclass(frozen=True)
class TermSpec:
    """One parsed term of a spec: its weight, what it reads (None: as before sources), its chain."""

    weight: float
    source: str | None
    chain: tuple[Transform, ...]


_RM_SOURCE = re.compile(r"^\s*(rm\d*)\s*:(.*)$", re.S)
_FN_SOURCE = re.compile(r"^\s*fn\s*:\s*(.*?)\s*$", re.S)
_FN_REF = re.compile(r"^(?:[A-Za-z_]\w*|(?:[A-Za-z_][\w.]*|[\w./~-]+\.py):[A-Za-z_]\w*)$")


def _parse_term_text(text: str) -> tuple[str | None, tuple[Transform, ...]]:
    """``"rm:mean|lsc"`` → ("rm", chain); ``"fn:mod:f|clip"`` → ("fn:mod:f", chain); ``"mean"`` → (None, chain)."""
    text = text.strip()
    parts = _split_top(text, "|") if text else [""]
    source = None
    rm, fn = _RM_SOURCE.match(parts[0]), _FN_SOURCE.match(parts[0])
    if rm:
        source, parts[0] = rm.group(1), rm.group(2)
    elif fn:
        ref = fn.group(1)
        if not _FN_REF.match(ref):
            raise RewardlabError(
                f"rule term {parts[0].strip()!r}: {ref!r} is not a function name; write fn:NAME (a function given in "
                "Python), fn:package.module:function (imported) or fn:path/to/rules.py:function, followed by "
                "|transforms if any")
        source, parts = f"fn:{ref}", parts[1:]
    rest = [p for p in (q.strip() for q in parts) if p]
    if rest == [EMPTY_SPEC] or (source is not None and rest[:1] == [EMPTY_SPEC] and len(rest) == 1):
        rest = []
    if not rest and source is None and text not in ("", EMPTY_SPEC):
        raise RewardlabError(f"cannot parse pipeline chain {text!r}")
    return source, tuple(_parse_transform(p) for p in rest)


def _term_text(source: str | None, chain: Sequence[Transform]) -> str:
    """The text of one term, as `_parse_term_text` reads it back."""
    if source is None:
        return _chain_spec(chain)
    if source.startswith("fn:"):
        return source + "".join(f"|{t.spec}" for t in chain)
    return f"{source}:{_chain_spec(chain)}"


def term_names(sources: Sequence[str | None]) -> list[str]:
    """One unique, metric-safe name per term: ``rm``, ``rm<i>``, a rule function's name (the part after
    its last ``:``/``.``), or ``rm<i>`` for the i-th term without a source; repeats get ``_2``, ``_3`` …"""
    names, seen = [], {}
    for i, src in enumerate(sources):
        if src is None:
            base = f"rm{i}"
        elif src.startswith("fn:"):
            base = re.split(r"[:.]", src[3:])[-1]
        else:
            base = src
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names


@functools.lru_cache(maxsize=256)
def _parse_terms_cached(spec: str) -> tuple[TermSpec, ...]:
    if "[" not in spec:
        source, chain = _parse_term_text(spec)
        return (TermSpec(1.0, source, chain),)
    terms = []
    for term in _split_top(spec, "+"):
        term = term.strip()
        m = re.match(r"^(?:([^*\[]+)\*)?\s*\[(.*)\]$", term, re.S)
        if not m:
            raise RewardlabError(f"cannot parse combined term {term!r}; expected weight*[chain], e.g. 0.5*[mean|lsc]")
        weight = 1.0 if m.group(1) is None else _parse_value(m.group(1).strip())
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise RewardlabError(f"weight {m.group(1)!r} of term {term!r} must be a finite number")
        source, chain = _parse_term_text(m.group(2))
        terms.append(TermSpec(float(weight), source, chain))
    return tuple(terms)


def parse_terms(spec: str) -> list[TermSpec]:
    """Parse a full spec into `TermSpec` terms (weight, source, chain).

    Parsed once per distinct spec in a process: transforms are immutable (their state lives in
    the pipeline), so every caller shares one parse.
    """
    if not isinstance(spec, str):
        raise RewardlabError(f"a pipeline spec is a string like 'mean|center|lsc'; got {type(spec).__name__}")
    return list(_parse_terms_cached(spec))


def parse_spec(spec: str) -> list[tuple[float, list[Transform]]]:
    """Parse a full spec into ``(weight, chain)`` terms (sources dropped; see `parse_terms`)."""
    return [(t.weight, list(t.chain)) for t in parse_terms(spec)]
