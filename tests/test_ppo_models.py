import pytest
import torch
from transformers.activations import NewGELUActivation

from rewardlab.errors import RewardlabError
from rewardlab.ppo.models import (
    SlicedLMHead,
    TanhGELU,
    fuse_tanh_gelu,
    need_path,
    slice_lm_head,
)
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


@pytest.mark.parametrize(("arch", "tied"), [("gpt2", True), ("llama", False)])
def test_slice_lm_head_keeps_weights_names_and_logits(arch, tied):
    tok = build_tokenizer(600)
    model = build_model("causal_lm", tiny_config(arch, tok, tie_word_embeddings=tied))
    ids = torch.randint(0, len(tok), (2, 9), generator=torch.Generator().manual_seed(0))
    before, keys = model(input_ids=ids).logits, list(model.state_dict())
    weight = model.get_output_embeddings().weight
    assert slice_lm_head(model, 64)
    head = model.get_output_embeddings()
    assert type(head) is SlicedLMHead and head.slice_rows == 64 and head.weight is weight
    assert (head.weight is model.get_input_embeddings().weight) == tied
    assert list(model.state_dict()) == keys
    assert torch.equal(model(input_ids=ids).logits, before)  # bitwise: each logit is the same dot product
    assert slice_lm_head(model, 128) and model.get_output_embeddings().slice_rows == 128  # idempotent
    critic = build_model("sequence_classification", tiny_config(arch, tok, num_labels=1))
    assert not slice_lm_head(critic, 64)  # no LM head
    assert not slice_lm_head(None, 64)


def test_need_path_names_the_field(tmp_path):
    with pytest.raises(RewardlabError, match="models.sft_model_path is not set"):
        need_path(None, "models.sft_model_path")
    with pytest.raises(RewardlabError, match="models.sft_model_path='gpt2': no local folder of that name, and not in "
                                             "the Hugging Face cache"):
        need_path("gpt2", "models.sft_model_path")
    with pytest.raises(RewardlabError, match="models.sft_model_path=.* has no config.json"):  # rewardlab.local
        need_path(str(tmp_path), "models.sft_model_path")


# ---- conflicts and contradictions on the reward side --------------------------------------------
from rewardlab.ppo.config import PPOConfig  # noqa: E402
from rewardlab.ppo.models import build_reward_side, load_critic  # noqa: E402


def reward_side(cfg, reward_model=None, reward_fn=None, columns=()):
    return build_reward_side(cfg.models, cfg.reward, reward_model, reward_fn, columns=list(columns), device="cpu")


def _save(folder, kind, *, vocab=32, num_labels=1, problem_type=None, tok=True):
    tokenizer = build_tokenizer(vocab)
    config = tiny_config("gpt2", tokenizer, hidden=16, layers=1, **({} if kind == "causal_lm" else {"num_labels": num_labels}))
    if problem_type:
        config.problem_type = problem_type
    build_model(kind, config, seed=0).save_pretrained(folder)
    if tok:
        tokenizer.save_pretrained(folder)
    return str(folder)


def test_reward_fn_beside_a_reward_model_is_a_second_term_of_weight_one(tmp_path):
    # TRL's reward_funcs=[rm, fn]: both are summed with weight 1 (this used to be refused).
    rm = _save(tmp_path / "rm", "sequence_classification")
    cfg = PPOConfig.from_dict({"reward_model_path": rm, "reward_fn": "operator:add", "reward_pipeline": "raw"})
    side = reward_side(cfg)
    assert side.spec == "1.0*[rm:raw] + 1.0*[fn:operator:add]" and side.term_names == ["rm", "add"]

    def bonus(prompts, completions, **kwargs):
        return [1.0] * len(completions)

    side = reward_side(PPOConfig.from_dict({"reward_model_path": rm, "reward_pipeline": "raw"}), reward_fn=bonus)
    assert side.spec == "1.0*[rm:raw] + 1.0*[fn:bonus]"
    with pytest.raises(RewardlabError, match=r"reward model\(s\) \[0\] are read by no term"):
        reward_side(PPOConfig.from_dict({"reward_model_path": rm, "reward_pipeline": "[fn:bonus]"}), reward_fn=bonus)


def test_critic_from_a_reward_model_with_another_vocabulary_starts_from_the_policy(tmp_path, capsys):
    sft = _save(tmp_path / "sft", "causal_lm", vocab=32)
    rm = _save(tmp_path / "rm", "sequence_classification", vocab=48, num_labels=2)
    policy = build_model("causal_lm", tiny_config("gpt2", build_tokenizer(32), hidden=16, layers=1))
    m = PPOConfig.from_dict({"sft_model_path": sft, "reward_model_path": rm}).models
    critic = load_critic(m, policy)
    assert critic.config.vocab_size == policy.config.vocab_size and critic.config.num_labels == 1
    assert "the critic starts from the policy's folder" in capsys.readouterr().out
    bad = PPOConfig.from_dict({"sft_model_path": sft, "reward_model_path": rm, "value_model_path": rm}).models
    with pytest.raises(RewardlabError, match=r"value_model_path=.* has a vocabulary of \d+ tokens but the policy's has \d+"):
        load_critic(bad, policy)


def test_critic_from_a_single_label_classifier_reward_model(tmp_path):
    rm = _save(tmp_path / "rm", "sequence_classification", num_labels=2, problem_type="single_label_classification")
    policy = build_model("causal_lm", tiny_config("gpt2", build_tokenizer(32), hidden=16, layers=1))
    critic = load_critic(PPOConfig.from_dict({"sft_model_path": rm, "reward_model_path": rm}).models, policy)
    assert critic.config.num_labels == 1 and critic.score.out_features == 1


def test_a_causal_lm_folder_as_reward_model_is_refused_unless_allowed(tmp_path):
    from rewardlab.reward.scoring import RewardModel

    lm = _save(tmp_path / "lm", "causal_lm")
    cfg = PPOConfig.from_dict({"reward_model_path": lm, "reward_semantics": "bradley_terry"})
    with pytest.raises(RewardlabError, match=r"not a trained reward model: its weights have no score.weight.*"
                                             r"reward.allow_untrained_head: true"):
        reward_side(cfg)
    assert RewardModel.from_pretrained(lm, allow_untrained_head=True).num_heads == 2
    allowed = PPOConfig.from_dict({"reward_model_path": lm, "reward_semantics": "bradley_terry",
                                   "allow_untrained_head": True, "allow_semantics_mismatch": True})
    assert reward_side(allowed).reward_models[0].num_heads == 2


def _anti_correlated(folder):
    """A 2-logit model whose logits are exact negatives (a classifier's pattern: correlation −1)."""
    path = _save(folder, "sequence_classification", num_labels=2)
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(path)
    with torch.no_grad():
        model.score.weight[1] = -model.score.weight[0]
    model.save_pretrained(path)
    return path


def test_declared_semantics_against_the_head_correlation_are_refused(tmp_path):
    from rewardlab.reward.scoring import RewardModel

    rm = _anti_correlated(tmp_path / "rm")
    cfg = PPOConfig.from_dict({"reward_model_path": rm, "reward_semantics": "bradley_terry"})
    with pytest.raises(RewardlabError, match=r"reward.reward_semantics \(for .*\)=bradley_terry is contradicted .*"
                                             r"correlate -1.0000 .*reward.allow_semantics_mismatch: true"):
        reward_side(cfg)
    ok = PPOConfig.from_dict({"reward_model_path": rm, "reward_semantics": "classifier",
                              "reward_pipeline": "logodds(pos=1,neg=0)"})
    assert reward_side(ok).reward_models[0].semantics == "classifier"
    forced = PPOConfig.from_dict({"reward_model_path": rm, "reward_semantics": "bradley_terry",
                                  "allow_semantics_mismatch": True})
    assert reward_side(forced).reward_models[0].semantics == "bradley_terry"
    # A RewardModel passed in Python is checked too.
    with pytest.raises(RewardlabError, match="contradicted"):
        reward_side(PPOConfig.from_dict({"reward_model_path": None}), RewardModel.from_pretrained(rm, semantics="bradley_terry"))
