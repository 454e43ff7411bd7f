"""Sequence-level penalties added to the score before shaping.

Example::

    >>> overlong_penalty(torch.tensor([10, 14, 16]), max_length=16, buffer=4, factor=1.0)
    tensor([ 0.0000, -0.5000, -1.0000])
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
