"""rewardlab.integrations.peft: a LoRA reward adapter on the policy's backbone scores exactly as the same
weights merged into a standalone sequence classifier, and leaves the policy as it found it."""

import pytest
import torch

peft = pytest.importorskip("peft")

from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402

from rewardlab.errors import RewardlabError  # noqa: E402
from rewardlab.integrations.peft import AdapterRewardModel, load_score_head, save_score_head  # noqa: E402
from rewardlab.reward.scoring import RewardModel  # noqa: E402
from rewardlab.tiny import build_model, build_tokenizer, tiny_config  # noqa: E402

TARGETS = {"gpt2": ["c_attn", "c_proj"], "llama": ["q_proj", "v_proj", "o_proj"]}
PROMPTS = ["t1 t2 t3", "t4", "t5 t6", "t7 t8 t9 t10 t11"]
RESPONSES = [" t12", " t13 t14 t15", " t16 t17", " t18"]


def _base(arch, tok):
    return build_model("causal_lm", tiny_config(arch, tok, hidden=32, layers=2), seed=0)


def _lora(arch, seed, **kw):
    torch.manual_seed(seed)
    # init_lora_weights=False: B ≠ 0, so an adapter that is not applied changes the scores.
    return LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS[arch], init_lora_weights=False,
                      fan_in_fan_out=arch == "gpt2", **kw)  # GPT-2 uses Conv1D (transposed) layers


def _policy(arch, tok):
    cfg = _lora(arch, seed=1)
    return get_peft_model(_base(arch, tok), cfg, adapter_name="default")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(64)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_adapter_scores_equal_merged_classifier(arch, padding_side, tok, tmp_path):
    # The reward model: a LoRA adapter + a 2-head score head, saved to disk.
    cfg = _lora(arch, seed=2)
    reward = get_peft_model(_base(arch, tok), cfg)  # saved at the folder root
    reward.save_pretrained(tmp_path / "rm")
    torch.manual_seed(3)
    head = torch.nn.Linear(32, 2, bias=False)
    save_score_head(tmp_path / "rm" / "score_head.safetensors", head, semantics="bradley_terry")

    # The same weights merged into a standalone classifier.
    merged = PeftModel.from_pretrained(_base(arch, tok), tmp_path / "rm").merge_and_unload()
    clf = AutoModelForSequenceClassification.from_config(tiny_config(arch, tok, hidden=32, layers=2, num_labels=2))
    prefix = clf.base_model_prefix
    getattr(clf, prefix).load_state_dict(getattr(merged, prefix).state_dict())
    with torch.no_grad():
        clf.score.weight.copy_(head.weight)
    tok.padding_side = padding_side
    expected = RewardModel(clf, tok, semantics="bradley_terry").score_texts(PROMPTS, RESPONSES)

    policy = _policy(arch, tok)
    rm = AdapterRewardModel.from_pretrained(policy, tmp_path / "rm", tok)
    assert rm.semantics == "bradley_terry" and rm.num_heads == 2
    got = rm.score_texts(PROMPTS, RESPONSES)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    # The test can fail: the base weights without the reward adapter score differently.
    getattr(clf, prefix).load_state_dict(getattr(_base(arch, tok), prefix).state_dict())
    plain = RewardModel(clf, tok, semantics="bradley_terry").score_texts(PROMPTS, RESPONSES)
    assert (plain - got).abs().max() > 1e-3
    tok.padding_side = "right"


def test_policy_is_left_as_it_was(tok, tmp_path):
    policy = _policy("gpt2", tok)
    policy.add_adapter("reward", _lora("gpt2", seed=4))
    policy.train()
    policy.base_model.model.transformer.h[0].eval()  # a mixed mode must survive too
    grads = {n: p.requires_grad for n, p in policy.named_parameters()}
    ids = tok(["t1 t2 t3"], return_tensors="pt").input_ids
    with torch.no_grad():
        before = policy(input_ids=ids).logits

    rm = AdapterRewardModel(policy, tok, score_head=torch.nn.Linear(32, 1))
    out = rm.score_texts(PROMPTS, RESPONSES)
    assert out.shape == (4, 1)

    assert policy.active_adapters == ["default"]
    assert {n: p.requires_grad for n, p in policy.named_parameters()} == grads
    assert policy.training and policy.base_model.model.transformer.h[1].training
    assert not policy.base_model.model.transformer.h[0].training
    with torch.no_grad():
        after = policy(input_ids=ids).logits
    torch.testing.assert_close(after, before)
    # forward keeps the graph (RewardModel.forward's contract); the frozen reward adapter gets no gradient.
    rm.forward(ids, torch.ones_like(ids)).sum().backward()
    assert rm.model.score.weight.grad is not None
    lora = {n: p for n, p in policy.named_parameters() if "lora_" in n}
    assert lora and all(p.grad is None for p in lora.values())


def test_score_head_saved_inside_a_seq_cls_adapter(tok, tmp_path):
    """A reward adapter trained with task_type=SEQ_CLS keeps its score head in the adapter file."""
    clf = AutoModelForSequenceClassification.from_config(tiny_config("gpt2", tok, hidden=32, layers=2, num_labels=1))
    clf.transformer.load_state_dict(_base("gpt2", tok).transformer.state_dict())
    torch.manual_seed(5)
    torch.nn.init.normal_(clf.score.weight)
    peft_clf = get_peft_model(clf, _lora("gpt2", seed=6, task_type="SEQ_CLS"))
    peft_clf.save_pretrained(tmp_path / "rm")
    head, semantics = load_score_head(tmp_path / "rm" / "adapter_model.safetensors")
    assert semantics is None and head.weight.shape == (1, 32)

    expected = RewardModel(peft_clf.merge_and_unload(), tok).score_texts(PROMPTS, RESPONSES)
    rm = AdapterRewardModel.from_pretrained(_policy("gpt2", tok), tmp_path / "rm", tok)
    torch.testing.assert_close(rm.score_texts(PROMPTS, RESPONSES), expected, rtol=1e-4, atol=1e-5)


def test_errors(tok, tmp_path):
    policy = _policy("gpt2", tok)
    with pytest.raises(RewardlabError, match="no adapter named 'reward'"):
        AdapterRewardModel(policy, tok, score_head=torch.nn.Linear(32, 1))
    policy.add_adapter("reward", _lora("gpt2", seed=7))
    with pytest.raises(RewardlabError, match="hidden size is 32"):
        AdapterRewardModel(policy, tok, score_head=torch.nn.Linear(16, 1))
    with pytest.raises(RewardlabError, match="peft.PeftModel"):
        AdapterRewardModel(_base("gpt2", tok), tok, score_head=torch.nn.Linear(32, 1))
    with pytest.raises(RewardlabError, match="not a saved PEFT adapter"):
        AdapterRewardModel.from_pretrained(policy, tmp_path, tok, adapter_name="rm2")
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(RewardlabError, match="safetensors only"):
        AdapterRewardModel.from_pretrained(policy, tmp_path, tok, adapter_name="rm2")
    with pytest.raises(RewardlabError, match="already has an adapter named 'reward'"):
        (tmp_path / "adapter_model.safetensors").write_bytes(b"")
        AdapterRewardModel.from_pretrained(policy, tmp_path, tok)
    # A 2-head adapter model without declared semantics is refused by the pipeline, as any RewardModel.
    rm = AdapterRewardModel(policy, tok, score_head=torch.nn.Linear(32, 2))
    assert rm.semantics is None and rm.num_heads == 2
