import pytest
import torch
from transformers.activations import NewGELUActivation

from rewardlab.errors import RewardlabError
from rewardlab.ppo.models import TanhGELU, check_pipeline_fits, fuse_tanh_gelu, need_path
from rewardlab.tiny import build_model, build_tokenizer, tiny_config


def test_tanh_gelu_matches_gpt2_gelu_new():
    x = torch.linspace(-8, 8, 10_001)
    torch.testing.assert_close(TanhGELU()(x), NewGELUActivation()(x), rtol=0, atol=1e-6)


def test_fuse_tanh_gelu_swaps_gpt2_activations_and_keeps_outputs():
    tok = build_tokenizer()
    model = build_model("causal_lm", tiny_config("gpt2", tok, layers=3))
    ids = torch.randint(0, len(tok), (2, 9), generator=torch.Generator().manual_seed(0))
    before = model(input_ids=ids).logits
    assert fuse_tanh_gelu(model) == 3  # one per MLP
    assert not any(isinstance(m, NewGELUActivation) for m in model.modules())
    torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=0, atol=1e-5)
    assert fuse_tanh_gelu(model) == 0  # idempotent


def test_fuse_tanh_gelu_leaves_other_activations_alone():
    tok = build_tokenizer()
    llama = build_model("causal_lm", tiny_config("llama", tok))
    assert fuse_tanh_gelu(llama) == 0  # SiLU is already one kernel


def test_need_path_names_the_field(tmp_path):
    with pytest.raises(RewardlabError, match="models.sft_model_path is not set"):
        need_path(None, "models.sft_model_path")
    with pytest.raises(RewardlabError, match="not a local folder/file; this command does not download"):
        need_path("gpt2", "models.sft_model_path")
    with pytest.raises(RewardlabError, match="models.sft_model_path=.* has no config.json"):  # rewardlab.local
        need_path(str(tmp_path), "models.sft_model_path")


def test_check_pipeline_fits_refuses_a_head_mismatch():
    check_pipeline_fits("mean", "bradley_terry", num_heads=2, k=4)
    with pytest.raises(RewardlabError, match="does not fit the reward model"):
        check_pipeline_fits("head(1)", "bradley_terry", num_heads=1, k=4)
