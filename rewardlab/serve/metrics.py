"""The server's metrics in Prometheus' text format, and the over-optimisation alarm over the scored stream.

No client library: counters, histograms and gauges are a few dicts, written in the exposition
format (``# HELP``, ``# TYPE``, ``name{label="v"} value``). The alarm is PPO's
(`rewardlab.ppo.alarm.OveroptimisationAlarm`) fed one window of ``server.alarm_window`` scored
samples at a time instead of one rollout: raw reward-model outputs (their mean and spread), the
responses' length, the pipeline's saturated fraction, and the heads' correlation. A peer's run
(OpenRLHF, veRL, slime) scoring through the server thereby gets rewardlab's alarm too. The KL is
not known to a server unless the client sends it (native endpoint, ``kl``); without it the
"returns" signal stays 0 and the others still fire.

Example::

    m = ServerMetrics(alarm_cfg, window=256)
    m.request("/score", 200, seconds=0.012)
    m.batch(48)
    m.scored(raw_proxy, scores, lengths, diagnostics)
    text = m.render()
"""

from __future__ import annotations

import math
import threading
from collections import defaultdict
from typing import Any

import torch

from rewardlab.ppo.alarm import SIGNALS, OveroptimisationAlarm, alarm_signals
from rewardlab.reward.pipeline import head_correlation

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: str) -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{_num(b)}"}} {c}' for b, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        out.append(f"{name}_sum{{{labels}}} {_num(self.sum)}" if labels else f"{name}_sum {_num(self.sum)}")
        out.append(f"{name}_count{{{labels}}} {self.count}" if labels else f"{name}_count {self.count}")
        return out


def _num(x: float) -> str:
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if math.isnan(x) else ("+Inf" if x > 0 else "-Inf")
    return repr(float(x)) if isinstance(x, float) else str(x)


class ServerMetrics:
    """Request, batch and score statistics, and the stream alarm; thread-safe (one lock)."""

    def __init__(self, alarm_cfg: Any, window: int) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, _Histogram] = {}
        self.batches = _Histogram(BATCH_BUCKETS)
        self.samples_total = 0
        self.window = window
        self.alarm = OveroptimisationAlarm(alarm_cfg)
        self.windows = 0
        self.last: dict[str, float] = {}  # the last closed window's statistics and alarm signals
        self._reset_window()

    def _reset_window(self) -> None:
        self._proxy: list[torch.Tensor] = []
        self._scores: list[torch.Tensor] = []
        self._lengths: list[torch.Tensor] = []
        self._kl: list[torch.Tensor] = []
        self._saturated = 0.0
        self._n = 0

    def request(self, endpoint: str, code: int, seconds: float) -> None:
        with self._lock:
            self.requests[(endpoint, code)] += 1
            self.latency.setdefault(endpoint, _Histogram(LATENCY_BUCKETS)).observe(seconds)

    def batch(self, samples: int) -> None:
        with self._lock:
            self.batches.observe(samples)

    def scored(self, proxy: torch.Tensor, scores: torch.Tensor, lengths: torch.Tensor, diagnostics: dict[str, float],
               kl: torch.Tensor | None = None) -> None:
        """Add one request's scored samples to the current window; a full window updates the alarm.

        Shapes: proxy (B, H) raw reward-model outputs (NaN rows allowed), scores (B,), lengths (B,), kl (B,).
        """
        with self._lock:
            b = scores.shape[0]
            self.samples_total += b
            self._proxy.append(proxy.double())
            self._scores.append(scores.double())
            self._lengths.append(lengths.double())
            if kl is not None:
                self._kl.append(kl.double())
            saturated = [v for k, v in diagnostics.items() if k.endswith("saturated_frac")]
            self._saturated += max(saturated, default=0.0) * b
            self._n += b
            if self._n >= self.window:
                self._close_window()

    def _close_window(self) -> None:
        proxy, scores = torch.cat(self._proxy), torch.cat(self._scores)
        finite = torch.isfinite(proxy).all(-1)
        heads = proxy[finite]
        diag = {"saturated_frac": self._saturated / self._n}
        if heads.shape[1] > 1 and heads.shape[0] >= 2:
            diag["head_corr"] = head_correlation(heads)
        kl = torch.cat(self._kl) if self._kl and sum(len(k) for k in self._kl) == self._n else torch.zeros(self._n)
        signals = alarm_signals(proxy, diag, kl, torch.cat(self._lengths))
        out = self.alarm.update(signals)
        self.windows += 1
        self.last = {"score_mean": scores.mean().item(), "score_std": scores.std(correction=0).item(),
                     "proxy_mean": signals.proxy, "proxy_std": signals.reward_std, "length_mean": signals.length,
                     "saturated_frac": signals.saturated_frac, **{k.split("/")[1]: v for k, v in out.items()}}
        self._reset_window()

    def alarm_state(self) -> dict[str, Any]:
        """The last window's alarm signals (for /health)."""
        with self._lock:
            return {"windows": self.windows, "window_samples": self.window,
                    **{k: self.last[k] for k in ("score", "triggered", *SIGNALS) if k in self.last}}

    def render(self) -> str:
        """Everything in Prometheus' text exposition format (version 0.0.4)."""
        with self._lock:
            lines = ["# HELP rewardlab_requests_total Requests answered, by endpoint and HTTP status.",
                     "# TYPE rewardlab_requests_total counter"]
            lines += [f'rewardlab_requests_total{{endpoint="{e}",code="{c}"}} {n}'
                      for (e, c), n in sorted(self.requests.items())]
            lines += ["# HELP rewardlab_request_duration_seconds Time from a request's arrival to its answer.",
                      "# TYPE rewardlab_request_duration_seconds histogram"]
            for endpoint, hist in sorted(self.latency.items()):
                lines += hist.lines("rewardlab_request_duration_seconds", f'endpoint="{endpoint}"')
            lines += ["# HELP rewardlab_batch_samples Samples per reward-model batch (gathered across requests).",
                      "# TYPE rewardlab_batch_samples histogram"]
            lines += self.batches.lines("rewardlab_batch_samples", "")
            lines += ["# HELP rewardlab_samples_total Samples scored.", "# TYPE rewardlab_samples_total counter",
                      f"rewardlab_samples_total {self.samples_total}",
                      "# HELP rewardlab_alarm_windows_total Windows of server.alarm_window samples closed.",
                      "# TYPE rewardlab_alarm_windows_total counter", f"rewardlab_alarm_windows_total {self.windows}"]
            gauges = {
                "score_mean": "Mean score over the last window.", "score_std": "Score standard deviation, last window.",
                "proxy_mean": "Mean raw reward-model output, last window.",
                "proxy_std": "Raw reward-model output std, last window.",
                "length_mean": "Mean response length in characters, last window.",
                "saturated_frac": "The pipeline's saturated fraction, last window.",
                "alarm_score": "Over-optimisation alarm score (1 = alarm level), last window.",
                "alarm_triggered": "1 when the last window raised the over-optimisation alarm.",
            }
            values = dict(self.last)
            values["alarm_score"], values["alarm_triggered"] = values.get("score"), values.get("triggered")
            for name, help_ in gauges.items():
                if values.get(name) is not None:
                    lines += [f"# HELP rewardlab_{name} {help_}", f"# TYPE rewardlab_{name} gauge",
                              f"rewardlab_{name} {_num(float(values[name]))}"]
            present = [s for s in SIGNALS if s in values]
            if present:
                lines += ["# HELP rewardlab_alarm_signal Each over-optimisation signal, last window (docs/metrics.md).",
                          "# TYPE rewardlab_alarm_signal gauge"]
                lines += [f'rewardlab_alarm_signal{{signal="{s}"}} {_num(float(values[s]))}' for s in present]
            return "\n".join(lines) + "\n"
