"""The reward side: every term of a run's reward — reward models and rule functions — with the
pipeline that reads them and the sequence penalties, built once; one call per batch.

PPO, TRL's GRPO/RLOO (`rewardlab.integrations.trl`), ``rewardlab score``, the study and the
reward server all score through it, so a reward calculation behaves the same wherever it runs.

A spec names what each term reads (one grammar for YAML, the command line and Python; see
`rewardlab.reward.pipeline`)::

    mean|lsc(q=0.5)                                   one term on the reward model(s)
    0.7*[rm:mean|lsc(q=0.5)] + 0.3*[fn:my_rules:correct]
    [rm0:mean|center] + [rm1:raw] + 0.5*[fn:length_penalty|clip(lo=-1.0,hi=0.0)]

``rm`` reads every reward model (their heads side by side: an ensemble), ``rm<i>`` the i-th one,
``fn:NAME`` a rule function given in Python and ``fn:package.module:function`` one imported by
path. A rule function has TRL's ``reward_funcs`` signature — ``f(prompts, completions,
completion_ids, **columns)``, every dataset column by name — and may return None for a sample it
does not apply to: that term is then left out of that sample's reward, as TRL does. (The older
``f(prompts, responses[, finished])`` form is still read, with decoded texts.)

Example::

    side = RewardSide.from_spec("0.7*[rm:mean|lsc(q=0.5)] + 0.3*[fn:correct]",
                                reward_models=[rm], functions={"correct": correct})
    out = side(Samples(prompts, responses, columns={"answer": answers}, group_ids=groups))
    out.scores, out.terms["correct"], out.raw["rm"], out.diagnostics

In PPO the two halves run apart: `score` on each process's rows, `reward` on the gathered batch.
This module imports nothing above `rewardlab.reward` (a test checks).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rewardlab.errors import RewardlabError
from rewardlab.ops.penalties import sequence_penalties
from rewardlab.reward.baselines import group_references
from rewardlab.reward.pipeline import RewardPipeline, TermSpec, parse_terms, term_names
from rewardlab.reward.rules import RuleFunction, function_name, named_functions, resolve_function
from rewardlab.reward.samples import PolicyTokens, Samples
from rewardlab.reward.transforms import Stage

__all__ = ["Penalties", "PolicyTokens", "RewardOutput", "RewardSide", "RewardSpec", "RuleFunction", "Samples",
           "named_functions", "score_samples"]

logger = logging.getLogger("rewardlab.reward.side")

# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------
@dataclass
class RewardOutput:
    """What the reward side gives for a batch.

    Attributes:
        scores: (B,) float32, Σ_i w_i · term_i over the terms that apply, minus the penalties.
        terms: each term's value after its chain, (B,) float32, NaN where it does not apply.
        raw: each term's raw outputs (B, H) float32 (reward-model heads, or a rule's numbers; NaN
            where it returned None).
        scorable: (B,) bool, whether any term applied (a row no term applies to has score 0 before
            penalties and, in PPO, no policy-gradient signal, as in TRL).
        diagnostics: ``reward/…`` statistics (docs/metrics.md).
    """

    scores: Tensor
    terms: dict[str, Tensor]
    raw: dict[str, Tensor]
    scorable: Tensor
    diagnostics: dict[str, float]


@dataclass(frozen=True)
class Penalties:
    """Sequence penalties the side subtracts after the pipeline (`rewardlab.ops.penalties.sequence_penalties`).

    Attributes:
        missing_eos: subtracted from the score of responses that did not end with the stop token.
        overlong_buffer_len, overlong_penalty_factor, max_length: DAPO's soft overlong penalty over the
            last ``overlong_buffer_len`` tokens of a ``max_length`` budget.
    """

    missing_eos: float | None = None
    overlong_buffer_len: int | None = None
    overlong_penalty_factor: float = 1.0
    max_length: int | None = None


# --------------------------------------------------------------------------------------------
# The spec, resolved
# --------------------------------------------------------------------------------------------
class RewardSpec:
    """A reward spec parsed once and resolved: each term's source, the rule functions, and the checks
    that need no model (sources, functions, columns). `RewardSide` adds the reward models.

    Args:
        spec: the pipeline spec, with or without sources.
        functions: rule functions given in Python, by name (a list: by ``__name__``).
        extra_functions: functions that become terms of their own (weight 1) unless the spec already
            reads them — ``reward.reward_fn`` and TRL's ``reward_funcs=[rm, fn]``: a ``module:function``
            string or a callable.
        num_models: how many reward models there are (None: not known yet, checked by `check_models`).
        resolve: import and inspect the rule functions now (False: only the spec's structure is checked,
            as config validation does without running user code).
    """

    def __init__(self, spec: str, *, functions: Mapping[str, Callable] | Sequence[Callable] | None = None,
                 extra_functions: Sequence[str | Callable] = (), num_models: int | None = None,
                 resolve: bool = True) -> None:
        given = named_functions(functions)
        extra_refs = []
        for f in extra_functions:
            if isinstance(f, str):
                extra_refs.append(f)
            elif f is not None:
                ref = function_name(f)
                given.setdefault(ref, f)
                extra_refs.append(ref)
        terms = parse_terms(spec)
        read = {t.source[3:] for t in terms if t.source and t.source.startswith("fn:")}
        appended = [r for r in dict.fromkeys(extra_refs) if r not in read]
        sourced = [t.source is not None for t in terms]
        if any(sourced) and not all(sourced):
            raise RewardlabError(f"reward spec {spec!r}: some terms name their source and some do not; once one term "
                                 "has a source (rm:, rm<i>:, fn:), give every term one")
        legacy_rule = (not any(sourced) and len(terms) == 1 and not num_models and len(appended) == 1)
        if legacy_rule:  # the older form: a rule function instead of a reward model, read by the one chain
            self.reads = [f"fn:{appended[0]}"]
            appended = []
        elif not any(sourced):
            self.reads = ["rm"] if len(terms) == 1 else [f"rm{i}" for i in range(len(terms))]
        else:
            self.reads = [t.source for t in terms]  # type: ignore[misc]
        if appended:  # the spec becomes explicit about every term
            terms = [TermSpec(t.weight, r, t.chain) for t, r in zip(terms, self.reads)]
            terms += [TermSpec(1.0, f"fn:{r}", ()) for r in appended]
            self.reads += [f"fn:{r}" for r in appended]
        self.terms: list[TermSpec] = terms
        self.functions: dict[str, RuleFunction] = {}
        for src in self.reads if resolve else ():
            if src.startswith("fn:") and src[3:] not in self.functions:
                self.functions[src[3:]] = resolve_function(src[3:], given)
        self.legacy_multi = not any(sourced) and len(terms) > 1 and not appended
        if num_models is not None:
            self.check_models(num_models)

    @property
    def model_indices(self) -> list[list[int] | None]:
        """Per term, the reward models it reads (None for a rule term; ``rm`` reads them all)."""
        out: list[list[int] | None] = []
        for src in self.reads:
            out.append(None if src.startswith("fn:") else [int(src[2:])] if src != "rm" else [])
        return out

    def check_models(self, n: int, what: str = "reward model") -> None:
        """Every ``rm<i>`` exists and every reward model is read by some term."""
        if self.legacy_multi and n != len(self.terms):
            raise RewardlabError(
                f"the reward pipeline has {len(self.terms)} terms but there {'is' if n == 1 else 'are'} {n} {what}(s); "
                f"give {len(self.terms)} reward models, one per term in term order (models.reward_model_paths), or "
                "name each term's source (rm0:, rm1:, fn:…)")
        read: set[int] = set()
        for src, idx in zip(self.reads, self.model_indices):
            if idx is None:
                continue
            if n == 0:
                raise RewardlabError(f"reward term {src}: reads a reward model, but none is given; set "
                                     "models.reward_model_path (or pass reward_model= in Python), or make it a rule term "
                                     "(fn:package.module:function)")
            if idx and idx[0] >= n:
                raise RewardlabError(f"reward term {src}: there are only {n} {what}(s) (rm0..rm{n - 1})")
            read.update(idx or range(n))
        unread = sorted(set(range(n)) - read)
        if unread:
            raise RewardlabError(f"{what}(s) {unread} are read by no term of the reward spec; add a term for each "
                                 "(rm<i>:…) or remove them")

    def check_columns(self, columns: Sequence[str]) -> None:
        """Every rule function's required parameters are dataset columns."""
        for rule in self.functions.values():
            rule.check_columns(columns)


# --------------------------------------------------------------------------------------------
# The side
# --------------------------------------------------------------------------------------------
class RewardSide:
    """Reward models + rule functions + pipeline + penalties: rows in, rewards out.

    Args:
        spec: a `RewardSpec` (or a spec string, resolved with ``functions``).
        reward_models: `rewardlab.reward.scoring.RewardModel`s (or objects with its
            ``score_policy_ids``, ``num_heads``, ``semantics``), in ``rm<i>`` order.
        functions: rule functions given in Python, by name (with a spec string).
        semantics: head semantics declared for every reward-model term (None: each model's own).
        penalties: sequence penalties applied after the pipeline.
        num_references: K, the reference samples per prompt of centred terms (for the fit check).
        what: how errors name the spec (``reward.reward_pipeline``, ``--pipeline`` …).
        pipeline: a `RewardPipeline` of the same spec to use (and keep the state of) instead of a fresh one.

    The pipeline is applied to made-up outputs of the right shape here, so a reading that does not
    fit a reward model fails at construction, not mid-training.
    """

    def __init__(self, spec: RewardSpec | str, reward_models: Sequence[Any] = (), *,
                 functions: Mapping[str, Callable] | Sequence[Callable] | None = None, semantics: str | None = None,
                 penalties: Penalties | None = None, num_references: int = 2,
                 what: str = "reward pipeline", pipeline: RewardPipeline | None = None) -> None:
        if isinstance(spec, str):
            spec = RewardSpec(spec, functions=functions, num_models=len(reward_models))
        else:
            spec.check_models(len(reward_models))
        self.reward_spec = spec
        self.reward_models = list(reward_models)
        self.penalties = penalties or Penalties()
        # Raw columns: every reward model's heads in order, then each rule function's outputs.
        widths = [int(m.num_heads) for m in self.reward_models]
        self._model_cols, start = [], 0
        for w in widths:
            self._model_cols.append(list(range(start, start + w)))
            start += w
        self._fn_cols: dict[str, list[int]] = {}
        self._fn_width = {ref: 1 for ref in spec.functions}  # a rule returning (B, H) widens its term on first call
        self._fn_seen: set[str] = set()
        for ref in spec.functions:
            self._fn_cols[ref] = [start]
            start += 1
        self.num_columns = start
        sems = []
        for src, idx in zip(spec.reads, spec.model_indices):
            if idx is None:
                sems.append(semantics)
                continue
            members = [self.reward_models[i] for i in (idx or range(len(self.reward_models)))]
            own = {getattr(m, "semantics", None) for m in members}
            if semantics is None and len(own) > 1:
                raise RewardlabError(
                    f"reward term {src} stacks reward models with different head semantics {sorted(map(str, own))}; "
                    "read each with its own term (rm0:…, rm1:…) or declare reward.reward_semantics")
            sems.append(semantics if semantics is not None else own.pop())
        self.pipeline = RewardPipeline(spec.terms, semantics=sems if len(sems) > 1 else sems[0])
        if pipeline is not None:
            if pipeline.spec != self.pipeline.spec:
                raise RewardlabError(f"pipeline {pipeline.spec!r} is not the spec's {self.pipeline.spec!r}")
            self.pipeline = pipeline
        self.term_names = term_names(spec.reads)
        self._ref_terms = [i for i in range(len(spec.terms)) if self.pipeline.term_needs_references(i)]
        self._ref_cols = sorted({c for i in self._ref_terms for c in self._term_cols(i)})
        # A rule term's width is known at its first call (an older-form rule may return (B, H)), so a rule
        # term whose chain reduces heads is checked then, by the pipeline itself.
        self.pipeline.check_fits(
            [None if spec.model_indices[i] is None and chain and chain[0].stage == Stage.HEAD else len(self._term_cols(i))
             for i, (_, chain) in enumerate(self.pipeline.terms)],
            num_references=max(num_references, 2), what=what)

    @classmethod
    def from_spec(cls, spec: str, reward_models: Sequence[Any] = (), **kwargs: Any) -> RewardSide:
        """`RewardSide` from a spec string (see the module docstring)."""
        return cls(spec, reward_models, **kwargs)

    # -- what it reads ---------------------------------------------------------------------------
    @property
    def spec(self) -> str:
        """The pipeline's canonical spec (what pipeline.txt records)."""
        return self.pipeline.spec

    @property
    def needs_references(self) -> bool:
        """Whether the next `reward` needs reference rewards (or group ids) for some term."""
        return self.pipeline.needs_references

    def _term_cols(self, i: int) -> list[int]:
        src, idx = self.reward_spec.reads[i], self.reward_spec.model_indices[i]
        if idx is None:
            return self._fn_cols[src[3:]]
        return [c for j in (idx or range(len(self.reward_models))) for c in self._model_cols[j]]

    def __repr__(self) -> str:
        return f"RewardSide({self.spec!r}, models={len(self.reward_models)}, functions={sorted(self.reward_spec.functions)})"

    # -- scoring -------------------------------------------------------------------------------
    def score(self, samples: Samples) -> Tensor:
        """Raw outputs of every source, side by side: (B, num_columns) float32, NaN where a rule returned None.

        Reward models score the policy's ids when they share its tokenizer (and, for chat prompts, its
        chat template); otherwise the original messages are rendered with the reward model's own
        template (prompt turns as given, the response as the assistant's turn), or text prompt and
        response are joined.
        """
        return torch.cat([self.score_models(samples), self.score_rules(samples)], dim=1)

    def score_models(self, samples: Samples) -> Tensor:
        """The reward models' columns of `score`: (B, Σ H) float32 (a server batches these across requests)."""
        parts = [score_samples(m, samples).float().cpu() for m in self.reward_models]
        return torch.cat(parts, dim=1) if parts else torch.zeros(len(samples.prompts), 0)

    def score_rules(self, samples: Samples) -> Tensor:
        """The rule functions' columns of `score`: (B, Σ H_rules) float32, NaN where a rule returned None."""
        parts = []
        for ref, rule in self.reward_spec.functions.items():
            out = rule(samples)
            if out.shape[1] != self._fn_width[ref]:
                if ref in self._fn_seen:
                    raise RewardlabError(f"rule term fn:{ref} returned {out.shape[1]} scores per completion, and "
                                         f"{self._fn_width[ref]} before; return the same number on every call")
                self._widen(ref, out.shape[1])
            self._fn_seen.add(ref)
            parts.append(out)
        return torch.cat(parts, dim=1) if parts else torch.zeros(len(samples.prompts), 0)

    def _widen(self, ref: str, width: int) -> None:
        """A rule function that returns (B, H): its columns become H wide (the older rewardlab form)."""
        old = self._fn_width[ref]
        self._fn_width[ref] = width
        start = self._fn_cols[ref][0]
        for other, cols in self._fn_cols.items():
            if cols[0] > start:
                self._fn_cols[other] = [c + width - old for c in cols]
        self._fn_cols[ref] = list(range(start, start + width))
        self.num_columns += width - old
        self._ref_cols = sorted({c for i in self._ref_terms for c in self._term_cols(i)})

    def reference_scores(self, samples: Samples) -> Tensor:
        """Reference samples scored by the sources centred terms read, only: (N, R), `reference_view`'s columns.

        (A rule term that is not centred never runs on references, nor needs their dataset columns.)
        """
        n = len(samples.prompts)
        model_terms = [self.reward_spec.model_indices[i] is not None for i in self._ref_terms]
        models = self.score_models(samples) if any(model_terms) else \
            torch.full((n, sum(len(c) for c in self._model_cols)), float("nan"))
        rules = self.score_rules(samples) if not all(model_terms) else \
            torch.full((n, sum(self._fn_width.values())), float("nan"))
        return self.reference_view(torch.cat([models, rules], dim=1))

    def reference_view(self, raw: Tensor) -> Tensor:
        """The columns of ``raw`` that centred terms read: what a reference-reward cache keeps per sample.

        Shapes: (…, num_columns) → (…, R).
        """
        return raw[..., self._ref_cols]

    def proxy(self, raw: Tensor) -> Tensor:
        """The learned part of ``raw``: the reward models' heads (a run without one: the rules' numbers).

        The over-optimisation alarm watches these. Shapes: (B, num_columns) → (B, H_models).
        """
        cols = [c for cols in self._model_cols for c in cols]
        return raw[:, cols] if cols else raw

    def reward(self, raw: Tensor, *, ref: Tensor | None = None, group_ids: Sequence[Hashable] | None = None,
               finished: Tensor | Sequence[bool] | None = None, lengths: Tensor | None = None,
               update: bool = True) -> RewardOutput:
        """Turn raw outputs into scores: each term's columns through its chain, weighted, summed, penalised.

        Args:
            raw: (B, num_columns) from `score` (in PPO: gathered over processes).
            ref: (B, K, R) `reference_view` of K reference samples of each row's prompt, for centred terms.
            group_ids: without ``ref``, centred terms centre on the other rows of the same group.
            finished: (B,) bool, the response ended with the stop token (missing-EOS penalty).
            lengths: (B,) response lengths in tokens (overlong penalty).
            update: whether stateful transforms update (False to evaluate).
        """
        b = raw.shape[0]
        n = len(self.reward_spec.terms)
        logits, refs, applies = [], [], []
        for i in range(n):
            cols = self._term_cols(i)
            x = raw[:, cols]
            is_rule = self.reward_spec.model_indices[i] is None
            applies.append(torch.isfinite(x).all(-1) if is_rule else None)
            logits.append(x)
            refs.append(self._term_ref(i, x, ref, group_ids) if self.pipeline.term_needs_references(i) else None)
        out = self.pipeline(logits if n > 1 else logits[0], ref=refs if n > 1 else refs[0], update=update,
                            applies=applies)
        scorable = torch.stack([torch.ones(b, dtype=torch.bool) if a is None else a for a in applies]).any(0)
        diagnostics = dict(out.diagnostics)
        if not bool(scorable.all()):
            diagnostics["reward/unscorable_frac"] = (~scorable).double().mean().item()
            logger.warning("%d of %d samples: every reward term returned None (no reward; in PPO no policy-gradient "
                           "signal); make at least one term apply to every sample", int((~scorable).sum()), b)
        p = self.penalties
        if p.missing_eos is not None and finished is None:
            raise RewardlabError("the missing-EOS penalty needs to know which responses finished (finished=)")
        scores = sequence_penalties(
            out.scores, None if finished is None else torch.as_tensor(finished, dtype=torch.bool), lengths,
            missing_eos_penalty=p.missing_eos, max_length=p.max_length, overlong_buffer_len=p.overlong_buffer_len,
            overlong_penalty_factor=p.overlong_penalty_factor)
        return RewardOutput(
            scores=scores, terms=dict(zip(self.term_names, out.terms)), raw=dict(zip(self.term_names, logits)),
            scorable=scorable, diagnostics=diagnostics)

    def _term_ref(self, i: int, x: Tensor, ref: Tensor | None, group_ids: Sequence[Hashable] | None) -> Tensor:
        name = self.term_names[i]
        if ref is not None:
            if ref.shape[-1] != len(self._ref_cols):
                raise RewardlabError(
                    f"reference rewards have {ref.shape[-1]} columns but the centred terms read {len(self._ref_cols)} "
                    "(a reference cache from another reward spec?); score the references again with this spec")
            pos = [self._ref_cols.index(c) for c in self._term_cols(i)]
            out = ref[..., pos]
        elif group_ids is not None:
            ids = list(group_ids)
            index = {g: k for k, g in enumerate(dict.fromkeys(ids))}
            out = group_references(x, [index[g] for g in ids])
        else:
            raise RewardlabError(
                f"reward term {name} ({self.pipeline.spec}) centres each reward on reference rewards of the same "
                "prompt, and this batch brings neither reference samples nor groups of responses per prompt; give "
                "reference rewards (K reference-policy samples per prompt) or group ids, or drop the centring "
                "(center, lsc, par, standardize)")
        if not bool(torch.isfinite(out).all()):
            raise RewardlabError(f"reward term {name}: its rule returned None for reference samples, so it cannot "
                                 "centre on them; make the function apply to every sample of a prompt, or drop the "
                                 "centring from this term")
        return out

    def __call__(self, samples: Samples, *, ref: Tensor | None = None, update: bool = True) -> RewardOutput:
        """`score` then `reward` on one batch (group ids, finished flags and lengths from the samples)."""
        raw = self.score(samples)
        lengths = None if samples.tokens is None else samples.tokens.response_mask.sum(1)
        return self.reward(raw, ref=ref, group_ids=samples.group_ids, finished=samples.finished, lengths=lengths,
                           update=update)

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The pipeline's state (running statistics, fitted standardisation)."""
        return self.pipeline.state_dict()

    def load_state_dict(self, data: dict[str, Any]) -> None:
        self.pipeline.load_state_dict(data)


def score_samples(model: Any, samples: Samples) -> Tensor:
    """One reward model's (B, H) raw outputs for the samples (see `RewardSide.score`): the policy's ids
    when it reads them, else chat messages through its template, else joined text."""
    t = samples.tokens
    rerender = samples.chat and t is not None and _rerenders_chat(model, t.tokenizer)
    if t is not None and not rerender:
        return model.score_policy_ids(torch.cat([t.query_ids, t.response_ids], 1),
                                      torch.cat([t.query_mask, t.response_mask], 1), t.tokenizer,
                                      prompt_lengths=t.query_mask.sum(1))
    responses = samples.response_list()
    if samples.chat:
        return model.score_messages([list(p) + (list(r) if isinstance(r, (list, tuple)) else
                                                [{"role": "assistant", "content": r}])
                                     for p, r in zip(samples.prompts, responses, strict=True)])
    if any(not isinstance(p, str) for p in samples.prompts) or any(not isinstance(r, str) for r in responses):
        raise RewardlabError("prompts and responses must be all text or, for chat, prompts lists of messages; got "
                             f"{type(samples.prompts[0]).__name__} prompts and {type(responses[0]).__name__} responses")
    return model.score_texts(list(samples.prompts), responses)


def _rerenders_chat(model: Any, policy_tokenizer: Any) -> bool:
    """Whether a reward model must render chat prompts itself: it has its own tokenizer with a chat
    template, and that tokenizer or template is not the policy's (then the policy's ids would feed it
    another format)."""
    tok = getattr(model, "tokenizer", None)
    if tok is None or getattr(tok, "chat_template", None) is None:
        return False
    same = getattr(model, "shares_tokenizer", None)
    return not (same is not None and same(policy_tokenizer)
                and getattr(policy_tokenizer, "chat_template", None) == tok.chat_template)
