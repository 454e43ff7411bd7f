"""Reward-model losses: Bradley-Terry (H heads, margin, label smoothing, centring) and cross-entropy.

Pure functions of tensors; this module imports only torch.

Notation: ``r_c``, ``r_r`` are the head outputs for the chosen and rejected response of each
pair, ``(B, H)``; ``d = r_c − r_r``. The Bradley-Terry model (Bradley & Terry 1952; Ouyang et
al. 2022, eq. 1) says P(chosen ≻ rejected) = σ(d). With H > 1 every head is an independent BT
reward and the loss is averaged over heads — what TRL's RewardTrainer computed on a 2-logit
model before it required ``num_labels=1``.

Example::

    >>> r_c = torch.tensor([[2.0], [0.0]]); r_r = torch.tensor([[0.0], [1.0]])
    >>> bradley_terry_loss(r_c, r_r)
    tensor(0.7201)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _check_pairs(chosen: Tensor, rejected: Tensor) -> None:
    if chosen.shape != rejected.shape or chosen.dim() != 2:
        raise ValueError(
            f"chosen and rejected scores must both be (B, H); got {tuple(chosen.shape)} and {tuple(rejected.shape)}"
        )


def bradley_terry_loss(
    chosen: Tensor,
    rejected: Tensor,
    margin: Tensor | None = None,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Bradley-Terry negative log-likelihood, averaged over pairs and heads.

    With d = r_c − r_r − m (m = 0 without a margin) and smoothing ε:

        L = mean_{b,h} [ −(1 − ε) log σ(d_bh) − ε log σ(−d_bh) ]

    The margin m (Touvron et al. 2023, Llama 2 §3.2.2) asks the chosen response to win by at
    least m; label smoothing ε treats each label as wrong with probability ε (conservative
    labels, as in cDPO), which bounds how far d is pushed.

    Args:
        chosen: rewards of the chosen responses.
        rejected: rewards of the rejected responses.
        margin: per-pair margin m, broadcast over heads; None for 0.
        label_smoothing: ε in [0, 0.5).

    Returns:
        The scalar loss.

    Shapes: chosen, rejected (B, H); margin (B,) → scalar.
    """
    _check_pairs(chosen, rejected)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing} must lie in [0, 0.5)")
    d = chosen - rejected
    if margin is not None:
        d = d - margin.to(d.dtype).unsqueeze(-1)
    loss = -F.logsigmoid(d)
    if label_smoothing > 0.0:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-d)
    return loss.mean()


def centering_penalty(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Centring regulariser (Eisenstein et al. 2023): mean_{b,h} (r_c + r_r)².

    BT rewards are identified only up to a constant; this pulls that constant towards 0 so
    rewards are centred on the training data. Multiplied by a coefficient (TRL's
    ``center_rewards_coefficient``, e.g. 0.01) and added to the loss.

    Shapes: chosen, rejected (B, H) → scalar.
    """
    _check_pairs(chosen, rejected)
    return ((chosen + rejected) ** 2).mean()


def reward_model_loss(
    chosen: Tensor,
    rejected: Tensor,
    margin: Tensor | None = None,
    label_smoothing: float = 0.0,
    center_coef: float = 0.0,
) -> Tensor:
    """The full pairwise objective: bradley_terry_loss + center_coef · centering_penalty.

    Shapes: chosen, rejected (B, H); margin (B,) → scalar.
    """
    loss = bradley_terry_loss(chosen, rejected, margin, label_smoothing)
    if center_coef:
        loss = loss + center_coef * centering_penalty(chosen, rejected)
    return loss


def classifier_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of pointwise class labels: L = mean_b −log softmax(l_b)_{y_b}.

    Shapes: logits (B, C); labels (B,) int64 in [0, C) → scalar.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (B, C) and labels (B,); got {tuple(logits.shape)} and {tuple(labels.shape)}")
    return F.cross_entropy(logits, labels)


def preference_accuracy(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Fraction of pairs the reward orders correctly; a tie counts as half.

    Shapes: chosen, rejected (B,) → scalar.
    """
    d = chosen - rejected
    return ((d > 0).to(torch.float32) + 0.5 * (d == 0).to(torch.float32)).mean()
