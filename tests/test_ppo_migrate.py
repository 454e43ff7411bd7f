"""rewardlab.ppo.migrate and `rewardlab migrate-trl-ppo`: TRL 1.10 PPOConfig -> rewardlab PPO config."""

import json
import subprocess
import sys
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
    "dataset_config": "main",
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
    "report_to": ["tensorboard", "mlflow", "comet_ml"],
    "bf16": False,
    # no equivalent
    "num_sample_generations": 0,
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
    "dataset_name": ("data.dataset_name", "prompts.jsonl"),
    "dataset_train_split": ("data.dataset_train_split", "train"),
    "dataset_config": ("data.dataset_config", "main"),
    "output_dir": ("run.output_dir", "runs/trl-ppo"),
    "learning_rate": ("optim.learning_rate", 1.0e-5),
    "lr_scheduler_type": ("optim.lr_scheduler_type", "cosine"),
    "warmup_steps": ("optim.warmup_steps", 3),  # updates in both
    "weight_decay": ("optim.weight_decay", 0.01),
    "adam_beta1": ("optim.adam_beta1", 0.8),
    "adam_beta2": ("optim.adam_beta2", 0.99),
    "adam_epsilon": ("optim.adam_epsilon", 1.0e-6),
    "max_grad_norm": ("optim.max_grad_norm", 0.5),
    "per_device_train_batch_size": ("optim.per_device_train_batch_size", 4),
    "gradient_accumulation_steps": ("optim.gradient_accumulation_steps", 8),  # TRL's meaning in both
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
    "report_to": ("run.report_to", ["tensorboard", "mlflow"]),
    "bf16": ("run.mixed_precision", "no"),
}
UNMAPPED = ["num_sample_generations", "push_to_hub", "model_name_or_path", "lora_r", "batch_size"]
# Dropped fields that change memory or precision are marked (!).
MEMORY = ["ds3_gather_for_generation"]


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
    assert {r.trl_name for r in m.attention} == {"report_to", *MEMORY}  # comet_ml dropped
    for name in MEMORY:
        assert rows[name].rewardlab_name is None and "(!)" in m.table().split(f"  {name}")[1].splitlines()[0]
    # Every row of the table is printed.
    table = m.table()
    for name in list(EXPECTED) + UNMAPPED:
        assert name in table
    assert "comet_ml" in table and "no rewardlab equivalent" in table
    # The migrated config is a valid rewardlab config with those values.
    cfg = m.rewardlab_config()
    assert cfg.ppo.cliprange == 0.15 and cfg.kl.kl_estimator == "k3" and cfg.optim.gradient_accumulation_steps == 8
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
    assert m.config["optim"]["gradient_accumulation_steps"] == 2
    sizes = m.rewardlab_config().sizes(1)
    assert (sizes.batch_size, sizes.local_mini_batch_size) == (12, 6)
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
    assert [r.trl_name for r in same.attention] == []
    assert same.rewardlab_config().models.gradient_checkpointing is True  # TRL's PPOConfig default, carried over


TRL_LORA_YAML = """\
sft_model_path: {sft}
reward_model_path: {rm}
total_episodes: 64
learning_rate: 3e-6
adam_epsilon: 1e-8
warmup_steps: 2
per_device_train_batch_size: 4
gradient_accumulation_steps: 4
num_mini_batches: 2
use_peft: true
lora_r: 8
lora_alpha: 16
lora_target_modules: [c_attn, c_proj]
dtype: bfloat16
attn_implementation: sdpa
bf16: true
"""


def _two_label_folder(path: Path) -> Path:
    """A 2-label classifier saved by transformers 5 (no num_labels / id2label in config.json), no rewardlab metadata."""
    from rewardlab.tiny import build_model, build_tokenizer, tiny_config

    tok = build_tokenizer(64)
    build_model("sequence_classification", tiny_config("gpt2", tok, hidden=16, layers=1, num_labels=2)).save_pretrained(path)
    saved = json.loads((path / "config.json").read_text())
    assert "num_labels" not in saved and "id2label" not in saved  # the case this test is about
    return path


def test_trl_yaml_with_lora_and_a_transformers5_two_label_reward_folder(tmp_path):
    rm = _two_label_folder(tmp_path / "rm")
    src = tmp_path / "trl.yaml"
    src.write_text(TRL_LORA_YAML.format(sft=tmp_path / "sft", rm=rm))
    trl = read_trl_config(src)
    assert trl["learning_rate"] == 3e-6 and trl["adam_epsilon"] == 1e-8  # YAML 1.2 floats, as TRL reads them
    m = migrate_trl_ppo(trl)
    cfg = m.rewardlab_config()
    # LoRA stays LoRA, with TRL's settings.
    assert cfg.models.use_peft is True and (cfg.models.lora_r, cfg.models.lora_alpha) == (8, 16)
    assert cfg.models.lora_target_modules == ("c_attn", "c_proj")
    # Same names, same meanings: warm-up in updates, accumulation over the whole batch.
    assert cfg.optim.learning_rate == 3e-6 and cfg.optim.warmup_steps == 2
    assert cfg.optim.gradient_accumulation_steps == 4 and cfg.sizes(1).batch_size == 16
    assert cfg.run.mixed_precision == "bf16"
    # The 2-label folder is read as 2 outputs: no 'raw' reading, a decision is asked for.
    assert "reward_pipeline" not in m.config.get("reward", {})
    attention = {r.trl_name: r for r in m.attention}
    assert "2 outputs" in attention["(reward reading)"].note
    # Memory and precision options are carried over; TRL's default lora_dropout is dropped and marked (!).
    m_ = cfg.models
    assert (m_.dtype, m_.attn_implementation, m_.gradient_checkpointing) == ("bfloat16", "sdpa", True)
    assert "lora_dropout" in attention and not {"dtype", "attn_implementation", "gradient_checkpointing"} & set(attention)
    line = next(ln for ln in m.table().splitlines() if ln.strip().startswith("lora_dropout"))
    assert "(!)" in line, line


def test_float16_weights_become_bfloat16_with_a_mark():
    m = migrate_trl_ppo({"sft_model_path": "a", "reward_model_path": "b", "total_episodes": 8, "dtype": "float16",
                         "gradient_checkpointing": False})
    assert m.rewardlab_config().models.dtype == "bfloat16"
    assert m.rewardlab_config().models.gradient_checkpointing is False
    assert [r.trl_name for r in m.attention] == ["dtype"]


def test_cli_accepts_trl_style_floats(tmp_path):
    src = tmp_path / "trl.yaml"
    src.write_text("sft_model_path: a\nreward_model_path: b\ntotal_episodes: 8\nlearning_rate: 3e-6\n")
    out = tmp_path / "ppo.yaml"
    res = subprocess.run([sys.executable, "-m", "rewardlab.cli", "migrate-trl-ppo", str(src), "-o", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load(out.read_text())["optim"]["learning_rate"] == 3e-6


def test_lora_fields_without_use_peft_are_not_mapped():
    m = migrate_trl_ppo({"lora_r": 8, "total_episodes": 8})
    assert "use_peft" not in m.config.get("models", {}) and "lora_r" not in m.config.get("models", {})
    assert any(r.trl_name == "lora_r" and "use_peft is off" in r.note for r in m.rows)


def test_warmup_steps_count_updates_as_in_trl():
    """TRL 1.10 stepped its scheduler once per update: warmup_steps: 2 ramps the LR over 2 updates here too."""
    from rewardlab.ppo.trainer import PPOTrainer
    from rewardlab.tiny import build_model, build_tokenizer, tiny_config

    m = migrate_trl_ppo({"warmup_steps": 2, "num_ppo_epochs": 2, "num_mini_batches": 2, "per_device_train_batch_size": 2,
                         "gradient_accumulation_steps": 2, "total_episodes": 40, "learning_rate": 1e-3})
    cfg = m.rewardlab_config().replace(["run.progress_bar=false", "models.reward_model_path=null"])
    tok = build_tokenizer(32)
    mc = tiny_config("gpt2", tok, hidden=16, layers=1)
    trainer = PPOTrainer(cfg, policy=build_model("causal_lm", mc), ref_policy=build_model("causal_lm", mc),
                         critic=build_model("sequence_classification", tiny_config("gpt2", tok, hidden=16, layers=1)),
                         tokenizer=tok, reward_fn=lambda p, r: [0.0] * len(r), prompts=["t1 t2"] * 8)
    steps_per_update = 2 * 2  # epochs × minibatches
    ramp = [trainer.scheduler.lr_lambdas[0](k) for k in range(3 * steps_per_update)]
    assert ramp[2 * steps_per_update] == max(ramp)  # the warm-up ends after 2 updates (8 optimiser steps)
    assert all(a < b for a, b in zip(ramp[:2 * steps_per_update], ramp[1:2 * steps_per_update + 1]))


def test_a_model_revision_goes_after_the_policy_name():
    from rewardlab.ppo.migrate import migrate_trl_ppo

    m = migrate_trl_ppo({"sft_model_path": "Org/Policy", "reward_model_path": "Org/RM", "model_revision": "v2",
                         "total_episodes": 64}, reward_num_labels=1)
    assert m.config["models"]["sft_model_path"] == "Org/Policy@v2"
    assert any(r.trl_name == "sft_model_path" and "model_revision='v2'" in r.note for r in m.rows)
    plain = migrate_trl_ppo({"sft_model_path": "Org/Policy", "model_revision": "main", "total_episodes": 64},
                            reward_num_labels=1)
    assert plain.config["models"]["sft_model_path"] == "Org/Policy"


def test_fp16_becomes_fp16_mixed_precision():
    m = migrate_trl_ppo({"fp16": True, "total_episodes": 8})
    assert m.config["run"]["mixed_precision"] == "fp16"
    assert m.rewardlab_config().run.mixed_precision == "fp16"


def test_fields_rewardlab_now_has_are_carried_over():
    m = migrate_trl_ppo({"total_episodes": 8, "dataset_name": "data/prompts.jsonl", "dataset_test_split": "test",
                         "run_name": "ppo-a", "save_total_limit": 3, "eval_steps": 10})
    cfg = m.rewardlab_config()
    assert (cfg.data.dataset_test_split, cfg.run.run_name, cfg.run.save_total_limit) == ("test", "ppo-a", 3)
    row = next(r for r in m.rows if r.trl_name == "eval_steps")
    assert row.rewardlab_name is None and "run.eval_steps" in row.note
