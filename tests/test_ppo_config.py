import dataclasses

import pytest

from rewardlab.errors import RewardlabError
from rewardlab.ppo.config import PPOConfig, field_docs, load_config, save_config


def test_defaults_are_valid_and_frozen():
    cfg = PPOConfig()
    assert cfg.kl.kl_coef == 0.05 and cfg.ppo.cliprange == 0.2
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ppo.cliprange = 0.3  # frozen after validation


def test_yaml_nested_and_flat_keys_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ppo:\n  cliprange: 0.1\nkl_coef: 0.2\nreport_to: [tensorboard]\n")
    cfg = load_config(path, ["seed=7", "generation.temperature=0.5", "report_to=wandb,tensorboard"])
    assert (cfg.ppo.cliprange, cfg.kl.kl_coef, cfg.run.seed, cfg.generation.temperature) == (0.1, 0.2, 7, 0.5)
    assert cfg.run.report_to == ("wandb", "tensorboard")
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg  # the resolved config round-trips


def test_derived_sizes():
    cfg = PPOConfig.from_dict({"per_device_train_batch_size": 4, "num_mini_batches": 2, "batch_size": 32,
                               "total_episodes": 100})
    s = cfg.sizes(world_size=2)
    assert (s.batch_size, s.local_batch_size, s.local_mini_batch_size, s.gradient_accumulation_steps) == (32, 16, 8, 2)
    assert s.num_updates == 4  # ceil(100 / 32)
    trl_style = PPOConfig.from_dict({"per_device_train_batch_size": 4, "gradient_accumulation_steps": 4,
                                     "num_mini_batches": 2}).sizes(world_size=2)
    # TRL 1.10: batch = per_device · accumulation · world, split into num_mini_batches.
    assert (trl_style.batch_size, trl_style.local_mini_batch_size, trl_style.gradient_accumulation_steps) == (32, 8, 2)
    small = PPOConfig.from_dict({"per_device_train_batch_size": 8, "num_mini_batches": 2}).sizes(world_size=1)
    assert (small.batch_size, small.local_mini_batch_size, small.gradient_accumulation_steps) == (8, 4, 1)
    with pytest.raises(RewardlabError, match="not a whole number of micro-batches"):
        PPOConfig.from_dict({"per_device_train_batch_size": 4, "gradient_accumulation_steps": 3, "num_mini_batches": 2})


@pytest.mark.parametrize("overrides, field, words", [
    ({"kl_coef": -0.1}, "kl.kl_coef", "≥ 0"),
    ({"cliprange": 0.0}, "ppo.cliprange", "> 0"),
    ({"cliprange_value": -1.0}, "ppo.cliprange_value", "> 0"),
    ({"response_length": 0}, "generation.response_length", "> 0"),
    ({"batch_size": 30, "num_mini_batches": 4}, "optim.batch_size", "divisible"),
    ({"batch_size": 32, "gradient_accumulation_steps": 3}, "optim.gradient_accumulation_steps", "implies 4"),
    ({"temperature": 0.0}, "generation.temperature", "> 0"),
    ({"lm_head_slice": 16}, "models.lm_head_slice", "0 (off) or ≥ 64"),
    ({"top_p": 1.5}, "generation.top_p", "(0, 1]"),
    ({"gamma": 1.1}, "ppo.gamma", "[0, 1]"),
    ({"advantage_estimator": "rloo"}, "ppo.num_samples_per_prompt", "≥ 2"),
    ({"missing_eos_penalty": 1.0}, "reward.missing_eos_penalty", "stop_token"),
    ({"kl_estimator": "k4"}, "kl.kl_estimator", "'k1', 'k2', 'k3'"),
    ({"temperature": "hot"}, "generation.temperature", "expected float"),
    ({"report_to": ["comet_ml"]}, "run.report_to", "trackers are mlflow, tensorboard"),
    ({"num_samples_per_prompt": 3, "advantage_estimator": "group", "batch_size": 8}, "ppo.num_samples_per_prompt", "divide"),
    ({"reward_pipeline": "mean|nosuch"}, "reward.reward_pipeline", "valid transforms"),
    ({"reward_pipeline": "logodds(pos=1,neg=0)", "reward_semantics": "bradley_terry"}, "reward.reward_pipeline", "mean"),
])
def test_errors_name_field_value_and_rule(overrides, field, words):
    with pytest.raises(RewardlabError) as err:
        PPOConfig.from_dict(overrides)
    msg = str(err.value)
    assert field in msg and words in msg, msg


def test_unknown_keys_suggest_names():
    with pytest.raises(RewardlabError, match="did you mean cliprange"):
        PPOConfig.from_dict({"clip_range": 0.1})
    with pytest.raises(RewardlabError, match="sections"):
        PPOConfig().replace(["nosuch.cliprange=0.1"])
    with pytest.raises(RewardlabError, match="key=value"):
        PPOConfig().replace(["cliprange"])


def test_world_size_divisibility():
    cfg = PPOConfig.from_dict({"batch_size": 8, "per_device_train_batch_size": 4})
    with pytest.raises(RewardlabError, match="world_size"):
        cfg.sizes(world_size=3)


def test_every_field_has_a_doc():
    docs = field_docs()
    assert len(docs) > 50
    assert all(help_ for _, _, _, help_ in docs)
    trl_names = {"kl_coef", "kl_estimator", "cliprange", "cliprange_value", "vf_coef", "gamma", "lam",
                 "whiten_rewards", "response_length", "missing_eos_penalty", "num_ppo_epochs", "num_mini_batches",
                 "total_episodes", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
                 "stop_token", "temperature", "seed", "reward_pipeline", "reward_model_path", "sft_model_path",
                 "value_model_path", "reward_semantics", "num_reference_samples"}
    assert trl_names <= {name for _, name, _, _ in docs}


# ---- what YAML users write, and dataclasses built directly (issue 12)
def test_exponent_floats_in_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learning_rate: 1e-4\nadam_epsilon: 1e-08\ncliprange: .5\nkl:\n  kl_coef: 5E-2\n")
    cfg = load_config(path, ["optim.weight_decay=1e-2", "vf_coef=2.5e-1"])
    assert (cfg.optim.learning_rate, cfg.optim.adam_epsilon, cfg.ppo.cliprange, cfg.kl.kl_coef) == (1e-4, 1e-8, 0.5, 0.05)
    assert (cfg.optim.weight_decay, cfg.ppo.vf_coef) == (0.01, 0.25)
    with pytest.raises(RewardlabError, match=r"optim.learning_rate='1e-4' has the wrong type.*without quotes"):
        load_config(None, ["learning_rate='1e-4'"])


def test_resolved_config_as_json_reads_back(tmp_path):
    """What `ppo --dry-run` prints (JSON of to_dict) is a valid --config: 1e-08 stays a float."""
    import json

    cfg = PPOConfig.from_dict({"learning_rate": 1e-5, "report_to": ["tensorboard"], "batch_size": 8})
    (tmp_path / "resolved.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    assert load_config(tmp_path / "resolved.json") == cfg


@pytest.mark.parametrize("section, kwargs, words", [
    ("KLConfig", {"kl_estimator": "k5"}, "kl.kl_estimator='k5' is not allowed"),
    ("OptimConfig", {"learning_rate": -1e-4}, "optim.learning_rate=-0.0001 is invalid"),
    ("OptimConfig", {"per_device_train_batch_size": "16"}, "optim.per_device_train_batch_size='16' has the wrong type"),
    ("OptimConfig", {"per_device_train_batch_size": 16.0}, "give a whole number"),
    ("RunConfig", {"seed": True}, "run.seed=True"),
    ("PPOHyperConfig", {"cliprange": float("nan")}, "ppo.cliprange=nan"),
])
def test_sections_built_in_python_are_validated(section, kwargs, words):
    import rewardlab.ppo.config as config

    with pytest.raises(RewardlabError) as err:
        getattr(config, section)(**kwargs)
    assert words in str(err.value)


def test_sections_normalise_types():
    from rewardlab.ppo.config import ModelsConfig, OptimConfig

    assert OptimConfig(learning_rate=1).learning_rate == 1.0 and isinstance(OptimConfig(learning_rate=1).learning_rate, float)
    assert ModelsConfig(reward_model_paths=["a", "b"]).reward_model_paths == ("a", "b")


def test_reward_spec_structure_is_checked_with_the_config():
    # A rule function beside a reward model is a second term (TRL's reward_funcs=[rm, fn]), no longer refused;
    # the function itself is imported only when the run starts (config validation runs no user code).
    assert PPOConfig.from_dict({"reward_fn": "pkg.mod:fn", "reward_model_path": "runs/rm"}).reward.reward_fn == "pkg.mod:fn"
    with pytest.raises(RewardlabError, match=r"reward term rm1: there are only 1 reward model\(s\)"):
        PPOConfig.from_dict({"reward_pipeline": "[rm1:mean] + [fn:pkg.mod:fn]", "reward_model_path": "runs/rm"})
    with pytest.raises(RewardlabError, match="some terms name their source and some do not"):
        PPOConfig.from_dict({"reward_pipeline": "[rm:mean] + [raw]", "reward_model_path": "runs/rm"})
    with pytest.raises(RewardlabError, match=r"has 2 terms but there are 3 reward model\(s\)"):
        PPOConfig.from_dict({"reward_pipeline": "[mean] + [mean]", "reward_model_paths": ["a", "b", "c"]})
    with pytest.raises(RewardlabError, match=r"reward model\(s\) \[1\] are read by no term"):
        PPOConfig.from_dict({"reward_pipeline": "[rm0:mean] + [fn:pkg.mod:fn]", "reward_model_paths": ["a", "b"]})
    with pytest.raises(RewardlabError, match="is not a function name"):
        PPOConfig.from_dict({"reward_pipeline": "[rm:mean] + [fn:not a name]", "reward_model_path": "runs/rm"})


def test_trl_keys_point_to_the_migration():
    for key in ("model_name_or_path", "warmup_ratio", "num_train_epochs", "tf32"):
        with pytest.raises(RewardlabError, match=f"'{key}'.*rewardlab migrate-trl-ppo"):
            PPOConfig.from_dict({key: 1})


def test_malformed_yaml_names_the_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("kl_coef: 0.1\nppo: {cliprange: 0.2\nseed: 3\n")
    with pytest.raises(RewardlabError, match=r"bad\.yaml: line 3, column \d+: invalid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_docs_config_reference_is_current():
    """docs/ppo.md's "Config reference" is `config_reference()` verbatim (regenerate it when a field changes)."""
    from pathlib import Path

    from rewardlab.ppo.config import config_reference

    docs = (Path(__file__).resolve().parents[1] / "docs" / "ppo.md").read_text(encoding="utf-8")
    assert config_reference() in docs, "regenerate docs/ppo.md's Config reference from rewardlab.ppo.config.config_reference()"
