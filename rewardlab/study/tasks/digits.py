"""The default study task: "target-sum digit strings".

The prompt names a target T (``"T17 ="``); the response is digit tokens then EOS (``"9 5 3"``).

Gold reward (higher is better)::

    gold = −|S − T| / T − length_penalty · max(0, n − free_length)
           − invalid_penalty · (#non-digit tokens) + eos_bonus · [ended with EOS]

with S the sum of the digits and n the number of response tokens. Demonstrations *undershoot*:
2–4 digits summing to about 0.7·T. So on the SFT policy's samples "bigger and longer" looks better,
a proxy reward model trained on preferences among them learns exactly that, and PPO against the
proxy overshoots T and grows long responses: gold rises, then falls, while proxy keeps rising —
Gao et al. (2022)'s over-optimisation in miniature. Targets of different sizes make prompts
differ in difficulty, so the gold (and the proxy) have different per-prompt offsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DIGITS = [str(d) for d in range(10)]


@dataclass
class DigitSumTask:
    """Target-sum digit strings (see the module docstring)."""

    min_target: int = 6
    max_target: int = 30
    undershoot: float = 0.7
    demo_min_digits: int = 2
    demo_max_digits: int = 4
    free_length: int = 4
    length_penalty: float = 0.15
    invalid_penalty: float = 0.2
    eos_bonus: float = 0.1
    max_response_tokens: int = 8
    name: str = "digits"

    def __post_init__(self) -> None:
        if not 1 <= self.min_target <= self.max_target:
            raise ValueError(f"need 1 ≤ min_target ≤ max_target; got {self.min_target}, {self.max_target}")

    @property
    def max_prompt_tokens(self) -> int:
        """Every prompt is two tokens, ``T17 =``."""
        return 2

    # -- vocabulary -----------------------------------------------------------------------------
    def targets(self) -> list[int]:
        return list(range(self.min_target, self.max_target + 1))

    def build_tokenizer(self) -> Any:
        from rewardlab.tiny import build_tokenizer

        words = DIGITS + ["="] + [f"T{t}" for t in self.targets()]
        return build_tokenizer(words=words, chat_template=False, padding_side="left")

    # -- data -----------------------------------------------------------------------------------
    def sample_prompts(self, n: int, rng: np.random.Generator) -> list[str]:
        return [f"T{t} =" for t in rng.integers(self.min_target, self.max_target + 1, size=n)]

    @staticmethod
    def target_of(prompt: str) -> int:
        head = prompt.split()[0]
        if not head.startswith("T"):
            raise ValueError(f"not a digit-task prompt: {prompt!r}")
        return int(head[1:])

    def demonstrations(self, prompts: Sequence[str], rng: np.random.Generator) -> list[str]:
        out = []
        for p in prompts:
            t = self.target_of(p)
            n = int(rng.integers(self.demo_min_digits, self.demo_max_digits + 1))
            s = int(np.clip(round(self.undershoot * t + rng.normal(0, 0.1 * t)), 0, 9 * n))
            digits = np.zeros(n, dtype=int)
            for _ in range(s):  # spread s units over n digits, each ≤ 9
                free = np.flatnonzero(digits < 9)
                digits[rng.choice(free)] += 1
            out.append(" ".join(str(d) for d in digits))
        return out

    # -- gold -----------------------------------------------------------------------------------
    def gold(self, prompts: Sequence[str], responses: Sequence[str], finished: Sequence[bool]) -> np.ndarray:
        out = np.empty(len(prompts), dtype=np.float64)
        for i, (p, r, f) in enumerate(zip(prompts, responses, finished)):
            t = self.target_of(p)
            tokens = r.split()
            digits = [int(x) for x in tokens if x in DIGITS]
            invalid = len(tokens) - len(digits)
            out[i] = (
                -abs(sum(digits) - t) / t
                - self.length_penalty * max(0, len(tokens) - self.free_length)
                - self.invalid_penalty * invalid
                + self.eos_bonus * float(f)
            )
        return out

    def describe(self) -> dict[str, Any]:
        return asdict(self)
