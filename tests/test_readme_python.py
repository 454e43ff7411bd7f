"""The README's "PPO from Python, with TRL's arguments" example, run as it is printed.

The Hub names it uses resolve offline from a Hugging Face cache laid out on disk
(`rewardlab.tiny.hub_cache`), holding small random-weight models and a small dataset saved under those
names: the snippet's own code path (transformers' `from_pretrained` by name, rewardlab's resolution of
the policy and the dataset), with nothing downloaded.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_snippet() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    code = re.search(r"### PPO from Python, with TRL's arguments\n\n```python\n(.*?)```", readme, re.S).group(1)
    assert len(code.strip().splitlines()) <= 20, "the README promises an example of at most 20 lines"
    return code


def test_the_readme_python_example_runs(tmp_path):
    from rewardlab.tiny import build_model, build_tokenizer, hub_cache, tiny_config

    code = readme_snippet()
    policy_name = re.search(r'model="([^"]+)"', code).group(1)
    rm_name = re.search(r'AutoModelForSequenceClassification\.from_pretrained\("([^"]+)"\)', code).group(1)
    data_name = re.search(r'dataset_name="([^"]+)"', code).group(1)
    tok = build_tokenizer(40)
    build_model("causal_lm", tiny_config("gpt2", tok, hidden=16, layers=1), seed=0).save_pretrained(tmp_path / "p")
    tok.save_pretrained(tmp_path / "p")
    build_model("sequence_classification", tiny_config("gpt2", tok, hidden=16, layers=1, num_labels=1),
                seed=1).save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"prompt": f"t{i % 30} t{(i * 3) % 30} t{(i * 7) % 30}", "completion": f" t{i % 11}"} for i in range(600)]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cache = tmp_path / "cache"
    hub_cache(cache, policy_name, tmp_path / "p")
    hub_cache(cache, rm_name, tmp_path / "rm")
    hub_cache(cache, data_name, data, repo_type="dataset")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "dc"),
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    run = work / re.search(r'output_dir="([^"]+)"', code).group(1)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(run / "policy").config.vocab_size == 40
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 8 and all(math.isfinite(m["objective/scores"]) for m in metrics)  # 64 episodes, 8 a batch
    hub_models = json.loads((run / "versions.json").read_text())["hub_models"]
    assert hub_models["models.sft_model_path"]["name"] == policy_name
    assert hub_models["data.dataset_name"]["name"] == data_name
