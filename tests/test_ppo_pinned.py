"""Pinned PPO trajectories: the metrics and final weights of five small runs, recorded from the code.

They cover every reward path of the trainer: one reward model read through a centred pipeline
with both penalties, a combined pipeline over two reward models, a stacked ensemble, a reward model
whose tokenizer is not the policy's, and a rule-based reward with a group baseline. A refactor of
the reward side or of the trainer's steps must leave them unchanged.

On the machine they were recorded on (same torch build and CPU capability, both stored in the
JSON) the comparison is exact: every metric bit for bit and the SHA-256 of the final policy's
weights. Elsewhere, where other kernels may round differently, metrics are compared to 1e-4.

Re-record (only when a change of numbers is intended, and say so in the commit)::

    .venv/bin/python tests/test_ppo_pinned.py --write
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch

PINNED = Path(__file__).parent / "data" / "pinned_trajectories.json"

RUNS: dict[str, dict] = {
    "rm_lsc_penalties": {
        "reward_model_path": "{d}/rm_a", "reward_pipeline": "mean|lsc(q=0.5)", "num_reference_samples": 2,
        "missing_eos_penalty": 1.0, "overlong_buffer_len": 2, "kl_estimator": "k3", "stop_token": "eos"},
    "combined_two_models": {
        "reward_model_paths": ["{d}/rm_a", "{d}/rm_b"],
        "reward_pipeline": "0.5*[mean|whiten] + 0.5*[running_norm|clip(lo=-1.0,hi=1.0)]",
        "kl_penalty": "loss", "adaptive_kl": True, "target_kl": 0.5},
    "ensemble_centred": {
        "reward_model_paths": ["{d}/rm_a", "{d}/rm_b"], "reward_pipeline": "min|center", "num_reference_samples": 2,
        "critic": "policy_head", "stop_token": "eos"},
    "other_tokenizer": {"reward_model_path": "{d}/rm_other", "reward_pipeline": "whiten", "stop_token": "eos"},
    "rule_rloo": {"reward_pipeline": "raw", "advantage_estimator": "rloo", "num_samples_per_prompt": 2,
                  "whiten_rewards": True},
}


def count_t5(prompts: list[str], responses: list[str]) -> list[float]:
    """The rule of the rule-based run: the fraction of response words that are t5."""
    return [r.split().count("t5") / max(1, len(r.split())) for r in responses]


def build_models(folder: Path) -> None:
    """Policy, two reward models with the policy's tokenizer and one with its own, and prompts."""
    from rewardlab.atomic import write_jsonl
    from rewardlab.reward.metadata import RewardModelMetadata, write_metadata
    from rewardlab.tiny import build_model, build_tokenizer, tiny_config

    tok = build_tokenizer(48)
    policy = build_model("causal_lm", tiny_config("gpt2", tok, hidden=32, layers=1), seed=0)
    policy.save_pretrained(folder / "policy")
    tok.save_pretrained(folder / "policy")
    for name, heads, seed, rm_tok in (("rm_a", 2, 1, tok), ("rm_b", 1, 2, tok), ("rm_other", 1, 3, build_tokenizer(40))):
        config = tiny_config("gpt2", rm_tok, hidden=32, layers=1, num_labels=heads)
        write_metadata(config, RewardModelMetadata(semantics="bradley_terry", num_heads=heads))
        build_model("sequence_classification", config, seed=seed).save_pretrained(folder / name)
        rm_tok.save_pretrained(folder / name)
    write_jsonl(folder / "prompts.jsonl", [{"prompt": " ".join(f"t{(i * 7 + j) % 30}" for j in range(2 + i % 4))}
                                           for i in range(24)])


def run(name: str, folder: Path, out: Path) -> dict:
    """Train run ``name`` for 2 updates; its metrics per update (no timings) and its final weights' hash."""
    from rewardlab.ppo.config import PPOConfig
    from rewardlab.ppo.trainer import PPOTrainer

    settings = {k: ([p.format(d=folder) for p in v] if isinstance(v, list) else
                    v.format(d=folder) if isinstance(v, str) and "{d}" in v else v) for k, v in RUNS[name].items()}
    settings = {"sft_model_path": str(folder / "policy"), "dataset_name": str(folder / "prompts.jsonl"),
                "response_length": 6, "temperature": 1.0, "batch_size": 8, "per_device_train_batch_size": 4,
                "num_mini_batches": 2, "num_ppo_epochs": 2, "learning_rate": 3e-3, "total_episodes": 16,
                "output_dir": str(out), "progress_bar": False, "seed": 3, **settings}
    rule = count_t5 if "reward_model_path" not in settings and "reward_model_paths" not in settings else None
    history = PPOTrainer(PPOConfig.from_dict(settings), reward_fn=rule).train()
    from safetensors.torch import load_file

    ckpt = out / "checkpoints" / "update-2"
    if (ckpt / "policy.safetensors").exists():  # the layout the trajectories were recorded with
        weights = load_file(str(ckpt / "policy.safetensors"))
    else:  # the policy's HF folder: its weights in policy.safetensors' key layout (tied weights included)
        from safetensors.torch import save_model
        from transformers import AutoModelForCausalLM

        save_model(AutoModelForCausalLM.from_pretrained(ckpt / "policy"), str(out / "old-layout.safetensors"))
        weights = load_file(str(out / "old-layout.safetensors"))
    digest = hashlib.sha256()
    for key in sorted(weights):
        digest.update(key.encode())
        digest.update(weights[key].contiguous().view(torch.uint8).numpy().tobytes())
    metrics = [{k: v for k, v in m.items() if not k.startswith(("time/", "reward/term"))} for m in history]
    return {"metrics": metrics, "policy_sha256": digest.hexdigest()}


def environment() -> dict[str, str]:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pinned")
    build_models(folder)
    return folder


@pytest.mark.parametrize("name", sorted(RUNS))
def test_trajectory_is_pinned(name, models, tmp_path):
    pinned = json.loads(PINNED.read_text())
    got = run(name, models, tmp_path / name)
    want = pinned["runs"][name]
    assert [sorted(m) for m in got["metrics"]] == [sorted(m) for m in want["metrics"]]
    if pinned["environment"] == environment():
        assert got["metrics"] == want["metrics"]  # bit for bit
        assert got["policy_sha256"] == want["policy_sha256"]
    else:  # other kernels, other rounding: the same run to 1e-4
        for g, w in zip(got["metrics"], want["metrics"], strict=True):
            assert g == pytest.approx(w, rel=1e-4, abs=1e-6)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    import tempfile

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        build_models(Path(tmp) / "models")
        runs = {name: run(name, Path(tmp) / "models", Path(tmp) / name) for name in sorted(RUNS)}
    PINNED.parent.mkdir(exist_ok=True)
    PINNED.write_text(json.dumps({"environment": environment(), "runs": runs}, indent=1) + "\n")
    print(f"wrote {PINNED}")
