"""Loading the models of a PPO run: local folders only (safetensors), optional LoRA adapters;
checking that the reward pipeline can read the reward model's outputs.

Example::

    policy = load_model("causal_lm", "runs/sft", trust_remote_code=False)
    critic = load_model("critic", "runs/rm", trust_remote_code=False)     # fresh 1-output value head
"""

from __future__ import annotations

import logging
import os

import torch

from rewardlab.errors import RewardlabError
from rewardlab.ppo.config import ModelsConfig


def need_path(path: str | None, name: str) -> None:
    """Refuse a missing or non-folder model path, naming the config field (hub names are not fetched)."""
    if path is None:
        raise RewardlabError(f"{name} is not set; give a local model folder (or pass the model in Python)")
    if not os.path.isdir(path):
        raise RewardlabError(f"{name}={path!r} is not a folder; give a save_pretrained folder (no hub downloads)")


def load_tokenizer(path: str, trust_remote_code: bool):
    """The tokenizer saved in a model folder."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def load_model(kind: str, path: str | None, trust_remote_code: bool):
    """A ``causal_lm`` (policy, reference) or a ``critic`` (sequence classifier, 1 output) from a folder."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    need_path(path, f"{kind} model path")
    if kind == "causal_lm":
        return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=trust_remote_code)
    # A critic from a reward model with H heads or from a causal LM gets a fresh 1-output head. That is
    # intended, so transformers' "MISSING / MISMATCH score.weight" load report is silenced and we say it once.
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        critic = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, ignore_mismatched_sizes=True, use_safetensors=True, trust_remote_code=trust_remote_code)
    finally:
        hf_logging.set_verbosity(before)
    logging.getLogger("rewardlab.ppo").info("critic: backbone from %s with a new 1-output value head", path)
    return critic


class TanhGELU(torch.nn.Module):
    """GELU with the tanh approximation as one kernel: torch's ``gelu(x, approximate="tanh")``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x, approximate="tanh")


def fuse_tanh_gelu(model: torch.nn.Module) -> int:
    """Swap every ``NewGELUActivation`` (GPT-2's ``gelu_new``) in ``model`` for `TanhGELU`, in place.

    Same formula, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), but one fused kernel forward and one
    backward instead of about eight element-wise ops each way (outputs agree to ~2e-7). On CPU the
    MLP activation was ~20 % of a PPO update of a small GPT-2. Returns the number of modules swapped.
    """
    from transformers.activations import NewGELUActivation

    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is NewGELUActivation:
                setattr(parent, name, TanhGELU())
                swapped += 1
    return swapped


def with_lora(policy, critic, m: ModelsConfig):
    """Wrap policy and critic with LoRA adapters (dropout 0: sampling and update must agree)."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise RewardlabError("models.use_peft=true needs peft; pip install 'rewardlab[peft]'") from None
    common = dict(r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=0.0,
                  target_modules=list(m.lora_target_modules) or None)
    policy = get_peft_model(policy, LoraConfig(task_type="CAUSAL_LM", **common))
    if critic is not None:  # SEQ_CLS keeps the value head fully trainable (modules_to_save)
        critic = get_peft_model(critic, LoraConfig(task_type="SEQ_CLS", **common))
    return policy, critic


def check_pipeline_fits(spec: str, semantics, num_heads: int, k: int) -> None:
    """Apply a fresh copy of the pipeline to dummy logits of the reward model's shape."""
    from rewardlab.reward.pipeline import RewardPipeline

    probe = RewardPipeline.from_spec(spec, semantics=semantics)
    logits = torch.linspace(-1.0, 1.0, 4 * num_heads).view(4, num_heads)
    ref = logits.unsqueeze(1).expand(4, k, num_heads) + torch.linspace(-0.5, 0.5, k).view(1, k, 1)
    try:
        probe(logits, ref=ref if probe.needs_references else None)
    except RewardlabError as err:
        raise RewardlabError(f"reward.reward_pipeline={spec!r} does not fit the reward model ({num_heads} heads): {err}") from None
