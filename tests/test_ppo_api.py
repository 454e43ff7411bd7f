"""TRL's Python API: ``PPOConfig(**flat names)`` and ``PPOTrainer(args=, processing_class=, model=, …)``,
each model an object or a name (rewardlab.ppo.api)."""

from __future__ import annotations

import pytest
import torch

from rewardlab.errors import RewardlabError
from rewardlab.ppo.config import KLConfig, PPOConfig
from rewardlab.reward.metadata import RewardModelMetadata, write_metadata
from rewardlab.tiny import build_model, build_tokenizer, tiny_config


def test_config_takes_flat_trl_names():
    cfg = PPOConfig(learning_rate=1e-6, output_dir="runs/x", per_device_train_batch_size=4, kl_coef=0.2,
                    bf16=True, report_to="none", dataset_name="prompts.jsonl", dataset_train_split="train[:10]")
    assert (cfg.optim.learning_rate, cfg.run.output_dir, cfg.optim.per_device_train_batch_size) == (1e-6, "runs/x", 4)
    assert (cfg.kl.kl_coef, cfg.run.mixed_precision, cfg.run.report_to) == (0.2, "bf16", ())
    assert (cfg.data.dataset_name, cfg.data.dataset_train_split) == ("prompts.jsonl", "train[:10]")
    assert PPOConfig(fp16=True).run.mixed_precision == "fp16"
    assert PPOConfig(bf16=False, fp16=False).run.mixed_precision == "no"
    assert PPOConfig(report_to="wandb").run.report_to == ("wandb",)
    # sections and flat names together; the defaults equal those of from_dict
    assert PPOConfig(kl=KLConfig(kl_coef=0.3), kl_estimator="k3").kl == KLConfig(kl_coef=0.3, kl_estimator="k3")
    assert PPOConfig() == PPOConfig.from_dict({})
    # the earlier names of the data fields still read
    assert PPOConfig.from_dict({"data": {"dataset": "p.jsonl", "dataset_split": "t"}}).data == \
        PPOConfig(dataset_name="p.jsonl", dataset_train_split="t").data


def test_config_refuses_unknown_and_unconverted_names():
    with pytest.raises(RewardlabError, match="unknown config key 'learning_rat'; did you mean learning_rate"):
        PPOConfig(learning_rat=1e-6)
    with pytest.raises(RewardlabError, match="'num_train_epochs': it is a TRL .* migrate-trl-ppo"):
        PPOConfig(num_train_epochs=1)
    with pytest.raises(RewardlabError, match="bf16='yes' is invalid: true or false"):
        PPOConfig(bf16="yes")
    with pytest.raises(RewardlabError, match="optim.learning_rate=-1"):
        PPOConfig(learning_rate=-1)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tiny policy and two transformers reward models (1 and 2 outputs), as objects and as folders."""
    folder = tmp_path_factory.mktemp("api")
    tok = build_tokenizer(48)
    policy = build_model("causal_lm", tiny_config("gpt2", tok, hidden=32, layers=1), seed=0)
    policy.save_pretrained(folder / "policy")
    tok.save_pretrained(folder / "policy")
    rms = {}
    for heads in (1, 2):
        config = tiny_config("gpt2", tok, hidden=32, layers=1, num_labels=heads)
        rms[heads] = build_model("sequence_classification", config, seed=heads)
    bt = tiny_config("gpt2", tok, hidden=32, layers=1, num_labels=2)
    write_metadata(bt, RewardModelMetadata(semantics="bradley_terry", num_heads=2))
    build_model("sequence_classification", bt, seed=5).save_pretrained(folder / "rm")
    tok.save_pretrained(folder / "rm")
    prompts = [{"prompt": " ".join(f"t{(i * 5 + j) % 30}" for j in range(2 + i % 3)), "answer": f"t{i % 30}"}
               for i in range(16)]
    return {"folder": folder, "tok": tok, "policy": policy, "rms": rms, "prompts": prompts}


def _args(tmp_path, **kw) -> PPOConfig:
    return PPOConfig(output_dir=str(tmp_path / "out"), total_episodes=4, per_device_train_batch_size=4,
                     response_length=4, num_ppo_epochs=1, progress_bar=False, **kw)


def test_trainer_takes_trl_arguments_as_objects(parts, tmp_path):
    """TRL's keywords with in-memory objects: a transformers reward model, a datasets.Dataset, no reference
    model and no value model (the frozen copy and the default critic are made here), then save_model."""
    import datasets
    from transformers import AutoModelForCausalLM

    from rewardlab.ppo.trainer import PPOTrainer

    policy = build_model("causal_lm", parts["policy"].config, seed=0)
    start = {k: v.clone() for k, v in policy.state_dict().items()}
    trainer = PPOTrainer(args=_args(tmp_path, learning_rate=1e-2), processing_class=parts["tok"], model=policy,
                         ref_model=None, reward_model=parts["rms"][1], value_model=None,
                         train_dataset=datasets.Dataset.from_list(parts["prompts"]))
    ref = trainer.ref_policy
    assert ref is not policy and not any(p.requires_grad for p in ref.parameters())
    assert trainer.model.critic is not None and trainer.model.critic.config.num_labels == 1
    history = trainer.train()
    assert len(history) == 1
    moved = any(not torch.equal(start[k], v) for k, v in policy.state_dict().items())
    assert moved, "the policy did not train"
    assert all(torch.equal(start[k], v) for k, v in ref.state_dict().items()), "the reference copy moved"
    folder = trainer.save_model(str(tmp_path / "saved"))
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in policy.state_dict().items() if k in loaded.state_dict())


def test_trainer_takes_models_by_name(parts, tmp_path):
    from rewardlab.ppo.trainer import PPOTrainer

    f = parts["folder"]
    trainer = PPOTrainer(_args(tmp_path), model=str(f / "policy"), reward_model=str(f / "rm"),
                         train_dataset=parts["prompts"], reward_funcs=[_first_word_correct],
                         peft_config=_lora(r=4, lora_alpha=8))
    assert trainer.cfg.models.sft_model_path == str(f / "policy")
    assert (trainer.cfg.models.use_peft, trainer.cfg.models.lora_r, trainer.cfg.models.lora_alpha) == (True, 4, 8)
    assert len(trainer.train()) == 1


def _first_word_correct(prompts, completions, answer, **kw):
    return [float(p.split()[0] == a) for p, a in zip(prompts, answer, strict=True)]


def _lora(**kw):
    peft = pytest.importorskip("peft")
    return peft.LoraConfig(**kw)


def test_undeclared_two_logit_reward_model_is_refused_then_declared(parts, tmp_path):
    from rewardlab.ppo.trainer import PPOTrainer

    kw = dict(processing_class=parts["tok"], model=parts["policy"], reward_model=parts["rms"][2],
              train_dataset=parts["prompts"])
    with pytest.raises(RewardlabError, match="2 outputs but its head semantics are not declared"):
        PPOTrainer(_args(tmp_path), **kw)
    trainer = PPOTrainer(_args(tmp_path, reward_semantics="bradley_terry", allow_semantics_mismatch=True), **kw)
    assert trainer.reward.reward_models[0].semantics == "bradley_terry"


def test_eval_dataset_gives_the_evaluation_prompts(parts, tmp_path):
    """TRL's eval_dataset (a datasets.Dataset here): the prompts evaluated during training, columns kept."""
    import datasets

    from rewardlab.ppo.trainer import PPOTrainer

    evaluation = datasets.Dataset.from_list(parts["prompts"][:3])
    trainer = PPOTrainer(_args(tmp_path), processing_class=parts["tok"], model=parts["policy"],
                         reward_model=parts["rms"][1], train_dataset=parts["prompts"][3:], eval_dataset=evaluation)
    assert trainer.eval_prompts.prompts == [r["prompt"] for r in parts["prompts"][:3]]
    assert trainer.eval_prompts.columns["answer"] == [r["answer"] for r in parts["prompts"][:3]]
    assert len(trainer.prompts.prompts) == 13  # training prompts untouched


def test_bad_trl_arguments_are_refused(parts, tmp_path):
    from rewardlab.ppo.trainer import PPOTrainer

    kw = dict(processing_class=parts["tok"], model=parts["policy"], reward_model=parts["rms"][1],
              train_dataset=parts["prompts"])
    with pytest.raises(RewardlabError, match="pass the run's PPOConfig once"):
        PPOTrainer(_args(tmp_path), config=_args(tmp_path), **kw)
    with pytest.raises(RewardlabError, match="model= and policy= are the same argument"):
        PPOTrainer(_args(tmp_path), policy=parts["policy"], **kw)
    with pytest.raises(RewardlabError, match="lora_dropout=0.1: rewardlab's LoRA has no dropout"):
        PPOTrainer(_args(tmp_path), peft_config=_lora(r=4, lora_dropout=0.1), **kw)
    with pytest.raises(RewardlabError, match="reward_model=Linear is neither"):
        PPOTrainer(_args(tmp_path), **{**kw, "reward_model": torch.nn.Linear(2, 2)})
