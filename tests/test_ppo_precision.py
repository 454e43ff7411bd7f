"""Precision per model, decided on CPU for CPU and GPU runs alike: what dtype, device and autocast each model of a
PPO run gets from each configuration (`rewardlab.ppo.memory.model_precisions`), accelerate's mixed precision, and
the vLLM engine's dtype and CUDA graphs (`rewardlab.ppo.engine.vllm_settings`). bench/gpu_check.sh measures the GPU
side; these tables are what it checks against."""

from __future__ import annotations

import pytest
import torch

from rewardlab.errors import RewardlabError
from rewardlab.ppo.config import GenerationConfig, PPOConfig
from rewardlab.ppo.engine import vllm_settings
from rewardlab.ppo.memory import (
    ModelPrecision,
    accelerator_mixed_precision,
    describe_precisions,
    model_precisions,
)

F32, BF16, F16 = "float32", "bfloat16", "float16"

# (config overrides, cuda) → accelerate's mixed_precision and, per model, (dtype, autocast).
CASES = [
    pytest.param({}, False, "no", {"policy": (F32, None), "critic": (F32, None), "reference": (F32, None),
                                   "reward": (F32, None)}, id="cpu-defaults"),
    pytest.param({}, True, "bf16", {"policy": (F32, BF16), "critic": (F32, BF16), "reference": (BF16, BF16),
                                    "reward": (BF16, None)}, id="gpu-defaults-bf16"),
    pytest.param({"mixed_precision": "fp16"}, True, "fp16",
                 {"policy": (F32, F16), "critic": (F32, F16), "reference": (BF16, F16), "reward": (BF16, None)},
                 id="gpu-fp16"),
    pytest.param({"mixed_precision": "no"}, True, "no",
                 {"policy": (F32, None), "critic": (F32, None), "reference": (F32, None), "reward": (F32, None)},
                 id="gpu-no-mixed"),
    pytest.param({"mixed_precision": "bf16"}, False, "bf16",
                 {"policy": (F32, BF16), "critic": (F32, BF16), "reference": (F32, BF16), "reward": (F32, None)},
                 id="cpu-bf16-autocast"),
    pytest.param({"dtype": "bfloat16"}, False, "no",
                 {"policy": (BF16, None), "critic": (BF16, None), "reference": (BF16, None), "reward": (BF16, None)},
                 id="cpu-bf16-weights"),
    pytest.param({"dtype": "bfloat16"}, True, "bf16",
                 {"policy": (BF16, BF16), "critic": (BF16, BF16), "reference": (BF16, BF16), "reward": (BF16, None)},
                 id="gpu-bf16-weights"),
    pytest.param({"ref_dtype": "float16", "reward_dtype": "float32"}, True, "bf16",
                 {"policy": (F32, BF16), "critic": (F32, BF16), "reference": (F16, BF16), "reward": (F32, None)},
                 id="gpu-explicit-frozen"),
    pytest.param({"ref_dtype": "bfloat16", "reward_dtype": "auto"}, False, "no",
                 {"policy": (F32, None), "critic": (F32, None), "reference": (BF16, None), "reward": ("auto", None)},
                 id="cpu-explicit-frozen"),
    pytest.param({"dtype": "auto"}, True, "bf16",
                 {"policy": ("auto", BF16), "critic": ("auto", BF16), "reference": (BF16, BF16),
                  "reward": (BF16, None)}, id="gpu-auto-weights"),
    pytest.param({"dtype": "auto"}, False, "no",
                 {"policy": ("auto", None), "critic": ("auto", None), "reference": ("auto", None),
                  "reward": ("auto", None)}, id="cpu-auto-weights"),
    # LoRA: the reference is the policy's own base (adapter off), so it is held as the policy is.
    pytest.param({"use_peft": True}, True, "bf16",
                 {"policy": (F32, BF16), "critic": (F32, BF16), "reference": (F32, BF16), "reward": (BF16, None)},
                 id="gpu-lora-shared-reference"),
    pytest.param({"use_peft": True, "ref_model_path": "other", "sft_model_path": "sft"}, True, "bf16",
                 {"policy": (F32, BF16), "critic": (F32, BF16), "reference": (BF16, BF16), "reward": (BF16, None)},
                 id="gpu-lora-separate-reference"),
]


@pytest.mark.parametrize(("overrides", "cuda", "mixed", "expected"), CASES)
def test_each_model_gets_its_dtype_device_and_autocast(overrides, cuda, mixed, expected):
    cfg = PPOConfig.from_dict(overrides)
    assert accelerator_mixed_precision(cfg, cuda=cuda) == mixed
    got = model_precisions(cfg, cuda=cuda)
    assert list(got) == ["policy", "critic", "reference", "reward"]
    device = "cuda" if cuda else "cpu"
    for name, (dtype, autocast) in expected.items():
        trained = name in ("policy", "critic")
        assert got[name] == ModelPrecision(dtype, device, autocast, trained=trained), name


def test_torch_dtypes_and_the_log_line():
    got = model_precisions(PPOConfig.from_dict({}), cuda=True)
    assert got["policy"].torch_dtype is torch.float32 and got["reference"].torch_dtype is torch.bfloat16
    assert describe_precisions(got) == ("policy float32 (autocast bfloat16), critic float32 (autocast bfloat16), "
                                        "reference bfloat16 (autocast bfloat16), reward bfloat16 on cuda")


@pytest.mark.parametrize(("overrides", "cuda", "match"), [
    ({"mixed_precision": "fp16"}, False, "fp16.*needs a CUDA GPU"),
    ({"mixed_precision": "fp16", "dtype": "bfloat16"}, True, "bfloat16 weights in float16"),
    ({"use_peft": True, "ref_dtype": "bfloat16"}, True, "ref_dtype.*policy's own base"),
])
def test_combinations_that_cannot_run_are_refused_with_the_fix(overrides, cuda, match):
    with pytest.raises(RewardlabError, match=match):
        model_precisions(PPOConfig.from_dict(overrides), cuda=cuda)


@pytest.mark.parametrize(("fields", "cuda", "policy_dtype", "expected"), [
    ({}, True, torch.float32, ("bfloat16", False)),                 # GPU: bf16 with CUDA graphs
    ({}, False, torch.float32, ("float32", True)),                  # CPU: the policy's dtype, eager
    ({}, False, torch.bfloat16, ("bfloat16", True)),
    ({"vllm_dtype": "float32", "vllm_enforce_eager": True}, True, torch.float32, ("float32", True)),
    ({"vllm_dtype": "auto"}, True, torch.float32, ("float32", False)),
    ({"vllm_dtype": "bfloat16", "vllm_enforce_eager": False}, False, torch.float32, ("bfloat16", False)),
])
def test_vllm_engine_dtype_and_cuda_graphs(fields, cuda, policy_dtype, expected):
    assert vllm_settings(GenerationConfig(**fields), cuda=cuda, policy_dtype=policy_dtype) == expected


# ---------------------------------------------------------------- loading (CPU)
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from rewardlab.ppo.commands import make_tiny

    folder = tmp_path_factory.mktemp("tiny")
    make_tiny(str(folder), num_prompts=16)
    return folder


def _cfg(tiny_dir, **overrides):
    return PPOConfig.from_dict({"sft_model_path": str(tiny_dir / "policy"), "reward_model_path": str(tiny_dir / "reward"),
                                "output_dir": str(tiny_dir / "run"), **overrides})


@pytest.mark.parametrize(("overrides", "ref", "trained"), [
    ({}, torch.float32, torch.float32),
    ({"ref_dtype": "bfloat16"}, torch.bfloat16, torch.float32),
    ({"dtype": "bfloat16", "ref_dtype": "float32"}, torch.float32, torch.bfloat16),
])
def test_build_models_loads_each_model_in_its_dtype(tiny_dir, overrides, ref, trained):
    from rewardlab.ppo.models import build_models

    model, ref_policy = build_models(_cfg(tiny_dir, **overrides), use_critic=True, device=torch.device("cpu"))
    assert {p.dtype for p in ref_policy.parameters()} == {ref}
    assert {p.dtype for p in model.policy.parameters()} == {trained}
    assert {p.dtype for p in model.critic.parameters()} == {trained}
    assert not ref_policy.training


def test_gpu_script_precision_case_runs_on_the_cpu(capsys):
    """bench/ppo_precision.py (bench/gpu_check.sh's `precision` case) on the CPU: the dtypes a trainer holds
    equal model_precisions', and a bf16 autocast reaches the policy's logits."""
    import json

    from _scripts import load_script

    bench = load_script("bench/ppo_precision.py")
    assert bench.main(["--device", "cpu", "--configs", "bf16_frozen"]) == 0
    row = json.loads([x for x in capsys.readouterr().out.splitlines() if x.startswith("{")][-1])
    assert row["held"] == {"policy": "float32", "critic": "float32", "reference": "bfloat16", "reward": "bfloat16"}
    assert row["autocast_logits_dtype"] == "bfloat16" and row["ok"]
