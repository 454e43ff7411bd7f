"""`--device` as every command takes it (rewardlab.devices.resolve_device)."""

from __future__ import annotations

import pytest
import torch

from rewardlab.devices import resolve_device
from rewardlab.errors import RewardlabError


def test_auto_is_the_gpu_when_one_is_visible():
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want and resolve_device(None).type == want
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_device_this_machine_lacks_is_refused():
    with pytest.raises(RewardlabError, match=r"^--device='cuda': no CUDA device is visible here .*use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(RewardlabError, match=r"run.device='cuda:1': no CUDA device"):
        resolve_device("cuda:1", "run.device")


def test_a_name_that_is_no_device_is_refused():
    with pytest.raises(RewardlabError, match=r"--device='gpu0' is not a device; where the models run: auto"):
        resolve_device("gpu0")
    with pytest.raises(RewardlabError, match=r"--device='meta' is not a device rewardlab runs on"):
        resolve_device("meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_ppo_with_device_cuda_is_refused_before_any_model_loads(tmp_path):
    from rewardlab.ppo.config import PPOConfig
    from rewardlab.ppo.trainer import PPOTrainer

    cfg = PPOConfig(device="cuda", output_dir=str(tmp_path / "out"), sft_model_path=str(tmp_path / "missing"))
    with pytest.raises(RewardlabError, match=r"run.device='cuda': no CUDA device is visible"):
        PPOTrainer(cfg, train_dataset=["t1 t2"])
