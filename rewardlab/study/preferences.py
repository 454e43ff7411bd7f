"""Study stage 3: preference pairs from the SFT policy, labelled by Bradley-Terry sampling from gold.

For each prompt two responses are sampled from the SFT policy; the first is preferred with
probability σ((g₁ − g₂)/τ) (g = gold reward, τ = label temperature), and each label is then
flipped with probability `flip`. Written as JSONL with prompt/chosen/rejected, the format
`rewardlab train-rm` reads.
"""

from __future__ import annotations

import numpy as np
import torch

from rewardlab.study.sft import response_text, sample_responses
from rewardlab.study.tasks.base import Task, check_lengths


def bt_labels(g1: np.ndarray, g2: np.ndarray, rng: np.random.Generator, tau: float, flip: float = 0.0) -> np.ndarray:
    """True where the first response wins: P = σ((g1 − g2)/τ), then flipped with probability `flip`."""
    if tau <= 0:
        raise ValueError(f"label temperature tau={tau} must be > 0")
    if not 0.0 <= flip < 0.5:
        raise ValueError(f"label flip rate {flip} must lie in [0, 0.5)")
    p = 1.0 / (1.0 + np.exp(-(np.asarray(g1) - np.asarray(g2)) / tau))
    first = rng.random(len(p)) < p
    return first ^ (rng.random(len(p)) < flip)


def sample_preferences(
    task: Task, policy: torch.nn.Module, tokenizer, *, n_pairs: int, seed: int, tau: float, flip: float = 0.0
) -> list[dict[str, str]]:
    """Labelled pairs (dicts with prompt, chosen, rejected) from `n_pairs` pairs of the policy's samples.

    Pairs whose two responses are identical carry no preference and are dropped, so fewer than
    `n_pairs` rows may come back (the study reports the count it used). The gold reads the
    responses decoded exactly as in evaluation (`rewardlab.study.text`).
    """
    rng = np.random.default_rng(seed)
    prompts = task.sample_prompts(n_pairs, rng)
    check_lengths(task, tokenizer, prompts)
    n = task.max_response_tokens
    a, fa = sample_responses(policy, tokenizer, prompts, max_new_tokens=n, seed=seed)
    b, fb = sample_responses(policy, tokenizer, prompts, max_new_tokens=n, seed=seed + 10_000)
    first = bt_labels(task.gold(prompts, a, fa), task.gold(prompts, b, fb), rng, tau, flip)
    rows = []
    for p, ra, rb, ea, eb, w in zip(prompts, a, b, fa, fb, first):
        ta, tb = response_text(ra, ea, tokenizer), response_text(rb, eb, tokenizer)
        if ta == tb:
            continue  # identical responses carry no preference
        chosen, rejected = (ta, tb) if w else (tb, ta)
        rows.append({"prompt": p, "chosen": chosen, "rejected": rejected})
    return rows
