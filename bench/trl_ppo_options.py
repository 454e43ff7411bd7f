"""Run the shared ``bench_trl_ppo.py`` (TRL 1.10's PPOTrainer) with gradient checkpointing off or a LoRA peft_config.

Used by ``bench/memory.py`` under the TRL venv; every other flag goes to ``bench_trl_ppo.py`` unchanged.
``--peft`` passes ``peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0)`` (TRL's ModelConfig r and α;
dropout 0 as rewardlab's) and no reference model, so TRL uses the policy with its adapter disabled;
the script's own second policy load (its reference) is skipped so that it does not count in memory.

    /tmp/venv-trl110/bin/python bench/trl_ppo_options.py --trl-dir ../shared/bench/trl_baseline --peft \\
        --model-dir /tmp/m --batch-size 8 --response-length 128 --updates 2
"""

import argparse
import sys

pre = argparse.ArgumentParser(add_help=False)
pre.add_argument("--trl-dir", required=True)
pre.add_argument("--gradient-checkpointing", choices=["on", "off"], default=None)
pre.add_argument("--peft", action="store_true")
opts, rest = pre.parse_known_args()
sys.argv = [sys.argv[0], *rest]
sys.path.insert(0, opts.trl_dir)

import bench_trl_ppo  # noqa: E402  (sets the offline environment first)
import trl.experimental.ppo as ppo  # noqa: E402

_Config, _Trainer = ppo.PPOConfig, ppo.PPOTrainer


def config(*args, **kwargs):
    if opts.gradient_checkpointing is not None:
        kwargs["gradient_checkpointing"] = opts.gradient_checkpointing == "on"
    return _Config(*args, **kwargs)


def trainer(*args, **kwargs):
    if opts.peft:
        from peft import LoraConfig

        kwargs["peft_config"] = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.0)
        kwargs["ref_model"] = None
    return _Trainer(*args, **kwargs)


ppo.PPOConfig, ppo.PPOTrainer = config, trainer
if opts.peft:  # the script loads the policy twice (policy, reference): hand back None for the second load
    _Auto = bench_trl_ppo.AutoModelForCausalLM

    class _OnePolicy:
        calls = 0

        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            cls.calls += 1
            return _Auto.from_pretrained(*args, **kwargs) if cls.calls == 1 else None

    bench_trl_ppo.AutoModelForCausalLM = _OnePolicy
bench_trl_ppo.main()
