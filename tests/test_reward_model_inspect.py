"""`rewardlab inspect`: semantics from metadata or inference, verdicts per reading, a valid recommended spec."""

import json
import re

import pytest
import torch
from _scripts import load_script

from rewardlab.reward_model.evaluate import evaluate_pairs
from rewardlab.reward_model.inspect import (
    check_spec,
    head_agreement,
    infer_semantics,
    inspect_reward_model,
    judge_readings,
    recommend,
)
from rewardlab.reward_model.train import RewardTrainingConfig, train_reward_model
from rewardlab.tiny import build_model, build_tokenizer, tiny_config

EXAMPLE = load_script("examples/make_tiny_rm_data.py")


def heads(kind: str, n: int = 400, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base, noise = torch.randn(n, generator=g), torch.randn(n, 2, generator=g)
    if kind == "bt":  # heads trained together: the same reward plus small noise
        return torch.stack([base + 0.1 * noise[:, 0], 2.0 + base + 0.1 * noise[:, 1]], -1)
    if kind == "classifier":  # opposite gradients: l0 ≈ −l1
        return torch.stack([-base + 0.1 * noise[:, 0], base + 0.1 * noise[:, 1]], -1)
    return noise  # unrelated heads


def test_infer_semantics_from_head_correlation():
    assert infer_semantics(2, heads("bt"), "preferences").semantics == "bradley_terry"
    cls = infer_semantics(2, heads("classifier"), "preferences")
    assert cls.semantics == "classifier" and cls.confidence == "high"
    undecided = infer_semantics(2, heads("none"), "preferences")
    assert undecided.semantics is None and undecided.confidence == "low"
    probe = infer_semantics(2, heads("bt"), "probe")
    assert probe.confidence == "medium" and any("weaker" in e for e in probe.evidence)
    one = infer_semantics(1, None, "none")
    assert one.semantics == "bradley_terry" and one.source == "num_labels"


def test_accuracy_pattern_that_disagrees_lowers_confidence():
    # Heads correlate positively but order preferences in opposite ways: contradictory evidence.
    chosen = torch.tensor([[1.0, -1.0]] * 50 + [[0.0, 0.0]] * 50)
    rejected = torch.tensor([[0.0, 0.0]] * 50 + [[-1.0, 1.0]] * 50)
    logits = heads("bt", 100)
    ev = evaluate_pairs(chosen, rejected)
    finding = infer_semantics(2, logits, "preferences", ev)
    assert finding.semantics == "bradley_terry" and finding.confidence == "low"


@pytest.mark.parametrize("semantics, h, t, expected", [
    ("bradley_terry", 1, None, "mean|lsc(q=0.5)"),
    ("bradley_terry", 2, 2.0, "mean|temperature(t=2.0)|lsc(q=0.5)"),
    ("bradley_terry", 3, 1.05, "mean|lsc(q=0.5)"),  # a temperature within 10% of 1 is left out
    ("classifier", 2, None, "logodds(pos=1,neg=0)|logsigmoid"),
    ("classifier", 3, None, "logprob(k=2)"),
])
def test_recommended_specs_parse_in_the_pipeline(semantics, h, t, expected):
    spec, principal, why = recommend(semantics, h, t, None)
    assert spec == expected and why
    check_spec(spec, semantics)


def test_undecided_semantics_recommend_nothing():
    spec, _, why = recommend(None, 2, None, None)
    assert spec == "" and "declare" in why


def test_verdicts_flag_the_wrong_readings():
    bt = {v.reading: v.verdict for v in judge_readings("bradley_terry", 2, None, "mean")}
    assert bt == {"head(k=0)": "ok", "head(k=1)": "ok", "mean": "recommended", "sum": "ok", "min": "ok",
                  "logodds(pos=1,neg=0)": "wrong"}
    cls = {v.reading: v.verdict for v in judge_readings("classifier", 2, None, "logodds(pos=1,neg=0)")}
    assert cls["logodds(pos=1,neg=0)"] == "recommended" and cls["mean"] == cls["head(k=0)"] == "wrong"


@pytest.fixture(scope="module")
def our_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inspect")
    rows = EXAMPLE.make_pairs(96, seed=7)
    (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = build_tokenizer(32)
    model = build_model("sequence_classification", tiny_config("gpt2", tok, num_labels=2), seed=0)
    cfg = RewardTrainingConfig(model="(in memory)", train_file=str(tmp / "train.jsonl"), output_dir=str(tmp / "rm"),
                               num_heads=2, max_steps=6, learning_rate=3e-3, per_device_train_batch_size=16,
                               progress=False)
    train_reward_model(cfg, model=model, tokenizer=tok)
    return tmp


def test_model_from_our_trainer_uses_its_metadata(our_model):
    report = inspect_reward_model(str(our_model / "rm"))
    assert report.semantics.source == "metadata" and report.semantics.confidence == "certain"
    assert report.semantics.semantics == "bradley_terry" and report.num_labels == 2
    assert report.metadata["loss"] == "bradley_terry"
    assert report.recommended_spec.startswith("mean|")
    check_spec(report.recommended_spec, "bradley_terry")


def test_declared_semantics_override_metadata(our_model):
    report = inspect_reward_model(str(our_model / "rm"), semantics="classifier")
    assert report.semantics.source == "declared"
    assert report.recommended_spec.startswith("logodds(")


def test_cli_writes_json_and_plot(our_model, capsys):
    from rewardlab.cli import main

    out, png = our_model / "inspect.json", our_model / "rel.png"
    assert main(["inspect", str(our_model / "rm"), "--preferences", str(our_model / "train.jsonl"),
                 "--output", str(out), "--plot", str(png)]) == 0
    printed = capsys.readouterr().out
    assert "recommended pipeline" in printed
    report = json.loads(out.read_text())
    assert report["recommended_spec"].startswith("mean|")
    assert report["evaluation"]["num_pairs"] == 96
    assert {r["reading"] for r in report["readings"]} >= {"mean", "logodds(pos=1,neg=0)"}
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert main(["evaluate-rm", str(our_model / "rm"), "--preferences", str(our_model / "train.jsonl"),
                 "--output", str(our_model / "eval.json")]) == 0
    assert json.loads((our_model / "eval.json").read_text())["principal"] == "mean"
    # A missing model folder is a clean error (exit 2), not a traceback.
    assert main(["inspect", str(our_model / "nope")]) == 2


@pytest.fixture(scope="module")
def classifier_without_metadata(tmp_path_factory):
    """A 2-logit model with l_1 = −l_0 (a cross-entropy classifier's pattern), saved without rewardlab metadata."""
    tmp = tmp_path_factory.mktemp("classifier")
    (tmp / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in EXAMPLE.make_pairs(64, seed=3)))
    tok = build_tokenizer(32)
    model = build_model("sequence_classification", tiny_config("gpt2", tok, hidden=16, layers=1, num_labels=2), seed=2)
    with torch.no_grad():
        model.score.weight[1] = -model.score.weight[0]
    model.save_pretrained(tmp / "rm")
    tok.save_pretrained(tmp / "rm")
    return tmp


def test_evaluate_rm_and_inspect_agree_on_a_classifier_without_metadata(classifier_without_metadata, capsys):
    from rewardlab.cli import main
    from rewardlab.reward_model.evaluate import evaluate_reward_model

    folder, prefs = str(classifier_without_metadata / "rm"), str(classifier_without_metadata / "prefs.jsonl")
    ins = inspect_reward_model(folder, prefs)
    ev = evaluate_reward_model(folder, prefs)
    assert ins.semantics.semantics == ev.semantics == "classifier" and ev.semantics_source == "inferred"
    recommended = next(r.reading for r in ins.readings if r.verdict == "recommended")
    assert ev.principal == recommended and ev.principal.startswith("logodds(")
    assert main(["evaluate-rm", folder, "--preferences", prefs]) == 0
    out = capsys.readouterr().out
    assert re.search(r"semantics classifier\s+\(inferred\)", out) and "semantics None" not in out


def test_between_prompt_share_is_not_cited_from_one_pair_per_prompt(our_model):
    report = inspect_reward_model(str(our_model / "rm"), str(our_model / "train.jsonl"))
    assert report.evaluation.offsets["between_prompt_fraction"] is None  # make_pairs: one pair per prompt
    assert "per-prompt offset" not in report.why


# --------------------------------------------------------------------------------------------
# Agreement of BT heads (bootstrap ensembles, issue 27)
# --------------------------------------------------------------------------------------------
def test_head_agreement_equals_a_direct_computation():
    import numpy as np

    chosen = torch.tensor([[2.0, 1.0, 3.0], [0.0, 0.5, -1.0], [1.0, 1.0, 1.0]])  # (P=3, H=3)
    rejected = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 2.0, 1.0]])
    logits = torch.cat([chosen, rejected])
    a = head_agreement(logits, chosen, rejected, ensemble="bootstrap")
    z = logits.numpy().astype(np.float64)
    corr = np.corrcoef(z.T)
    assert a.mean_correlation == pytest.approx((corr[0, 1] + corr[0, 2] + corr[1, 2]) / 3, rel=1e-6)
    assert a.mean_head_std == pytest.approx(np.mean(np.std(z, axis=1, ddof=0)), rel=1e-12)  # population std
    assert a.reward_std == pytest.approx(np.std(z.mean(1), ddof=0), rel=1e-12)
    # d = c − r: pair 0 (2, 1, 2) all right; pair 1 (−1, 0.5, −1) heads disagree; pair 2 (1, −1, 0) disagree
    assert a.head_accuracy == pytest.approx([2 / 3, 2 / 3, (1 + 0.5) / 3])  # head 2 ties pair 2: half
    assert a.winner_disagreement == pytest.approx(2 / 3)
    assert (a.source, a.num_sequences, a.ensemble) == ("preferences", 6, "bootstrap")
    probe = head_agreement(logits, source="probe")
    assert probe.head_accuracy is None and probe.winner_disagreement is None and probe.ensemble is None
    with pytest.raises(ValueError, match="H ≥ 2"):
        head_agreement(logits[:, :1])


@pytest.fixture(scope="module")
def bootstrap_model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bootstrap")
    (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in EXAMPLE.make_pairs(96, seed=7, noise=0.1)))
    (tmp / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in EXAMPLE.make_pairs(40, seed=8)))
    tok = build_tokenizer(32)
    model = build_model("sequence_classification", tiny_config("gpt2", tok, num_labels=3), seed=0)
    cfg = RewardTrainingConfig(model="(in memory)", train_file=str(tmp / "train.jsonl"), output_dir=str(tmp / "rm"),
                               num_heads=3, bootstrap=True, max_steps=6, learning_rate=3e-3,
                               per_device_train_batch_size=16, progress=False)
    train_reward_model(cfg, model=model, tokenizer=tok)
    return tmp


def test_inspect_reports_the_agreement_of_bootstrap_heads(bootstrap_model, capsys):
    from rewardlab.cli import main
    from rewardlab.reward.scoring import RewardModel
    from rewardlab.reward_model.data import read_preferences, tokenize_preferences
    from rewardlab.reward_model.evaluate import score_pairs

    folder, prefs = str(bootstrap_model / "rm"), str(bootstrap_model / "eval.jsonl")
    report = inspect_reward_model(folder, prefs)
    assert report.metadata["ensemble"] == "bootstrap" and report.agreement.ensemble == "bootstrap"
    # the same numbers computed directly from the heads' scores
    rm = RewardModel.from_pretrained(folder)
    pairs = tokenize_preferences(read_preferences(prefs), rm.tokenizer, None)
    chosen, rejected = score_pairs(rm, pairs, rm.tokenizer.pad_token_id)
    direct = head_agreement(torch.cat([chosen, rejected]), chosen, rejected, ensemble="bootstrap")
    assert report.agreement == direct and len(direct.head_accuracy) == 3 and direct.num_sequences == 80
    # without preferences: measured on random token sequences
    assert inspect_reward_model(folder).agreement.source == "probe"
    out = bootstrap_model / "inspect.json"
    assert main(["inspect", folder, "--preferences", prefs, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "agreement of the bootstrap ensemble" in printed and "pairs whose winner the heads dispute" in printed
    saved = json.loads(out.read_text())["agreement"]
    assert saved["winner_disagreement"] == pytest.approx(direct.winner_disagreement)
    assert saved["head_accuracy"] == pytest.approx(direct.head_accuracy)


def test_plain_bt_heads_report_agreement_and_classifiers_none(our_model, classifier_without_metadata):
    assert inspect_reward_model(str(our_model / "rm")).agreement is not None  # 2 plain BT heads: measured too
    assert inspect_reward_model(str(our_model / "rm")).agreement.ensemble is None
    folder = str(classifier_without_metadata / "rm")
    assert inspect_reward_model(folder, str(classifier_without_metadata / "prefs.jsonl")).agreement is None
