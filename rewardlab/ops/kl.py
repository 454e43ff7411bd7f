"""Per-token KL estimators and the KL-coefficient controllers of RLHF.

Notation: a token y_t is sampled from the policy π; ``logprobs`` = log π(y_t), ``ref_logprobs`` =
log π_ref(y_t) and log r = log π_ref(y_t) − log π(y_t). Schulman's three Monte-Carlo estimators of
KL(π ‖ π_ref) from samples of π (http://joschu.net/blog/kl-approx.html):

- k1 = −log r                       unbiased, high variance, can be negative per token;
- k2 = ½ (log r)²                   biased, low variance, ≥ 0;
- k3 = (r − 1) − log r              unbiased, low variance, ≥ 0.

Where the estimator goes matters more than its variance. On-policy, "k1 in the reward" (the
penalty −β·k1_t is part of the return, treated as a constant by the policy gradient) and "k2 as a
loss" (β·mean k2 added to the loss and differentiated through log π) give the *same* gradient,
E_π[(log π − log π_ref) ∇log π], the exact gradient of KL(π ‖ π_ref). "k3 as a loss" gives
E_π[(1 − π_ref/π) ∇log π], the gradient of KL(π_ref ‖ π) — the reverse KL, a biased
approximation (Liu et al. 2025, arXiv 2510.01555; Tang & Munos 2025, arXiv 2506.09477).
tests/test_ops_kl_placement.py checks all three on the closed-form bandit.

Controllers hold β, the weight of the KL penalty: `FixedKLController` keeps it constant;
`AdaptiveKLController` is the proportional controller of Ziegler et al. (2019, "Fine-Tuning
Language Models from Human Preferences", §2.2), which moves β so that the observed KL tracks a
target. Both expose ``value``, ``update(current_kl, n_steps)`` and ``state_dict()`` /
``load_state_dict()`` so that a resumed run continues with the same β.

Example::

    >>> kl_k3(torch.tensor([-1.0]), torch.tensor([-1.5]))  # r = e^-0.5
    tensor([0.1065])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = log π(y_t) − log π_ref(y_t).  Shapes: (B, T), (B, T) → (B, T)."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = ½ (log π_ref(y_t) − log π(y_t))².  Shapes: (B, T), (B, T) → (B, T)."""
    return 0.5 * (ref_logprobs - logprobs) ** 2


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = (r − 1) − log r with log r = log π_ref(y_t) − log π(y_t).

    Computed with ``expm1`` for accuracy when r ≈ 1.  Shapes: (B, T), (B, T) → (B, T).
    """
    log_r = ref_logprobs - logprobs
    return torch.expm1(log_r) - log_r


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_per_token(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k1") -> Tensor:
    """The per-token estimator named ``estimator`` (``"k1"``, ``"k2"`` or ``"k3"``).

    Shapes: (B, T), (B, T) → (B, T).
    """
    try:
        fn = KL_ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {sorted(KL_ESTIMATORS)}") from None
    return fn(logprobs, ref_logprobs)


class FixedKLController:
    """β constant for the whole run.

    Args:
        kl_coef: β ≥ 0.
    """

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: a fixed β ignores the observed KL."""

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Proportional β controller (Ziegler et al. 2019, eq. in §2.2).

    After a batch of ``n_steps`` samples with observed KL ``current_kl``:

        e_t = clip(KL_t / KL_target − 1, −0.2, 0.2)
        β_{t+1} = β_t · (1 + K_β · e_t),   K_β = n_steps / horizon

    so β grows when the policy drifts past the target and shrinks when it stays below.

    Args:
        init_kl_coef: β_0 > 0.
        target: KL_target > 0, in nats per sequence (the same unit as the KL passed to update).
        horizon: the number of samples over which the error is corrected (paper: 10 000).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value, self.target, self.horizon = float(state["value"]), float(state["target"]), float(state["horizon"])
