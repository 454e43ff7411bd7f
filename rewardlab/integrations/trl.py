"""Reward functions for TRL's GRPOTrainer and RLOOTrainer, scored by rewardlab's reward side.

Given a reward *model* in ``reward_funcs``, TRL (1.16) tokenises prompt + completion, runs the
model and takes ``logits[:, 0]`` with no transform: a 2-logit Bradley-Terry model is read through
one arbitrary head, a classifier through one unnormalised logit, and a sigmoid-shaped reward
(logsigmoid, LSC) is computed against an arbitrary per-prompt offset. `reward_function` wraps a
rewardlab reward model and pipeline into the callable form TRL accepts instead::

    from trl import GRPOConfig, GRPOTrainer
    from rewardlab import RewardModel
    from rewardlab.integrations.trl import reward_function

    rm = RewardModel.from_pretrained("./runs/rm", semantics="bradley_terry")
    reward = reward_function(rm, "mean|lsc(q=0.5)", num_generations=8)   # centred on the group
    trainer = GRPOTrainer(model=policy, reward_funcs=reward, args=GRPOConfig(num_generations=8, ...),
                          train_dataset=prompts)

Centring (``centering=``): a centred pipeline (``center``, ``lsc``, ``par``, an unfitted
``standardize``) compares each completion with reference rewards for the same prompt.
``"group"`` (the default for such pipelines) uses the *other* completions of the prompt's group
in the batch (leave-one-out, as RLOO does); ``"references"`` uses a `ReferenceRewards` cache of
reference-policy samples scored beforehand (`score_references`); ``"none"`` passes no references.

Rule terms mix in (``"0.7*[rm:mean|lsc(q=0.5)] + 0.3*[fn:correct]"`` with ``functions={"correct": f}``):
they get TRL's own arguments — prompts, completions, completion_ids and every dataset column by
name — and may return None where they do not apply. A row no term applies to is returned as None,
so TRL itself treats it as unscorable.

Diagnostics (``reward/raw/mean``, ``reward/saturated_frac`` …) go to TRL's logs through the
``log_metric`` callback TRL passes to reward functions, prefixed with the function's name.

Device (``device=``): ``"auto"`` (the default) scores on the GPU when one is visible — a model folder
loads there, and a `RewardModel` still on the CPU moves there — so GRPO on a GPU does not score its
rewards on the CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` put every reward model on that device.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch

from rewardlab.devices import resolve_device
from rewardlab.errors import RewardlabError
from rewardlab.reward.baselines import ReferenceRewards, prompt_key_of
from rewardlab.reward.pipeline import RewardPipeline
from rewardlab.reward.scoring import RewardModel
from rewardlab.reward.side import RewardOutput, RewardSide, Samples, score_samples

__all__ = ["RemoteRewardFunction", "RewardFunction", "remote_reward_function", "reward_function", "score_references",
           "trl_prompt_key"]

logger = logging.getLogger("rewardlab.integrations.trl")

Centering = Literal["group", "references", "none"]
_CENTERINGS = ("group", "references", "none")
# TRL passes these to every reward function besides dataset columns; none of them is a column.
_TRL_CALLBACKS = ("trainer_state", "log_extra", "log_metric", "environments")


def trl_prompt_key(prompt: str | Sequence[dict[str, Any]]) -> str:
    """The cache key of a TRL prompt: its text, or its messages (role and content) for chat prompts."""
    return prompt_key_of(prompt)


def _samples(prompts: Sequence[Any], completions: Sequence[Any], separator: str, **kwargs: Any) -> Samples:
    """TRL's rows as the reward side reads them: text joined with ``separator``, or messages as they are."""
    conversational = len(prompts) > 0 and isinstance(prompts[0], (list, tuple))
    if conversational and not all(isinstance(c, (list, tuple)) for c in completions):
        raise RewardlabError(
            "conversational prompts (lists of messages) need conversational completions; got "
            f"{type(completions[0]).__name__} completions")
    if not conversational and not (all(isinstance(p, str) for p in prompts) and all(isinstance(c, str) for c in completions)):
        raise RewardlabError(
            "prompts and completions must be all text (str) or all conversational (lists of messages); "
            f"got {type(prompts[0]).__name__} prompts and {type(completions[0]).__name__} completions")
    return Samples(list(prompts), [c if conversational else separator + c for c in completions], **kwargs)


def score_references(
    reward_model: RewardModel,
    prompts: Sequence[Any],
    completions: Sequence[Any],
    *,
    references: ReferenceRewards | None = None,
    separator: str = "",
) -> ReferenceRewards:
    """Score reference-policy completions and add them to a per-prompt cache for ``centering="references"``.

    Args:
        reward_model: the reward model the reward function will use.
        prompts: one prompt per completion (repeat a prompt K times for K samples), text or messages.
        completions: reference-policy (e.g. SFT) completions, in the format TRL passes.
        references: a cache to extend (default: a new one).
        separator: put between prompt and completion text, as in `reward_function`.

    Returns:
        The cache, keyed by `trl_prompt_key`.
    """
    if len(prompts) != len(completions):
        raise RewardlabError(f"got {len(prompts)} prompts but {len(completions)} completions; pass one prompt per completion")
    cache = references if references is not None else ReferenceRewards()
    cache.add([trl_prompt_key(p) for p in prompts], score_samples(reward_model, _samples(prompts, completions, separator)))
    return cache


def _group_ids(prompts: Sequence[Any], num_generations: int | None) -> list[int]:
    """Group index of each row: consecutive blocks of `num_generations` rows, or identical prompts."""
    keys = [trl_prompt_key(p) for p in prompts]
    n = len(keys)
    if num_generations is None:
        first: dict[str, int] = {}
        return [first.setdefault(k, len(first)) for k in keys]
    if n % num_generations:
        raise RewardlabError(
            f"got {n} completions, not a multiple of num_generations={num_generations}; pass the trainer's "
            "num_generations (or leave it None to group identical prompts). With several processes a group may "
            "be split across them: then use centering='references'"
        )
    ids = [i // num_generations for i in range(n)]
    # TRL repeats each prompt num_generations times in a row. Runs of identical prompts all longer than
    # the given size mean the trainer's groups are larger: each completion would be centred on too few others.
    runs, start = [], 0
    for i in range(1, n + 1):
        if i == n or keys[i] != keys[start]:
            runs.append(i - start)
            start = i
    if len(set(runs)) == 1 and runs[0] > num_generations and runs[0] % num_generations == 0:
        raise RewardlabError(
            f"num_generations={num_generations}, but the batch holds each prompt {runs[0]} times in a row: the "
            f"trainer generates {runs[0]} completions per prompt, and centring on groups of {num_generations} would "
            f"compare each completion with {num_generations - 1} other(s) instead of {runs[0] - 1}. Pass the "
            f"trainer's num_generations ({runs[0]}), or leave it None to group identical prompts"
        )
    for g in range(n // num_generations):
        block = keys[g * num_generations : (g + 1) * num_generations]
        if len(set(block)) != 1:
            raise RewardlabError(
                f"rows {g * num_generations}..{(g + 1) * num_generations - 1} should be the {num_generations} "
                "completions of one prompt but their prompts differ; num_generations must equal the trainer's "
                "(GRPOConfig/RLOOConfig.num_generations)"
            )
    return ids


def _check_groups(group_ids: list[int]) -> None:
    sizes = sorted(set(torch.bincount(torch.tensor(group_ids)).tolist()))
    if len(sizes) > 1:
        raise RewardlabError(
            f"centering='group' needs the same number of completions for every prompt in a batch; got group sizes "
            f"{sizes} (the same prompt may appear in two groups). Pass num_generations= (the trainer's), or use "
            "centering='references'"
        )
    if sizes[0] < 2:
        raise RewardlabError(
            "centering='group' compares each completion with the other completions of its prompt, but every "
            "prompt has only 1 completion in this batch. Set num_generations ≥ 2 in the trainer, use "
            "centering='references' with a ReferenceRewards cache (score_references), or a pipeline without "
            "centring (center/lsc/par) and centering='none'"
        )


class RewardFunction:
    """A TRL reward function: ``f(prompts, completions, completion_ids=None, **kwargs) -> list[float | None]``.

    Built by `reward_function`; see there for the arguments. ``__name__`` is what TRL logs it
    under (``rewards/<name>/mean``); `last_output` keeps the last `RewardOutput` for inspection.
    """

    def __init__(self, side: RewardSide, *, centering: Centering, references: list[ReferenceRewards] | None,
                 num_generations: int | None, num_references: int | None, separator: str, name: str,
                 device: torch.device | None = None) -> None:
        self.side = side
        self.device = device
        self.centering: Centering = centering
        self.references = references
        self.num_generations = num_generations
        self.num_references = num_references
        self.separator = separator
        self.__name__ = name
        self.last_output: RewardOutput | None = None

    @property
    def reward_models(self) -> list[Any]:
        return self.side.reward_models

    @property
    def pipeline(self) -> RewardPipeline:
        return self.side.pipeline

    def __repr__(self) -> str:
        return f"RewardFunction({self.__name__!r}, pipeline={self.side.spec!r}, centering={self.centering!r})"

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None, **kwargs: Any
    ) -> list[float | None]:
        """Score a batch: one float per (prompt, completion), in order (None where no term applies).

        Args:
            prompts, completions: what TRL passes (text, or lists of chat messages), one per row.
            completion_ids: ignored by reward models (rows are re-tokenised from text with their own
                tokenizer); passed on to rule terms.
            kwargs: TRL's extras: dataset columns (passed to rule terms by name); ``log_metric(name, value)``
                receives the pipeline diagnostics and ``log_extra(column, values)`` each term's raw outputs.
        """
        if len(prompts) != len(completions):
            raise RewardlabError(f"got {len(prompts)} prompts but {len(completions)} completions")
        if len(prompts) == 0:
            return []
        columns = {k: v for k, v in kwargs.items() if k not in _TRL_CALLBACKS}
        samples = _samples(prompts, completions, self.separator, columns=columns)
        raw = self.side.score(samples)
        group_ids, ref = None, None
        if self.centering == "group":
            group_ids = _group_ids(prompts, self.num_generations)
            _check_groups(group_ids)
        elif self.centering == "references":
            assert self.references is not None
            keys = [trl_prompt_key(p) for p in prompts]
            ref = self.side.reference_view(torch.cat([c.gather(keys, k=self.num_references) for c in self.references], -1))
        out = self.side.reward(raw, ref=ref, group_ids=group_ids)
        self.last_output = out
        self._log(out, kwargs)
        return [s if ok else None for s, ok in zip(out.scores.tolist(), out.scorable.tolist(), strict=True)]

    def _log(self, out: RewardOutput, kwargs: dict[str, Any]) -> None:
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            for key, value in out.diagnostics.items():
                if math.isfinite(value):  # TRL averages what it gets; a NaN (undefined correlation) would poison it
                    log_metric(f"{self.__name__}/{key}", float(value))
        log_extra = kwargs.get("log_extra")
        if callable(log_extra):
            for term, lg in out.raw.items():
                suffix = "" if len(out.raw) == 1 else f"/{term}"
                rows = lg[:, 0].tolist() if lg.shape[1] == 1 else lg.tolist()
                log_extra(f"{self.__name__}/raw{suffix}", rows)


def _as_reward_model(rm: RewardModel | str | os.PathLike[str], semantics: str | None, device: torch.device,
                     explicit: bool) -> RewardModel:
    """A `RewardModel` on ``device``: a folder loaded there; an instance moved there when the device was asked
    for explicitly, or (``"auto"``) when it is still on the CPU — one already on an accelerator stays put."""
    if isinstance(rm, RewardModel):
        current = next((p.device for p in rm.model.parameters()), torch.device("cpu"))
        if current != device and (explicit or current.type == "cpu"):
            rm.model.to(device)
        return rm
    if isinstance(rm, (str, os.PathLike)):
        return RewardModel.from_pretrained(rm, semantics=semantics, device=device)
    raise RewardlabError(
        f"reward_model must be a rewardlab RewardModel or a local model folder; got {type(rm).__name__}. "
        "Wrap a transformers model with RewardModel(model, tokenizer, semantics=...)"
    )


def reward_function(
    reward_model: RewardModel | str | os.PathLike[str] | Sequence[RewardModel] | None,
    pipeline: str | RewardPipeline = "raw",
    *,
    functions: Mapping[str, Callable] | Sequence[Callable] | None = None,
    semantics: str | None = None,
    centering: Centering | None = None,
    references: ReferenceRewards | Sequence[ReferenceRewards] | None = None,
    num_generations: int | None = None,
    num_references: int | None = None,
    separator: str = "",
    name: str = "rewardlab",
    allow_semantics_mismatch: bool = False,
    device: str | torch.device | None = "auto",
) -> RewardFunction:
    """A reward function for TRL's ``GRPOTrainer`` / ``RLOOTrainer`` ``reward_funcs``.

    Each call scores the rows with the reward side — the reward models' raw head logits ``(B, H)``
    pooled at the last real token, and the rule terms — and applies the pipeline, centring on the
    prompt's group or on cached reference rewards; it returns ``scores.tolist()``.

    Args:
        reward_model: a `RewardModel`, a local model folder, or a list of them (``rm0``, ``rm1`` … of the
            spec; several read by one term without a source are an ensemble); None for rule terms only.
        pipeline: a spec (`rewardlab.reward.side`: ``"mean|lsc(q=0.5)"``, ``"0.7*[rm:mean|lsc] +
            0.3*[fn:correct]"``) or a `RewardPipeline` (its state, e.g. running_norm, lives in this
            function). The default ``"raw"`` fits 1-output models only; models with H > 1 outputs need
            a head reducer (``mean`` for Bradley-Terry heads, ``logodds`` for a classifier).
        functions: rule functions the spec reads by name (``fn:NAME``), TRL's reward-function signature;
            one the spec does not read becomes a term of weight 1.
        semantics: head semantics declared for the reward models (default: each model's own).
        centering: where a centred pipeline's references come from: ``"group"`` (other completions
            of the same prompt in the batch), ``"references"`` (the `references` cache) or ``"none"``.
            Default: ``"references"`` if `references` is given, else ``"group"`` for centred pipelines
            and ``"none"`` otherwise.
        references: `ReferenceRewards` (one per reward model) keyed by `trl_prompt_key`.
        num_generations: completions per prompt (the trainer's); groups are consecutive blocks of this
            size, checked to share a prompt. Default None groups rows with identical prompts.
        num_references: use the first k cached references per prompt (default all; prompts must agree).
        separator: text put between a text prompt and its completion before tokenising (TRL joins
            them with nothing; word-level tokenizers may need ``" "``).
        name: the function's ``__name__``, under which TRL and the diagnostics log it.
        allow_semantics_mismatch: keep declared semantics that the heads' correlation contradicts (by
            default such a declaration is refused; the evidence is the model's outputs on random token
            sequences, as `rewardlab inspect` measures without preference data).
        device: where the reward models score: ``"auto"`` (None too: the GPU when one is visible, else the
            CPU; a `RewardModel` already on a GPU stays there), or ``"cpu"``, ``"cuda"``, ``"cuda:N"`` for
            every model (a `RewardModel` passed in is moved there). A device this machine lacks is refused.

    Returns:
        A `RewardFunction`.

    Raises:
        RewardlabError: a pipeline that cannot read the model's heads, a centring that does not fit the
            pipeline, a missing cache; at call time, groups of size 1 or unequal size for ``"group"``.
    """
    explicit = device is not None and device != "auto"
    resolved = resolve_device(device, "device")  # before any model loads
    if reward_model is None:
        models = []
    elif isinstance(reward_model, Sequence) and not isinstance(reward_model, str):
        models = [_as_reward_model(rm, semantics, resolved, explicit) for rm in reward_model]
        if not models:
            raise RewardlabError("reward_model: got an empty list; pass at least one RewardModel (or None for rules only)")
    else:
        models = [_as_reward_model(reward_model, semantics, resolved, explicit)]
    if not isinstance(pipeline, (str, RewardPipeline)):
        raise RewardlabError(f"pipeline must be a spec string or a RewardPipeline; got {type(pipeline).__name__}")
    if not allow_semantics_mismatch:
        for rm in models:
            rm.check_declared_semantics(semantics=semantics, declared_as="semantics",
                                        override="reward_function(..., allow_semantics_mismatch=True)")
    side = RewardSide(pipeline if isinstance(pipeline, str) else pipeline.spec, models, functions=functions,
                      semantics=semantics, what="pipeline",
                      pipeline=pipeline if isinstance(pipeline, RewardPipeline) else None)
    if centering is not None and centering not in _CENTERINGS:
        raise RewardlabError(f"centering={centering!r} is not one of {', '.join(map(repr, _CENTERINGS))}")
    if num_generations is not None and (isinstance(num_generations, bool) or not isinstance(num_generations, int) or num_generations < 1):
        raise RewardlabError(f"num_generations={num_generations!r} must be a positive integer (the trainer's num_generations)")

    refs: list[ReferenceRewards] | None = None
    if references is not None:
        refs = [references] if isinstance(references, ReferenceRewards) else list(references)
        if len(refs) != len(models) or not all(isinstance(r, ReferenceRewards) for r in refs):
            raise RewardlabError(f"references: pass one ReferenceRewards per reward model ({len(models)}); got {len(refs)}")
    needs = side.needs_references
    spec = side.spec
    if centering is None:
        centering = "references" if refs is not None else ("group" if needs else "none")
    if centering == "references" and refs is None:
        raise RewardlabError(
            "centering='references' needs a ReferenceRewards cache: build one with "
            "score_references(rm, prompts, reference_completions) and pass references=…"
        )
    centred_rules = [side.term_names[i] for i, idx in enumerate(side.reward_spec.model_indices)
                     if idx is None and side.pipeline.term_needs_references(i)]
    if centering == "references" and centred_rules:
        raise RewardlabError(f"centering='references' caches reward-model outputs only, and the rule term(s) "
                             f"{centred_rules} are centred; use centering='group' or drop their centring")
    if centering == "none" and needs:
        raise RewardlabError(
            f"pipeline '{spec}' centres on per-prompt references, but centering='none' gives it none. Use "
            "centering='group' (the other completions of each prompt) or 'references' (a cache), or drop the "
            "centred transforms (center, lsc, par, standardize without mean/std)"
        )
    if centering != "none" and not needs:
        raise RewardlabError(
            f"centering={centering!r} was asked for, but pipeline '{spec}' uses no references, so nothing "
            "would be centred. Add a centred transform (e.g. 'mean|center' or 'mean|lsc(q=0.5)') or pass "
            "centering='none'"
        )
    if refs is not None and centering != "references":
        raise RewardlabError(f"references were given but centering={centering!r}; pass centering='references'")
    logger.info("TRL reward function %r: pipeline '%s', centering=%s, device %s", name, spec, centering, resolved)
    return RewardFunction(side, centering=centering, references=refs, num_generations=num_generations,
                          num_references=num_references, separator=separator, name=name, device=resolved)


class RemoteRewardFunction:
    """A TRL reward function scored by `rewardlab serve` (the reward side runs in the server).

    Built by `remote_reward_function`. ``__name__`` is what TRL logs it under; `last_output` keeps the
    server's last answer (scores, terms, raw outputs, diagnostics).
    """

    def __init__(self, client: Any, *, num_generations: int | None, separator: str, name: str) -> None:
        self.client, self.num_generations, self.separator = client, num_generations, separator
        self.__name__ = name
        self.last_output: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"RemoteRewardFunction({self.__name__!r}, servers={self.client.urls})"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], completion_ids: Any = None,
                 **kwargs: Any) -> list[float | None]:
        """One request per batch: the prompts, completions, dataset columns and the prompts' groups."""
        from rewardlab.serve.client import jsonable_columns

        if len(prompts) != len(completions):
            raise RewardlabError(f"got {len(prompts)} prompts but {len(completions)} completions")
        if len(prompts) == 0:
            return []
        samples = _samples(prompts, completions, self.separator)
        columns = jsonable_columns({k: v for k, v in kwargs.items() if k not in _TRL_CALLBACKS}, len(prompts))
        groups = _group_ids(prompts, self.num_generations)
        sizes = set(torch.bincount(torch.tensor(groups)).tolist())
        out = self.client.score(samples.prompts, samples.response_list(), columns=columns,
                                group_ids=groups if len(sizes) == 1 and min(sizes) >= 2 else None)
        self.last_output = out
        log_metric = kwargs.get("log_metric")
        if callable(log_metric):
            for key, value in out["diagnostics"].items():
                if value is not None and math.isfinite(value):
                    log_metric(f"{self.__name__}/{key}", float(value))
        return list(out["scores"])


def remote_reward_function(url: str | None = None, *, num_generations: int | None = None, api_key: str | None = None,
                           separator: str = "", name: str = "rewardlab", timeout: float = 180.0,
                           retries: int = 5) -> RemoteRewardFunction:
    """A reward function for TRL's ``reward_funcs`` that scores on a `rewardlab serve` server.

    Each call sends the batch in one request — prompts, completions (joined with ``separator`` for
    text), every JSON-serialisable dataset column, and the prompts' groups (consecutive blocks of
    ``num_generations``, or identical prompts), so that the server's centred terms centre within each
    group — and returns the server's scores (None where no term applied, which TRL treats as
    unscorable). The server's diagnostics go to TRL's logs through ``log_metric``.

    Args:
        url: the server(s), comma-separated (default ``$REWARDLAB_URL``).
        num_generations: the trainer's completions per prompt (None: group identical prompts).
        api_key: the server's key (default ``$REWARDLAB_API_KEY``).
        separator, name: as in `reward_function`.
        timeout, retries: per attempt, and attempts after the first on connection errors and 502/503/504.
    """
    from rewardlab.serve.client import RewardClient

    return RemoteRewardFunction(RewardClient(url, api_key=api_key, timeout=timeout, retries=retries),
                                num_generations=num_generations, separator=separator, name=name)
