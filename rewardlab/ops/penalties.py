"""Sequence-level penalties added to the score before shaping.

`sequence_penalties` applies every configured penalty to the pipeline's scores (the reward side
calls it); `rewardlab.ops.shaping` then places the score and the KL penalty on the tokens.

Example::

    >>> overlong_penalty(torch.tensor([10, 14, 16]), max_length=16, buffer=4, factor=1.0)
    tensor([-0.0000, -0.5000, -1.0000])
"""

from __future__ import annotations

import torch
from torch import Tensor


def overlong_penalty(lengths: Tensor, max_length: int, buffer: int, factor: float) -> Tensor:
    """DAPO's soft overlong punishment: a linear penalty over the last ``buffer`` tokens of the budget.

                 ⎧ 0                                   |y| ≤ L_max − L_buf
        R(y) =   ⎨ factor · ((L_max − L_buf) − |y|) / L_buf   L_max − L_buf < |y| ≤ L_max
                 ⎩ −factor                            |y| > L_max

    Responses that approach the length budget lose reward gradually instead of being cut off
    with a full score, which DAPO found to reduce reward noise from truncated answers.

    Args:
        lengths: response lengths |y| in tokens (B,).
        max_length: L_max, the response budget (``generation.response_length``).
        buffer: L_buf ≥ 1, the soft zone at the end of the budget.
        factor: the penalty at the budget (1.0 in the paper).

    Shapes: lengths (B,) → (B,) float32.

    References: Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale"
    (arXiv 2503.14476), eq. 13.
    """
    if not 1 <= buffer <= max_length:
        raise ValueError(f"buffer={buffer} must be in 1..max_length={max_length}")
    over = (lengths.float() - (max_length - buffer)).clamp(min=0.0)
    return -factor * torch.clamp(over / buffer, max=1.0)


def sequence_penalties(
    scores: Tensor, finished: Tensor | None, lengths: Tensor | None, *, missing_eos_penalty: float | None,
    max_length: int | None, overlong_buffer_len: int | None, overlong_penalty_factor: float,
) -> Tensor:
    """The scores after the sequence penalties, in this order:

        s ← s − p_eos · [y has no stop token]          (TRL's ``missing_eos_penalty``; None: off)
        s ← s + R_overlong(|y|)                          (`overlong_penalty`; ``overlong_buffer_len`` None: off)

    Args:
        scores: the reward pipeline's scores (B,).
        finished: (B,) bool, whether each response ended with the stop token (needed by the EOS penalty).
        lengths: (B,) response lengths in tokens (needed by the overlong penalty).
        missing_eos_penalty: p_eos ≥ 0, or None.
        max_length, overlong_buffer_len, overlong_penalty_factor: `overlong_penalty`'s L_max, L_buf, factor.

    Shapes: (B,), (B,), (B,) → (B,).
    """
    if missing_eos_penalty is not None:
        scores = scores - missing_eos_penalty * (~finished.to(scores.device)).float()
    if overlong_buffer_len is not None:
        scores = scores + overlong_penalty(lengths.to(scores.device), max_length, overlong_buffer_len,
                                           overlong_penalty_factor)
    return scores
