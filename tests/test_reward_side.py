"""rewardlab.reward.side: reward models and rule functions as terms of one reward, hand-computed.

The None rule is checked against TRL's documented behaviour (trl 1.16, GRPOTrainer ``reward_funcs``):
"When a reward function returns `None` for a sample, that reward function is excluded from the
reward calculation for that sample", i.e. ``(rewards_per_func * reward_weights).nansum(dim=1)``.
"""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rewardlab.errors import RewardlabError
from rewardlab.reward.pipeline import RewardPipeline
from rewardlab.reward.scoring import RewardModel
from rewardlab.reward.side import Penalties, PolicyTokens, RewardSide, RewardSpec, RuleFunction, Samples
from rewardlab.tiny import build_model, build_tokenizer, tiny_config

PROMPTS = ["t1 t2", "t1 t2", "t3", "t3"]
RESPONSES = [" t4", " t5 t6", " t7", " t8 t9 t10"]


class Fixed:
    """A reward-model stand-in: heads from the length of the response text (known numbers)."""

    def __init__(self, heads: int = 1, semantics: str = "bradley_terry", scale: float = 1.0) -> None:
        self.num_heads, self.semantics, self.scale = heads, semantics, scale

    def score_texts(self, prompts, responses):
        base = torch.tensor([[float(len(r.split()))] for r in responses]) * self.scale
        return base + torch.arange(self.num_heads).float()


def correct(prompts, completions, answer, **kwargs):
    """A TRL-style rule: 1 when the completion's last word is the answer; None when there is no answer."""
    return [None if a is None else float(c.split()[-1] == a) for c, a in zip(completions, answer, strict=True)]


def test_a_rule_term_and_a_reward_model_mix_by_weight():
    side = RewardSide.from_spec("0.7*[rm:mean] + 0.3*[fn:correct]", [Fixed(2)], functions={"correct": correct})
    answers = ["t4", "t9", "t7", "t10"]
    out = side(Samples(PROMPTS, RESPONSES, columns={"answer": answers}))
    rm = torch.tensor([1.0, 2.0, 1.0, 3.0]) + 0.5  # mean of heads (len, len + 1)
    rule = torch.tensor([1.0, 0.0, 1.0, 1.0])
    torch.testing.assert_close(out.scores, 0.7 * rm + 0.3 * rule)
    torch.testing.assert_close(out.terms["correct"], rule)
    torch.testing.assert_close(out.terms["rm"], rm)
    assert out.raw["rm"].shape == (4, 2) and out.raw["correct"].shape == (4, 1)
    # the rule term equals a direct call of the function
    assert out.terms["correct"].tolist() == correct(PROMPTS, RESPONSES, answers)
    assert out.diagnostics["reward/term/correct/raw/mean"] == pytest.approx(0.75)
    assert out.diagnostics["reward/term/rm/final/mean"] == pytest.approx(rm.mean().item())


def test_none_leaves_the_term_out_of_that_sample_as_trl_does():
    def length(prompts, completions, **kwargs):
        return [float(len(c.split())) for c in completions]

    answers = ["t4", None, "t7", None]  # the rule does not apply to rows 1 and 3
    side = RewardSide.from_spec("2.0*[fn:correct] + 0.5*[fn:length]", functions={"correct": correct, "length": length})
    out = side(Samples(PROMPTS, RESPONSES, columns={"answer": answers}))
    # TRL 1.16: rewards_per_func with NaN for None, then (rewards_per_func * weights).nansum(dim=1)
    per_func = torch.tensor([[1.0, 1.0], [math.nan, 2.0], [1.0, 1.0], [math.nan, 3.0]])
    trl = (per_func * torch.tensor([2.0, 0.5])).nansum(dim=1)
    torch.testing.assert_close(out.scores, trl)
    assert out.scorable.all()
    assert torch.isnan(out.terms["correct"][[1, 3]]).all()
    assert out.diagnostics["reward/term/correct/applied_frac"] == 0.5
    assert out.diagnostics["reward/term/correct/raw/mean"] == 1.0  # over the rows it applies to (TRL: nanmean)


def test_a_term_whose_chain_has_batch_statistics_sees_only_its_rows():
    answers = ["t4", None, "t7", "t9"]
    side = RewardSide.from_spec("[fn:correct|whiten]", functions={"correct": correct})
    out = side(Samples(PROMPTS, RESPONSES, columns={"answer": answers}))
    applied = torch.tensor([1.0, 1.0, 0.0])  # rows 0, 2, 3
    whitened = (applied - applied.mean()) / torch.sqrt(applied.var(correction=0) + 1e-8)
    torch.testing.assert_close(out.terms["correct"][[0, 2, 3]], whitened)
    assert out.scores[1] == 0.0


def test_a_sample_no_term_applies_to_is_unscorable(caplog):
    side = RewardSide.from_spec("[fn:correct]", functions={"correct": correct})
    out = side(Samples(PROMPTS, RESPONSES, columns={"answer": ["t4", None, None, "t10"]}))
    assert out.scorable.tolist() == [True, False, False, True]
    assert out.scores.tolist() == [1.0, 0.0, 0.0, 1.0]
    assert out.diagnostics["reward/unscorable_frac"] == 0.5
    assert "every reward term returned None" in caplog.text


def test_trl_reward_functions_get_trls_arguments_and_older_rules_get_texts():
    seen = {}

    def trl_style(prompts, completions, completion_ids, **kwargs):
        seen.update(prompts=prompts, completions=completions, ids=completion_ids, kwargs=sorted(kwargs))
        return [0.0] * len(prompts)

    def older(prompts, responses, finished):
        seen.update(older=(prompts, responses, finished))
        return [1.0] * len(prompts)

    chat = [[{"role": "system", "content": "t1"}, {"role": "user", "content": "t2"}]] * 2
    side = RewardSide.from_spec("[fn:trl_style] + [fn:older]", functions=[trl_style, older])
    side(Samples(chat, ["t3", "t4"], columns={"answer": ["a", "b"], "level": [1, 2]}, finished=[True, False]))
    assert seen["prompts"] == chat and seen["completions"] == [[{"role": "assistant", "content": "t3"}],
                                                              [{"role": "assistant", "content": "t4"}]]
    assert seen["ids"] is None and seen["kwargs"] == ["answer", "level"]
    assert seen["older"][1:] == (["t3", "t4"], [True, False])


def test_policy_tokens_are_decoded_for_rules():
    tok = build_tokenizer(32)
    q = torch.tensor([[0, 5, 6], [7, 8, 9]])
    qm = torch.tensor([[0, 1, 1], [1, 1, 1]])
    r = torch.tensor([[10, 3, 0], [11, 12, 13]])  # row 0 stops (EOS = 3)
    rm = torch.tensor([[1, 1, 0], [1, 1, 1]])
    got = {}

    def rule(prompts, completions, completion_ids, **kwargs):
        got.update(completions=completions, ids=completion_ids)
        return [0.0, 0.0]

    side = RewardSide.from_spec("[fn:rule]", functions={"rule": rule})
    side(Samples(["a", "b"], tokens=PolicyTokens(q, qm, r, rm, tok)))
    assert got["ids"] == [[10, 3], [11, 12, 13]]
    assert got["completions"] == [tok.decode([10, 3], skip_special_tokens=True), tok.decode([11, 12, 13])]


def test_penalties_follow_the_pipeline():
    side = RewardSide.from_spec("raw", [Fixed(1)], penalties=Penalties(missing_eos=2.0, overlong_buffer_len=2,
                                                                       overlong_penalty_factor=1.0, max_length=4))
    raw = torch.tensor([[1.0], [1.0], [1.0]])
    out = side.reward(raw, finished=torch.tensor([True, False, True]), lengths=torch.tensor([2, 3, 4]))
    assert out.scores.tolist() == [1.0, 1.0 - 2.0 - 0.5, 1.0 - 1.0]


def test_centred_terms_centre_on_references_or_on_groups():
    side = RewardSide.from_spec("0.5*[rm:mean|lsc(q=0.5)] + 0.5*[fn:length]", [Fixed(2)],
                                functions={"length": lambda prompts, completions, **kw: [1.0] * len(completions)})
    raw = side.score(Samples(PROMPTS, RESPONSES))
    r = raw[:, :2].mean(-1)
    groups = [0, 0, 1, 1]
    out = side.reward(raw, group_ids=groups)
    loo = torch.tensor([r[1], r[0], r[3], r[2]])
    torch.testing.assert_close(out.terms["rm"], F.logsigmoid(r - loo))
    # references: only the centred term's columns are kept per sample
    view = side.reference_view(raw)
    assert view.shape == (4, 2)
    ref = torch.stack([view[[0, 1]], view[[0, 1]], view[[2, 3]], view[[2, 3]]])  # (B, K=2, 2): its prompt's samples
    out = side.reward(raw, ref=ref)
    median = torch.tensor([r[:2].mean(), r[:2].mean(), r[2:].mean(), r[2:].mean()])  # the median of 2 is their mean
    torch.testing.assert_close(out.terms["rm"], F.logsigmoid(r - median))
    with pytest.raises(RewardlabError, match="neither reference samples nor groups"):
        side.reward(raw)


def test_the_chat_is_rendered_whole_with_the_reward_models_own_template(tmp_path):
    """A system turn and several turns reach the reward model as its own template renders them."""
    policy_tok = build_tokenizer(48)  # its template: "role : content"
    rm_tok = build_tokenizer(40)
    rm_tok.chat_template = ("{% for m in messages %}[BOS] {{ m['role'] }} {{ m['content'] }} [EOS] {% endfor %}"
                            "{% if add_generation_prompt %}[BOS] assistant {% endif %}")
    rm = RewardModel(build_model("sequence_classification", tiny_config("gpt2", rm_tok, hidden=16, layers=1,
                                                                        num_labels=1), seed=1), rm_tok)
    chat = [{"role": "system", "content": "t1 t2"}, {"role": "user", "content": "t3"},
            {"role": "assistant", "content": "t4 t5"}, {"role": "user", "content": "t6"}]
    q = torch.tensor([policy_tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)])
    r = torch.tensor([policy_tok.convert_tokens_to_ids(["t7", "t8", "[EOS]"])])
    seen = []
    original = rm._score_rows
    rm._score_rows = lambda rows: seen.extend(rows) or original(rows)
    side = RewardSide.from_spec("raw", [rm])
    out = side(Samples([chat], tokens=PolicyTokens(q, torch.ones_like(q), r, torch.ones_like(r), policy_tok)))
    expected = rm_tok.apply_chat_template(chat + [{"role": "assistant", "content": "t7 t8"}], tokenize=False)
    assert rm_tok.decode(seen[0]).split() == expected.split()
    assert "system t1 t2" in rm_tok.decode(seen[0]) and rm_tok.decode(seen[0]).count("[BOS] user") == 2
    torch.testing.assert_close(out.scores, rm.score_messages([chat + [{"role": "assistant", "content": "t7 t8"}]])[:, 0])


def test_bad_terms_name_the_term_and_the_fix():
    with pytest.raises(RewardlabError, match=r"rule term fn:nope: no function named 'nope'.*fn:package.module:function"):
        RewardSpec("[rm:mean] + [fn:nope]")
    with pytest.raises(RewardlabError, match=r"rule term fn:no_such_module_xyz:f: cannot import module"):
        RewardSpec("[fn:no_such_module_xyz:f]")
    with pytest.raises(RewardlabError, match=r"rule term fn:math:nothing_here: module 'math' has no attribute"):
        RewardSpec("[fn:math:nothing_here]")
    with pytest.raises(RewardlabError, match=r"rule term fn:math:pi is float, not a function"):
        RewardSpec("[fn:math:pi]")
    with pytest.raises(RewardlabError, match=r"reward term rm2: there are only 1 reward model"):
        RewardSide.from_spec("[rm2:mean] + [rm0:raw]", [Fixed(1)])
    with pytest.raises(RewardlabError, match=r"fn:correct needs the dataset column\(s\) \['answer'\], which the data "
                                             r"lacks \(columns: \['id'\]\)"):
        RewardSpec("[fn:correct]", functions={"correct": correct}).check_columns(["id"])
    with pytest.raises(RewardlabError, match=r"cannot be called as fn\(prompts, completions, \*\*columns\)"):
        RewardSpec("[fn:f]", functions={"f": lambda texts: texts})
    rule = RuleFunction.of("f", lambda prompts, completions, **kw: ["high"] * len(completions))
    with pytest.raises(RewardlabError, match="fn:f returned a str .* one number per completion, or None"):
        rule(Samples(["p"], ["r"]))
    rule = RuleFunction.of("f", lambda prompts, completions, **kw: [1.0])
    with pytest.raises(RewardlabError, match=r"fn:f returned shape \(1,\) for 2 completions"):
        rule(Samples(["p", "q"], ["r", "s"]))
    rule = RuleFunction.of("f", lambda prompts, completions, **kw: [math.inf, None])
    with pytest.raises(RewardlabError, match=r"fn:f returned NaN or inf for 1 of 2 completions \(rows 0\)"):
        rule(Samples(["p", "q"], ["r", "s"]))
    rule = RuleFunction.of("f", lambda prompts, completions, **kw: [kw["answer"]] * len(completions))
    with pytest.raises(RewardlabError, match=r"fn:f read the column 'answer', which the data lacks"):
        rule(Samples(["p"], ["r"], columns={"id": [1]}))


def test_a_spec_prints_back_and_names_its_terms():
    for spec in ("0.7*[rm:mean|lsc(q=0.5)] + 0.3*[fn:my_rules:correct]", "rm:raw", "fn:pkg.mod:f|clip(lo=0.0,hi=1.0)",
                 "mean|lsc(q=0.5)", "0.5*[mean] + 0.5*[raw]"):
        assert RewardPipeline.from_spec(spec).spec == spec
    assert RewardPipeline.from_spec("[rm:mean] + [rm:head(k=0)] + [fn:a.b:c]").term_names == ["rm", "rm_2", "c"]


def test_reward_imports_nothing_above_it():
    """rewardlab.reward (every module, its function-level imports included) imports no module of
    rewardlab.reward_model, rewardlab.ppo or rewardlab.study: statically, and in a fresh process."""
    above = ("rewardlab.reward_model", "rewardlab.ppo", "rewardlab.study", "rewardlab.integrations")
    folder = Path(__file__).resolve().parents[1] / "rewardlab" / "reward"
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad = [n for n in names if n.startswith(above)]
            assert not bad, f"{path.name} imports {bad}"
    code = ("import importlib, pkgutil, sys, rewardlab.reward as r\n"
            "for m in pkgutil.iter_modules(r.__path__): importlib.import_module('rewardlab.reward.' + m.name)\n"
            f"print(sorted(m for m in sys.modules if m.startswith({above!r})))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
