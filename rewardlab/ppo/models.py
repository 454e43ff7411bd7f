"""Loading the models of a PPO run: local folders only (safetensors), optional LoRA adapters;
the reward side (one reward model, several stacked, or a rule-based reward) with the pipeline that
reads it, checked to fit before the policy loads.

Example::

    policy = load_model("causal_lm", "runs/sft", trust_remote_code=False)
    critic = load_model("critic", "runs/rm", trust_remote_code=False)     # fresh 1-output value head
    scorer, pipeline, splits = reward_side(cfg, None, None, device="cpu")
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from rewardlab.errors import RewardlabError
from rewardlab.ppo.config import ModelsConfig, PPOConfig
from rewardlab.ppo.rollout import response_logits, response_values

if TYPE_CHECKING:
    from rewardlab.reward.pipeline import RewardPipeline


def need_path(path: str | None, name: str) -> None:
    """Refuse a missing or non-folder model path, naming the config field (hub names are not fetched)."""
    if path is None:
        raise RewardlabError(f"{name} is not set; give a local model folder (or pass the model in Python)")
    from rewardlab.local import model_folder  # not local, no config.json, pickle-only or truncated weights

    model_folder(path, name)


class PolicyAndCritic(torch.nn.Module):
    """Policy and critic behind one ``forward``, so that DDP / DeepSpeed wrap and sync both.

    The critic is a separate value model, or a linear ``value_head`` on the policy's last hidden
    state (one backbone for both), or absent (RLOO / group baselines). The rollout's no-grad
    forward and the update's forward both go through here, so π_old and π_θ are the same function.
    """

    def __init__(self, policy: torch.nn.Module, critic: torch.nn.Module | None = None,
                 value_head: torch.nn.Linear | None = None) -> None:
        super().__init__()
        self.policy, self.critic, self.value_head = policy, critic, value_head

    def forward(self, query_ids, query_mask, response_ids, response_mask):
        """Shapes: (B, Tq), (B, Tq), (B, T), (B, T) → logits (B, T, V), values (B, T) or None."""
        if self.value_head is not None:
            logits, hidden = response_logits(self.policy, query_ids, query_mask, response_ids, response_mask,
                                             return_hidden=True)
            return logits, self.value_head(hidden)[..., 0].float()
        logits = response_logits(self.policy, query_ids, query_mask, response_ids, response_mask)
        values = None if self.critic is None else response_values(self.critic, query_ids, query_mask, response_ids, response_mask)
        return logits, values


def load_tokenizer(path: str, trust_remote_code: bool):
    """The tokenizer saved in a model folder."""
    from transformers import AutoTokenizer

    from rewardlab.local import model_folder

    return AutoTokenizer.from_pretrained(model_folder(path, "tokenizer folder (models.sft_model_path)", need_tokenizer=True),
                                         trust_remote_code=trust_remote_code)


def load_model(kind: str, path: str | None, trust_remote_code: bool):
    """A ``causal_lm`` (policy, reference) or a ``critic`` (sequence classifier, 1 output) from a folder."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    need_path(path, f"{kind} model path")
    from rewardlab.local import model_folder

    path = model_folder(path, f"{kind} model path")  # the local folder (a hub: name downloaded, as opted in)
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
    backward instead of about eight element-wise ops each way (outputs agree to ~2e-7); see the
    ablation in bench/RESULTS_ppo.md. Returns the number of modules swapped.
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


def reward_side(cfg: PPOConfig, reward_model, reward_fn, device) -> tuple[Any, RewardPipeline, list[int] | None]:
    """The scorer PPO calls, the pipeline that reads it, and the head columns of each pipeline term.

    ``reward_model`` may be None (load ``models.reward_model_path`` or ``models.reward_model_paths``),
    one `RewardModel`-like object, or a list of them. Several reward models are stacked
    (`StackedRewardModel`): a one-term pipeline reads all their heads together (an ensemble:
    ``min``, ``mean``, ``uwo``); an n-term combined pipeline needs exactly n of them, one per term.
    The pipeline is applied to dummy outputs of the right shape here, so a reading that does not fit
    fails before the policy loads.

    Returns:
        (scorer or None for a rule-based reward, pipeline, per-term head counts for a combined
        pipeline or None).
    """
    from rewardlab.reward.pipeline import RewardPipeline, parse_spec
    from rewardlab.reward.scoring import RewardModel
    from rewardlab.reward.stacked import StackedRewardModel

    m, r = cfg.models, cfg.reward
    if reward_model is None and reward_fn is None:
        paths = list(m.reward_model_paths) or [m.reward_model_path]
        for i, path in enumerate(paths):
            need_path(path, "models.reward_model_path (or reward.reward_fn)" if len(paths) == 1
                      else f"models.reward_model_paths[{i}]")
        reward_model = [RewardModel.from_pretrained(path, semantics=r.reward_semantics, trust_remote_code=m.trust_remote_code,
                                                    device=device, batch_size=r.score_batch_size) for path in paths]
    if isinstance(reward_model, (list, tuple)):
        if not reward_model:
            raise RewardlabError("reward_model=[] is empty; pass a RewardModel or a list of them")
        reward_model = reward_model[0] if len(reward_model) == 1 else StackedRewardModel(reward_model)
    n_terms = len(parse_spec(r.reward_pipeline))
    splits = getattr(reward_model, "head_splits", None)
    if n_terms > 1 and (reward_model is None or splits is None or len(splits) != n_terms):
        have = "a rule-based reward_fn" if reward_model is None else f"{len(splits or [1])} reward model(s)"
        raise RewardlabError(
            f"reward.reward_pipeline={r.reward_pipeline!r} has {n_terms} terms but there is {have}; give one "
            "reward model per term (models.reward_model_paths: [...], or reward_model=[...] in Python)")
    if n_terms > 1:
        semantics: Any = [r.reward_semantics or s for s in reward_model.member_semantics]
    else:
        member_sems = set(getattr(reward_model, "member_semantics", []))
        if r.reward_semantics is None and len(member_sems) > 1:
            raise RewardlabError(
                f"the stacked reward models have different head semantics {sorted(map(str, member_sems))}; read "
                "them with a combined pipeline (one term per model) or set reward.reward_semantics")
        semantics = r.reward_semantics or getattr(reward_model, "semantics", None)
    pipeline = RewardPipeline.from_spec(r.reward_pipeline, semantics=semantics)
    if getattr(reward_model, "num_heads", None):
        check_pipeline_fits(r.reward_pipeline, semantics, splits if n_terms > 1 else reward_model.num_heads,
                            r.num_reference_samples)
    return reward_model, pipeline, (splits if n_terms > 1 else None)


def check_pipeline_fits(spec: str, semantics, num_heads: int | list[int], k: int) -> None:
    """Apply a fresh copy of the pipeline to dummy logits of the reward model's shape (one per term)."""
    from rewardlab.reward.pipeline import RewardPipeline

    probe = RewardPipeline.from_spec(spec, semantics=semantics)
    logits, refs = [], []
    for h in num_heads if isinstance(num_heads, list) else [num_heads]:
        lg = torch.linspace(-1.0, 1.0, 4 * h).view(4, h)
        logits.append(lg)
        refs.append(lg.unsqueeze(1).expand(4, k, h) + torch.linspace(-0.5, 0.5, k).view(1, k, 1))
    many = isinstance(num_heads, list)
    try:
        probe(logits if many else logits[0], ref=(refs if many else refs[0]) if probe.needs_references else None)
    except RewardlabError as err:
        raise RewardlabError(f"reward.reward_pipeline={spec!r} does not fit the reward model ({num_heads} heads): {err}") from None
