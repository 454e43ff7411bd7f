"""Request and response bodies of every endpoint, typed; and the peers' forms turned into `Samples`.

- native ``POST /score``: prompts (text or messages), responses, columns, optional group ids,
  ``finished``, ``kl`` → scores, each term's values, raw head outputs, diagnostics;
- OpenRLHF ``POST /get_reward`` (``--remote_rm_url http://host:port/get_reward``): ``{"query",
  "prompts", "labels"}`` → ``{"rewards", "scores", "extra_logs"}``. ``query[i]`` is prompt + response
  decoded with the policy's special tokens (templates, EOS, sometimes left padding); the prompt is
  split off with ``prompts[i]`` and the padding and end-of-sequence tokens are removed as whole
  tokens of the reward model's tokenizer (never ``str.strip``, which removes *characters*);
- slime ``POST /slime`` (``--rm-url http://host:port/slime``): ``{"prompt", "response", "label"}``
  → the score as a bare JSON number.

OpenRLHF's and slime's labels reach rule terms as a ``label`` column.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

Message = dict[str, Any]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class ScoreRequest(_Body):
    """``POST /score``: a batch of samples."""

    prompts: list[str | list[Message]] = Field(description="text prompts, or chat conversations (lists of messages)")
    responses: list[str | list[Message]] = Field(description="one response per prompt (text, or messages)")
    columns: dict[str, list[Any]] = Field(default_factory=dict, description="dataset columns by name, one value per "
                                                                             "sample (rule terms read them)")
    group_ids: list[str | int] | None = Field(default=None, description="samples with the same id answer one prompt: "
                                                                       "centred terms centre within the group")
    finished: list[bool] | None = Field(default=None, description="whether each response ended with the stop token "
                                                                  "(missing-EOS penalty)")
    kl: list[float] | None = Field(default=None, description="each sample's sequence KL to the reference, if known "
                                                             "(the alarm's returns signal)")

    @field_validator("columns")
    @classmethod
    def _column_names(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for name in v:
            if not name.isidentifier() or name in ("prompts", "completions", "completion_ids"):
                raise ValueError(f"column name {name!r} is not usable as a keyword argument of a rule function")
        return v


class ScoreResponse(BaseModel):
    scores: list[float | None]
    terms: dict[str, list[float | None]]
    raw: dict[str, list[list[float | None]]]
    diagnostics: dict[str, float | None]


class OpenRLHFRequest(_Body):
    """OpenRLHF's remote reward-model request (`openrlhf/utils/remote_rm_utils.py`)."""

    model_config = ConfigDict(extra="ignore")  # forks add fields (metas, datasources); ignored
    query: list[str]
    prompts: list[str] | None = None
    labels: list[Any] | None = None


class SlimeRequest(_Body):
    """slime's remote reward-model request (`slime/rollout/rm_hub`, ``--rm-type remote_rm``)."""

    model_config = ConfigDict(extra="ignore")
    prompt: str | list[Message]
    response: str
    label: Any = None


def check_lengths(fields: dict[str, list[Any] | None], n: int) -> str | None:
    """The first list whose length is not ``n``, as a message (None when all fit)."""
    for name, values in fields.items():
        if values is not None and len(values) != n:
            return f"field {name!r} has {len(values)} values for {n} samples; give one per sample"
    return None


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN: a term that did not apply is null."""
    return x if math.isfinite(x) else None


def strip_special_edges(text: str, tokens: list[str], *, lead: bool, trail: bool) -> str:
    """Remove whole special tokens (``tokens``, longest first) from the start and/or end of ``text``,
    with the whitespace next to them; the text in between is kept as it is.

    Example: ``strip_special_edges("[PAD] hi there [EOS][PAD]", ["[PAD]", "[EOS]"], lead=True, trail=True)``
    is ``"hi there"`` (``str.strip("[EOS]")`` would also eat a response that ends in "E", "O", "S" …).
    """
    tokens = sorted({t for t in tokens if t}, key=len, reverse=True)
    if not tokens:
        return text
    removed = True
    while removed:
        removed = False
        for tok in tokens:
            if lead and text.lstrip().startswith(tok):
                text, removed = text.lstrip()[len(tok):].lstrip(), True
            if trail and text.rstrip().endswith(tok):
                text, removed = text.rstrip()[: -len(tok)].rstrip(), True
    return text
