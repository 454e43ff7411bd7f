"""rewardlab.integrations.trl: reward functions for TRL's GRPOTrainer / RLOOTrainer.

Unit tests compare the function with RewardModel + hand-written maths; two tests run the real
trl 1.16 trainers for 2 steps on tiny local models with it.
"""

import math
import os

import pytest
import torch
import torch.nn.functional as F

from rewardlab.errors import RewardlabError
from rewardlab.reward.baselines import ReferenceRewards, group_references
from rewardlab.reward.pipeline import RewardPipeline
from rewardlab.reward.scoring import RewardModel
from rewardlab.tiny import build_model, build_tokenizer, tiny_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rewardlab.integrations.trl import (  # noqa: E402
    reward_function,
    score_references,
    trl_prompt_key,
)

PROMPTS = ["t1 t2", "t1 t2", "t1 t2", "t5", "t5", "t5"]
COMPLETIONS = [" t3 t4", " t9", " t10 t11 t12", " t6", " t7 t8", " t20"]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(64)


@pytest.fixture(scope="module")
def rm2(tok):
    """A 2-head Bradley-Terry reward model (random weights: only the arithmetic matters here)."""
    model = build_model("sequence_classification", tiny_config("gpt2", tok, hidden=16, layers=1, num_labels=2), seed=3)
    return RewardModel(model, tok, semantics="bradley_terry")


@pytest.fixture(scope="module")
def rm1(tok):
    model = build_model("sequence_classification", tiny_config("llama", tok, hidden=16, layers=1, num_labels=1), seed=4)
    return RewardModel(model, tok)


def test_group_lsc_equals_hand_computation(rm2):
    fn = reward_function(rm2, "mean|lsc(q=0.5)", num_generations=3)
    out = torch.tensor(fn(PROMPTS, COMPLETIONS))
    r = rm2.score_texts(PROMPTS, COMPLETIONS).mean(-1)  # (6,)
    expected = []
    for i in range(6):
        others = [j for j in range(6) if j // 3 == i // 3 and j != i]
        # median of 2 values = their mean; LSC = logσ(r − median of the other completions of the prompt)
        expected.append(F.logsigmoid(r[i] - r[others].mean()))
    torch.testing.assert_close(out, torch.stack(expected), rtol=1e-5, atol=1e-6)
    assert fn.__name__ == "rewardlab"


def test_equals_pipeline_with_group_references(rm2):
    spec = "mean|center(q=0.25)|logsigmoid|clip(lo=-3,hi=0)"
    fn = reward_function(rm2, spec)  # groups from identical prompts
    logits = rm2.score_texts(PROMPTS, COMPLETIONS)
    pipe = RewardPipeline.from_spec(spec, semantics="bradley_terry")
    expected = pipe(logits, ref=group_references(logits, [0, 0, 0, 1, 1, 1])).scores
    torch.testing.assert_close(torch.tensor(fn(PROMPTS, COMPLETIONS)), expected)
    assert fn.centering == "group"


def test_uncentred_pipeline_and_one_head(rm1):
    fn = reward_function(rm1)  # "raw": 1 head, no transform
    assert fn.centering == "none"
    expected = rm1.score_texts(PROMPTS, COMPLETIONS)[:, 0]
    torch.testing.assert_close(torch.tensor(fn(PROMPTS, COMPLETIONS)), expected)
    # Groups of size 1 are fine without centring.
    assert len(fn(["t1", "t2"], [" t3", " t4"])) == 2


def test_conversational_rows_use_the_chat_template(rm2):
    prompts = [[{"role": "user", "content": "t1 t2"}]] * 2 + [[{"role": "user", "content": "t3"}]] * 2
    completions = [[{"role": "assistant", "content": c}] for c in ["t4", "t5 t6", "t7", "t8 t9"]]
    fn = reward_function(rm2, "mean|center", num_generations=2)
    r = rm2.score_messages([p + c for p, c in zip(prompts, completions, strict=True)]).mean(-1)
    expected = torch.stack([r[0] - r[1], r[1] - r[0], r[2] - r[3], r[3] - r[2]])
    torch.testing.assert_close(torch.tensor(fn(prompts, completions)), expected)


def test_reference_cache_centring(rm2):
    ref_prompts = ["t1 t2"] * 4 + ["t5"] * 4
    ref_completions = [" t30", " t31 t32", " t33", " t34", " t35", " t36", " t37 t38", " t39"]
    cache = score_references(rm2, ref_prompts, ref_completions)
    fn = reward_function(rm2, "mean|center", references=cache)
    assert fn.centering == "references"
    prompts, completions = ["t5", "t1 t2"], [" t6", " t3 t4"]  # one completion per prompt is fine here
    r = rm2.score_texts(prompts, completions).mean(-1)
    ref = rm2.score_texts(ref_prompts, ref_completions).mean(-1)
    expected = torch.stack([r[0] - ref[4:].mean(), r[1] - ref[:4].mean()])
    torch.testing.assert_close(torch.tensor(fn(prompts, completions)), expected, rtol=1e-5, atol=1e-6)
    assert trl_prompt_key("t5") != trl_prompt_key([{"role": "user", "content": "t5"}])


def test_diagnostics_go_to_log_metric_and_log_extra(rm2):
    metrics, extra = {}, {}
    fn = reward_function(rm2, "mean|lsc", num_generations=3, name="bt_lsc")
    scores = fn(PROMPTS, COMPLETIONS, log_metric=metrics.__setitem__, log_extra=extra.__setitem__,
                trainer_state=object(), some_dataset_column=[1] * 6)
    assert metrics["bt_lsc/reward/final/mean"] == pytest.approx(sum(scores) / 6, rel=1e-5)
    raw = rm2.score_texts(PROMPTS, COMPLETIONS)
    assert metrics["bt_lsc/reward/raw/mean"] == pytest.approx(raw.double().mean().item(), rel=1e-5)
    assert "bt_lsc/reward/head_corr" in metrics
    torch.testing.assert_close(torch.tensor(extra["bt_lsc/raw"]), raw)
    assert fn.__name__ == "bt_lsc"


def test_two_head_model_without_reducer_is_refused(rm2):
    with pytest.raises(RewardlabError, match="head reducer"):
        reward_function(rm2, "raw")
    with pytest.raises(RewardlabError, match="head reducer"):
        reward_function(rm2, "lsc(q=0.5)")


def test_group_errors(rm2):
    fn = reward_function(rm2, "mean|lsc")
    with pytest.raises(RewardlabError, match="only 1 completion"):
        fn(["t1", "t2"], [" t3", " t4"])
    with pytest.raises(RewardlabError, match="group sizes"):
        fn(["t1", "t1", "t2"], [" t3", " t4", " t5"])
    fn3 = reward_function(rm2, "mean|lsc", num_generations=3)
    with pytest.raises(RewardlabError, match="prompts differ"):
        fn3(PROMPTS[1:] + PROMPTS[:1], COMPLETIONS)
    with pytest.raises(RewardlabError, match="not a multiple"):
        fn3(PROMPTS[:4], COMPLETIONS[:4])


def test_centering_errors(rm2):
    with pytest.raises(RewardlabError, match="centering='none' gives it none"):
        reward_function(rm2, "mean|lsc", centering="none")
    with pytest.raises(RewardlabError, match="nothing would be centred"):
        reward_function(rm2, "mean|logsigmoid", centering="group")
    with pytest.raises(RewardlabError, match="needs a ReferenceRewards cache"):
        reward_function(rm2, "mean|center", centering="references")
    with pytest.raises(RewardlabError, match="not one of"):
        reward_function(rm2, "mean|center", centering="batch")
    fn = reward_function(rm2, "mean|center", references=ReferenceRewards())
    with pytest.raises(RewardlabError, match="no reference rewards"):
        fn(["t1"], [" t2"])
    with pytest.raises(RewardlabError, match=r"has 2 terms but there are 3 reward model\(s\)"):
        reward_function([rm2, rm2, rm2], "0.5*[mean|center] + 0.5*[mean|center]")


def test_several_models_under_one_term_are_an_ensemble(rm1, rm2):
    # As in PPO: a term without a source reads every reward model, their heads side by side.
    fn = reward_function([rm2, rm1], "min", semantics="bradley_terry")
    stacked = torch.cat([rm2.score_texts(PROMPTS, COMPLETIONS), rm1.score_texts(PROMPTS, COMPLETIONS)], 1)
    torch.testing.assert_close(torch.tensor(fn(PROMPTS, COMPLETIONS)), stacked.amin(-1))


def test_two_models_combined(rm1, rm2):
    fn = reward_function([rm2, rm1], "0.5*[mean|lsc] + 0.5*[lsc]", num_generations=3)
    a = rm2.score_texts(PROMPTS, COMPLETIONS).mean(-1)
    b = rm1.score_texts(PROMPTS, COMPLETIONS)[:, 0]
    groups = torch.arange(6) // 3

    def loo_lsc(r):
        return torch.stack([F.logsigmoid(r[i] - r[(groups == groups[i]) & (torch.arange(6) != i)].mean()) for i in range(6)])

    torch.testing.assert_close(torch.tensor(fn(PROMPTS, COMPLETIONS)), 0.5 * loo_lsc(a) + 0.5 * loo_lsc(b))


def test_a_rule_term_mixed_in_reads_trls_columns_and_none_passes_through(rm2):
    def ends_with(prompts, completions, answer, **kwargs):
        return [None if a is None else float(c.split()[-1] == a) for c, a in zip(completions, answer, strict=True)]

    answers = ["t4", "t9", "t4", None, None, None]  # the second prompt's rows have no answer
    fn = reward_function(rm2, "0.7*[rm:mean|lsc(q=0.5)] + 0.3*[fn:ends_with]", functions=[ends_with],
                         num_generations=3, separator="")
    out = fn(PROMPTS, COMPLETIONS, answer=answers, trainer_state=object(), log_metric=lambda k, v: None)
    r = rm2.score_texts(PROMPTS, COMPLETIONS).mean(-1)
    loo = torch.stack([F.logsigmoid(r[i] - r[[j for j in range(6) if j // 3 == i // 3 and j != i]].mean())
                       for i in range(6)])
    rule = torch.tensor([1.0, 1.0, 0.0, math.nan, math.nan, math.nan])  # " t3 t4" ends with t4, " t9" with t9
    expected = (torch.stack([loo, rule], 1) * torch.tensor([0.7, 0.3])).nansum(1)  # TRL's None rule
    torch.testing.assert_close(torch.tensor(out), expected)
    # a row no term applies to goes back to TRL as None (TRL then treats it as unscorable)
    only_rule = reward_function(None, "[fn:ends_with]", functions=[ends_with])
    assert only_rule(PROMPTS, COMPLETIONS, answer=answers) == [1.0, 1.0, 0.0, None, None, None]


# ---------------------------------------------------------------------------------- real TRL trainers
@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory):
    tok = build_tokenizer(64, padding_side="left")
    path = tmp_path_factory.mktemp("policy")
    build_model("causal_lm", tiny_config("gpt2", tok, hidden=16, layers=1), seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _train(kind, policy_dir, tmp_path, fn, prompts, columns=None):
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg_cls, trainer_cls = {"grpo": (trl.GRPOConfig, trl.GRPOTrainer), "rloo": (trl.RLOOConfig, trl.RLOOTrainer)}[kind]
    args = cfg_cls(
        output_dir=str(tmp_path / kind), per_device_train_batch_size=4, num_generations=2, max_completion_length=4,
        max_steps=2, use_cpu=True, bf16=False, report_to="none", disable_dropout=True, logging_steps=1,
        save_strategy="no", beta=0.05, seed=0,
    )
    policy = AutoModelForCausalLM.from_pretrained(policy_dir)
    trainer = trainer_cls(model=policy, reward_funcs=fn, args=args, train_dataset=Dataset.from_dict({"prompt": prompts, **(columns or {})}),
                          processing_class=AutoTokenizer.from_pretrained(policy_dir))
    trainer.train()
    return trainer


def test_grpo_trainer_with_a_reward_model_and_a_rule_reading_a_dataset_column(rm2, policy_dir, tmp_path):
    seen = []

    def mentions(prompts, completions, answer, **kwargs):
        seen.append(list(answer))
        return [float(a in c) for c, a in zip(completions, answer, strict=True)]

    fn = reward_function(rm2, "[rm:mean|lsc(q=0.5)] + 0.5*[fn:mentions]", functions=[mentions], num_generations=2,
                         separator=" ", name="mixed")
    prompts = ["t1 t2", "t3 t4 t5", "t6", "t7 t8"]
    trainer = _train("grpo", policy_dir, tmp_path, fn, prompts, columns={"answer": ["t1", "t3", "t6", "t7"]})
    assert trainer.state.global_step == 2 and seen and all(set(a) <= {"t1", "t3", "t6", "t7"} for a in seen)
    logs = [h for h in trainer.state.log_history if "rewards/mixed/mean" in h]
    assert len(logs) == 2 and "mixed/reward/term/mentions/raw/mean" in logs[-1]


def test_grpo_trainer_runs_with_a_two_head_bt_model(rm2, policy_dir, tmp_path):
    fn = reward_function(rm2, "mean|lsc(q=0.5)", num_generations=2, separator=" ", name="rm_lsc")
    trainer = _train("grpo", policy_dir, tmp_path, fn, ["t1 t2", "t3 t4 t5", "t6", "t7 t8"])
    assert trainer.state.global_step == 2
    logs = [h for h in trainer.state.log_history if "rewards/rm_lsc/mean" in h]
    assert len(logs) == 2
    # What TRL logged as our reward is what our function returned on the last batch.
    assert logs[-1]["rewards/rm_lsc/mean"] == pytest.approx(fn.last_output.scores.mean().item(), rel=1e-4, abs=1e-6)
    assert logs[-1]["rm_lsc/reward/final/mean"] == pytest.approx(logs[-1]["rewards/rm_lsc/mean"], rel=1e-4, abs=1e-6)
    assert "rm_lsc/reward/raw/mean" in logs[-1]
    assert bool((fn.last_output.scores < 0).all())  # logσ(·) < 0: the pipeline, not logits[:, 0], was used


def test_rloo_trainer_runs_with_conversational_prompts(rm2, policy_dir, tmp_path):
    fn = reward_function(rm2, "mean|center", num_generations=2, name="rm_center")
    prompts = [[{"role": "user", "content": p}] for p in ["t1 t2", "t3", "t4 t5", "t6"]]
    trainer = _train("rloo", policy_dir, tmp_path, fn, prompts)
    assert trainer.state.global_step == 2
    logs = [h for h in trainer.state.log_history if "rewards/rm_center/mean" in h]
    assert len(logs) == 2
    # Leave-one-out centring on groups of 2 is antisymmetric: each group's rewards sum to 0.
    assert fn.last_output.scores.view(-1, 2).sum(-1).abs().max().item() < 1e-5
    assert logs[-1]["rewards/rm_center/mean"] == pytest.approx(0.0, abs=1e-5)


def test_num_generations_smaller_than_the_trainers_is_refused(rm2):
    prompts = ["t1 t2"] * 4 + ["t5"] * 4  # a trainer with 4 generations per prompt
    completions = [" t3", " t4", " t6", " t7", " t8", " t9", " t10", " t11"]
    fn = reward_function(rm2, "mean|lsc", num_generations=2)
    with pytest.raises(RewardlabError, match=r"num_generations=2, but the batch holds each prompt 4 times in a row.*"
                                             r"compare each completion with 1 other\(s\) instead of 3"):
        fn(prompts, completions)
    assert len(reward_function(rm2, "mean|lsc", num_generations=4)(prompts, completions)) == 8


def _anti_correlated_rm(tok, semantics):
    model = build_model("sequence_classification", tiny_config("gpt2", tok, hidden=16, layers=1, num_labels=2), seed=5)
    with torch.no_grad():
        model.score.weight[1] = -model.score.weight[0]  # l_1 = −l_0: a classifier's pattern
    return RewardModel(model, tok, semantics=semantics)


def test_declared_semantics_contradicted_by_the_heads_are_refused(tok):
    rm = _anti_correlated_rm(tok, "bradley_terry")
    with pytest.raises(RewardlabError, match=r"semantics=bradley_terry is contradicted by the model's outputs on "
                                             r"random token sequences: its 2 heads correlate -1.0000.*"
                                             r"allow_semantics_mismatch=True"):
        reward_function(rm, "mean")
    assert reward_function(rm, "mean", allow_semantics_mismatch=True)(PROMPTS, COMPLETIONS)
    # Declaring it on the reward function is checked the same way; the fitting declaration passes.
    undeclared = _anti_correlated_rm(tok, None)
    with pytest.raises(RewardlabError, match="contradicted"):
        reward_function(undeclared, "mean", semantics="bradley_terry")
    assert reward_function(undeclared, "logodds(pos=1,neg=0)", semantics="classifier")(PROMPTS, COMPLETIONS)


# ---------------------------------------------------------------------------------- device
def _fresh_rm(tok):
    model = build_model("sequence_classification", tiny_config("llama", tok, hidden=16, layers=1, num_labels=1), seed=6)
    return RewardModel(model, tok)


def test_default_device_is_the_gpu_when_one_is_visible_else_the_cpu(tok, monkeypatch, tmp_path):
    import rewardlab.integrations.trl as trl_mod

    # Here (no GPU): the CPU, and the model stays there.
    rm = _fresh_rm(tok)
    fn = reward_function(rm, "raw")
    assert fn.device == torch.device("cpu") and next(rm.model.parameters()).device.type == "cpu"
    assert len(fn(PROMPTS, COMPLETIONS)) == 6

    # Where torch sees a GPU: a RewardModel still on the CPU moves to it, and a folder loads on it.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    moved = []
    rm = _fresh_rm(tok)
    monkeypatch.setattr(rm.model, "to", lambda device: moved.append(device))
    assert reward_function(rm, "raw").device == torch.device("cuda") and moved == [torch.device("cuda")]
    loaded = []

    def from_pretrained(path, **kwargs):
        loaded.append(kwargs["device"])
        return _fresh_rm(tok)

    monkeypatch.setattr(trl_mod.RewardModel, "from_pretrained", from_pretrained)
    reward_function(str(tmp_path), "raw")
    assert loaded == [torch.device("cuda")]

    # An explicit device wins: device="cpu" keeps the model on the CPU even then.
    moved.clear()
    assert reward_function(rm, "raw", device="cpu").device == torch.device("cpu") and moved == []
    reward_function(str(tmp_path), "raw", device="cpu")
    assert loaded[-1] == torch.device("cpu")


def test_an_explicit_device_this_machine_lacks_is_refused_before_loading(tok, monkeypatch):
    import rewardlab.integrations.trl as trl_mod

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr(trl_mod.RewardModel, "from_pretrained", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(RewardlabError, match=r"device='cuda': no CUDA device is visible here.*--device cpu"):
        reward_function("some/folder", "raw", device="cuda")
    with pytest.raises(RewardlabError, match=r"device='gpu' is not a device; .*auto"):
        reward_function(_fresh_rm(tok), "raw", device="gpu")
