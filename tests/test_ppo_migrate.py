"""rewardlab.ppo.migrate and `rewardlab migrate-trl-ppo`: TRL 1.10 PPOConfig -> rewardlab PPO config."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from rewardlab.cli import main
from rewardlab.errors import RewardlabError
from rewardlab.ppo.config import load_config
from rewardlab.ppo.migrate import PPO_FIELDS, TRL_DEFAULTS, migrate_trl_ppo, read_trl_config

TRL110_PYTHON = Path("/tmp/venv-trl110/bin/python")

SAMPLE = {
    "sft_model_path": "runs/sft",
    "reward_model_path": "runs/rm",
    "dataset_name": "prompts.jsonl",
    "dataset_train_split": "train",
    "output_dir": "runs/trl-ppo",
    "learning_rate": 1.0e-5,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 3,
    "weight_decay": 0.01,
    "adam_beta1": 0.8,
    "adam_beta2": 0.99,
    "adam_epsilon": 1.0e-6,
    "max_grad_norm": 0.5,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 8,
    "num_mini_batches": 2,
    "total_episodes": 10000,
    "num_ppo_epochs": 3,
    "kl_coef": 0.1,
    "kl_estimator": "k3",
    "cliprange": 0.15,
    "cliprange_value": 0.25,
    "vf_coef": 0.2,
    "gamma": 0.99,
    "lam": 0.9,
    "whiten_rewards": True,
    "response_length": 48,
    "stop_token": "eos",
    "temperature": 0.9,
    "missing_eos_penalty": 1.0,
    "local_rollout_forward_batch_size": 16,
    "seed": 7,
    "logging_steps": 5,
    "save_steps": 50,
    "report_to": ["tensorboard", "mlflow"],
    "bf16": False,
    # no equivalent
    "num_sample_generations": 0,
    "gradient_checkpointing": True,
    "push_to_hub": False,
    "ds3_gather_for_generation": True,
    "model_name_or_path": "runs/sft",
    "lora_r": 16,
    "batch_size": 999,
}

# TRL name -> (rewardlab section.field, expected value)
EXPECTED = {
    "sft_model_path": ("models.sft_model_path", "runs/sft"),
    "reward_model_path": ("models.reward_model_path", "runs/rm"),
    "dataset_name": ("data.dataset", "prompts.jsonl"),
    "dataset_train_split": ("data.dataset_split", "train"),
    "output_dir": ("run.output_dir", "runs/trl-ppo"),
    "learning_rate": ("optim.learning_rate", 1.0e-5),
    "lr_scheduler_type": ("optim.lr_scheduler_type", "cosine"),
    "warmup_steps": ("optim.warmup_steps", 3 * 3 * 2),  # updates -> optimiser steps (epochs × minibatches)
    "weight_decay": ("optim.weight_decay", 0.01),
    "adam_beta1": ("optim.adam_beta1", 0.8),
    "adam_beta2": ("optim.adam_beta2", 0.99),
    "adam_epsilon": ("optim.adam_epsilon", 1.0e-6),
    "max_grad_norm": ("optim.max_grad_norm", 0.5),
    "per_device_train_batch_size": ("optim.per_device_train_batch_size", 4),
    "gradient_accumulation_steps": ("optim.gradient_accumulation_steps", 4),  # 8 micro-batches / 2 minibatches
    "num_mini_batches": ("ppo.num_mini_batches", 2),
    "total_episodes": ("run.total_episodes", 10000),
    "num_ppo_epochs": ("ppo.num_ppo_epochs", 3),
    "kl_coef": ("kl.kl_coef", 0.1),
    "kl_estimator": ("kl.kl_estimator", "k3"),
    "cliprange": ("ppo.cliprange", 0.15),
    "cliprange_value": ("ppo.cliprange_value", 0.25),
    "vf_coef": ("ppo.vf_coef", 0.2),
    "gamma": ("ppo.gamma", 0.99),
    "lam": ("ppo.lam", 0.9),
    "whiten_rewards": ("ppo.whiten_rewards", True),
    "response_length": ("generation.response_length", 48),
    "stop_token": ("generation.stop_token", "eos"),
    "temperature": ("generation.temperature", 0.9),
    "missing_eos_penalty": ("reward.missing_eos_penalty", 1.0),
    "local_rollout_forward_batch_size": ("optim.local_rollout_forward_batch_size", 16),
    "seed": ("run.seed", 7),
    "logging_steps": ("run.logging_steps", 5),
    "save_steps": ("run.save_steps", 50),
    "report_to": ("run.report_to", ["tensorboard"]),
    "bf16": ("run.mixed_precision", "no"),
}
UNMAPPED = ["num_sample_generations", "gradient_checkpointing", "push_to_hub", "ds3_gather_for_generation",
            "model_name_or_path", "lora_r", "batch_size"]


def _get(config, dotted):
    section, leaf = dotted.split(".")
    return config[section][leaf]


def test_every_mapped_field_and_every_unmapped_one():
    m = migrate_trl_ppo(SAMPLE)
    rows = {r.trl_name: r for r in m.rows}
    for trl_name, (target, value) in EXPECTED.items():
        assert _get(m.config, target) == value, trl_name
        assert rows[trl_name].rewardlab_name == target, trl_name
        assert rows[trl_name].trl_value == SAMPLE[trl_name]
    for name in UNMAPPED:
        assert rows[name].rewardlab_name is None and rows[name].status == "unmapped", name
        assert rows[name].note, name  # a reason is given
    # TRL read the single logit untransformed: said explicitly.
    assert m.config["reward"]["reward_pipeline"] == "raw"
    assert rows["(reward reading)"].rewardlab_name == "reward.reward_pipeline"
    assert {r.trl_name for r in m.attention} == {"report_to"}  # mlflow dropped
    # Every row of the table is printed.
    table = m.table()
    for name in list(EXPECTED) + UNMAPPED:
        assert name in table
    assert "mlflow" in table and "no rewardlab equivalent" in table
    # The migrated config is a valid rewardlab config with those values.
    cfg = m.rewardlab_config()
    assert cfg.ppo.cliprange == 0.15 and cfg.kl.kl_estimator == "k3" and cfg.optim.gradient_accumulation_steps == 4
    # Same episodes per update and per optimiser step as TRL: 4 × 8 per update, split in 2 minibatches.
    sizes = cfg.sizes(world_size=1)
    assert sizes.batch_size == 4 * 8 and sizes.local_mini_batch_size == 4 * 8 // 2


def test_defaults_are_trls_not_rewardlabs():
    m = migrate_trl_ppo({"sft_model_path": "a", "reward_model_path": "b", "total_episodes": 64})
    rows = {r.trl_name: r for r in m.rows}
    assert m.config["run"]["seed"] == 42 and rows["seed"].status == "default"
    assert m.config["optim"]["per_device_train_batch_size"] == 8
    assert m.config["run"]["output_dir"] == "trainer_output"
    assert m.config["run"]["mixed_precision"] == "auto"
    assert m.config["generation"]["response_length"] == 53
    cfg = m.rewardlab_config()
    assert cfg.kl.kl_coef == 0.05 and cfg.optim.learning_rate == 3e-6


def test_missing_total_episodes_needs_attention():
    m = migrate_trl_ppo({"sft_model_path": "a", "num_train_epochs": 2})
    row = next(r for r in m.attention if r.trl_name == "total_episodes")
    assert "num_train_epochs (2)" in row.note
    assert "total_episodes" not in m.config.get("run", {})
    assert "num_train_epochs" in {r.trl_name for r in m.rows if r.status == "unmapped"}


def test_penalty_without_stop_token_sets_eos_with_attention():
    m = migrate_trl_ppo({"missing_eos_penalty": 2.0, "total_episodes": 8})
    assert m.config["generation"]["stop_token"] == "eos" and m.config["reward"]["missing_eos_penalty"] == 2.0
    assert any(r.trl_name == "stop_token" for r in m.attention)


def test_uneven_accumulation_becomes_one_microbatch_per_minibatch():
    m = migrate_trl_ppo({"per_device_train_batch_size": 4, "gradient_accumulation_steps": 3, "num_mini_batches": 2,
                         "total_episodes": 12})
    assert m.config["optim"]["per_device_train_batch_size"] == 6
    assert m.config["optim"]["gradient_accumulation_steps"] == 1
    assert m.rewardlab_config().sizes(1).batch_size == 12
    with pytest.raises(RewardlabError, match="not a multiple of num_mini_batches=4"):
        migrate_trl_ppo({"per_device_train_batch_size": 3, "gradient_accumulation_steps": 1, "num_mini_batches": 4})


def test_errors():
    with pytest.raises(RewardlabError, match="did you mean 'kl_coef'"):
        migrate_trl_ppo({"kl_coeff": 0.1})
    with pytest.raises(RewardlabError, match="mutually exclusive"):
        migrate_trl_ppo({"stop_token": "eos", "stop_token_id": 3})
    with pytest.raises(RewardlabError, match="cliprange"):
        migrate_trl_ppo({"cliprange": -1.0, "total_episodes": 8})  # rewardlab's validation speaks


def test_multi_output_reward_model_is_not_read_as_raw(tmp_path):
    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "config.json").write_text(json.dumps({"architectures": ["GPT2ForSequenceClassification"],
                                                "id2label": {"0": "LABEL_0", "1": "LABEL_1"}}))
    m = migrate_trl_ppo({"reward_model_path": str(rm), "total_episodes": 8})
    assert "reward_pipeline" not in m.config.get("reward", {})
    assert any(r.trl_name == "(reward reading)" and "2 outputs" in r.note for r in m.attention)
    (rm / "config.json").write_text(json.dumps({"architectures": ["X"], "id2label": {"0": "LABEL_0"}}))
    assert migrate_trl_ppo({"reward_model_path": str(rm)}).config["reward"]["reward_pipeline"] == "raw"


def test_cli_writes_a_config_rewardlab_ppo_loads(tmp_path, capsys):
    src = tmp_path / "trl.json"
    src.write_text(json.dumps(SAMPLE))
    assert read_trl_config(src) == SAMPLE
    out = tmp_path / "ppo.yaml"
    assert main(["migrate-trl-ppo", str(src), "-o", str(out)]) == 0
    printed = capsys.readouterr()
    assert "models.sft_model_path" in printed.out and "need a decision" in printed.err
    text = out.read_text()
    assert text.startswith("# rewardlab PPO config migrated from TRL 1.10") and "# CHECK report_to" in text
    cfg = load_config(out)
    for trl_name, (target, value) in EXPECTED.items():
        section, leaf = target.split(".")
        got = getattr(getattr(cfg, section), leaf)
        assert (list(got) if isinstance(got, tuple) else got) == value, trl_name
    # Without -o the YAML goes to stdout, the table to stderr.
    src_yaml = tmp_path / "trl.yaml"
    src_yaml.write_text(yaml.safe_dump(SAMPLE))
    assert main(["migrate-trl-ppo", str(src_yaml)]) == 0
    printed = capsys.readouterr()
    assert yaml.safe_load(printed.out)["kl"]["kl_coef"] == 0.1 and "no rewardlab equivalent" in printed.err
    assert main(["migrate-trl-ppo", str(tmp_path / "missing.yaml")]) == 2


@pytest.mark.skipif(not TRL110_PYTHON.exists(), reason="needs the trl 1.10 venv (/tmp/venv-trl110)")
def test_defaults_and_fields_match_trl_1_10():
    """Our table of TRL defaults and PPO fields against trl 1.10's own PPOConfig."""
    code = (
        "import dataclasses, json\n"
        "from trl.experimental.ppo import PPOConfig\n"
        "from transformers import TrainingArguments\n"
        "base = {f.name for f in dataclasses.fields(TrainingArguments)}\n"
        "out = {'defaults': {f.name: f.default for f in dataclasses.fields(PPOConfig)\n"
        "                    if f.default is not dataclasses.MISSING and isinstance(f.default, (int, float, str, type(None)))},\n"
        "       'own': [f.name for f in dataclasses.fields(PPOConfig) if f.name not in base]}\n"
        "print(json.dumps(out))\n"
    )
    res = subprocess.run([str(TRL110_PYTHON), "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    trl = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(trl["own"]) <= set(PPO_FIELDS)
    for name, value in TRL_DEFAULTS.items():
        if name in ("output_dir", "trust_remote_code"):  # set in __post_init__ / not a PPOConfig field
            continue
        assert trl["defaults"][name] == value, name


def test_a_different_tokenizer_source_needs_attention():
    m = migrate_trl_ppo({"model_name_or_path": "runs/tok", "sft_model_path": "runs/sft", "total_episodes": 8})
    assert any(r.trl_name == "model_name_or_path" and "runs/sft" in r.note for r in m.attention)
    same = migrate_trl_ppo({"model_name_or_path": "runs/sft", "sft_model_path": "runs/sft", "total_episodes": 8})
    assert not same.attention
