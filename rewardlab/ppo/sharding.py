"""Sharded training (FSDP2) of the policy and critic through accelerate, on GPUs and on CPU.

    accelerate launch --config_file examples/accelerate/fsdp.yaml -m rewardlab.cli ppo --config my.yaml
    accelerate launch --use_fsdp --fsdp_version 2 --num_processes 2 -m rewardlab.cli ppo --config my.yaml  # CPU

What runs where (accelerate 1.15, torch 2.13; the evidence is in docs/architecture.md):

- **GPU.** accelerate turns an FSDP config into ``DistributedType.FSDP`` and its ``prepare`` applies
  torch's ``fully_shard`` (``accelerate.utils.fsdp_utils.fsdp2_prepare_model``): one unit per class
  named in ``PolicyAndCritic._no_split_modules`` (every decoder layer, and the policy model itself,
  so that ``generate`` gathers the policy's own embeddings and head), then the root.
- **CPU, several processes (gloo).** accelerate reaches its FSDP branch only for accelerator
  devices: an FSDP config on a CPU-only machine becomes ``MULTI_CPU``, i.e. DDP, and an explicit
  ``fsdp_plugin`` is dropped — silently. `configure_sharding` therefore sets accelerate's state to
  FSDP with the plugin accelerate would have built from the launcher's ``FSDP_*`` variables; the
  same ``prepare`` then shards exactly as on a GPU (parameters become DTensors over a CPU mesh).
  That is an override of accelerate's state, not a configuration accelerate supports; the test
  (tests/test_ppo_sharding.py) is what vouches for it.

Checkpoints and final outputs hold *full* (gathered) state dicts, written by the main process in
the format of an unsharded run (`ShardedModel.full_state`), so sharded and unsharded runs resume
each other's checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from rewardlab.errors import RewardlabError

__all__ = ["FullState", "ShardedModel", "configure_sharding", "fsdp_requested", "prepare_sharded"]


def fsdp_requested() -> bool:
    """Whether ``accelerate launch`` was given an FSDP config (``--use_fsdp`` or ``distributed_type: FSDP``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def configure_sharding(accelerator: Any, cfg: Any) -> bool:
    """Check an FSDP request against the config and, on CPU, make accelerate apply FSDP2; True if sharding.

    Call after creating the ``Accelerator`` and before ``prepare``. One process is not sharded
    (nothing to shard across); on a GPU accelerate has already selected FSDP from the launcher.
    """
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = accelerator.state
    if state.distributed_type == DistributedType.FSDP:
        plugin = state.fsdp_plugin
    elif fsdp_requested() and state.distributed_type == DistributedType.MULTI_CPU:
        plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables accelerate launch sets
    else:
        return False
    if plugin.fsdp_version != 2:
        raise RewardlabError(f"fsdp_version={plugin.fsdp_version} is not supported; set fsdp_version: 2 in the "
                             "accelerate config (or pass --fsdp_version 2)")
    m = cfg.models
    if m.use_peft:
        raise RewardlabError("models.use_peft=true with FSDP is not supported (the adapters' shared base is "
                             "both trained and the reference); LoRA adapters are small: launch with DDP "
                             "(examples/accelerate/ddp.yaml) instead")
    if plugin.activation_checkpointing:
        raise RewardlabError("fsdp_activation_checkpointing=true is not supported; set it false and use "
                             "models.gradient_checkpointing: true (rewardlab's own, which FSDP composes with)")
    if plugin.auto_wrap_policy is None:  # `--use_fsdp` alone wraps only the root: no unit for generate to gather
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

        plugin.auto_wrap_policy = transformer_auto_wrap_policy  # TRANSFORMER_BASED_WRAP: PolicyAndCritic._no_split_modules
    if state.distributed_type == DistributedType.MULTI_CPU:
        if plugin.cpu_offload is not None and type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy":
            raise RewardlabError("fsdp_offload_params=true means nothing on a CPU-only machine; set it false")
        if accelerator.mixed_precision != "no":
            plugin.set_mixed_precision(accelerator.mixed_precision)
        # accelerate 1.15 selects FSDP only for accelerator devices (AcceleratorState.__init__); these are
        # the assignments it makes there, made here for the CPU (gloo) group it has already formed.
        # PartialState's copy matters: every later AcceleratorState() copies it over its own.
        from accelerate.state import PartialState

        state.fsdp_plugin = plugin
        state.distributed_type = DistributedType.FSDP
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True


def prepare_sharded(model: torch.nn.Module) -> None:
    """After ``accelerator.prepare``: make the sharded ``PolicyAndCritic`` usable by the loop.

    - FSDP2 takes the first FSDP module to run forward as the root, and ``generate`` calls the
      policy before any forward of the whole model; one tiny forward fixes the root first.
    - ``generate`` on a sharded policy must run as many steps on every process (each step gathers
      parameters): transformers does so (``synced_gpus``) for modules it sees as FSDP-managed.
    """
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule) or not isinstance(model.policy, FSDPModule):
        raise RewardlabError("FSDP did not wrap the policy and critic as expected (the policy must be its own "
                             "FSDP unit); check fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP and leave "
                             "fsdp_transformer_layer_cls_to_wrap unset")
    if isinstance(model.critic, FSDPModule):  # its value forward reads backbone and head, not its forward
        raise RewardlabError(f"the critic ({type(model.critic).__name__}) has the policy's class, so FSDP would make "
                             "it a unit it cannot gather; load the critic as a sequence-classification model")
    model.policy._is_fsdp_managed_module = True  # read by transformers' generate → synced_gpus=True
    device = next(iter(model.parameters())).device
    one = torch.ones(1, 1, dtype=torch.long, device=device)
    with torch.no_grad():
        model(one, one, one, one)
    model.reshard()  # the root keeps its parameters gathered after a forward; shard them again


@dataclass
class FullState:
    """Full (unsharded) weights and optimiser state, keyed as an unsharded run's are.

    ``weights["policy"]`` is the policy's ``state_dict()`` (tied weights: one tensor under each of
    their names), likewise ``weights["critic"]`` (critic model or value head); ``optimizer`` is
    ``torch.optim.Optimizer.state_dict()`` of the unsharded optimiser (parameters numbered in group
    order); ``tied[part]`` maps each kept name of a tied weight to the names checkpoint files drop.
    """

    weights: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    optimizer: dict[str, Any] | None = None
    tied: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def file_weights(self, part: str) -> dict[str, torch.Tensor]:
        """What ``safetensors.torch.save_model`` writes for this part: tied weights once, contiguous."""
        drop = {n for names in self.tied.get(part, {}).values() for n in names}
        return {k: v.contiguous() for k, v in self.weights[part].items() if k not in drop}


class ShardedModel:
    """Gathers and restores the full state of a sharded ``PolicyAndCritic`` and its optimiser.

    Args:
        model: the prepared (``fully_shard``-ed) ``PolicyAndCritic``.
        optimizer: its optimiser (accelerate's wrapper or a torch optimiser).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it
        critic = "critic" if model.critic is not None else "value_head" if model.value_head is not None else None
        self.parts = {"policy": "policy", **({"critic": critic} if critic else {})}  # file part → child name
        self._tied = {part: tied_names(getattr(model, child)) for part, child in self.parts.items()}

    def full_state(self, optimizer: bool = True) -> FullState | None:
        """The full state, gathered from every process (collective: call it on all); None off the main process."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        opts = _options(cpu_offload=True)
        weights = get_model_state_dict(self.model, options=opts)
        optim = get_optimizer_state_dict(self.model, self.optimizer, options=opts) if optimizer else None
        if torch.distributed.get_rank() != 0:
            return None
        full = FullState(optimizer=None if optim is None else _numbered(optim), tied=self._tied)
        for part, child in self.parts.items():
            prefix = child + "."
            sd = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
            for keep, others in self._tied[part].items():  # one tensor, as in the model
                for name in others:
                    sd[name] = sd[keep]
            full.weights[part] = sd
        return full

    def load(self, full: FullState) -> None:
        """Restore a full state (read on every process) into the sharded model and optimiser."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        weights = {}
        for part, child in self.parts.items():
            sd = dict(full.weights[part])
            for keep, others in self._tied[part].items():
                for name in others:
                    sd[name] = sd[keep]
            weights.update({f"{child}.{k}": v for k, v in sd.items()})
        set_model_state_dict(self.model, weights, options=_options())
        if full.optimizer is not None:
            fqns = _param_fqns(self.model, self.optimizer)
            state = {fqns[int(i)]: v for i, v in full.optimizer["state"].items()}
            groups = [{**g, "params": [fqns[int(i)] for i in g["params"]]} for g in full.optimizer["param_groups"]]
            set_optimizer_state_dict(self.model, self.optimizer, {"state": state, "param_groups": groups},
                                     options=_options())


def _options(cpu_offload: bool = False):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload)


def tied_names(module: torch.nn.Module) -> dict[str, list[str]]:
    """{kept name: [dropped names]} for parameters shared under several names (safetensors keeps the first sorted)."""
    by_param: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        by_param.setdefault(id(p), []).append(name)
    return {sorted(n)[0]: sorted(n)[1:] for n in by_param.values() if len(n) > 1}


def _numbered(optim: dict[str, Any]) -> dict[str, Any]:
    """A full optimiser state keyed by parameter names → torch's format (parameters numbered in group order)."""
    index: dict[str, int] = {}
    for g in optim["param_groups"]:
        for name in g["params"]:
            index[name] = len(index)
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in optim["param_groups"]]
    return {"state": {index[n]: v for n, v in optim["state"].items()}, "param_groups": groups}


def _param_fqns(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The names of the optimiser's parameters in group order (torch's numbering)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    full = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    # full state dicts reach rank 0 only (the others get {}); the names are the same everywhere
    box = [full["param_groups"] if torch.distributed.get_rank() == 0 else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return [n for g in box[0] for n in g["params"]]
