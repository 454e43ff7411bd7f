"""Sharded PPO (FSDP2) on CPU: 2 processes equal 1, resume under sharding, ordinary output folders.

The runs are launched as a user would: ``accelerate launch --config_file examples/accelerate/fsdp.yaml``.
On CPU accelerate would run that config as DDP; `rewardlab.ppo.sharding` makes its FSDP2 path run
instead, and each process reports what it trained (DTensor parameters, FSDP units) so the test
can check that the parameters really were sharded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types

import pytest
import torch
from _scripts import load_script
from safetensors.torch import load_file

from rewardlab.errors import RewardlabError

SCRIPT = r'''
import json, os, sys
import torch
from rewardlab.ppo.config import PPOConfig
from rewardlab.ppo.trainer import PPOTrainer
from rewardlab.tiny import build_model, build_tokenizer, tiny_config

PROMPTS = [" ".join(f"t{(i * 7 + j) % 20}" for j in range(3 + i % 3)) for i in range(64)]


def reward(prompts, responses):
    return [r.split().count("t5") / max(1, len(r.split())) for r in responses]


def make_trainer(out, updates, resume):
    tok = build_tokenizer(32, padding_side="left")
    mc = tiny_config("gpt2", tok, hidden=32, layers=2)
    policy, ref = build_model("causal_lm", mc, seed=0), build_model("causal_lm", mc, seed=0)
    critic = build_model("sequence_classification", tiny_config("gpt2", tok, hidden=32, layers=2, num_labels=1), seed=1)
    cfg = PPOConfig.from_dict({
        "response_length": 8, "temperature": 1.0, "batch_size": 32, "per_device_train_batch_size": 8,
        "num_mini_batches": 1, "num_ppo_epochs": 2, "learning_rate": 3e-3, "total_episodes": 32 * updates,
        "kl_coef": 0.05, "output_dir": out, "progress_bar": False, "save_steps": 1})
    return PPOTrainer(cfg, policy=policy, ref_policy=ref, critic=critic, tokenizer=tok, reward_fn=reward,
                      prompts=PROMPTS, resume=resume)


if __name__ == "__main__":
    out, updates, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "resume"
    trainer = make_trainer(out, updates, resume)
    trainer.train()
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    params = list(trainer.model.parameters())
    report = {"distributed_type": str(trainer.accelerator.distributed_type),
              "dtensor": sum(isinstance(p, DTensor) for p in params), "params": len(params),
              "local_numel": sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params),
              "numel": sum(p.numel() for p in params),
              "units": sorted({type(m).__name__ for m in trainer.model.modules() if isinstance(m, FSDPModule)})}
    with open(os.path.join(out, f"shards-{trainer.accelerator.process_index}.json"), "w") as fh:
        json.dump(report, fh)
'''

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
          os.path.join(ROOT, "examples", "accelerate", "fsdp.yaml"), "--num_processes", "2",
          "--mixed_precision", "no", "--main_process_port", "0"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    return env


def _run(cmd: list[str]) -> None:
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-4000:]


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _losses(out) -> list[tuple[float, float]]:
    from rewardlab.tracking import read_metrics

    return [(r["ppo/loss/policy"], r["ppo/loss/value"]) for r in read_metrics(out)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process (in this one), and 2 FSDP processes, 2 updates each, from the same models and seed."""
    root = tmp_path_factory.mktemp("sharding")
    script = root / "run.py"
    script.write_text(SCRIPT)
    module = load_script(script, "sharding_run")
    single, fsdp = root / "single", root / "fsdp"
    module.make_trainer(str(single), 2, False).train()
    _run([*LAUNCH, str(script), str(fsdp), "2", "fresh"])
    return types.SimpleNamespace(root=root, script=script, module=module, single=single, fsdp=fsdp)


def test_fsdp_two_processes_shard_and_match_one(runs):
    reports = [json.loads((runs.fsdp / f"shards-{r}.json").read_text()) for r in (0, 1)]
    for rep in reports:  # really sharded: every trained parameter a DTensor, each process holding about half
        assert rep["distributed_type"] == "DistributedType.FSDP", rep
        assert rep["dtensor"] == rep["params"] > 0, rep
        assert rep["local_numel"] < 0.6 * rep["numel"], rep
        # units: each decoder layer, the policy (its own unit, for generate), the root
        assert rep["units"] == ["FSDPGPT2Block", "FSDPGPT2LMHeadModel", "FSDPPolicyAndCritic"], rep
    state = json.loads((runs.fsdp / "checkpoints" / "update-2" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["sharded"] is True
    # final outputs: ordinary save_pretrained folders, equal to the 1-process run's
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    start = load_file(str(runs.single / "checkpoints" / "update-1" / "policy" / "model.safetensors"))  # to see the last update move
    pol_1 = AutoModelForCausalLM.from_pretrained(runs.single / "policy").state_dict()
    pol_2 = AutoModelForCausalLM.from_pretrained(runs.fsdp / "policy").state_dict()
    crit_1 = AutoModelForSequenceClassification.from_pretrained(runs.single / "critic").state_dict()
    crit_2 = AutoModelForSequenceClassification.from_pretrained(runs.fsdp / "critic").state_dict()
    moved = max((pol_1[k] - start[k]).abs().max().item() for k in start)
    diff = _max_diff(pol_1, pol_2)
    print(f"last update moved the policy {moved:.3g}; 1 vs 2 FSDP processes differ by {diff:.3g}")
    assert moved > 5e-4, "training did not move the weights; the comparison proves nothing"  # measured ~2e-3
    assert diff < 1e-4 and _max_diff(crit_1, crit_2) < 1e-4, (diff, _max_diff(crit_1, crit_2))  # measured ~2e-6
    for (p1, v1), (p2, v2) in zip(_losses(runs.single), _losses(runs.fsdp), strict=True):
        assert abs(p1 - p2) < 1e-4 and abs(v1 - v2) < 1e-4, (p1, p2, v1, v2)
    # checkpoints: the unsharded format (same files, keys, optimiser numbering), gathered values
    for name in ("policy/model.safetensors", "critic.safetensors"):
        a = load_file(str(runs.single / "checkpoints" / "update-2" / name))
        b = load_file(str(runs.fsdp / "checkpoints" / "update-2" / name))
        assert _max_diff(a, b) < 1e-4, name
    oa = torch.load(runs.single / "checkpoints" / "update-2" / "optimizer.pt", weights_only=True)
    ob = torch.load(runs.fsdp / "checkpoints" / "update-2" / "optimizer.pt", weights_only=True)
    assert oa["param_groups"] == ob["param_groups"]
    assert oa["state"].keys() == ob["state"].keys()
    for i in oa["state"]:
        assert _max_diff(oa["state"][i], ob["state"][i]) < 1e-4, i


def test_fsdp_resume_equals_uninterrupted_and_unsharded_resume_reads_it(runs):
    # The on-disk state of a sharded run stopped after its update-1 checkpoint: the uninterrupted
    # run's folder without update 2 (its checkpoint and final outputs). (A real SIGKILL is
    # tested for one process in test_ppo_trainer.py; the files it leaves are of this form.)
    stopped = runs.root / "stopped"
    shutil.copytree(runs.fsdp, stopped, ignore=shutil.ignore_patterns("shards-*.json"))
    for name in ("checkpoints/update-2", "policy", "critic"):
        shutil.rmtree(stopped / name)
    unsharded = runs.root / "stopped-unsharded"
    shutil.copytree(stopped, unsharded)
    _run([*LAUNCH, str(runs.script), str(stopped), "2", "resume"])
    runs.module.make_trainer(str(unsharded), 2, True).train()  # one process, in this one
    full = load_file(str(runs.fsdp / "policy" / "model.safetensors"))
    resumed = load_file(str(stopped / "policy" / "model.safetensors"))
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full), _max_diff(full, resumed)  # bit-identical
    assert _losses(stopped) == _losses(runs.fsdp)
    assert json.loads((stopped / "shards-0.json").read_text())["dtensor"] > 0  # the resumed run was sharded
    # one process resumes the sharded checkpoint: it ends where the 1-process run ends, to float tolerance
    single = load_file(str(runs.single / "policy" / "model.safetensors"))
    one = load_file(str(unsharded / "policy" / "model.safetensors"))
    assert _max_diff(single, one) < 1e-4, _max_diff(single, one)


def _fake_accelerator(distributed_type: str):
    from accelerate.utils import DistributedType

    state = types.SimpleNamespace(distributed_type=DistributedType[distributed_type])
    return types.SimpleNamespace(state=state, mixed_precision="no")


def test_fsdp_requests_it_cannot_honour_are_refused(monkeypatch):
    from rewardlab.ppo.config import PPOConfig
    from rewardlab.ppo.sharding import configure_sharding

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    cfg = PPOConfig.from_dict({"output_dir": "unused"})
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(RewardlabError, match="fsdp_version=1 .*fsdp_version: 2"):
        configure_sharding(_fake_accelerator("MULTI_CPU"), cfg)
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(RewardlabError, match="use_peft=true with FSDP .*ddp.yaml"):
        configure_sharding(_fake_accelerator("MULTI_CPU"), PPOConfig.from_dict({"output_dir": "u", "use_peft": True}))
    monkeypatch.setenv("FSDP_ACTIVATION_CHECKPOINTING", "true")
    with pytest.raises(RewardlabError, match="models.gradient_checkpointing"):
        configure_sharding(_fake_accelerator("MULTI_CPU"), cfg)
    monkeypatch.setenv("FSDP_ACTIVATION_CHECKPOINTING", "false")
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "true")
    with pytest.raises(RewardlabError, match="fsdp_offload_params=true .*CPU-only"):
        configure_sharding(_fake_accelerator("MULTI_CPU"), cfg)
    # without an FSDP request, or on one process, nothing is sharded
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    assert configure_sharding(_fake_accelerator("MULTI_CPU"), cfg) is False
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert configure_sharding(_fake_accelerator("NO"), cfg) is False
