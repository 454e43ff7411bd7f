"""Interoperability with the real TRL: models trained by TRL's RewardTrainer, by the old 2-logit
mean-BT recipe, and cross-entropy classifiers are diagnosed correctly by `rewardlab inspect`."""

import json
import os

import pytest
import torch
import torch.nn.functional as F
from _scripts import load_script

from rewardlab.reward_model.inspect import check_spec, inspect_reward_model
from rewardlab.tiny import build_model, build_tokenizer, tiny_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
EXAMPLE = load_script("examples/make_tiny_rm_data.py")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trl")
    train, held = EXAMPLE.make_pairs(384, seed=11), EXAMPLE.make_pairs(150, seed=12)
    (tmp / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    return tmp, train


def _manual_train(model, tok, batches, loss_fn, steps=40, lr=3e-3):
    """A plain loop (HF's own pooling, as old TRL used): enough to shape the heads."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        texts, target = batches(step)
        enc = tok(texts, return_tensors="pt", padding=True)
        loss = loss_fn(model(**enc).logits, target)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def _pair_batches(train, bs=32):
    def batches(step):
        rows = [train[(step * bs + i) % len(train)] for i in range(bs)]
        return [r["prompt"] + r["chosen"] for r in rows] + [r["prompt"] + r["rejected"] for r in rows], None
    return batches


def test_trl_reward_trainer_model_is_one_bt_head(data):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    tmp, train = data
    tok = build_tokenizer(32)
    model = build_model("sequence_classification", tiny_config("gpt2", tok, num_labels=1), seed=0).train()
    args = RewardConfig(
        output_dir=str(tmp / "trl_run"), per_device_train_batch_size=32, num_train_epochs=1, learning_rate=3e-3,
        report_to="none", bf16=False, use_cpu=True, save_strategy="no", logging_steps=50, disable_tqdm=True,
        max_length=64,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(train), processing_class=tok)
    trainer.train()
    trainer.save_model(str(tmp / "trl_rm"))

    report = inspect_reward_model(str(tmp / "trl_rm"), preferences=str(tmp / "eval.jsonl"))
    assert report.num_labels == 1 and report.metadata is None
    assert report.semantics.semantics == "bradley_terry" and report.semantics.source == "num_labels"
    assert report.recommended_spec.startswith("mean|") and report.recommended_spec.endswith("lsc(q=0.5)")
    check_spec(report.recommended_spec, report.semantics.semantics)
    # TRL trained it on text + EOS; rewardlab scores prompt + response as given, and it still ranks well.
    assert report.evaluation.readings["mean"].accuracy > 0.85


def test_old_trl_two_logit_mean_bt_model_reads_as_mean_and_logodds_is_wrong(data):
    tmp, train = data
    tok = build_tokenizer(32)
    model = build_model("sequence_classification", tiny_config("gpt2", tok, num_labels=2), seed=1)

    def mean_bt(logits, _):  # TRL's RewardTrainer before num_labels=1: -logσ(r_c − r_r) averaged over both logits
        chosen, rejected = logits.chunk(2)
        return -F.logsigmoid(chosen - rejected).mean()

    _manual_train(model, tok, _pair_batches(train), mean_bt)
    model.save_pretrained(tmp / "old_trl")
    tok.save_pretrained(tmp / "old_trl")

    report = inspect_reward_model(str(tmp / "old_trl"), preferences=str(tmp / "eval.jsonl"))
    assert report.semantics.semantics == "bradley_terry"
    assert report.semantics.source == "preferences" and report.semantics.confidence == "high"
    assert report.recommended_spec.split("|")[0] == "mean"
    check_spec(report.recommended_spec, "bradley_terry")
    verdicts = {r.reading: r for r in report.readings}
    assert verdicts["logodds(pos=1,neg=0)"].verdict == "wrong"
    assert verdicts["mean"].verdict == "recommended"
    assert verdicts["mean"].accuracy > 0.85
    # Without preferences the probe on random sequences must not call it a classifier.
    probe = inspect_reward_model(str(tmp / "old_trl"))
    assert probe.semantics.semantics in ("bradley_terry", None) and probe.semantics.source == "probe"


def test_cross_entropy_classifier_reads_as_logodds(data):
    tmp, train = data
    tok = build_tokenizer(32)
    model = build_model("sequence_classification", tiny_config("gpt2", tok, num_labels=2), seed=2)

    def batches(step, bs=32):  # good (chosen) = class 1, bad (rejected) = class 0
        texts, _ = _pair_batches(train, bs)(step)
        return texts, torch.tensor([1] * bs + [0] * bs)

    _manual_train(model, tok, batches, F.cross_entropy)
    model.save_pretrained(tmp / "cls")
    tok.save_pretrained(tmp / "cls")

    report = inspect_reward_model(str(tmp / "cls"), preferences=str(tmp / "eval.jsonl"))
    assert report.semantics.semantics == "classifier"
    assert report.recommended_spec == "logodds(pos=1,neg=0)|logsigmoid"
    check_spec(report.recommended_spec, "classifier")
    verdicts = {r.reading: r.verdict for r in report.readings}
    assert verdicts["mean"] == "wrong" and verdicts["head(k=0)"] == "wrong"
    # Random token sequences give the same answer, with the weaker evidence said.
    probe = inspect_reward_model(str(tmp / "cls"))
    assert probe.semantics.semantics == "classifier" and probe.semantics.source == "probe"
    assert probe.recommended_spec.startswith("logodds(")

    # The same classifier with its classes swapped (good = class 0): the recommendation follows.
    with torch.no_grad():
        model.score.weight.copy_(model.score.weight.flip(0))
    model.save_pretrained(tmp / "cls_swapped")
    tok.save_pretrained(tmp / "cls_swapped")
    swapped = inspect_reward_model(str(tmp / "cls_swapped"), preferences=str(tmp / "eval.jsonl"))
    assert swapped.recommended_spec == "logodds(pos=0,neg=1)|logsigmoid"
