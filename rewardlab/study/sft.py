"""Study stage 1 and 2: the SFT policy trained from scratch on demonstrations, and samples from it.

The SFT policy is a tiny causal transformer (a transformers GPT-2 config) trained with the
usual next-token loss on the response tokens only (prompt tokens are masked out), so that its
samples imitate the demonstrations: it is the reference policy π₀ of PPO.

Example::

    policy = train_sft(task, tokenizer, SFTConfig(), seed=0)
    prompts, responses, finished = sample_responses(policy, tokenizer, prompts, max_new_tokens=8, seed=1)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rewardlab.study.tasks.base import Task


@dataclass
class SFTConfig:
    """Size and schedule of the SFT policy (defaults: ~100k parameters, seconds on a CPU)."""

    hidden: int = 64
    layers: int = 2
    heads: int = 2
    n_demos: int = 4000
    steps: int = 600
    batch_size: int = 64
    learning_rate: float = 3e-3


def build_policy(tokenizer, cfg: SFTConfig, seed: int, max_positions: int) -> torch.nn.Module:
    from rewardlab.tiny import build_model, tiny_config

    config = tiny_config("gpt2", tokenizer, hidden=cfg.hidden, layers=cfg.layers, heads=cfg.heads, max_positions=max_positions)
    return build_model("causal_lm", config, seed=seed)


def _encode(tokenizer, prompts: Sequence[str], responses: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels (-100 outside the response + EOS).

    The prompt is encoded with the tokenizer's special tokens, as PPO and evaluation encode it.
    """
    rows, labels = [], []
    for p, r in zip(prompts, responses):
        p_ids = tokenizer(p, add_special_tokens=True)["input_ids"]
        r_ids = tokenizer(r, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(p_ids + r_ids)
        labels.append([-100] * len(p_ids) + r_ids)
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    lab = torch.tensor([r + [-100] * (width - len(r)) for r in labels])
    return ids, mask, lab


def train_sft(task: Task, tokenizer, cfg: SFTConfig, seed: int) -> torch.nn.Module:
    """Train the SFT policy on `cfg.n_demos` demonstrations drawn with `seed`; returns it in eval mode.

    The policy has `model_positions(task)` positions; prompts or demonstrations longer than the
    task declares are refused (`check_lengths`).
    """
    from rewardlab.study.tasks.base import check_lengths, model_positions

    rng = np.random.default_rng(seed)
    prompts = task.sample_prompts(cfg.n_demos, rng)
    demos = task.demonstrations(prompts, rng)
    check_lengths(task, tokenizer, prompts, demos)
    ids, mask, labels = _encode(tokenizer, prompts, demos)
    model = build_policy(tokenizer, cfg, seed, max_positions=model_positions(task))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / cfg.steps)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(cfg.steps):
        idx = torch.randint(0, ids.shape[0], (cfg.batch_size,), generator=gen)
        loss = model(input_ids=ids[idx], attention_mask=mask[idx], labels=labels[idx]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return model.eval()


@torch.inference_mode()
def sample_responses(
    policy: torch.nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    seed: int,
    batch_size: int = 256,
    temperature: float = 1.0,
) -> tuple[list[str], list[bool]]:
    """Sample one response per prompt; returns (response texts, ended-with-EOS flags).

    Prompts are left-padded by the study whatever the tokenizer's padding side, each row has its
    own seed (so a row's sample does not depend on the rest of the batch), and the texts are
    decoded as the evaluation decodes them (`rewardlab.study.text`).
    """
    from rewardlab.ppo.rollout import episode_seeds, generate_responses, truncate_after_stop
    from rewardlab.study.text import decode_responses, encode_prompts

    q, qm = encode_prompts(tokenizer, prompts)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    raw = generate_responses(policy, q, qm, seeds=episode_seeds(seed, 0, 0, len(prompts)), pad_id=pad, stop_ids=eos,
                             micro_batch=batch_size, response_length=max_new_tokens, temperature=temperature,
                             top_k=0, top_p=1.0)
    r, _, _ = truncate_after_stop(raw, eos, pad)
    return decode_responses(tokenizer, r)


def response_text(response: str, finished: bool, tokenizer) -> str:
    """The response as the reward model reads it: with the EOS token when the policy emitted one."""
    return f"{response} {tokenizer.eos_token}".strip() if finished else response
