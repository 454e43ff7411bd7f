"""PPO for Hugging Face causal LMs against reward models (or rule-based rewards).

    from rewardlab.ppo import PPOTrainer, load_config
    PPOTrainer(load_config("examples/ppo_tiny.yaml")).train()
"""

from rewardlab.ppo.config import PPOConfig, load_config, save_config

__all__ = ["PPOConfig", "PPOTrainer", "load_config", "save_config"]


def __getattr__(name: str):
    # The trainer pulls in transformers/accelerate; import it only when asked for.
    if name == "PPOTrainer":
        from rewardlab.ppo.trainer import PPOTrainer

        return PPOTrainer
    raise AttributeError(name)
