"""What the reward side scores: B (prompt, response) pairs, their dataset columns, and, in PPO,
the policy's token ids.

Example::

    Samples(["What is 2+2?"], [" 4"], columns={"answer": ["4"]})
    Samples(prompts, tokens=PolicyTokens(query_ids, query_mask, response_ids, response_mask, tokenizer))
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from rewardlab.errors import RewardlabError

__all__ = ["PolicyTokens", "Samples"]


@dataclass
class PolicyTokens:
    """A rollout's token ids in the policy's vocabulary (PPO); lets reward models that share the
    policy's tokenizer score the ids directly, without decoding."""

    query_ids: Tensor      # (B, Tq) int64, left-padded prompt ids
    query_mask: Tensor     # (B, Tq) int64
    response_ids: Tensor   # (B, T) int64, padded after the stop token
    response_mask: Tensor  # (B, T) int64
    tokenizer: Any


@dataclass
class Samples:
    """A batch to score: B (prompt, response) pairs and what else the terms may read.

    Attributes:
        prompts: as the data gives them: text, or a list of chat messages (``{"role", "content"}``).
        responses: text (after a chat prompt it is the assistant's turn), or a list of messages;
            None: decoded from ``tokens`` (special tokens removed) when a term needs them.
        columns: every other dataset column by name, one value per row (rule functions read them).
        finished: (B,) whether each response ended with the stop token (missing-EOS penalty).
        tokens: the policy's ids of the rows, when they come from a rollout.
        group_ids: rows with the same id answer the same prompt (GRPO/RLOO groups); centred terms
            can centre on the other responses of their group when no reference rewards are given.
    """

    prompts: Sequence[Any]
    responses: Sequence[Any] | None = None
    columns: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    finished: Sequence[bool] | Tensor | None = None
    tokens: PolicyTokens | None = None
    group_ids: Sequence[Hashable] | None = None
    _texts: tuple[list[str], list[str]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        b = len(self.prompts)
        if self.responses is None and self.tokens is None:
            raise RewardlabError("Samples needs responses (or the policy's tokens to decode them from)")
        for name, values in (("responses", self.responses), ("finished", self.finished), ("group_ids", self.group_ids),
                             *((f"column {k!r}", v) for k, v in self.columns.items())):
            if values is not None and len(values) != b:
                raise RewardlabError(f"{b} prompts but {len(values)} {name}; give one per prompt")

    @property
    def chat(self) -> bool:
        """Whether the prompts are chat conversations (lists of messages)."""
        return len(self.prompts) > 0 and isinstance(self.prompts[0], (list, tuple))

    def response_list(self) -> list[Any]:
        """The responses, decoded from the policy's tokens when not given."""
        return list(self.responses) if self.responses is not None else self.texts()[1]

    def texts(self) -> tuple[list[str], list[str]]:
        """(prompt texts, response texts) decoded from the policy's tokens, special tokens removed (as
        the older ``f(prompts, responses)`` rule functions read them); the given texts without tokens."""
        if self._texts is None:
            t = self.tokens
            if t is None:
                self._texts = (list(self.prompts), list(self.responses or []))
            else:
                dec = t.tokenizer.decode
                self._texts = ([dec(ids[m.bool()], skip_special_tokens=True) for ids, m in zip(t.query_ids, t.query_mask)],
                               [dec(ids[m.bool()], skip_special_tokens=True)
                                for ids, m in zip(t.response_ids, t.response_mask)])
        return self._texts


