"""Every runnable example, run as the README and the example files say, so that none can rot.

Runs in a temporary working directory (the examples use relative `runs/...` paths).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
RUNNABLE = {"make_tiny_rm_data.py", "train_rm_tiny.yaml", "ppo_tiny.yaml", "ppo_tiny_rules.yaml", "tiny_rules.py"}


def _run(args: list[str], cwd: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rewardlab.cli", *args]


def test_every_example_file_is_covered_here():
    files = {f for f in os.listdir(EXAMPLES) if os.path.isfile(os.path.join(EXAMPLES, f))}
    assert files <= RUNNABLE, f"new example(s) {files - RUNNABLE}: add them to tests/test_examples.py"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("examples"))


def test_reward_model_examples(workdir):
    """README: make data, train-rm, evaluate-rm, inspect; then the README's Python scoring snippet."""
    _run([sys.executable, os.path.join(EXAMPLES, "make_tiny_rm_data.py"), "runs/tiny-data"], workdir)
    _run(_cli("train-rm", "--config", os.path.join(EXAMPLES, "train_rm_tiny.yaml")), workdir)
    out = _run(_cli("evaluate-rm", "runs/tiny-rm", "--preferences", "runs/tiny-data/eval.jsonl"), workdir)
    assert "accuracy" in out
    out = _run(_cli("inspect", "runs/tiny-rm", "--preferences", "runs/tiny-data/eval.jsonl"), workdir)
    assert "recommended pipeline:" in out and "bradley_terry" in out
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    snippet = re.search(r"### Score with a reward model.*?```python\n(.*?)```", readme, re.S).group(1)
    code = snippet + "\nassert out.scores.shape == (2,) and 'reward/saturated_frac' in out.diagnostics\nprint('ok')\n"
    assert _run([sys.executable, "-c", code], workdir).strip().endswith("ok")


def test_ppo_example(workdir):
    _run(_cli("ppo", "--make-tiny", "runs/tiny", "--config", os.path.join(EXAMPLES, "ppo_tiny.yaml")), workdir)
    out = os.path.join(workdir, "runs", "ppo_tiny")
    for name in ("policy", "metrics.jsonl"):
        assert os.path.exists(os.path.join(out, name)), name


def test_ppo_rules_example(workdir):
    """A reward model and a rule term reading the `answer` column, from YAML, run from the repository
    layout (the config names the rule by file: examples/tiny_rules.py); each term is logged."""
    import json

    link = os.path.join(workdir, "examples")
    if not os.path.exists(link):
        os.symlink(EXAMPLES, link)
    _run(_cli("ppo", "--make-tiny", "runs/tiny", "--config", "examples/ppo_tiny_rules.yaml"), workdir)
    out = os.path.join(workdir, "runs", "ppo_tiny_rules")
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"), encoding="utf-8")]
    assert rows and all(0.0 <= r["reward/term/says_answer/raw/mean"] <= 1.0 for r in rows)
    assert all({"reward/term/rm/raw/mean", "reward/term/rm/final/mean", "reward/term/says_answer/applied_frac"}
               <= set(r) for r in rows)
    spec = open(os.path.join(out, "pipeline.txt"), encoding="utf-8").read().strip()
    assert spec == "1.0*[rm:mean|lsc(q=0.5)] + 0.5*[fn:examples/tiny_rules.py:says_answer]"


def test_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    folder = os.path.join(EXAMPLES, "accelerate")
    names = sorted(os.listdir(folder))
    assert {"ddp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "fsdp.yaml"} <= set(names)
    for name in names:
        assert load_config_from_file(os.path.join(folder, name)) is not None, name
