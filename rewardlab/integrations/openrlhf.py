"""OpenRLHF's ``.py`` remote reward: ``reward_func(queries, prompts, labels)`` calling `rewardlab serve`.

OpenRLHF can send its queries to the server directly (``--remote_rm_url http://HOST:PORT/get_reward``).
This file is the other route OpenRLHF offers: a URL ending in ``.py`` is imported and its
``reward_func`` called on a chunk of samples, which here become one request to the server (a
batch, instead of one request per sample)::

    export REWARDLAB_URL=http://127.0.0.1:8000            # several replicas: comma-separated
    python -m openrlhf.cli.train_ppo_ray ... \\
        --remote_rm_url $(python -c "import rewardlab.integrations.openrlhf as m; print(m.__file__)")

(OpenRLHF ≥ 0.10 spells the flag ``--reward.remote_url``.) ``labels`` reach rule terms as the
``label`` column; the answer is OpenRLHF's: ``rewards``, ``scores`` and ``extra_logs`` (each
reward term's values), as tensors.
"""

from __future__ import annotations

from typing import Any

_CLIENT: list[Any] = []


def reward_func(queries: list[str], prompts: list[str], labels: list[Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Score OpenRLHF's queries (prompt + response, with special tokens) on the reward server."""
    import torch

    from rewardlab.serve.client import RewardClient

    if not _CLIENT:
        _CLIENT.append(RewardClient())
    body = {"query": list(queries), "prompts": list(prompts), "labels": None if labels is None else list(labels)}
    out = _CLIENT[0].post("/get_reward", body)
    return {"rewards": torch.tensor(out["rewards"], dtype=torch.float32),
            "scores": torch.tensor(out["scores"], dtype=torch.float32),
            "extra_logs": {k: torch.tensor(v, dtype=torch.float32) for k, v in out.get("extra_logs", {}).items()}}
