"""Models and datasets by Hugging Face Hub name, as transformers and TRL's scripts resolve them: from a real
Hugging Face cache that the test lays out on disk (huggingface_hub's own layout, `rewardlab.tiny.hub_cache`),
offline. No mock of the resolution: huggingface_hub reads the cache as it would after a download."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Path:
    """A cache holding Org/Policy-0.5B (main, and the tag v1 at another commit), Org/RM and Org/Base, and the
    dataset org/data (configurations main: train 16 rows, test 8; other: train 2)."""
    from rewardlab.reward.metadata import RewardModelMetadata, write_metadata
    from rewardlab.tiny import build_model, build_tokenizer, hub_cache, tiny_config

    root = tmp_path_factory.mktemp("hub")
    tok = build_tokenizer(40)
    for seed, name in ((0, "policy"), (7, "policy_v1"), (3, "base")):
        build_model("causal_lm", tiny_config("gpt2", tok, hidden=16, layers=1), seed=seed).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    config = tiny_config("gpt2", tok, hidden=16, layers=1, num_labels=2)
    write_metadata(config, RewardModelMetadata(semantics="bradley_terry", num_heads=2))
    build_model("sequence_classification", config, seed=1).save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")
    cache = root / "cache"
    hub_cache(cache, "Org/Policy-0.5B", root / "policy", commit="a" * 40)
    hub_cache(cache, "Org/Policy-0.5B", root / "policy_v1", commit="b" * 40, refs=("v1",))
    hub_cache(cache, "Org/RM", root / "rm", commit="c" * 40)
    hub_cache(cache, "Org/Base", root / "base", commit="d" * 40)
    rows = [{"prompt": f"t{i} t{i + 1}", "chosen": f" t{i + 2}", "rejected": f" t{i + 5} t{i}"} for i in range(16)]
    (root / "prefs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "prompts.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows))
    (root / "pairs.jsonl").write_text("".join(json.dumps({"prompt": r["prompt"], "response": r["chosen"]}) + "\n"
                                              for r in rows))
    data = root / "data_repo"
    for folder, split, part in (("main", "train", rows), ("main", "test", rows[:8]), ("other", "train", rows[:2])):
        (data / folder).mkdir(parents=True, exist_ok=True)
        (data / folder / f"{split}.jsonl").write_text("".join(json.dumps({**r, "answer": r["prompt"].split()[0]}) + "\n"
                                                              for r in part))
    (data / "README.md").write_text("---\nconfigs:\n- config_name: main\n  data_files:\n  - split: train\n"
                                    "    path: main/train.jsonl\n  - split: test\n    path: main/test.jsonl\n"
                                    "- config_name: other\n  data_files: other/*.jsonl\n---\n")
    hub_cache(cache, "org/data", data, commit="e" * 40, repo_type="dataset")
    return root


def rewardlab(hub: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(hub / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_DATASETS_CACHE": str(hub / "datasets_cache"), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "rewardlab.cli", *args], cwd=hub, env=env, capture_output=True,
                         text=True, timeout=600)
    return out


def test_ppo_from_hub_names_runs_an_update_and_records_the_commits(hub):
    out = rewardlab(hub, "ppo", "--sft_model_path", "Org/Policy-0.5B", "--reward_model_path", "Org/RM",
                    "--dataset_name", "prompts.jsonl", "--reward_pipeline", "mean", "--response_length", "4",
                    "--batch_size", "8", "--per_device_train_batch_size", "8", "--total_episodes", "8",
                    "--output_dir", "run", "--progress_bar", "false")
    assert out.returncode == 0, out.stderr[-3000:]
    versions = json.loads((hub / "run" / "versions.json").read_text())
    models = versions["hub_models"]
    assert models["models.sft_model_path"] == {"name": "Org/Policy-0.5B", "revision": "main", "commit": "a" * 40}
    assert models["models.reward_model_path"]["commit"] == "c" * 40
    assert (hub / "run" / "policy" / "model.safetensors").exists()


def test_a_revision_picks_its_commit_and_a_missing_one_is_one_line(hub):
    out = rewardlab(hub, "ppo", "--dry-run", "--sft_model_path", "Org/Policy-0.5B@v1", "--reward_model_path", "Org/RM",
                    "--dataset_name", "prompts.jsonl", "--output_dir", "run_v1")
    assert out.returncode == 0, out.stderr[-2000:]
    import huggingface_hub.constants as constants

    from rewardlab.local import hub_snapshot  # the same resolution, in this process

    old = constants.HF_HUB_CACHE
    constants.HF_HUB_CACHE = str(hub / "cache")
    try:
        assert hub_snapshot("Org/Policy-0.5B@v1", "x").endswith("b" * 40)
        assert hub_snapshot("Org/Policy-0.5B", "x").endswith("a" * 40)
    finally:
        constants.HF_HUB_CACHE = old
    out = rewardlab(hub, "ppo", "--dry-run", "--sft_model_path", "Org/Policy-0.5B@v9", "--output_dir", "run_v9")
    assert out.returncode == 2
    line = out.stderr.strip().splitlines()[-1]
    assert "models.sft_model_path='Org/Policy-0.5B' (revision 'v9')" in line and "not in the Hugging Face cache" in line
    assert "Traceback" not in out.stderr


def test_a_local_folder_of_that_name_wins(hub, tmp_path):
    import shutil

    from rewardlab.local import model_folder

    local = tmp_path / "Org" / "RM"
    shutil.copytree(hub / "rm", local)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert model_folder("Org/RM", "models.reward_model_path") == "Org/RM"  # not the cache's snapshot
    finally:
        os.chdir(cwd)


def test_every_command_takes_a_hub_name(hub):
    out = rewardlab(hub, "score", "--reward-model", "Org/RM", "--pipeline", "mean", "--input", "pairs.jsonl",
                    "--output", "scored.jsonl")
    assert out.returncode == 0, out.stderr[-2000:]
    out = rewardlab(hub, "evaluate-rm", "Org/RM", "--preferences", "prefs.jsonl")
    assert out.returncode == 0 and "accuracy" in out.stdout, out.stderr[-2000:]
    out = rewardlab(hub, "inspect", "Org/RM", "--preferences", "prefs.jsonl")
    assert out.returncode == 0 and "recommended pipeline" in out.stdout, out.stderr[-2000:]
    out = rewardlab(hub, "train-rm", "--model", "Org/Base", "--train-file", "prefs.jsonl", "--output-dir", "rm_out",
                    "--max-steps", "1", "--no-progress")
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((hub / "rm_out" / "train_config.json").read_text())
    assert record["hub_models"]["model"]["commit"] == "d" * 40


def test_the_trl_reward_function_and_the_migrated_config_take_hub_names(hub, monkeypatch):
    import huggingface_hub.constants as constants

    from rewardlab.integrations.trl import reward_function

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub / "cache"))
    fn = reward_function("Org/RM", "mean")
    assert len(fn(["t1 t2", "t3"], [" t4", " t5"])) == 2
    (hub / "trl.yaml").write_text("sft_model_path: Org/Policy-0.5B\nreward_model_path: Org/RM\nlearning_rate: 3e-6\n"
                                  "total_episodes: 8\n")
    out = rewardlab(hub, "migrate-trl-ppo", "trl.yaml", "-o", "migrated.yaml")
    assert out.returncode == 0, out.stderr[-2000:]
    out = rewardlab(hub, "ppo", "--dry-run", "--config", "migrated.yaml", "--set", "data.dataset_name=prompts.jsonl",
                    "--set", "run.output_dir=run_migrated")
    assert out.returncode == 0, out.stderr[-2000:]


def test_the_chat_template_file_comes_with_the_tokenizer(hub, monkeypatch):
    import huggingface_hub.constants as constants
    from transformers import AutoTokenizer

    from rewardlab.local import model_folder

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub / "cache"))
    folder = model_folder("Org/Policy-0.5B", "models.sft_model_path", need_tokenizer=True)
    assert os.path.isfile(os.path.join(folder, "chat_template.jinja"))  # the file transformers 5 writes
    assert AutoTokenizer.from_pretrained(folder).chat_template is not None


def test_ppo_from_hub_models_and_a_hub_dataset_with_its_config(hub):
    """The done-when of issue #23: models and data by Hub name, as TRL's scripts take them, offline."""
    out = rewardlab(hub, "ppo", "--sft_model_path", "Org/Policy-0.5B", "--reward_model_path", "Org/RM",
                    "--dataset_name", "org/data", "--dataset_config", "main", "--reward_pipeline", "mean",
                    "--response_length", "4", "--batch_size", "8", "--total_episodes", "8", "--output_dir", "run_ds",
                    "--progress_bar", "false")
    assert out.returncode == 0, out.stderr[-3000:]
    hub_models = json.loads((hub / "run_ds" / "versions.json").read_text())["hub_models"]
    assert hub_models["data.dataset_name"] == {"name": "org/data", "revision": "main", "commit": "e" * 40}
    assert hub_models["models.sft_model_path"]["commit"] == "a" * 40
    out = rewardlab(hub, "ppo", "--dry-run", "--sft_model_path", "Org/Policy-0.5B", "--reward_model_path", "Org/RM",
                    "--dataset_name", "org/data", "--dataset_config", "nope", "--output_dir", "run_nope")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "no configuration 'nope'; choose one with dataset_config: main, other" in out.stderr.strip().splitlines()[-1]


def test_preference_commands_read_hub_and_saved_datasets(hub):
    import datasets

    out = rewardlab(hub, "train-rm", "--model", "Org/Base", "--dataset-name", "org/data", "--dataset-config", "main",
                    "--dataset-test-split", "test", "--output-dir", "rm_ds", "--max-steps", "1", "--no-progress")
    assert out.returncode == 0 and "held-out accuracy" in out.stdout, out.stderr[-2000:]
    record = json.loads((hub / "rm_ds" / "train_config.json").read_text())
    assert record["hub_models"]["dataset_name"]["commit"] == "e" * 40
    rows = [json.loads(line) for line in (hub / "prefs.jsonl").read_text().splitlines()]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:12]),
                          "test": datasets.Dataset.from_list(rows[12:])}).save_to_disk(str(hub / "saved"))
    out = rewardlab(hub, "train-rm", "--model", "Org/Base", "--train-file", "saved", "--dataset-test-split", "test",
                    "--output-dir", "rm_saved", "--max-steps", "1", "--no-progress")
    assert out.returncode == 0 and "held-out accuracy" in out.stdout, out.stderr[-2000:]
    out = rewardlab(hub, "evaluate-rm", "Org/RM", "--preferences", "org/data", "--dataset-config", "main",
                    "--dataset-split", "test", "--device", "cpu")
    assert out.returncode == 0 and "8 preference pairs" in out.stdout, out.stderr[-2000:]
    out = rewardlab(hub, "inspect", "Org/RM", "--preferences", "org/data", "--dataset-config", "main",
                    "--dataset-split", "train[:4]", "--device", "cpu")
    assert out.returncode == 0 and "4 pairs" in out.stdout, out.stderr[-2000:]
    out = rewardlab(hub, "evaluate-rm", "Org/RM", "--preferences", "org/data", "--dataset-config", "main")
    assert out.returncode == 2 and "has the splits train, test; name the one to read" in out.stderr
