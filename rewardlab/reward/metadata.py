"""Reward-model metadata stored in the model's HF config under the key ``rewardlab``.

Our reward-model trainer writes it; `RewardModel` and `rewardlab inspect` read it. It records
what the output logits *mean*, which decides how they may be reduced to one reward:

- ``bradley_terry``: H independent Bradley-Terry heads, each trained with
  ``-logsigmoid(r_chosen - r_rejected)`` (mean over heads). Each head is a reward defined up to a
  per-prompt constant; the mean over heads is the principled reading.
- ``classifier``: H classes trained with cross-entropy; only differences of logits
  (log-odds) or log-softmax values are meaningful.

``ensemble`` says how the H BT heads relate: None (the default, and what metadata written before
the field existed reads as) for heads trained on the same pairs, ``"bootstrap"`` for H bootstrap
members, each trained on its own resample of the pairs (`train-rm --bootstrap`), whose
disagreement estimates the reward's uncertainty. Either way they are BT heads: ``mean``, ``min``
and ``uwo(lam=…)`` read them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

HeadSemantics = Literal["bradley_terry", "classifier"]
SEMANTICS: tuple[str, ...] = ("bradley_terry", "classifier")
CONFIG_KEY = "rewardlab"
ENSEMBLES: tuple[str, ...] = ("bootstrap",)


def check_semantics(value: str | None) -> HeadSemantics | None:
    """Validate a head-semantics name (None = undeclared)."""
    if value is None or value in SEMANTICS:
        return value  # type: ignore[return-value]
    raise ValueError(f"unknown head semantics {value!r}; choose one of {', '.join(SEMANTICS)}")


@dataclass
class RewardModelMetadata:
    """What rewardlab knows about a reward model's outputs."""

    semantics: HeadSemantics
    num_heads: int
    loss: str = "bradley_terry"
    """Training loss: ``bradley_terry`` or ``cross_entropy``."""
    temperature: float | None = None
    """Temperature T minimising held-out NLL of sigma((r_c - r_r)/T), when fitted."""
    reward_mean: float | None = None
    """Mean reward (head mean) on the training prompts' chosen+rejected responses."""
    reward_std: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    ensemble: str | None = None
    """``"bootstrap"``: the num_heads BT heads are bootstrap ensemble members; None: plain heads."""

    def __post_init__(self) -> None:
        if self.ensemble is not None:
            if self.ensemble not in ENSEMBLES:
                raise ValueError(f"unknown ensemble {self.ensemble!r}; choose one of {', '.join(ENSEMBLES)} or None")
            if self.semantics != "bradley_terry" or self.num_heads < 2:
                raise ValueError(f"ensemble={self.ensemble!r} needs bradley_terry heads and num_heads ≥ 2; got "
                                 f"{self.semantics!r} with {self.num_heads}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["ensemble"] is None:  # absent, not null: such a config.json still reads in older rewardlab
            del data["ensemble"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RewardModelMetadata:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown rewardlab metadata keys {sorted(unknown)}; known: {sorted(known)}")
        check_semantics(data.get("semantics"))
        return cls(**data)


def read_metadata(config: Any) -> RewardModelMetadata | None:
    """The metadata stored in an HF config, or None when the model was not trained by rewardlab."""
    data = getattr(config, CONFIG_KEY, None)
    if data is None and hasattr(config, "to_dict"):
        data = config.to_dict().get(CONFIG_KEY)
    return None if data is None else RewardModelMetadata.from_dict(dict(data))


def write_metadata(config: Any, metadata: RewardModelMetadata) -> None:
    """Store `metadata` in an HF config; `save_pretrained` then writes it into config.json."""
    setattr(config, CONFIG_KEY, metadata.to_dict())
