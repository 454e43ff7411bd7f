"""Checkpoints that survive a kill and that a user can go back to: everything needed to continue a PPO
run bit-for-bit, and the policy as a folder that loads as it is.

Layout of ``<output_dir>/checkpoints/update-<n>/``::

    policy/                                  the policy, ``save_pretrained`` + tokenizer (under LoRA: the adapter);
                                             resume reads the weights from here
    policy.safetensors                       only under LoRA (or for a non-HF module): the whole policy, to resume
    critic.safetensors                       the critic (model or value head)
    optimizer.pt  scheduler.pt               optimiser and LR-schedule states (loaded weights_only)
    rng.pt                                   torch CPU (and CUDA) generator states
    reference_rewards.safetensors            the per-prompt reference-reward cache
    trainer_state.json                       update counter, KL controller, pipeline and alarm state, python RNG
    run.json                                 the run id, the update, the resolved config, headline metrics, alarm score

Checkpoints written before ``policy/`` existed (a bare ``policy.safetensors``) resume as before.

A checkpoint is written to a temporary sibling folder and renamed into place (atomic on POSIX),
so a kill at any moment leaves either the previous checkpoint or the new one, never half of one.
Only the newest ``keep`` (``run.save_total_limit``) checkpoints *of this run* are kept (other runs'
are never touched), and the one the over-optimisation alarm points back to: once the alarm has
fired, the newest checkpoint of update ≤ the alarm's ``fired_at`` (the last one saved before the
alarm fired, at most the policy that produced the alarming rollout, which ``alarm.early_stop``
keeps) is never pruned for the rest of the run. The run's ``run.json`` lists the kept checkpoints
(`rewardlab.runfolder.record_checkpoints`) and names that one (``alarm_checkpoint``).

The final outputs (`save_final_models`) are for deployment: ``policy/`` (under LoRA the adapter),
``critic/`` or ``value_head.safetensors``, and with ``run.merge_adapter`` ``policy_merged/``, each a
``from_pretrained`` folder with the tokenizer; ``run.save_dtype`` casts the policy's (checkpoints
keep full precision).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from rewardlab.atomic import atomic_dir, atomic_path, write_text
from rewardlab.errors import RewardlabError
from rewardlab.runfolder import list_checkpoints, prune_checkpoints, record_checkpoints, write_checkpoint_info

if TYPE_CHECKING:
    from rewardlab.ppo.sharding import FullState, ShardedModel

PREFIX, STATE_FILE = "update-", "trainer_state.json"
POLICY_DIR = "policy"
#: The metrics a checkpoint records in run.json (docs/metrics.md), from the update it was saved after.
HEADLINE = ("objective/scores", "objective/rlhf_reward", "objective/kl", "objective/entropy",
            "objective/response_length", "reward/raw/mean")


@dataclass
class TrainingState:
    """The pieces of a run a checkpoint restores (models in place, the rest returned)."""

    policy: torch.nn.Module
    critic: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    kl_controller: Any
    pipeline: Any | None
    reference_rewards: Any | None
    alarm: Any | None = None  # the over-optimisation alarm's state (`rewardlab.ppo.alarm`)
    sharded: ShardedModel | None = None  # under FSDP: the models are restored through it (full state dicts)
    tokenizer: Any | None = None  # written into each checkpoint's policy/, so the folder loads as it is


def checkpoint_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def latest_checkpoint(output_dir: str, run_id: str | None = None) -> str | None:
    """The newest complete checkpoint folder under ``output_dir`` (of run ``run_id`` if given), or None."""
    found = list_checkpoints(checkpoint_dir(output_dir), PREFIX, STATE_FILE, run_id)
    return found[-1][1] if found else None


def save_checkpoint(output_dir: str, update: int, state: TrainingState, extra: dict[str, Any],
                    keep: int | None = 2, run_id: str | None = None, full: FullState | None = None,
                    metrics: Mapping[str, float] | None = None) -> str:
    """Write checkpoint ``update-<update>`` atomically, prune this run's older ones and list the kept ones in
    ``<output_dir>/run.json``; returns its path.

    Args:
        extra: stored in ``trainer_state.json``; ``extra["config"]`` (the resolved config), when given, goes
            into the checkpoint's ``run.json``.
        keep: ``run.save_total_limit``: checkpoints kept besides the alarm's (None: all).
        full: the gathered weights and optimiser state of a sharded run (`rewardlab.ppo.sharding`),
            written in place of the models' own (same files, same keys).
        metrics: the metrics of the update just done; its `HEADLINE` and ``alarm/score`` are recorded
            with the checkpoint (run.json).
    """
    root = checkpoint_dir(output_dir)
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"update-{update}")
    # Re-saving the same update (e.g. at the end) replaces it; the old copy stays until the rename.
    with atomic_dir(final) as tmp:
        weights = full.weights["policy"] if full is not None else None
        complete = _save_policy(os.path.join(tmp, POLICY_DIR), state.policy, state.tokenizer, weights)
        if full is not None:
            for part in full.weights:
                if part != "policy" or not complete:
                    save_file(full.file_weights(part), os.path.join(tmp, f"{part}.safetensors"))
            torch.save(full.optimizer, os.path.join(tmp, "optimizer.pt"))
        else:
            if not complete:
                save_model(state.policy, os.path.join(tmp, "policy.safetensors"))
            if state.critic is not None:
                save_model(state.critic, os.path.join(tmp, "critic.safetensors"))
            torch.save(state.optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
        torch.save(state.scheduler.state_dict(), os.path.join(tmp, "scheduler.pt"))
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, os.path.join(tmp, "rng.pt"))
        if state.reference_rewards is not None and len(state.reference_rewards):
            state.reference_rewards.save(os.path.join(tmp, "reference_rewards.safetensors"))
        trainer_state = {
            "update": update,
            "kl_controller": state.kl_controller.state_dict(),
            "pipeline": state.pipeline.state_dict() if state.pipeline is not None else None,
            "alarm": state.alarm.state_dict() if state.alarm is not None else None,
            "python_rng": _jsonable(random.getstate()),
            **extra,
        }
        trainer_state["run_id"] = run_id
        with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as fh:
            json.dump(trainer_state, fh, indent=1)
        metrics = metrics or {}
        summary = {"metrics": {k: float(metrics[k]) for k in HEADLINE if k in metrics},
                   "alarm_score": float(metrics["alarm/score"]) if "alarm/score" in metrics else None}
        if os.path.isdir(os.path.join(tmp, POLICY_DIR)):
            summary["policy"] = os.path.join("checkpoints", os.path.basename(final), POLICY_DIR)
        write_checkpoint_info(tmp, run_id, update, extra.get("config"), summary)
    marked = alarm_checkpoint(output_dir, state.alarm, run_id)
    prune_checkpoints(root, PREFIX, STATE_FILE, run_id, keep, protect={marked} if marked else ())
    record_checkpoints(output_dir, PREFIX, STATE_FILE, run_id, unit="update", alarm_checkpoint=marked)
    return final


def alarm_checkpoint(output_dir: str, alarm: Any | None, run_id: str | None = None) -> str | None:
    """The name of the checkpoint the over-optimisation alarm points back to, or None (no alarm yet, or no
    checkpoint saved before it fired).

    That is the newest checkpoint of update ≤ ``alarm.fired_at`` (the updates done before the first
    alarming rollout): the last one saved before the alarm fired; at update ``fired_at`` it holds the
    policy that produced the alarming rollout, the one ``alarm.early_stop`` keeps. ``fired_at`` never
    resets, so the answer stays the same for the rest of the run (resumes included).
    """
    fired = alarm.fired_at if alarm is not None else None
    if fired is None:
        return None
    before = [path for n, path in list_checkpoints(checkpoint_dir(output_dir), PREFIX, STATE_FILE, run_id)
              if n <= fired]
    return os.path.basename(before[-1]) if before else None


def _save_policy(folder: str, policy: torch.nn.Module, tokenizer: Any | None,
                 weights: dict[str, torch.Tensor] | None) -> bool:
    """Write ``policy/`` (``save_pretrained``, tied weights once, + tokenizer); True when it holds the whole
    policy, so resume reads the weights from it. Under LoRA it holds the adapter only (False); a module
    without ``save_pretrained`` gets no folder (False)."""
    if not hasattr(policy, "save_pretrained"):
        return False
    peft = hasattr(policy, "peft_config")
    # With the critic as a second adapter, policy/ holds the policy's adapter only (as the final policy/).
    kwargs: dict[str, Any] = {"selected_adapters": ["default"]} if peft else {}
    if weights is not None:
        kwargs["state_dict"] = weights
    policy.save_pretrained(folder, safe_serialization=True, **kwargs)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return not peft


def _read_policy_folder(folder: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The policy's state dict from a ``save_pretrained`` folder (one file or shards), with every name of a
    tied weight filled in from the one name the folder keeps."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as fh:
            files = sorted(set(json.load(fh)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    if not os.path.isfile(os.path.join(folder, files[0])):
        raise RewardlabError(f"{os.path.dirname(folder)} has neither policy.safetensors nor {POLICY_DIR}/{files[0]}; "
                             "it is not a complete PPO checkpoint")
    sd: dict[str, torch.Tensor] = {}
    for name in files:
        sd.update(load_file(os.path.join(folder, name)))
    from rewardlab.ppo.sharding import tied_names

    for kept, dropped in tied_names(module).items():
        names = [kept, *dropped]
        present = next((n for n in names if n in sd), None)
        if present is not None:
            for n in names:
                sd.setdefault(n, sd[present])
    return sd


def load_checkpoint(path: str, state: TrainingState) -> dict[str, Any]:
    """Restore ``state`` in place from ``path``; returns the trainer-state dict (update counter …)."""
    if not os.path.isfile(os.path.join(path, STATE_FILE)):
        raise RewardlabError(f"{path} is not a rewardlab PPO checkpoint (no trainer_state.json)")
    optimizer = torch.load(os.path.join(path, "optimizer.pt"), weights_only=True)
    bare = os.path.join(path, "policy.safetensors")
    if state.sharded is not None:  # every process reads the full state; each keeps its shard
        from rewardlab.ppo.sharding import FullState

        weights = {part: load_file(os.path.join(path, f"{part}.safetensors")) for part in state.sharded.parts
                   if part != "policy" or os.path.isfile(bare)}
        if "policy" not in weights:
            weights["policy"] = _read_policy_folder(os.path.join(path, POLICY_DIR), state.policy)
        state.sharded.load(FullState(weights, optimizer))
    else:
        if os.path.isfile(bare):  # LoRA, a non-HF module, or a checkpoint from before policy/
            load_model(state.policy, bare)
        else:
            state.policy.load_state_dict(_read_policy_folder(os.path.join(path, POLICY_DIR), state.policy))
        if state.critic is not None:
            load_model(state.critic, os.path.join(path, "critic.safetensors"))
        state.optimizer.load_state_dict(optimizer)
    state.scheduler.load_state_dict(torch.load(os.path.join(path, "scheduler.pt"), weights_only=True))
    rng = torch.load(os.path.join(path, "rng.pt"), weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as fh:
        trainer_state = json.load(fh)
    state.kl_controller.load_state_dict(trainer_state["kl_controller"])
    if state.pipeline is not None and trainer_state.get("pipeline") is not None:
        state.pipeline.load_state_dict(trainer_state["pipeline"])
    if state.alarm is not None and trainer_state.get("alarm") is not None:
        state.alarm.load_state_dict(trainer_state["alarm"])
    ref_path = os.path.join(path, "reference_rewards.safetensors")
    if state.reference_rewards is not None and os.path.exists(ref_path):
        state.reference_rewards.load_state_dict(load_file(ref_path))
    random.setstate(_python_rng(trainer_state["python_rng"]))
    return trainer_state


def _jsonable(x: Any) -> Any:
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _python_rng(x: Any) -> Any:
    return tuple(_python_rng(v) for v in x) if isinstance(x, list) else x


# ---------------------------------------------------------------------- run outputs
def write_run_files(output_dir: str, cfg: Any, pipeline_spec: str) -> None:
    """``config.yaml`` (resolved), ``pipeline.txt`` (canonical spec) and ``versions.json``, each atomically."""
    from rewardlab.ppo.config import save_config
    from rewardlab.tracking import library_versions

    os.makedirs(output_dir, exist_ok=True)
    save_config(cfg, os.path.join(output_dir, "config.yaml"))
    write_text(os.path.join(output_dir, "pipeline.txt"), pipeline_spec + "\n")
    write_text(os.path.join(output_dir, "versions.json"), json.dumps(library_versions(), indent=1) + "\n")


def save_final_models(output_dir: str, model: Any, tokenizer: Any, full: FullState | None = None, *,
                      save_dtype: str | None = None, merge_adapter: bool = False) -> None:
    """``policy/`` and ``critic/`` as ``save_pretrained`` folders with the tokenizer (or
    ``value_head.safetensors``), each replacing a previous one atomically (`rewardlab.atomic`).

    Args:
        full: the gathered weights of a sharded run (`rewardlab.ppo.sharding`), saved in place of the
            models' own (sharded) parameters; the folders are the same as an unsharded run's.
        save_dtype: ``run.save_dtype``: the dtype of the weights in ``policy/`` (and ``policy_merged/``),
            ``config.json``'s ``dtype`` with them, so ``from_pretrained(dtype="auto")`` and vLLM load
            them as such (None: as trained). Checkpoints and the critic keep full precision.
        merge_adapter: ``run.merge_adapter``: with a LoRA policy, also write ``policy_merged/``, the
            policy's adapter merged into its base (W + ΔW, computed without touching the trained
            module): a full model folder with the tokenizer and the policy's generation config.
    """
    if model.value_head is not None:
        with atomic_path(os.path.join(output_dir, "value_head.safetensors")) as tmp:
            if full is not None:
                save_file(full.file_weights("critic"), tmp)
            else:
                save_model(model.value_head, tmp)
    adapter = getattr(model, "critic_adapter", None)
    with atomic_dir(os.path.join(output_dir, "policy")) as tmp:  # as a checkpoint's policy/, in save_dtype
        weights = full.weights["policy"] if full is not None else None
        if save_dtype is not None:
            weights = cast_state_dict(weights or model.policy.state_dict(), save_dtype)
        _save_policy(tmp, model.policy, tokenizer, weights)
        if save_dtype is not None:
            _set_config_dtype(tmp, save_dtype)
    if model.critic is not None:  # a separate value model (the critic adapter and value head are saved below/above)
        with atomic_dir(os.path.join(output_dir, "critic")) as tmp:
            extra = {"state_dict": full.weights["critic"]} if full is not None else {}
            model.critic.save_pretrained(tmp, safe_serialization=True, **extra)
            tokenizer.save_pretrained(tmp)
    if adapter:  # critic/: the critic's adapter as an ordinary PEFT folder (loads as 'default'), beside value_head
        from peft import get_peft_model_state_dict

        with atomic_dir(os.path.join(output_dir, "critic")) as tmp:
            weights = get_peft_model_state_dict(model.policy, adapter_name=adapter)
            save_file({k: v.detach().contiguous() for k, v in weights.items()}, os.path.join(tmp, "adapter_model.safetensors"))
            model.policy.peft_config[adapter].save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    if merge_adapter:
        save_merged_policy(os.path.join(output_dir, "policy_merged"), model.policy, tokenizer, save_dtype=save_dtype)


def save_merged_policy(folder: str, policy: Any, tokenizer: Any, *, save_dtype: str | None = None) -> None:
    """The LoRA ``policy`` merged into its base, as a full ``save_pretrained`` folder with the tokenizer, atomically.

    The weights are `rewardlab.ppo.engine.full_weights` (base W + the policy adapter's ΔW with
    peft's ``get_delta_weight``, as new tensors; what the vLLM engine is synced with), so the
    trained module is never merged in place; ``save_dtype`` casts them. Equivalent to peft's
    ``merge_and_unload`` on a copy, without the copy.

    Raises:
        RewardlabError: ``policy`` is not a PEFT model (``run.merge_adapter`` needs ``models.use_peft``).
    """
    from rewardlab.ppo.engine import full_weights

    if not (hasattr(policy, "peft_config") and hasattr(policy, "get_base_model")):
        raise RewardlabError("run.merge_adapter merges a LoRA adapter, and the policy has none; set models.use_peft=true")
    if list(policy.active_adapters) != ["default"]:  # the policy's adapter only, never a critic adapter
        raise RewardlabError(f"the policy's active adapters are {policy.active_adapters}, not ['default']; "
                             "merge the policy's adapter alone")
    weights = dict(full_weights(policy))
    weights = cast_state_dict(weights, save_dtype) if save_dtype else weights
    dtype = next(w.dtype for w in weights.values() if w.is_floating_point())
    with atomic_dir(folder) as tmp:
        policy.get_base_model().save_pretrained(tmp, safe_serialization=True, state_dict=weights)  # empties weights
        _set_config_dtype(tmp, str(dtype).removeprefix("torch."))
        tokenizer.save_pretrained(tmp)


def cast_state_dict(state_dict: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """Floating-point tensors of ``state_dict`` cast to ``dtype`` (other tensors as they are); tied weights
    (one storage under several names) stay one tensor, so ``save_pretrained`` still writes them once."""
    target = getattr(torch, dtype)
    done: dict[tuple, torch.Tensor] = {}
    out = {}
    for key, t in state_dict.items():
        if not t.is_floating_point():
            out[key] = t
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if ident not in done:
            done[ident] = t.detach().to(target)
        out[key] = done[ident]
    return out


def _set_config_dtype(folder: str, dtype: str) -> None:
    """Make ``config.json``'s ``dtype`` say what the weights are (``save_pretrained`` writes the module's own)."""
    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):  # an adapter folder: peft loads it in its base's dtype
        return
    with open(path, encoding="utf-8") as fh:
        config = json.load(fh)
    config["dtype"] = dtype
    write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
