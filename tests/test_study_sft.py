"""The study's sampling and decoding: the tokenizer's padding side does not matter; the gold sees one text."""

from __future__ import annotations

import numpy as np
import torch

from rewardlab.study.preferences import sample_preferences
from rewardlab.study.runs import evaluate_policy
from rewardlab.study.sft import sample_responses
from rewardlab.study.tasks.brackets import BracketTask
from rewardlab.tiny import BOS_ID, build_model, tiny_config


def _policy(tok, seed: int = 0):
    return build_model("causal_lm", tiny_config("gpt2", tok, hidden=32, max_positions=64), seed=seed)


def _tokenizers(task):
    right, left = task.build_tokenizer(), task.build_tokenizer()
    right.padding_side, left.padding_side = "right", "left"
    return right, left


def test_samples_are_identical_whichever_padding_side_the_tokenizer_declares():
    task = BracketTask()
    prompts = task.sample_prompts(24, np.random.default_rng(0))
    assert len({len(p.split()) for p in prompts}) > 3  # prompts of different lengths
    right, left = _tokenizers(task)
    policy = _policy(left)
    a = sample_responses(policy, right, prompts, max_new_tokens=6, seed=3)
    b = sample_responses(policy, left, prompts, max_new_tokens=6, seed=3)
    assert a == b
    ea = evaluate_policy(policy, policy, right, task, prompts, None, max_new_tokens=6, seed=3)
    eb = evaluate_policy(policy, policy, left, task, prompts, None, max_new_tokens=6, seed=3)
    assert ea["responses"] == eb["responses"]
    np.testing.assert_allclose(ea["gold"], eb["gold"])
    np.testing.assert_allclose(ea["kl"], 0.0, atol=1e-5)
    # A row's sample does not depend on the other rows of its batch (per-row seeds, left padding).
    alone = sample_responses(policy, right, prompts[:1], max_new_tokens=6, seed=3)
    assert alone[0][0] == a[0][0]


class _Recording(BracketTask):
    """Records every response text handed to the gold."""

    seen: list[str] = []

    def gold(self, prompts, responses, finished):
        type(self).seen.extend(responses)
        return super().gold(prompts, responses, finished)


def test_labelling_and_evaluation_hand_the_gold_the_same_text():
    """A policy that only emits [BOS]: both stages decode with skip_special_tokens, so the gold sees ''."""
    task = _Recording()
    tok = task.build_tokenizer()
    policy = _policy(tok)
    with torch.no_grad():  # every position predicts [BOS], by far
        policy.transformer.ln_f.weight.zero_()
        policy.transformer.wte.weight[BOS_ID] = 3.0 * torch.ones(policy.config.n_embd)
        policy.transformer.ln_f.bias.copy_(policy.transformer.wte.weight[BOS_ID])
    prompts = task.sample_prompts(8, np.random.default_rng(0))
    _Recording.seen = []
    sample_preferences(task, policy, tok, n_pairs=8, seed=1, tau=0.1)
    labelling = set(_Recording.seen)
    _Recording.seen = []
    evaluate_policy(policy, policy, tok, task, prompts, None, max_new_tokens=task.max_response_tokens, seed=0)
    evaluation = set(_Recording.seen)
    assert labelling == evaluation == {""}
