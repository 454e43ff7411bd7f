"""rewardlab.local: no implicit downloads, and model folders checked before transformers sees them."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from rewardlab.errors import RewardlabError
from rewardlab.local import check_output_dir, check_safetensors, data_source, hub_name, model_folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    from rewardlab.tiny import build_model, build_tokenizer, tiny_config

    folder = str(tmp_path_factory.mktemp("local") / "model")
    tok = build_tokenizer(32)
    build_model("causal_lm", tiny_config("gpt2", tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _copy(model_dir: str, tmp_path, name: str = "m") -> str:
    dst = str(tmp_path / name)
    shutil.copytree(model_dir, dst)
    return dst


def test_a_complete_folder_passes(model_dir):
    assert model_folder(model_dir, "models.sft_model_path", need_tokenizer=True) == model_dir
    check_safetensors(os.path.join(model_dir, "model.safetensors"))


def test_not_set_and_not_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RewardlabError, match="models.sft_model_path is not set"):
        model_folder(None, "models.sft_model_path")
    # a name that is no local path is a Hub name (as transformers reads it); offline and not cached: one line
    with pytest.raises(RewardlabError, match=r"models.sft_model_path='EleutherAI/pythia-14m': no local folder of that "
                                             r"name, and not in the Hugging Face cache .* HF_HUB_OFFLINE=1"):
        model_folder("EleutherAI/pythia-14m", "models.sft_model_path")
    with pytest.raises(RewardlabError, match=r"is not a local folder/file .* nor a Hugging Face Hub name"):
        model_folder(str(tmp_path / "runs" / "sft"), "--model")  # an absolute path is never a Hub name


def test_folder_problems_are_named(model_dir, tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(RewardlabError, match="is a file, not a model folder"):
        model_folder(str(tmp_path / "f.txt"), "m")
    parent = tmp_path / "parent"
    shutil.copytree(model_dir, parent / "policy")
    with pytest.raises(RewardlabError, match=r"has no config.json.*did you mean .*parent/policy"):
        model_folder(str(parent), "m")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(RewardlabError, match="PEFT adapter.*merge_and_unload"):
        model_folder(str(adapter), "m")


def test_broken_config_json_names_the_line(model_dir, tmp_path):
    folder = _copy(model_dir, tmp_path)
    with open(os.path.join(folder, "config.json"), "w") as fh:
        fh.write('{\n "a": 1,\n "b":\n')
    with pytest.raises(RewardlabError, match=r"config.json: line 4, column 1: invalid JSON"):
        model_folder(folder, "m")


def test_pickle_only_refused_with_the_conversion(model_dir, tmp_path):
    folder = _copy(model_dir, tmp_path)
    os.remove(os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "pytorch_model.bin"), "wb") as fh:
        fh.write(b"\x80\x02")
    with pytest.raises(RewardlabError, match=r"no safetensors weights \(only pytorch_model.bin.*save_pretrained"):
        model_folder(folder, "m")
    os.remove(os.path.join(folder, "pytorch_model.bin"))
    with pytest.raises(RewardlabError, match="has no \\*.safetensors weights"):
        model_folder(folder, "m")


@pytest.mark.parametrize("keep", [0, 5, 100, -1])
def test_truncated_safetensors_named(model_dir, tmp_path, keep):
    folder = _copy(model_dir, tmp_path)
    path = os.path.join(folder, "model.safetensors")
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(size - 1 if keep == -1 else keep)
    with pytest.raises(RewardlabError, match=r"model.safetensors is truncated"):
        model_folder(folder, "m")


def test_missing_shard_and_tokenizer(model_dir, tmp_path):
    folder = _copy(model_dir, tmp_path)
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as fh:
        json.dump({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}, fh)
    with pytest.raises(RewardlabError, match="model-00001-of-00002.safetensors, model-00002-of-00002.safetensors"):
        model_folder(folder, "m")
    os.remove(os.path.join(folder, "model.safetensors.index.json"))
    for name in os.listdir(folder):
        if name.startswith("tokenizer") or name in ("vocab.json", "chat_template.jinja", "special_tokens_map.json"):
            os.remove(os.path.join(folder, name))
    model_folder(folder, "m")  # weights alone are fine when no tokenizer is needed
    with pytest.raises(RewardlabError, match="no tokenizer files"):
        model_folder(folder, "m", need_tokenizer=True)


def test_hub_opt_in_offline(monkeypatch):
    """hub:NAME is the one way to download; offline, the hub library's own error reaches the CLI boundary."""
    from rewardlab.boundary import explain

    assert hub_name("hub:org/name") == "org/name" and hub_name("org/name") is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(Exception) as err:
        model_folder("hub:org/none", "models.sft_model_path")
    code, message = explain(err.value)
    assert code == 2 and "HF_HUB_OFFLINE" in message and "local folder" in message


def test_data_source(tmp_path, monkeypatch):
    """Datasets as TRL's dataset_name takes them (hub_ok): a file, a folder, a Hub name; no reading, no network."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n')
    assert data_source("p.jsonl", "data.dataset_name") == ("file", "p.jsonl")
    assert data_source("p.jsonl", "data.dataset_name", hub_ok=True) == ("file", "p.jsonl")
    assert data_source(str(tmp_path), "data.dataset_name", hub_ok=True) == ("folder", str(tmp_path))
    assert data_source("hub:trl-lib/tldr", "data.dataset_name", hub_ok=True) == ("hub", "trl-lib/tldr")
    assert data_source("trl-lib/tldr@v1", "data.dataset_name", hub_ok=True) == ("hub", "trl-lib/tldr@v1")
    with pytest.raises(RewardlabError, match="no such file or folder .*prompts.jsonl does not exist"):
        data_source("data/prompts.jsonl", "data.dataset_name", hub_ok=True)  # a file's name is not a Hub name
    with pytest.raises(RewardlabError, match="nor a Hugging Face Hub dataset name"):
        data_source("./nothing/here", "data.dataset_name", hub_ok=True)
    # A reader of local files only (the study's --prompts): no folders, no Hub names.
    with pytest.raises(RewardlabError, match="this command reads local files only"):
        data_source("hub:trl-lib/tldr", "--prompts")
    with pytest.raises(RewardlabError, match="'trl-lib/tldr' is not a local folder/file; this command does not download"):
        data_source("trl-lib/tldr", "--prompts")
    with pytest.raises(RewardlabError, match="is a folder; give the data file"):
        data_source(str(tmp_path), "--prompts")


def test_output_dir(tmp_path):
    (tmp_path / "f").write_text("x")
    check_output_dir(str(tmp_path / "new" / "deeper"), "run.output_dir")
    with pytest.raises(RewardlabError, match="run.output_dir=.* is a file"):
        check_output_dir(str(tmp_path / "f"), "run.output_dir")
    with pytest.raises(RewardlabError, match="cannot be created: .*f is a file"):
        check_output_dir(str(tmp_path / "f" / "a" / "b"), "run.output_dir")
