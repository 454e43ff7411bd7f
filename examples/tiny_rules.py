"""Rule functions for examples/ppo_tiny_rules.yaml, written as TRL's reward functions are.

A rule term gets the prompts, the completions, their token ids and every other column of the
dataset by name (here ``answer``, which `rewardlab ppo --make-tiny` writes: the prompt's first
word), and returns one number per completion, or None where it does not apply. The same function
works unchanged in TRL's ``GRPOTrainer(reward_funcs=[...])``.
"""


def says_answer(prompts, completions, answer, **kwargs):
    """1.0 when the completion contains the answer word, else 0.0; None for prompts without an answer."""
    return [None if a is None else float(a in c.split()) for c, a in zip(completions, answer)]
