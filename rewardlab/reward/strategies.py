"""Named reward strategies: each is just a pipeline spec (a chain of primitives), never a flag.

The study compares these; PPO takes any of them, or any other spec. ``{heads}`` is replaced by
the head reading (``mean`` for a 2-head Bradley-Terry model, ``min`` for an ensemble, …; empty
for a 1-head model).

Example::

    strategy_spec("lsc", heads="mean")   # 'mean|lsc(q=0.5)'
    strategy_spec("raw")                 # 'raw'
"""

from __future__ import annotations

from rewardlab.errors import RewardlabError

# name -> (spec template, one line on what it is)
STRATEGIES: dict[str, tuple[str, str]] = {
    "raw": ("{heads}", "the raw reward-model score"),
    "whiten": ("{heads}|whiten", "batch whitening (mean 0, std 1 per PPO batch)"),
    "running_norm_clip": ("{heads}|running_norm|clip(lo=-5,hi=5)", "running normalisation + clip (PPO-max, Zheng et al. 2023)"),
    "clip": ("{heads}|clip(lo=-1,hi=1)", "a fixed clip of the raw score"),
    "logsigmoid": ("{heads}|logsigmoid", "uncentred log-sigmoid (depends on the arbitrary per-prompt offset)"),
    "sigmoid": ("{heads}|sigmoid", "uncentred sigmoid (depends on the arbitrary per-prompt offset)"),
    "center": ("{heads}|center", "per-prompt centring on the mean reference reward"),
    "standardize": ("{heads}|standardize", "frozen gain/bias fitted on reference samples (Ziegler et al. 2019)"),
    "lsc": ("{heads}|lsc(q=0.5)", "log-sigmoid of the reward centred on the reference median (Wang et al. 2024)"),
    "par": ("{heads}|par", "preference as reward: mean sigmoid against reference rewards (Fu et al. 2025)"),
}


def strategy_spec(name: str, heads: str = "") -> str:
    """The pipeline spec of strategy `name`, reading the heads with `heads` (a head-stage spec)."""
    if name not in STRATEGIES:
        raise RewardlabError(f"unknown strategy {name!r}; valid: {', '.join(STRATEGIES)}")
    spec = STRATEGIES[name][0].format(heads=heads).strip("|")
    return spec or "raw"
