"""Several reward models read as one: their outputs side by side, ``(B, H_1 + … + H_n)``.

Two uses: an ensemble of separately trained reward models read by a one-term pipeline over the
stacked heads (``min``, ``mean``, ``uwo`` — Coste et al. 2023), and a combined pipeline with one
term per model (``0.5*[mean|lsc] + 0.5*[raw]``), for which `split` hands each term its own
columns.

Example::

    stack = StackedRewardModel([RewardModel.from_pretrained(p) for p in ("./rm_a", "./rm_b")])
    logits = stack.score_policy_ids(ids, mask, policy_tokenizer)   # (B, H_a + H_b)
    per_term = stack.split(logits)                                 # [(B, H_a), (B, H_b)]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rewardlab.errors import RewardlabError


class StackedRewardModel:
    """Members scored one after the other on the same rows; their head columns concatenated in order.

    Args:
        members: `RewardModel`-like objects (``score_policy_ids``, ``num_heads``, ``semantics``).

    Attributes:
        head_splits: each member's number of heads, in order.
        num_heads: their sum.
        semantics: the members' common head semantics, or None when they differ (then the stack can
            only feed a combined pipeline, one term per member).
        member_semantics: each member's semantics.
    """

    def __init__(self, members: Sequence[Any]) -> None:
        if not members:
            raise RewardlabError("StackedRewardModel needs at least one reward model")
        self.members = list(members)
        self.head_splits = [int(m.num_heads) for m in self.members]
        self.num_heads = sum(self.head_splits)
        self.member_semantics = [getattr(m, "semantics", None) for m in self.members]
        self.semantics = self.member_semantics[0] if len(set(self.member_semantics)) == 1 else None

    def score_policy_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, policy_tokenizer,
                         prompt_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Every member's `score_policy_ids` on the same rows, concatenated: (B, T) → (B, num_heads)."""
        return torch.cat([m.score_policy_ids(input_ids, attention_mask, policy_tokenizer, prompt_lengths=prompt_lengths)
                          for m in self.members], dim=1)

    def split(self, logits: torch.Tensor) -> list[torch.Tensor]:
        """Columns per member: (…, num_heads) → [(…, H_1), …, (…, H_n)]."""
        if logits.shape[-1] != self.num_heads:
            raise RewardlabError(f"expected {self.num_heads} stacked heads {self.head_splits}; got {logits.shape[-1]}")
        return list(torch.split(logits, self.head_splits, dim=-1))
