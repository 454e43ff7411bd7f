"""An over-optimisation alarm computed from proxy-side signals only (no gold reward).

Over-optimisation (Gao et al. 2022, arXiv 2210.10760) shows on the proxy side as *diminishing
returns*: the proxy keeps rising, but each unit of √KL spent buys less of it, while the gold
reward has already turned. The alarm follows six signals of the rollout, each ≥ 0 (the first five
in [0, 1]) and scaled by its threshold (1 = alarm level):

- ``returns``: 1 − (proxy gain per √KL now) / (its best so far), on smoothed proxy and √KL, counted
  only while √KL still grows (a run whose KL has settled is converged, not over-optimising);
- ``variance``: 1 − on-policy reward std / its first value (a collapsing reward variance leaves a
  flat objective; Razin et al. 2025, arXiv 2503.15477);
- ``length``: |response length / its first value − 1|;
- ``saturation``: the rise of the reward pipeline's saturated fraction over its first value (a
  reward saturated from the start is a badly scaled reward, not over-optimisation);
- ``disagreement``: 1 − correlation between the reward model's heads (multi-head models);
- ``uncertainty``: the relative rise of the heads' spread on the policy's samples over their spread on
  reference samples of the same prompts (multi-head models and ensembles; Coste et al. 2023, arXiv
  2310.02743: where the policy leaves the reward model's training data, its heads spread apart).
  Spread u = mean over samples of the across-head std of the raw outputs, each head shifted by its mean
  on the baseline's samples (a Bradley–Terry head is defined up to a constant of its own, which would
  otherwise dominate u). Baseline: the reference samples of the update's prompts when a centred pipeline
  keeps them (their own u, same shifts); otherwise the first rollout's u, shifted by the first rollout's
  head means (at update 0 the policy is the reference policy). Signal max(0, ū / ū_baseline − 1) on
  smoothed u's (0.5 = the heads spread 50 % more than on the reference policy's samples).

``alarm/score`` is the largest scaled signal; the alarm fires when it reaches 1. Every input is a
quantity of the update's rollout, so the trainer evaluates the alarm *before* optimising on that
rollout: with ``alarm.early_stop`` it stops there and keeps the policy that produced the rollout.
The defaults were chosen on the study's seeds 0–1 and are validated on both built-in tasks in
docs/study.md ("Over-optimisation alarm").
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch

SIGNALS = ("returns", "variance", "length", "saturation", "disagreement", "uncertainty")


@dataclass(frozen=True)
class AlarmSignals:
    """One rollout's proxy-side quantities (global over processes)."""

    proxy: float  # mean raw reward-model output
    kl: float  # mean sequence KL(π‖π_ref), k1
    reward_std: float  # std of the raw reward-model outputs
    length: float  # mean response length in tokens
    saturated_frac: float = 0.0
    head_corr: float | None = None
    head_spread: float | None = None  # mean across-head std on the policy's samples (None: one head, or rules)
    ref_head_spread: float | None = None  # the same on reference samples of the same prompts (None: none kept)
    head_means: tuple[float, ...] | None = None  # per-head means of this rollout (the fallback's shifts at update 0)


_UNCERTAINTY_STATE = {"spread": None, "ref_spread": None, "spread0": None, "head_offsets": None}


class OveroptimisationAlarm:
    """Stateful alarm: feed it one `AlarmSignals` per update, in order; its state resumes exactly.

    ``cfg`` is the run's ``alarm`` config section (thresholds of ``None`` switch a signal off).
    """

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.state: dict[str, Any] = {"t": 0, "proxy": None, "sqrt_kl": None, "std": None, "length": None,
                                      "saturation": None, "std0": None, "length0": None, "saturation0": None,
                                      "best_slope": None, "fired_at": None, **_UNCERTAINTY_STATE}

    def _ema(self, name: str, value: float) -> tuple[float | None, float]:
        prev, a = self.state[name], self.cfg.smoothing
        new = value if prev is None else a * prev + (1.0 - a) * value
        self.state[name] = new
        return prev, new

    def update(self, s: AlarmSignals) -> dict[str, float]:
        """The alarm's metrics for this rollout: ``alarm/score``, ``alarm/<signal>``, ``alarm/triggered``."""
        st, cfg = self.state, self.cfg
        t = st["t"]
        prev_p, p = self._ema("proxy", s.proxy)
        prev_d, d = self._ema("sqrt_kl", math.sqrt(max(s.kl, 0.0)))
        _, std = self._ema("std", s.reward_std)
        _, length = self._ema("length", s.length)
        _, saturation = self._ema("saturation", s.saturated_frac)
        if t == 0:
            st["std0"], st["length0"], st["saturation0"] = std, length, saturation
        returns = 0.0
        if prev_d is not None and prev_p is not None:
            dd = d - prev_d
            if dd > 1e-3 and dd > cfg.min_kl_growth * d:
                slope = (p - prev_p) / dd
                best = st["best_slope"]
                if best is not None and t > cfg.warmup_updates and best > 0:
                    returns = min(max(1.0 - slope / best, 0.0), 1.0)
                st["best_slope"] = slope if best is None else max(best, slope)
        raw = {
            "returns": returns,
            "variance": max(0.0, 1.0 - std / st["std0"]) if st["std0"] and st["std0"] > 0 else 0.0,
            "length": abs(length / st["length0"] - 1.0) if st["length0"] else 0.0,
            "saturation": max(0.0, saturation - st["saturation0"]),
            "disagreement": 0.0 if s.head_corr is None or not math.isfinite(s.head_corr) else max(0.0, 1.0 - s.head_corr),
            "uncertainty": self._uncertainty(s),
        }
        out = {f"alarm/{k}": v for k, v in raw.items()}
        scaled = [raw[k] / th for k in SIGNALS if (th := getattr(cfg, f"{k}_threshold")) is not None]
        score = max(scaled, default=0.0)
        out["alarm/score"] = score
        out["alarm/triggered"] = float(score >= 1.0)
        if score >= 1.0 and st["fired_at"] is None:
            st["fired_at"] = t
        st["t"] = t + 1
        return out

    def _uncertainty(self, s: AlarmSignals) -> float:
        """max(0, ū / ū_baseline − 1): smoothed head spread over the smoothed reference spread, or over the
        first rollout's spread when this update has no reference samples."""
        st = self.state
        if s.head_spread is None or not math.isfinite(s.head_spread):
            return 0.0
        if st["head_offsets"] is None and s.head_means is not None:
            st["head_offsets"] = list(s.head_means)  # the first rollout's: the fallback's shifts from now on
        _, spread = self._ema("spread", s.head_spread)
        if st["spread0"] is None:
            st["spread0"] = spread
        has_ref = s.ref_head_spread is not None and math.isfinite(s.ref_head_spread)
        base = self._ema("ref_spread", s.ref_head_spread)[1] if has_ref else st["spread0"]
        return max(0.0, spread / base - 1.0) if base > 0 else 0.0

    @property
    def head_offsets(self) -> tuple[float, ...] | None:
        """The first rollout's per-head means: the fallback baseline's shifts (`alarm_signals`' ``head_offsets``)."""
        offsets = self.state["head_offsets"]
        return None if offsets is None else tuple(offsets)

    @property
    def fired_at(self) -> int | None:
        """The 0-based index of the first rollout that raised the alarm (= updates done before it), or None."""
        return self.state["fired_at"]

    def state_dict(self) -> dict[str, Any]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = {**_UNCERTAINTY_STATE, **state}  # a checkpoint from before the uncertainty signal lacks its keys


def head_spread(heads: torch.Tensor, shifts: torch.Tensor) -> float:
    """Mean over samples of the across-head std (population) of ``heads − shifts``.

    Shapes: heads (N, H), shifts (H,) -> a float in the heads' units.
    """
    return (heads - shifts).std(dim=1, correction=0).mean().item()


def alarm_signals(proxy: torch.Tensor, diagnostics: dict[str, float], seq_kl: torch.Tensor,
                  lengths: torch.Tensor, *, ref_proxy: torch.Tensor | None = None,
                  head_offsets: tuple[float, ...] | None = None, from_models: bool = True) -> AlarmSignals:
    """A rollout's alarm inputs (global over processes).

    Args:
        proxy: (B, H) raw reward-model outputs (`RewardSide.proxy`); NaN entries (a rule that did not
            apply) are left out.
        diagnostics: the reward side's diagnostics (saturated fraction, head correlation of any term).
        seq_kl: (B,) sequence KL, k1 summed over tokens.
        lengths: (B,) response lengths.
        ref_proxy: (B, K, H) the same heads on K reference-policy samples of each row's prompt, when the
            pipeline keeps them (centred terms): the uncertainty signal's baseline, and its heads' shifts.
        head_offsets: (H,) the shifts without references (`OveroptimisationAlarm.head_offsets`: the first
            rollout's head means; None on the first rollout, which uses its own).
        from_models: False when ``proxy`` holds rule outputs (no reward model): no uncertainty signal.
    """
    x = proxy.double()
    heads = x[torch.isfinite(x).all(dim=1)] if x.dim() == 2 else x[:0]
    if not bool(torch.isfinite(x).all()):
        x = x[torch.isfinite(x)]
    saturated = [v for k, v in diagnostics.items() if k.endswith("saturated_frac")]
    corr = [v for k, v in diagnostics.items() if k.endswith("head_corr")]
    spread = ref_spread = means = None
    if from_models and heads.dim() == 2 and heads.shape[1] > 1 and heads.shape[0] > 0:
        means = tuple(heads.mean(dim=0).tolist())
        ref = None if ref_proxy is None else ref_proxy.double().reshape(-1, heads.shape[1])
        ref = None if ref is None else ref[torch.isfinite(ref).all(dim=1)]
        if ref is not None and ref.shape[0] > 0:
            shifts = ref.mean(dim=0)
            ref_spread = head_spread(ref, shifts)
        else:
            shifts = torch.tensor(head_offsets if head_offsets is not None else means, dtype=torch.float64)
        spread = head_spread(heads, shifts)
    return AlarmSignals(proxy=x.mean().item(), kl=seq_kl.double().mean().item(), reward_std=x.std(correction=0).item(),
                        length=lengths.double().mean().item(), saturated_frac=max(saturated, default=0.0),
                        head_corr=min(corr) if corr else None, head_spread=spread, ref_head_spread=ref_spread,
                        head_means=means)


def report_early_stop(output_dir: str, update: int, metrics: dict[str, float], cfg: Any) -> None:
    """Say why a run stopped before optimising on rollout ``update + 1`` and record it in ``alarm_stop.json``."""
    from rewardlab.atomic import write_text

    signals = {k: v for k, v in metrics.items() if k.startswith("alarm/")}
    record = {"stopped_before_update": update + 1, "policy_after_updates": update, **signals}
    write_text(os.path.join(output_dir, "alarm_stop.json"), json.dumps(record, indent=1) + "\n")
    top = max(SIGNALS, key=lambda k: signals[f"alarm/{k}"] / (getattr(cfg, f"{k}_threshold") or float("inf")))
    print(f"rewardlab: over-optimisation alarm on the rollout of update {update + 1} (score "
          f"{signals['alarm/score']:.2f}, largest signal {top}); stopped before optimising on it and "
          f"kept the policy after {update} updates (alarm.early_stop; details in alarm_stop.json)",
          file=sys.stderr)


def first_trigger(metrics: list[dict[str, float]]) -> int | None:
    """Updates done before the first rollout that triggered the alarm, from logged per-update metrics.

    ``metrics`` are the trainer's rows in order (``update`` is 1-based); None when it never fired.
    """
    for row in metrics:
        if row.get("alarm/triggered", 0.0) >= 1.0:
            return int(row["update"]) - 1
    return None


def scaled_signals(metrics: list[dict[str, float]], cfg: Any) -> dict[str, list[float]]:
    """Each switched-on signal over its threshold, per update, from logged metrics (``alarm/score`` is their
    max): what the study keeps to replay the alarm with a subset of its signals. A signal a run did not log
    (an older run) is left out."""
    out: dict[str, list[float]] = {}
    for k in SIGNALS:
        th = getattr(cfg, f"{k}_threshold", None)
        if th is not None and metrics and all(f"alarm/{k}" in row for row in metrics):
            out[k] = [row[f"alarm/{k}"] / th for row in metrics]
    return out
