"""Bad inputs on the reward side, through the real CLI in a subprocess (issue 12, part B).

Each row runs one command on tiny local models and checks: the exit code (2 for bad input,
1 for a failure at run time), no Python traceback on stderr, and a message that names the
field, flag or file at fault.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rewardlab.tiny import build_model, build_tokenizer, tiny_config

ROOT = Path(__file__).resolve().parents[1]

RULES = '''
def wrong_signature(texts):
    return [0.0] * len(texts)


def wrong_shape(prompts, responses):
    return [0.0] * (len(responses) + 1)


def nan_reward(prompts, responses):
    return [float("nan")] * len(responses)


def needs_answer(prompts, completions, answer, **kwargs):
    return [float(c.strip() == a) for c, a in zip(completions, answer)]


def words(prompts, completions, **kwargs):
    return ["good"] * len(completions)
'''


def _save(folder: Path, kind: str, *, vocab: int = 32, num_labels: int = 1, anti: bool = False,
          problem_type: str | None = None) -> str:
    tok = build_tokenizer(vocab)
    kw = {} if kind == "causal_lm" else {"num_labels": num_labels}
    config = tiny_config("gpt2", tok, hidden=16, layers=1, **kw)
    if problem_type:
        config.problem_type = problem_type
    model = build_model(kind, config, seed=0)
    if anti:  # l_1 = −l_0: a cross-entropy classifier's pattern (head correlation −1)
        with torch.no_grad():
            model.score.weight[1] = -model.score.weight[0]
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """Tiny models, data files and PPO configs shared by every row."""
    d = tmp_path_factory.mktemp("bad_inputs")
    w = {
        "policy": _save(d / "policy", "causal_lm"),
        "bt1": _save(d / "bt1", "sequence_classification", num_labels=1),
        "two": _save(d / "two", "sequence_classification", num_labels=2),  # 2 outputs, no metadata
        "cls": _save(d / "cls", "sequence_classification", num_labels=2, anti=True),
        "other_vocab": _save(d / "other_vocab", "sequence_classification", vocab=48, num_labels=1),
        # A classifier as transformers' Trainer saves it (problem_type set), with another vocabulary.
        "cls_other": _save(d / "cls_other", "sequence_classification", vocab=48, num_labels=2, anti=True,
                           problem_type="single_label_classification"),
    }
    rows = [{"prompt": f"t{i} t{i + 1}", "response": f" t{i + 2} t{i + 3}"} for i in range(12)]
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "prefs.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"], "chosen": r["response"], "rejected": " t1"})
                                           + "\n" for r in rows))
    (d / "prompts.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows))
    (d / "labels.jsonl").write_text("".join(json.dumps({"text": r["prompt"], "label": i % 2}) + "\n"
                                            for i, r in enumerate(rows)))
    (d / "bad_rules.py").write_text(RULES)
    broken = d / "broken_rm"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    w.update({k: str(d / f) for k, f in [("pairs", "pairs.jsonl"), ("prefs", "prefs.jsonl"), ("labels", "labels.jsonl"),
                                                    ("dir", ".")]})
    w["broken_rm"] = str(broken)

    def ppo_config(name: str, **fields) -> str:
        cfg = {"models": {"sft_model_path": w["policy"], "reward_model_path": w["bt1"]},
               "data": {"dataset_name": str(d / "prompts.jsonl")},
               "generation": {"response_length": 4}, "reward": {"reward_pipeline": "raw"},
               "optim": {"per_device_train_batch_size": 4, "batch_size": 4},
               "run": {"output_dir": str(d / "out" / name), "total_episodes": 4, "progress_bar": False},
               "ppo": {"num_ppo_epochs": 1}}
        for dotted, value in fields.items():
            section, leaf = dotted.split("__")
            cfg[section][leaf] = value
        path = d / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return str(path)

    w["cfg_head_true"] = ppo_config("head_true", reward__reward_pipeline="head(k=true)")
    w["cfg_head_half"] = ppo_config("head_half", reward__reward_pipeline="head(k=0.5)")
    w["cfg_fn_no_column"] = ppo_config("fn_no_column", reward__reward_fn="bad_rules:needs_answer")
    w["cfg_accum"] = ppo_config("accum", optim__per_device_train_batch_size=4, optim__batch_size=None,
                                optim__gradient_accumulation_steps=3, ppo__num_mini_batches=2)
    w["cfg_untrained"] = ppo_config("untrained", models__reward_model_path=w["policy"],
                                    reward__reward_semantics="bradley_terry", reward__reward_pipeline="mean")
    w["cfg_contradicted"] = ppo_config("contradicted", models__reward_model_path=w["cls"],
                                       reward__reward_semantics="bradley_terry", reward__reward_pipeline="mean")
    w["cfg_value_vocab"] = ppo_config("value_vocab", models__value_model_path=w["other_vocab"])
    w["cfg_classifier_critic"] = ppo_config("classifier_critic", models__reward_model_path=w["cls_other"],
                                            reward__reward_semantics="classifier",
                                            reward__reward_pipeline="logodds(pos=1,neg=0)|logsigmoid")
    for rule in ("wrong_signature", "wrong_shape", "nan_reward", "words"):
        w[f"cfg_{rule}"] = ppo_config(rule, models__reward_model_path=None, reward__reward_fn=f"bad_rules:{rule}")
    return w


def _score(w, model, pipeline, *extra):
    return ["score", "--reward-model", w[model], "--pipeline", pipeline, "--input", w["pairs"],
            "--output", os.path.join(w["dir"], "scored.jsonl"), *extra]


# (id, argv builder, exit code, substrings the message must contain, substrings it must not)
CASES = [
    ("score-head-k-half", lambda w: _score(w, "bt1", "head(k=0.5)"), 2,
     ["head: parameter k=0.5 must be an integer"], []),
    ("score-head-k-true", lambda w: _score(w, "two", "head(k=true)", "--semantics", "bradley_terry"), 2,
     ["head: parameter k=true must be an integer"], []),
    ("score-head-k-out-of-range", lambda w: _score(w, "two", "head(k=2)", "--semantics", "bradley_terry",
                                                   "--allow-semantics-mismatch"), 2,
     ["--pipeline 'head(k=2)' does not fit the reward outputs (2 heads)", "out of range"], []),
    ("score-whiten-eps", lambda w: _score(w, "bt1", "whiten(eps=0)"), 2, ["whiten: eps=0.0 must be > 0"], []),
    ("score-undeclared-semantics", lambda w: _score(w, "two", "mean"), 2,
     ["--semantics", "reward.reward_semantics"], ["semantics='bradley_terry'"]),
    ("score-causal-lm-as-reward", lambda w: _score(w, "policy", "mean", "--semantics", "bradley_terry"), 2,
     ["not a trained reward model", "score.weight", "--allow-untrained-head"], []),
    ("score-semantics-contradicted", lambda w: _score(w, "cls", "mean", "--semantics", "bradley_terry"), 2,
     ["--semantics=bradley_terry is contradicted", "correlate -1.0000", "--allow-semantics-mismatch"], []),
    ("ppo-dry-run-head-k-true", lambda w: ["ppo", "--dry-run", "--config", w["cfg_head_true"]], 2,
     ["reward.reward_pipeline", "k=true must be an integer"], []),
    ("ppo-dry-run-head-k-half", lambda w: ["ppo", "--dry-run", "--config", w["cfg_head_half"]], 2,
     ["reward.reward_pipeline", "k=0.5 must be an integer"], []),
    ("ppo-dry-run-rule-needs-a-missing-column", lambda w: ["ppo", "--dry-run", "--config", w["cfg_fn_no_column"]], 2,
     ["rule term fn:bad_rules:needs_answer", "column(s) ['answer']", "the data lacks", "give it a default"], []),
    ("ppo-rule-needs-a-missing-column", lambda w: ["ppo", "--config", w["cfg_fn_no_column"]], 2,
     ["rule term fn:bad_rules:needs_answer", "column(s) ['answer']"], ["Loading weights"]),
    ("ppo-reward-fn-not-numbers", lambda w: ["ppo", "--config", w["cfg_words"]], 2,
     ["rule term fn:bad_rules:words returned a str", "one number per completion, or None"], []),
    ("ppo-dry-run-minibatch-not-whole", lambda w: ["ppo", "--dry-run", "--config", w["cfg_accum"]], 2,
     ["optim.gradient_accumulation_steps", "not a whole number of micro-batches"], []),
    ("ppo-causal-lm-as-reward", lambda w: ["ppo", "--config", w["cfg_untrained"]], 2,
     ["not a trained reward model", "reward.allow_untrained_head: true"], []),
    ("ppo-semantics-contradicted", lambda w: ["ppo", "--config", w["cfg_contradicted"]], 2,
     ["reward.reward_semantics", "contradicted", "reward.allow_semantics_mismatch: true"], []),
    ("ppo-value-model-other-vocabulary", lambda w: ["ppo", "--config", w["cfg_value_vocab"]], 2,
     ["models.value_model_path", "vocabulary of 48 tokens", "policy's has 32"], ["IndexError"]),
    ("ppo-reward-fn-wrong-signature", lambda w: ["ppo", "--config", w["cfg_wrong_signature"]], 2,
     ["rule term fn:bad_rules:wrong_signature", "cannot be called as fn(prompts, completions"], []),
    ("ppo-reward-fn-wrong-shape", lambda w: ["ppo", "--config", w["cfg_wrong_shape"]], 2,
     ["rule term fn:bad_rules:wrong_shape returned shape (5,) for 4 completions"], []),
    ("ppo-reward-fn-nan", lambda w: ["ppo", "--config", w["cfg_nan_reward"]], 2,
     ["rule term fn:bad_rules:nan_reward returned NaN or inf for 4 of 4 completions", "None where the function does not apply"],
     ["reward-model logits", "nan_policy"]),
    ("inspect-classifier-data-as-preferences", lambda w: ["inspect", w["bt1"], "--preferences", w["labels"]], 2,
     ["'chosen' and 'rejected'", "rewardlab train-rm --mode classifier"], ["use --mode classifier"]),
    ("evaluate-rm-unknown-reading", lambda w: ["evaluate-rm", w["two"], "--preferences", w["prefs"], "--semantics",
                                               "bradley_terry", "--reading", "median"], 2,
     ["--reading 'median' is not a reading", "mean"], []),
    ("migrate-unreadable-reward-config", lambda w: ["migrate-trl-ppo", _trl_file(w)], 2,
     ["broken_rm/config.json", "--reward-num-labels"], []),
]


def _trl_file(w) -> str:
    path = os.path.join(w["dir"], "trl_broken_rm.yaml")
    Path(path).write_text(f"reward_model_path: {w['broken_rm']}\nlearning_rate: 3e-6\ntotal_episodes: 8\n")
    return path


def _run(world, argv):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), world["dir"], os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "rewardlab.cli", *argv], capture_output=True, text=True,
                          env=env, timeout=300, cwd=world["dir"])


@pytest.mark.parametrize("argv, code, must, must_not", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_a_clear_error(world, argv, code, must, must_not):
    res = _run(world, argv(world))
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.returncode == code, (res.returncode, res.stderr[-3000:])
    message = " ".join(res.stderr.split())  # unwrap
    for text in must:
        assert text in message, (text, message[-2000:])
    for text in must_not:
        assert text not in message, (text, message[-2000:])


def test_ppo_with_a_classifier_reward_model_of_another_vocabulary_trains(world):
    """problem_type='single_label_classification' and another vocabulary no longer break the critic."""
    res = _run(world, ["ppo", "--config", world["cfg_classifier_critic"]])
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "the critic starts from the policy's folder" in " ".join(res.stdout.split())
