"""Loading the models of a PPO run: local folders only (safetensors), optional LoRA adapters; and
its reward side (`rewardlab.reward.side`: reward models and rule terms), checked before the policy loads.

Example::

    policy = load_model("causal_lm", "runs/sft", trust_remote_code=False)
    critic = load_model("critic", "runs/rm", trust_remote_code=False)     # fresh 1-output value head
    reward = build_reward_side(cfg, columns=["answer"], device="cpu")
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from rewardlab.errors import RewardlabError
from rewardlab.ops.linear import sliced_linear
from rewardlab.ppo.config import ModelsConfig, PPOConfig, RewardConfig
from rewardlab.ppo.memory import mark_checkpointed_layers, resolve_dtype
from rewardlab.ppo.rollout import backbone, response_hidden, response_logits, response_values

if TYPE_CHECKING:
    from rewardlab.reward.side import RewardSide


def need_path(path: str | None, name: str, trust_remote_code: bool = False) -> str:
    """The model folder of a config field (a Hub name resolved); refuses a missing or unusable one, naming the field."""
    if path is None:
        raise RewardlabError(f"{name} is not set; give a model folder or a Hub name (or pass the model in Python)")
    from rewardlab.local import (
        model_folder,  # not resolvable, no config.json, pickle-only or truncated weights
    )

    return model_folder(path, name, trust_remote_code=trust_remote_code)


CRITIC_ADAPTER = "critic"  # the name of the critic's LoRA adapter with models.critic='adapter'


class PolicyAndCritic(torch.nn.Module):
    """Policy and critic behind one ``forward``, so that DDP / DeepSpeed wrap and sync both.

    The critic is a separate value model, or a linear ``value_head`` on the policy's last hidden
    state (one backbone for both), or — with ``critic_adapter`` — a value head on the policy's base
    read through a second LoRA adapter (one base in memory, two sets of trained weights), or absent
    (critic-free estimators). The rollout's no-grad forward and the update's forward both go
    through here, so π_old and π_θ are the same function.
    """

    def __init__(self, policy: torch.nn.Module, critic: torch.nn.Module | None = None,
                 value_head: torch.nn.Linear | None = None, critic_adapter: str | None = None) -> None:
        super().__init__()
        self.policy, self.critic, self.value_head = policy, critic, value_head
        self.critic_adapter = critic_adapter

    @property
    def _no_split_modules(self) -> list[str]:
        """Classes FSDP makes units of (accelerate's TRANSFORMER_BASED_WRAP reads this): every decoder
        layer of policy and critic, and the policy model itself, whose own ``generate`` (outside this
        module's forward) must gather its embeddings and head (`rewardlab.ppo.sharding`)."""
        names = [type(self.policy).__name__]
        for part in (self.policy, self.critic):
            names += [n for n in (getattr(part, "_no_split_modules", None) or []) if n not in names]
        return names

    def tie_weights(self) -> None:
        """Tie each model's shared weights again (accelerate's FSDP2 loading calls this after moving to meta)."""
        for part in (self.policy, self.critic):
            if part is not None and hasattr(part, "tie_weights"):
                part.tie_weights()

    def parameter_groups(self) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
        """(policy's, critic's) trainable parameters: the critic's are its model, its value head, or its adapter."""
        is_critic = f".{self.critic_adapter}." if self.critic_adapter else None  # the critic adapter's LoRA weights
        policy, critic = [], []
        for name, param in self.policy.named_parameters():
            if param.requires_grad:
                (critic if is_critic and is_critic in name else policy).append(param)
        critic += [p for mod in (self.critic, self.value_head) if mod is not None for p in mod.parameters() if p.requires_grad]
        return policy, critic

    def train(self, mode: bool = True) -> PolicyAndCritic:
        """Always eval mode (dropout off, so π_old and π_θ agree); checkpointed layers keep recomputing.

        transformers checkpoints only layers whose ``training`` flag is set, so those flags are set
        again after ``eval()`` (`rewardlab.ppo.memory.mark_checkpointed_layers`).
        """
        super().train(False)
        mark_checkpointed_layers(self)
        return self

    def forward(self, query_ids, query_mask, response_ids, response_mask):
        """Shapes: (B, Tq), (B, Tq), (B, T), (B, T) → logits (B, T, V), values (B, T) or None."""
        if self.critic_adapter is not None:  # two passes over one base: policy adapter, then critic adapter
            logits = response_logits(self.policy, query_ids, query_mask, response_ids, response_mask)
            with active_adapter(self.policy, self.critic_adapter):
                hidden = response_hidden(backbone(self.policy), query_ids, query_mask, response_ids, response_mask)
            return logits, self.value_head(hidden)[..., 0].float()
        if self.value_head is not None:
            logits, hidden = response_logits(self.policy, query_ids, query_mask, response_ids, response_mask,
                                             return_hidden=True)
            return logits, self.value_head(hidden)[..., 0].float()
        logits = response_logits(self.policy, query_ids, query_mask, response_ids, response_mask)
        values = None if self.critic is None else response_values(self.critic, query_ids, query_mask, response_ids, response_mask)
        return logits, values


def build_models(cfg: PPOConfig, *, policy=None, ref_policy=None, critic=None, reward_models: Sequence[Any] = (),
                 use_critic: bool, device) -> tuple[PolicyAndCritic, Any]:
    """Every trained model of a run, and the reference policy, from the config (models given in Python are kept).

    Loads each model in its dtype (`rewardlab.ppo.memory.model_precisions`: policy and critic in
    ``models.dtype``, the master weights; a separate reference in ``models.ref_dtype``, by default
    bfloat16 on a GPU under mixed precision) with ``attn_implementation``; then fast GELU, LoRA (one
    base for policy and reference; the critic as a second adapter with ``critic: adapter``) and
    activation checkpointing. Models given in Python keep their dtype. Returns ``(PolicyAndCritic in
    eval mode, reference policy)``; the reference is a frozen model or `AdapterDisabled` (the
    policy's base). ``reward_models`` are read for fast GELU and (one of them) for the critic
    adapter's value head.
    """
    from rewardlab.ppo.memory import enable_gradient_checkpointing, load_kwargs, model_precisions

    m = cfg.models
    precisions = model_precisions(cfg, cuda=torch.device(device).type == "cuda")
    trained_kw = load_kwargs(precisions["policy"].dtype, m.attn_implementation, trained=True)
    if policy is None:
        policy = load_model("causal_lm", m.sft_model_path, m.trust_remote_code, "models.sft_model_path", **trained_kw)
    # Under LoRA the reference is the policy's base with the adapter disabled: no second copy (TRL 1.10 did the same).
    shared_reference = m.use_peft and ref_policy is None and m.ref_model_path in (None, m.sft_model_path)
    if not shared_reference and ref_policy is None:
        ref_policy = load_model("causal_lm", m.ref_model_path or m.sft_model_path, m.trust_remote_code,
                                "models.ref_model_path" if m.ref_model_path else "models.sft_model_path",
                                **load_kwargs(precisions["reference"].dtype, m.attn_implementation, trained=False))
    if ref_policy is not None:
        ref_policy = ref_policy.to(device).eval()
    value_head = None
    if use_critic and m.critic in ("policy_head", "adapter"):
        if critic is not None:
            raise RewardlabError(f"models.critic={m.critic!r} puts the critic on the policy; do not pass critic=")
        value_head = torch.nn.Linear(policy.config.get_text_config().hidden_size, 1)
        torch.nn.init.zeros_(value_head.weight)  # V = 0 at the start: no arbitrary first advantages
        torch.nn.init.zeros_(value_head.bias)
        if m.critic == "adapter" and len(reward_models) == 1 and init_value_head(value_head, reward_models[0]):
            print("rewardlab ppo: the critic adapter's value head starts from the reward model's score head", flush=True)
    elif use_critic and critic is None:
        critic = load_critic(m, policy, **trained_kw)  # the policy's vocabulary, whatever the reward model's
    if m.fast_gelu:  # the user's model objects are changed in place (documented with the option)
        for model in (policy, ref_policy, critic, *(getattr(s, "model", None) for s in reward_models)):
            if isinstance(model, torch.nn.Module):
                fuse_tanh_gelu(model)
    if m.lm_head_slice:
        for model in (policy, ref_policy):
            slice_lm_head(model, m.lm_head_slice)
    if m.use_peft:
        policy, critic = with_lora(policy, critic, m)
    if shared_reference:
        ref_policy = AdapterDisabled(policy)
    if m.gradient_checkpointing:
        for model in (policy, critic):
            if model is not None:
                enable_gradient_checkpointing(model)
    for name, model in (("policy", policy), ("critic", critic)):
        if model is not None and any(p.dtype == torch.float16 for p in model.parameters() if p.requires_grad):
            raise RewardlabError(
                f"the {name} has float16 weights to train (models.dtype={m.dtype!r}), whose AdamW updates underflow "
                "without loss scaling; set models.dtype to bfloat16 or float32")
    critic_adapter = CRITIC_ADAPTER if use_critic and m.critic == "adapter" else None
    # Dropout off everywhere (PolicyAndCritic.train keeps eval mode): π_old and π_θ must be the same function.
    return PolicyAndCritic(policy, critic, value_head, critic_adapter).eval(), ref_policy


def load_tokenizer(path: str, trust_remote_code: bool):
    """The tokenizer saved in a model folder."""
    from transformers import AutoTokenizer

    from rewardlab.local import model_folder

    return AutoTokenizer.from_pretrained(model_folder(path, "models.sft_model_path", need_tokenizer=True,
                                                      trust_remote_code=trust_remote_code),
                                         trust_remote_code=trust_remote_code)


def load_model(kind: str, path: str | None, trust_remote_code: bool, field: str | None = None, **load_kw: Any):
    """A ``causal_lm`` (policy, reference) or a ``critic`` (sequence classifier, 1 output) from a folder or Hub name.

    ``field`` names it in messages and in the run's record of Hub models; ``load_kw`` goes to
    ``from_pretrained`` (``dtype``, ``attn_implementation``: `rewardlab.ppo.memory.load_kwargs`).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    path = need_path(path, field or f"{kind} model path", trust_remote_code)  # a Hub name: its cached snapshot
    if kind == "causal_lm":
        return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=trust_remote_code,
                                                    **load_kw)
    # A critic from a reward model with H heads or from a causal LM gets a fresh 1-output head. That is
    # intended, so transformers' "MISSING / MISMATCH score.weight" load report is silenced and we say it once.
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    # One regression output. A classifier's problem_type ('single_label_classification') and labels
    # would make transformers refuse num_labels=1.
    config.num_labels, config.problem_type = 1, "regression"
    config.id2label, config.label2id = {0: "value"}, {"value": 0}
    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        critic = AutoModelForSequenceClassification.from_pretrained(
            path, config=config, ignore_mismatched_sizes=True, use_safetensors=True, trust_remote_code=trust_remote_code,
            **load_kw)
    finally:
        hf_logging.set_verbosity(before)
    logging.getLogger("rewardlab.ppo").info("critic: backbone from %s with a new 1-output value head", path)
    return critic


def _vocab_size(path: str, trust_remote_code: bool) -> int | None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    return getattr(config.get_text_config(), "vocab_size", None)


def load_critic(m: ModelsConfig, policy: torch.nn.Module, **load_kw: Any):
    """The critic: from ``value_model_path``, else the (first) reward model, else the policy's folder.

    The critic reads the policy's token ids, so its embeddings must have the policy's vocabulary. A
    default (the reward model) with another vocabulary is replaced by the policy's folder, with a
    printed line; an explicit ``value_model_path`` with another vocabulary is refused.
    """
    policy_vocab = getattr(policy.config.get_text_config(), "vocab_size", None)
    first_rm = m.reward_model_paths[0] if m.reward_model_paths else m.reward_model_path
    path = m.value_model_path or first_rm or m.sft_model_path
    path = need_path(path, "models.value_model_path", m.trust_remote_code)  # a Hub name: its snapshot folder
    vocab = _vocab_size(path, m.trust_remote_code)
    if policy_vocab is not None and vocab is not None and vocab != policy_vocab:
        if m.value_model_path:
            raise RewardlabError(
                f"models.value_model_path={m.value_model_path!r} has a vocabulary of {vocab} tokens but the policy's "
                f"has {policy_vocab}: the critic reads the policy's token ids. Give a value model with the policy's "
                "tokenizer, or leave value_model_path unset (the critic then starts from the policy's folder)")
        if m.sft_model_path is None:
            raise RewardlabError(
                f"the critic would start from the reward model {first_rm!r}, whose vocabulary ({vocab} tokens) is not "
                f"the policy's ({policy_vocab}), and models.sft_model_path is not set to start it from the policy; "
                "pass critic= or set models.value_model_path to a model with the policy's tokenizer")
        print(f"rewardlab ppo: the reward model {first_rm!r} has a vocabulary of {vocab} tokens, the policy {policy_vocab}; "
              f"the critic starts from the policy's folder {m.sft_model_path!r} instead (set models.value_model_path "
              "to choose)", flush=True)
        path = m.sft_model_path
    return load_model("critic", path, m.trust_remote_code, **load_kw)


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


class SlicedLMHead(torch.nn.Linear):
    """A causal LM's ``nn.Linear`` head computed by `rewardlab.ops.linear.sliced_linear`.

    Same parameters, state dict and numbers as the ``nn.Linear`` it replaces; ``slice_rows``
    vocabulary rows per matmul (on CPU, float32; elsewhere it is ``F.linear``). The trainer sets
    ``accumulate_grad`` while a tied head's gradient should go into the weight's ``.grad`` in place.
    """

    slice_rows: int = 1024
    accumulate_grad: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sliced_linear(x, self.weight, self.bias, self.slice_rows, accumulate_grad=self.accumulate_grad)


def slice_lm_head(model: torch.nn.Module | None, rows: int) -> bool:
    """Make ``model``'s output embedding (an ``nn.Linear``) a `SlicedLMHead` of ``rows``, in place.

    The module keeps its weight (tied or not) and its name, so saving, PEFT and weight sync see
    the same model. Returns whether the head was changed (not when it is another module type).
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) not in (torch.nn.Linear, SlicedLMHead):
        return False
    head.__class__ = SlicedLMHead
    head.slice_rows = rows
    return True


def with_lora(policy, critic, m: ModelsConfig):
    """Wrap policy and critic with LoRA adapters (dropout 0: sampling and update must agree).

    With ``m.critic == "adapter"`` the policy gets a second adapter, `CRITIC_ADAPTER`, for the
    critic (``critic`` must then be None); both adapters stay trainable.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise RewardlabError("models.use_peft=true needs peft; pip install 'rewardlab[peft]'") from None
    common = dict(r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=0.0,
                  target_modules=list(m.lora_target_modules) or None)
    policy = get_peft_model(policy, LoraConfig(task_type="CAUSAL_LM", **common))
    if m.critic == "adapter":
        policy.add_adapter(CRITIC_ADAPTER, LoraConfig(task_type="CAUSAL_LM", **common))
        _train_all_adapters(policy)
    if critic is not None:  # SEQ_CLS keeps the value head fully trainable (modules_to_save)
        critic = get_peft_model(critic, LoraConfig(task_type="SEQ_CLS", **common))
    return policy, critic


def _train_all_adapters(model) -> None:
    """peft's ``set_adapter`` freezes the inactive adapters; here both the policy's and the critic's train."""
    for name, param in model.named_parameters():
        if "lora_" in name:
            param.requires_grad_(True)


@contextlib.contextmanager
def active_adapter(model, name: str):
    """Run ``model`` (a PEFT model) with adapter ``name`` active, then switch back; every adapter stays trainable."""
    before = model.active_adapter
    model.base_model.set_adapter(name)
    _train_all_adapters(model)
    try:
        yield
    finally:
        model.base_model.set_adapter(before)
        _train_all_adapters(model)


class AdapterDisabled:
    """The base of a PEFT policy with its adapters disabled: the reference policy without a second copy.

    Quacks like the causal LM it wraps for `response_logits` and `generate_responses` (calls,
    ``generate``, ``config``, ``generation_config``), each under ``disable_adapter()``; it holds
    no weights of its own. Reference logprobs equal those of a separately loaded base (a test checks).
    """

    def __init__(self, peft_model) -> None:
        self.peft_model = peft_model

    def __call__(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.peft_model.generate(*args, **kwargs)

    def get_base_model(self):
        return self.peft_model.get_base_model()

    @property
    def config(self):
        return self.peft_model.get_base_model().config

    @property
    def generation_config(self):
        return self.peft_model.get_base_model().generation_config


def init_value_head(value_head: torch.nn.Linear, reward_model: Any) -> bool:
    """Start the value head from the reward model's score head (mean over heads) when the shapes allow.

    A critic that starts from the reward model trains its value loss lower (LlamaFactory #1563);
    with the critic as an adapter on the policy's base only the head can be carried over, and only
    when the reward model's hidden size is the policy's. Returns whether it was initialised.
    """
    from rewardlab.ppo.rollout import score_head

    model = getattr(reward_model, "model", None)
    if model is None:
        return False
    try:
        head = score_head(model)
    except RewardlabError:
        return False
    weight = getattr(head, "weight", None)
    if weight is None or weight.shape[-1] != value_head.in_features:
        return False
    with torch.no_grad():
        value_head.weight.copy_(weight.float().mean(0, keepdim=True))
        bias = getattr(head, "bias", None)
        value_head.bias.copy_(bias.float().mean().view(1) if bias is not None else torch.zeros(1))
    return True


def build_reward_side(m: ModelsConfig, r: RewardConfig, reward_model: Any = None, reward_fn: Callable | None = None,
                      reward_funcs: Mapping[str, Callable] | Sequence[Callable] | None = None, *,
                      columns: Sequence[str] | None, device: Any, dtype: str | None = None,
                      max_length: int | None = None) -> RewardSide:
    """The reward side of a config's ``models`` and ``reward`` sections: its terms, reward models and rules.

    Every check that needs no model runs first — the spec's sources, the rule functions (imported,
    their signatures and the dataset ``columns`` they need; None: columns come with each request) —
    then the reward models load (or the ones given: one object or a list, read as ``rm0``, ``rm1`` …),
    their declared semantics are checked against their outputs, and the pipeline is applied to
    made-up outputs of their shape. PPO and the reward server both build their side here.

    Rule functions: ``reward.reward_fn`` (or ``reward_fn=``, which replaces it) and every function in
    ``reward_funcs`` become terms of weight 1 unless the spec reads them (``fn:NAME``); with no reward
    model, a spec of one term without a source reads the one rule function (the older form).

    Args:
        dtype: the reward models' dtype (None: ``models.dtype``; 'auto': as saved).
        max_length: the response budget of the overlong penalty (``generation.response_length``).
    """
    from rewardlab.reward.scoring import RewardModel
    from rewardlab.reward.side import Penalties, RewardSide, RewardSpec, named_functions

    given = reward_model if isinstance(reward_model, (list, tuple)) or reward_model is None else [reward_model]
    if given is not None and not given:
        raise RewardlabError("reward_model=[] is empty; pass a RewardModel or a list of them")
    paths = list(m.reward_model_paths) or ([m.reward_model_path] if m.reward_model_path else [])
    funcs = named_functions(reward_funcs)
    extra: list[str | Callable] = list(funcs)
    if reward_fn is not None or r.reward_fn is not None:
        extra.append(reward_fn if reward_fn is not None else r.reward_fn)
    spec = RewardSpec(r.reward_pipeline, functions=funcs, extra_functions=extra,
                      num_models=len(given) if given is not None else len(paths))
    if columns is not None:
        spec.check_columns(columns)
    override = "reward.allow_semantics_mismatch: true"
    if given is None:
        models = []
        paths = [need_path(path, "models.reward_model_path" if len(paths) == 1 else f"models.reward_model_paths[{i}]",
                           m.trust_remote_code) for i, path in enumerate(paths)]
        dtype = dtype or m.dtype
        torch_dtype = None if dtype == "auto" else resolve_dtype(dtype, trained=False)
        for path in paths:
            rm = RewardModel.from_pretrained(path, semantics=r.reward_semantics, trust_remote_code=m.trust_remote_code,
                                             dtype=torch_dtype, device=device, batch_size=r.score_batch_size,
                                             allow_untrained_head=r.allow_untrained_head)
            if not r.allow_semantics_mismatch:  # evidence: random token sequences, before the policy loads
                rm.check_declared_semantics(declared_as=f"reward.reward_semantics (for {path})", override=override)
            models.append(rm)
    else:
        models = list(given)
        for rm in models:
            if isinstance(rm, RewardModel) and not r.allow_semantics_mismatch:
                rm.check_declared_semantics(
                    semantics=r.reward_semantics, override=override,
                    declared_as="reward.reward_semantics" if r.reward_semantics else "semantics (of the RewardModel passed in)")
    penalties = Penalties(missing_eos=r.missing_eos_penalty, overlong_buffer_len=r.overlong_buffer_len,
                          overlong_penalty_factor=r.overlong_penalty_factor, max_length=max_length)
    return RewardSide(spec, models, semantics=r.reward_semantics, penalties=penalties,
                      num_references=r.num_reference_samples, what="reward.reward_pipeline")


@contextlib.contextmanager
def sparse_embedding_grads(embeddings: list[torch.nn.Embedding], tied_heads: Sequence[SlicedLMHead] = ()):
    """The (trainable) ``embeddings`` return sparse gradients (one row per token) inside the block.

    A dense embedding gradient is a fresh (V, D) tensor of zeros with the B·T token rows added, and a
    tied LM head's (V, D) gradient is then added to it: at the GPT-2-small size two 154 MB
    allocations, a fill and an add per backward. Sparse, the rows are added into the dense ``.grad``
    buffer that the trainer keeps across steps, and the ``tied_heads`` (`SlicedLMHead`s sharing an
    embedding's weight) add their gradient into the same buffer in place (autograd would sum dense
    and sparse out of place). Same sums, possibly in another order (float rounding only). Under
    FSDP the trainer passes none.
    """
    layers = [m for m in embeddings if not m.sparse]
    for m in layers:
        m.sparse = True
    for h in tied_heads:
        h.accumulate_grad = True
    try:
        yield
    finally:
        for m in layers:
            m.sparse = False
        for h in tied_heads:
            h.accumulate_grad = False


def critic_from_model(model: torch.nn.Module) -> torch.nn.Module:
    """A critic made from an in-memory model (a policy, or a reward model's backbone): a copy of its backbone
    with a fresh 1-output value head, as `load_critic` makes one from a folder. The model is not changed."""
    import copy

    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(model.config)
    config.num_labels, config.problem_type = 1, "regression"
    config.id2label, config.label2id = {0: "value"}, {"value": 0}
    critic = AutoModelForSequenceClassification.from_config(config, dtype=next(model.parameters()).dtype)
    own = critic.state_dict()
    weights = {k: v for k, v in model.state_dict().items() if k in own and own[k].shape == v.shape}  # not the old head
    missing, _ = critic.load_state_dict(weights, strict=False)
    head = {name for name, _ in critic.named_parameters() if name.split(".")[0] in ("score", "classifier")}
    if set(missing) - head:
        raise RewardlabError(f"cannot build the default critic from {type(model).__name__}: its weights lack "
                             f"{sorted(set(missing) - head)[:3]}; pass value_model= (a model or a folder)")
    logging.getLogger("rewardlab.ppo").info("critic: a copy of %s's backbone with a new 1-output value head",
                                            type(model).__name__)
    return critic.to(next(model.parameters()).device)
