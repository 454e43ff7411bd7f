"""Readings of a reward model's heads: the ways of reducing H logits to one reward, by pipeline spec.

A *reading* is a head-stage pipeline transform (`rewardlab.reward.transforms`: ``head(k=…)``,
``mean``, ``sum``, ``min``, ``logodds(pos=…,neg=…)``, ``logprob(k=…)``) applied on its own, so
`rewardlab evaluate-rm` and `rewardlab inspect` compare exactly the rewards a pipeline would compute.
`principal_reading` names the one a model's head semantics call for; `probe_sequences` gives random
token sequences to look at the heads with when no responses are at hand.

Example::

    from rewardlab.reward.readings import candidate_readings, principal_reading
    readings = candidate_readings(logits)               # logits (N, H) → {"head(k=0)": (N,), …, "mean": (N,), …}
    readings[principal_reading("classifier", 2)]        # l_1 − l_0, the key "logodds(pos=1,neg=0)"

Imports only torch and the reward pipeline: no reward-model training, PPO or study code (a test checks).
"""

from __future__ import annotations

import random
from typing import Any

from torch import Tensor

from rewardlab.errors import RewardlabError
from rewardlab.reward.pipeline import parse_chain
from rewardlab.reward.transforms import Stage, reduce_heads

__all__ = ["candidate_readings", "candidate_specs", "principal_reading", "probe_sequences", "read_heads"]


def candidate_specs(num_heads: int) -> list[str]:
    """The readings `candidate_readings` computes for H heads, in its order.

    ``head(k=…)`` for each head, ``mean``, and for H > 1 ``sum``, ``min`` and the classifier
    readings: ``logodds(pos=1,neg=0)`` when H = 2, ``logprob(k=…)`` for each class when H > 2.
    """
    specs = [f"head(k={k})" for k in range(num_heads)] + ["mean"]
    if num_heads > 1:
        specs += ["sum", "min"]
    if num_heads == 2:
        specs.append("logodds(pos=1,neg=0)")
    elif num_heads > 2:
        specs += [f"logprob(k={k})" for k in range(num_heads)]
    return specs


def read_heads(spec: str, logits: Tensor) -> Tensor:
    """One reading: the head reducer ``spec`` (e.g. ``"logodds(pos=0,neg=1)"``) applied to the logits.

    The reading is not checked against head semantics (`rewardlab.reward.transforms.reduce_heads`).

    Shapes: logits (N, H) → (N,).
    """
    chain = parse_chain(spec)
    if len(chain) != 1 or chain[0].stage != Stage.HEAD:
        raise RewardlabError(f"{spec!r} is not a reading: give one head reducer such as 'mean' or 'logodds(pos=1,neg=0)'")
    return reduce_heads(chain[0], logits)


def candidate_readings(logits: Tensor) -> dict[str, Tensor]:
    """Every usual reading of H logits, keyed by its pipeline spec (the keys of `candidate_specs`).

    r = l_k (``head(k=k)``), (1/H) Σ_h l_h (``mean``), Σ_h l_h (``sum``), min_h l_h (``min``),
    l_1 − l_0 (``logodds(pos=1,neg=0)``), log softmax(l)_k (``logprob(k=k)``).

    Shapes: logits (N, H) → each (N,).
    """
    return {spec: read_heads(spec, logits) for spec in candidate_specs(logits.shape[-1])}


def principal_reading(semantics: str | None, num_heads: int) -> str:
    """The reading a model's head semantics call for.

    ``mean`` over Bradley-Terry heads (and when the semantics are undecided); for a classifier the
    log-odds ``logodds(pos=1,neg=0)`` with 2 classes, else ``logprob(k=H−1)``, the last class.
    """
    if semantics == "classifier":
        return "logodds(pos=1,neg=0)" if num_heads == 2 else f"logprob(k={num_heads - 1})"
    return "mean"


def probe_sequences(tokenizer: Any, n: int = 64, seed: int = 0, lengths: tuple[int, int] = (8, 32)) -> list[list[int]]:
    """n random sequences of the tokenizer's ordinary (non-special) tokens, for probing the heads.

    Each length is uniform in ``lengths`` (inclusive); the same (vocabulary, n, seed, lengths) give
    the same sequences.
    """
    special = set(tokenizer.all_special_ids)
    vocab = [i for i in sorted(tokenizer.get_vocab().values()) if i not in special]
    rng = random.Random(seed)
    return [[rng.choice(vocab) for _ in range(rng.randint(*lengths))] for _ in range(n)]
