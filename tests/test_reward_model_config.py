"""RewardTrainingConfig: types and ranges checked however it is built (YAML, flags, Python)."""

from __future__ import annotations

import pytest

from rewardlab.errors import RewardlabError
from rewardlab.reward_model.config import RewardTrainingConfig


@pytest.mark.parametrize("kwargs, words", [
    ({"per_device_train_batch_size": "16"}, "per_device_train_batch_size='16' has the wrong type"),
    ({"learning_rate": -1e-4}, "learning_rate=-0.0001 is invalid"),
    ({"learning_rate": "1e-4"}, "without quotes"),
    ({"max_steps": 2.5}, "give a whole number"),
    ({"mode": "ppo"}, "choose one of 'bradley_terry', 'classifier'"),
    ({"weight_decay": float("nan")}, "weight_decay=nan"),
    ({"eval_steps": -1}, "eval_steps=-1"),
    ({"report_to": ["comet_ml"]}, "trackers are"),
    ({"use_margin": "yes"}, "use_margin='yes'"),
])
def test_built_in_python_is_validated(kwargs, words):
    with pytest.raises(RewardlabError) as err:
        RewardTrainingConfig(**kwargs)
    assert words in str(err.value)


def test_ints_widen_lists_parse_and_exponents_read(tmp_path, monkeypatch):
    cfg = RewardTrainingConfig(learning_rate=1, report_to="tensorboard,wandb")
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)
    assert cfg.report_to == ["tensorboard", "wandb"]
    # the CLI's YAML and flags (parsed as `rewardlab train-rm` does): 1e-4 and .5 are numbers
    from rewardlab.cli import build_parser
    from rewardlab.reward_model.commands_train import config_from_args
    from rewardlab.tiny import build_model, build_tokenizer, tiny_config

    monkeypatch.chdir(tmp_path)
    tok = build_tokenizer(32)
    build_model("causal_lm", tiny_config("gpt2", tok)).save_pretrained("base")
    tok.save_pretrained("base")
    (tmp_path / "prefs.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    (tmp_path / "rm.yaml").write_text("model: base\ntrain_file: prefs.jsonl\noutput_dir: out\nlearning_rate: 1e-4\n"
                                      "weight_decay: 1e-2\nwarmup_ratio: .5\n")
    argv = ["train-rm", "--config", "rm.yaml", "--max-grad-norm", "5e-1"]
    cfg = config_from_args(build_parser(argv).parse_args(argv))
    assert (cfg.learning_rate, cfg.weight_decay, cfg.warmup_ratio, cfg.max_grad_norm) == (1e-4, 1e-2, 0.5, 0.5)


def test_from_dict_suggests_and_validate_requires():
    with pytest.raises(RewardlabError, match="did you mean learning_rate"):
        RewardTrainingConfig.from_dict({"lerning_rate": 1e-4})
    with pytest.raises(RewardlabError, match="model is required"):
        RewardTrainingConfig().validate()
    cfg = RewardTrainingConfig(model="m", train_file="t.jsonl", output_dir="o")
    cfg.learning_rate = -1.0  # set after construction: validate() checks again
    with pytest.raises(RewardlabError, match="learning_rate=-1.0"):
        cfg.validate()


def test_check_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("x")
    cfg = RewardTrainingConfig(model="org/base", train_file="t.jsonl", output_dir="out")
    with pytest.raises(RewardlabError, match="model='org/base': no local folder of that name, and not in the Hugging Face "
                                             "cache"):
        cfg.check_paths()
    cfg.model = str(_tiny_model(tmp_path / "base"))
    with pytest.raises(RewardlabError, match="train_file='t.jsonl': no such file or folder"):
        cfg.check_paths()
    (tmp_path / "t.jsonl").write_text("{}\n")
    cfg.output_dir = "a_file"
    with pytest.raises(RewardlabError, match="output_dir='a_file' is a file"):
        cfg.check_paths()


def _tiny_model(folder):
    from rewardlab.tiny import build_model, build_tokenizer, tiny_config

    tok = build_tokenizer(32)
    build_model("causal_lm", tiny_config("gpt2", tok, hidden=16, layers=1)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_trl_spellings_of_the_options():
    """TRL's scripts spell options with underscores and name the base model model_name_or_path."""
    import argparse

    from rewardlab.reward_model.commands_train import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model_name_or_path", "base", "--dataset_name", "org/data", "--dataset-config", "main",
                              "--use_peft", "--lora_r", "8", "--gradient_checkpointing"])
    assert (args.model, args.dataset_name, args.dataset_config, args.use_peft, args.lora_r,
            args.gradient_checkpointing) == ("base", "org/data", "main", True, 8, True)
    assert RewardTrainingConfig.from_dict({"model_name_or_path": "base"}).model == "base"
    with pytest.raises(RewardlabError, match="model and model_name_or_path .* are the same option"):
        RewardTrainingConfig.from_dict({"model_name_or_path": "base", "model": "other"})


@pytest.mark.parametrize("kwargs", [
    {"bootstrap": True},  # one head (the default)
    {"bootstrap": True, "num_heads": 1},
    {"bootstrap": True, "num_heads": 3, "mode": "classifier"},
])
def test_bootstrap_needs_several_bradley_terry_heads(kwargs):
    with pytest.raises(RewardlabError, match=r"bootstrap=True is invalid .*use mode=bradley_terry and num_heads ≥ 2"):
        RewardTrainingConfig(**kwargs)


def test_bootstrap_flag_and_yaml_key(tmp_path):
    import argparse

    from rewardlab.reward_model.commands_train import add_arguments

    assert RewardTrainingConfig(bootstrap=True, num_heads=3).bootstrap is True
    assert RewardTrainingConfig.from_dict({"bootstrap": True, "num_heads": 2}).bootstrap is True
    assert RewardTrainingConfig().bootstrap is False
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--num-heads", "3", "--bootstrap"])
    assert (args.num_heads, args.bootstrap) == (3, True)
    cfg = RewardTrainingConfig(num_heads=3, bootstrap=True)
    cfg.num_heads = 1  # set after construction: validate() checks again
    with pytest.raises(RewardlabError, match="bootstrap=True is invalid"):
        cfg.validate()
