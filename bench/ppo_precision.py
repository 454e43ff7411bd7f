"""Each PPO model's dtype, device and autocast as a run holds them, against what `model_precisions` says.

For each configuration, builds a trainer on tiny local models (`rewardlab ppo --make-tiny`), runs two
updates, and prints one JSON line: the dtype each model holds (``held``), what
`rewardlab.ppo.memory.model_precisions` expects (``expected``), the policy's logits dtype under the
accelerator's autocast, seconds per update, peak GPU memory, and the dtype of the deployed
``policy_merged/`` folder where the configuration writes one. ``ok`` when all agree.

    python bench/ppo_precision.py --device cuda      # bf16 default, fp16, LoRA + merge + save_dtype (bench/gpu_check.sh)
    python bench/ppo_precision.py --device cpu       # the CPU configurations (a smoke run; tests call it)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIGS = {  # name -> overrides; "cuda"/"cpu": where the configuration runs
    "cuda": {
        "bf16_default": {},
        "fp16": {"mixed_precision": "fp16"},
        "lora_merged_bf16": {"use_peft": True, "merge_adapter": True, "save_dtype": "bfloat16"},
    },
    "cpu": {
        "fp32": {"mixed_precision": "no"},
        "bf16_frozen": {"mixed_precision": "bf16", "ref_dtype": "bfloat16", "reward_dtype": "bfloat16"},
        "lora_merged_bf16": {"use_peft": True, "merge_adapter": True, "save_dtype": "bfloat16", "mixed_precision": "no"},
    },
}


def held_dtypes(trainer) -> dict[str, str]:
    """The dtype of the first parameter of each model the trainer holds (the shared LoRA reference: the policy's)."""
    model = trainer.accelerator.unwrap_model(trainer.model)

    def first(m) -> str:
        return str(next(m.parameters()).dtype).replace("torch.", "")

    out = {"policy": first(model.policy)}
    if model.critic is not None:
        out["critic"] = first(model.critic)
    ref = trainer.ref_policy
    out["reference"] = first(ref.peft_model) if hasattr(ref, "peft_model") else first(ref)
    rms = [getattr(r, "model", None) for r in trainer.reward.reward_models]
    if rms and rms[0] is not None:
        out["reward"] = first(rms[0])
    return out


def run_one(name: str, overrides: dict, folder: str, device: str) -> dict:
    from rewardlab.ppo.config import PPOConfig
    from rewardlab.ppo.memory import model_precisions
    from rewardlab.ppo.trainer import PPOTrainer

    cfg = PPOConfig(sft_model_path=f"{folder}/policy", reward_model_path=f"{folder}/reward",
                    dataset_name=f"{folder}/prompts.jsonl", reward_pipeline="mean", response_length=16,
                    per_device_train_batch_size=8, total_episodes=16, num_ppo_epochs=1, progress_bar=False,
                    output_dir=f"{folder}/run_{name}", device=device, **overrides)
    row: dict = {"case": f"ppo_precision:{name}", "ok": False}
    try:
        cuda = device == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer = PPOTrainer(cfg)
        expected = {k: p.dtype for k, p in model_precisions(trainer.cfg, cuda=cuda).items()}
        held = held_dtypes(trainer)
        q, qm, _, _ = trainer._prompt_batch(0)
        policy = trainer.accelerator.unwrap_model(trainer.model).policy
        with torch.no_grad(), trainer.accelerator.autocast():
            logits = policy(input_ids=q.to(trainer.accelerator.device), attention_mask=qm.to(trainer.accelerator.device)).logits
        t0 = time.perf_counter()
        trainer.train()
        seconds = (time.perf_counter() - t0) / trainer.sizes.num_updates
        merged_dtype = None
        if cfg.run.merge_adapter:
            from transformers import AutoModelForCausalLM

            merged_dtype = str(AutoModelForCausalLM.from_pretrained(f"{cfg.run.output_dir}/policy_merged").dtype)
        # "auto" is the saved dtype (float32 for the tiny models)
        want = {k: ("float32" if v == "auto" else v) for k, v in expected.items() if k in held}
        ok = all(held[k] == want[k] for k in want) and (merged_dtype in (None, f"torch.{cfg.run.save_dtype}"))
        row.update(ok=ok, held=held, expected=want, autocast_logits_dtype=str(logits.dtype).replace("torch.", ""),
                   s_per_update=round(seconds, 3), merged_dtype=merged_dtype,
                   peak_gpu_mib=round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None)
    except Exception as err:  # noqa: BLE001 — one line per case, the other cases still run
        row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dir", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--configs", default=None, help="comma-separated names (default: all of the device's)")
    args = parser.parse_args(argv)
    from rewardlab.ppo.commands import make_tiny

    folder = args.dir or tempfile.mkdtemp(prefix="ppo_precision_")
    make_tiny(folder, hidden=64)
    names = args.configs.split(",") if args.configs else list(CONFIGS[args.device])
    rows = [run_one(n, CONFIGS[args.device][n], folder, args.device) for n in names]
    for row in rows:
        print(json.dumps(row), flush=True)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
