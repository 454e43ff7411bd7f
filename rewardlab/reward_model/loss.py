"""Reward-model losses: Bradley-Terry (H heads, margin, label smoothing, centring) and cross-entropy.

Pure functions of tensors; this module imports only torch.

Notation: ``r_c``, ``r_r`` are the head outputs for the chosen and rejected response of each
pair, ``(B, H)``; ``d = r_c − r_r``. The Bradley-Terry model (Bradley & Terry 1952; Ouyang et
al. 2022, eq. 1) says P(chosen ≻ rejected) = σ(d). With H > 1 every head is an independent BT
reward and the loss is averaged over heads — what TRL's RewardTrainer computed on a 2-logit
model before it required ``num_labels=1``.

Bootstrap heads (``bootstrap: true``): head h sees pair i with weight ``w_ih``, its count in
the h-th bootstrap resample of the training pairs (`bootstrap_weights`), so the H heads are an
ensemble on one backbone whose disagreement measures uncertainty (Efron 1979; Osband et al.
2016; Coste et al. 2023 read such an ensemble with ``mean``/``min``/``uwo``).

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


def _check_weights(weights: Tensor | None, chosen: Tensor) -> None:
    if weights is not None and weights.shape != chosen.shape:
        raise ValueError(f"weights must be (B, H) like the scores; got {tuple(weights.shape)} and {tuple(chosen.shape)}")


def _weighted_mean(values: Tensor, weights: Tensor | None) -> Tensor:
    """mean_{b,h} w_bh · v_bh (plain mean without weights). Dividing by B rather than Σ_b w_bh: the
    bootstrap counts have mean 1, so this is never 0/0 on a micro-batch no pair of which a head drew,
    and summed over an epoch it is exactly the loss of each head's resample (whose counts sum to N)."""
    return values.mean() if weights is None else (values * weights.to(values.dtype)).mean()


# Offsets the bootstrap generator's seed from the data order's (seed · 1_000_003 + epoch, `EpochOrder`).
_BOOTSTRAP_STREAM = 500_009


def bootstrap_weights(num_rows: int, num_heads: int, seed: int) -> Tensor:
    """Per-row, per-head bootstrap counts: column h counts how often each of the N rows was drawn in
    N draws with replacement (the multinomial bootstrap of Efron 1979), one seeded resample per head.

    The multinomial rather than Poisson(1) counts (the online bootstrap, Oza & Russell 2001): N is
    known here, and multinomial counts make each head's resample exactly N pairs, so its epoch loss
    has the scale of the plain loss; Poisson(1) is their large-N approximation for streams. About
    1 − 1/e ≈ 63% of the rows appear in each resample.

    The counts are a pure function of (num_rows, num_heads, seed), drawn from a generator of their
    own (never torch's global one), so a resumed run recomputes the same weights.

    Shapes: → (N, H) float32, each column summing to N.
    """
    if num_rows < 1 or num_heads < 1:
        raise ValueError(f"bootstrap_weights needs num_rows ≥ 1 and num_heads ≥ 1; got {num_rows}, {num_heads}")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + _BOOTSTRAP_STREAM)
    draws = torch.randint(num_rows, (num_heads, num_rows), generator=gen)  # (H, N) row indices
    counts = torch.zeros(num_heads, num_rows).scatter_add_(1, draws, torch.ones(num_heads, num_rows))
    return counts.T.contiguous()


def bradley_terry_loss(
    chosen: Tensor,
    rejected: Tensor,
    margin: Tensor | None = None,
    label_smoothing: float = 0.0,
    weights: Tensor | None = None,
) -> Tensor:
    """Bradley-Terry negative log-likelihood, averaged over pairs and heads.

    With d = r_c − r_r − m (m = 0 without a margin) and smoothing ε:

        L = mean_{b,h} [ −(1 − ε) log σ(d_bh) − ε log σ(−d_bh) ]

    The margin m (Touvron et al. 2023, Llama 2 §3.2.2) asks the chosen response to win by at
    least m; label smoothing ε treats each label as wrong with probability ε (conservative
    labels, as in cDPO), which bounds how far d is pushed.

    With bootstrap weights w (`bootstrap_weights`) each term is multiplied by w_bh:
    L = (1/(B·H)) Σ_{b,h} w_bh ℓ_bh, so head h's loss is (1/B) Σ_b w_bh ℓ_bh, that of its resample.

    Args:
        chosen: rewards of the chosen responses.
        rejected: rewards of the rejected responses.
        margin: per-pair margin m, broadcast over heads; None for 0.
        label_smoothing: ε in [0, 0.5).
        weights: per-pair, per-head weights (bootstrap counts); None for 1.

    Returns:
        The scalar loss.

    Shapes: chosen, rejected, weights (B, H); margin (B,) → scalar.
    """
    _check_pairs(chosen, rejected)
    _check_weights(weights, chosen)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing} must lie in [0, 0.5)")
    d = chosen - rejected
    if margin is not None:
        d = d - margin.to(d.dtype).unsqueeze(-1)
    loss = -F.logsigmoid(d)
    if label_smoothing > 0.0:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-d)
    return _weighted_mean(loss, weights)


def centering_penalty(chosen: Tensor, rejected: Tensor, weights: Tensor | None = None) -> Tensor:
    """Centring regulariser (Eisenstein et al. 2023): mean_{b,h} (r_c + r_r)², weighted as the BT loss.

    BT rewards are identified only up to a constant; this pulls that constant towards 0 so
    rewards are centred on the training data (with bootstrap weights: each head on its resample).
    Multiplied by a coefficient (TRL's ``center_rewards_coefficient``, e.g. 0.01) and added to the loss.

    Shapes: chosen, rejected, weights (B, H) → scalar.
    """
    _check_pairs(chosen, rejected)
    _check_weights(weights, chosen)
    return _weighted_mean((chosen + rejected) ** 2, weights)


def reward_model_loss(
    chosen: Tensor,
    rejected: Tensor,
    margin: Tensor | None = None,
    label_smoothing: float = 0.0,
    center_coef: float = 0.0,
    weights: Tensor | None = None,
) -> Tensor:
    """The full pairwise objective: bradley_terry_loss + center_coef · centering_penalty.

    With bootstrap ``weights`` both terms are weighted, so head h minimises the whole objective on
    its own resample of the pairs.

    Shapes: chosen, rejected, weights (B, H); margin (B,) → scalar.
    """
    loss = bradley_terry_loss(chosen, rejected, margin, label_smoothing, weights)
    if center_coef:
        loss = loss + center_coef * centering_penalty(chosen, rejected, weights)
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
