"""`rewardlab.datasets_io`: every source TRL's scripts take (local files, save_to_disk and dataset folders,
Hub datasets from a real offline cache laid out on disk, in-memory datasets), split expressions, and one
clear line for each way a source can be wrong. Also TRL's implicit-prompt preferences and the PPO prompts
read through it. Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rewardlab.datasets_io import load_split
from rewardlab.errors import RewardlabError

ROWS = [{"prompt": f"t{i} t{i + 1}", "chosen": f" t{i + 2}", "rejected": f" t{i + 5} t{i}", "answer": f"a{i}"}
        for i in range(6)]
CARD = """---
configs:
- config_name: main
  data_files:
  - split: train
    path: main/train.jsonl
  - split: test
    path: main/test.jsonl
- config_name: other
  data_files: other/*.jsonl
---
# a test dataset
"""


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def dataset_folder(folder: Path) -> Path:
    """Two configurations in README.md: main (train: 4 rows, test: 2) and other (train: 1 row)."""
    write_jsonl(folder / "main" / "train.jsonl", ROWS[:4])
    write_jsonl(folder / "main" / "test.jsonl", ROWS[4:])
    write_jsonl(folder / "other" / "train.jsonl", ROWS[:1])
    (folder / "README.md").write_text(CARD)
    return folder


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """datasets' own cache in the test's folder; the Hub cache a folder of the test's, offline."""
    import datasets
    import huggingface_hub.constants as constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def hub(tmp_path) -> Path:
    """org/data in the Hub cache: main at commit e…e, the tag v1 at f…f (main's train holds 1 row there)."""
    from rewardlab.tiny import hub_cache

    hub_cache(tmp_path / "hub", "org/data", dataset_folder(tmp_path / "repo"), commit="e" * 40, repo_type="dataset")
    old = tmp_path / "repo_v1"
    dataset_folder(old)
    write_jsonl(old / "main" / "train.jsonl", ROWS[:1])
    hub_cache(tmp_path / "hub", "org/data", old, commit="f" * 40, refs=("v1",), repo_type="dataset")
    return tmp_path / "hub"


# ---- local sources
@pytest.mark.parametrize("ext", [".jsonl", ".json", ".csv", ".parquet", ".arrow"])
def test_each_file_format_reads_every_column(tmp_path, ext):
    import datasets

    path = tmp_path / f"data{ext}"
    frame = datasets.Dataset.from_list(ROWS)
    if ext in (".jsonl", ".json"):
        write_jsonl(path, ROWS)
    elif ext == ".csv":
        frame.to_csv(str(path), index=False)
    elif ext == ".parquet":
        frame.to_parquet(str(path))
    else:
        frame.save_to_disk(str(tmp_path / "saved"))
        path = next((tmp_path / "saved").glob("*.arrow"))
    ds = load_split(str(path))
    assert ds.column_names == ["prompt", "chosen", "rejected", "answer"] and ds["answer"] == [r["answer"] for r in ROWS]
    assert len(load_split(str(path), split="train[:2]")) == 2


def test_save_to_disk_folders_dataset_and_dataset_dict(tmp_path):
    import datasets

    one = datasets.Dataset.from_list(ROWS)
    one.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": one, "test": one.select(range(2))}).save_to_disk(str(tmp_path / "two"))
    assert len(load_split("one")) == 6
    assert len(load_split("two", split="test")) == 2
    assert len(load_split("two", split="train[:3]+test")) == 5
    with pytest.raises(RewardlabError, match=r"no split 'validation'; its splits: train, test"):
        load_split("two", split="validation", field="train_file")
    with pytest.raises(RewardlabError, match=r"has the splits train, test; name the one to read"):
        load_split("two", split=None)


def test_a_dataset_folder_with_configurations_in_its_card(tmp_path):
    dataset_folder(tmp_path / "local")
    assert len(load_split("local", config="main", split="train")) == 4
    assert load_split("local", config="main", split="test")["answer"] == ["a4", "a5"]
    assert len(load_split("local", config="other")) == 1
    assert len(load_split("local", config="main", split="train[:50%]")) == 2


def test_a_plain_folder_of_split_files(tmp_path):
    write_jsonl(tmp_path / "plain" / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "plain" / "test.jsonl", ROWS[:2])
    assert len(load_split("plain")) == 6 and len(load_split("plain", split="test")) == 2


def test_datasets_in_python():
    import datasets

    ds = datasets.Dataset.from_list(ROWS)
    assert load_split(ds) is ds
    assert len(load_split(datasets.DatasetDict({"train": ds, "test": ds.select([0])}), split="test")) == 1


# ---- Hub datasets from the offline cache
def test_a_hub_dataset_with_config_split_and_revision(hub):
    from rewardlab.local import resolved_models

    ds = load_split("org/data", config="main", split="train", field="data.dataset_name")
    assert len(ds) == 4 and ds.column_names == ["prompt", "chosen", "rejected", "answer"]
    assert resolved_models()["data.dataset_name"] == {"name": "org/data", "revision": "main", "commit": "e" * 40}
    assert len(load_split("hub:org/data", config="main", split="test")) == 2
    assert len(load_split("org/data", config="main", split="train[:1]+test")) == 3
    assert len(load_split("org/data@v1", config="main", split="train", field="x")) == 1
    assert resolved_models()["x"] == {"name": "org/data", "revision": "v1", "commit": "f" * 40}


def one_line(fn) -> str:
    with pytest.raises(RewardlabError) as err:
        fn()
    text = str(err.value)
    assert "\n" not in text, text
    return text


def test_hub_dataset_errors_are_one_line_with_the_choices(hub):
    text = one_line(lambda: load_split("org/nothing", field="data.dataset_name"))
    assert text.startswith("data.dataset_name='org/nothing': no local file or folder of that name, and not in the "
                           "Hugging Face cache") and "hf download org/nothing --repo-type dataset" in text
    text = one_line(lambda: load_split("org/data@v9", config="main", field="data.dataset_name"))
    assert "data.dataset_name='org/data' (revision 'v9')" in text and "--revision v9" in text
    text = one_line(lambda: load_split("org/data", config="nope", field="data.dataset_name"))
    assert "no configuration 'nope'; choose one with dataset_config: main, other" in text
    text = one_line(lambda: load_split("org/data", field="data.dataset_name"))
    assert "has several configurations; choose one with dataset_config: main, other" in text
    text = one_line(lambda: load_split("org/data", config="main", split="validation", field="data.dataset_name"))
    assert "(config 'main') has no split 'validation'; its splits: train, test" in text


def test_configurations_are_checked_on_the_card_before_any_data_comes(tmp_path, hub):
    """Online, only README.md comes first: a wrong configuration is named from it, no data fetched."""
    from rewardlab.tiny import hub_cache

    (tmp_path / "card").mkdir()
    (tmp_path / "card" / "README.md").write_text(CARD)
    hub_cache(hub, "org/card-only", tmp_path / "card", commit="1" * 40, repo_type="dataset")
    text = one_line(lambda: load_split("org/card-only", config="nope", field="data.dataset_name"))
    assert text == "data.dataset_name='org/card-only' has no configuration 'nope'; choose one with dataset_config: main, other"
    assert "has several configurations" in one_line(lambda: load_split("org/card-only"))


def test_local_source_errors(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", ROWS)
    assert "no such file or folder" in one_line(lambda: load_split("missing.jsonl", field="data.dataset_name"))
    assert "unsupported file type '.txt'" in one_line(lambda: load_split("data.txt"))
    (tmp_path / "notes.txt").write_text("hello")
    assert "unsupported file type '.txt'" in one_line(lambda: load_split("notes.txt"))
    assert "single file, which has no configurations" in one_line(lambda: load_split("p.jsonl", config="main"))
    assert "its one split is 'train'" in one_line(lambda: load_split("p.jsonl", split="test"))
    (tmp_path / "empty").mkdir()
    assert "no data files found" in one_line(lambda: load_split("empty"))
    import datasets

    assert "the Dataset: no rows" in one_line(lambda: load_split(datasets.Dataset.from_list(ROWS).select([])))
    write_jsonl(tmp_path / "blank" / "train.jsonl", [])
    assert "blank" in one_line(lambda: load_split("blank"))


# ---- preference data in TRL's formats
def test_preferences_from_a_hub_dataset_and_a_missing_column(hub):
    from rewardlab.reward_model.data import read_preferences

    assert len(read_preferences("org/data", config="main", split="test")) == 2
    write_jsonl(Path("prompts_only/train.jsonl"), [{"prompt": "t1"}])
    text = one_line(lambda: read_preferences("prompts_only", field="--preferences"))
    assert "missing column(s) 'chosen', 'rejected'" in text and "found: prompt" in text


def test_conversational_data_a_tokenizer_cannot_render(tmp_path):
    from rewardlab.reward_model.data import read_preferences, tokenize_preferences
    from rewardlab.tiny import build_tokenizer

    rows = [{"prompt": [{"role": "user", "content": "t1"}], "chosen": [{"role": "assistant", "content": "t2"}],
             "rejected": [{"role": "assistant", "content": "t3"}]}]
    ds = read_preferences(write_jsonl(tmp_path / "chat.jsonl", rows))
    text = one_line(lambda: tokenize_preferences(ds, build_tokenizer(32, chat_template=False)))
    assert text.startswith("row 1, column 'chosen': the data is conversational") and "no chat template" in text
    strict = build_tokenizer(32)
    strict.chat_template = "{{ raise_exception('roles must alternate') }}"
    text = one_line(lambda: tokenize_preferences(ds, strict))
    assert "chat template cannot render" in text and "roles must alternate" in text


def test_implicit_prompts_are_extracted_for_grouping(tmp_path):
    from rewardlab.reward_model.data import read_preferences, shared_prompt, split_pairs, tokenize_preferences
    from rewardlab.tiny import build_tokenizer

    assert shared_prompt("t1 t2 t3 t4", "t1 t2 t5") == "t1 t2"
    assert shared_prompt("t1 t2 t33", "t1 t2 t34") == "t1 t2"  # a shared part of a word stays in the responses
    assert shared_prompt("t1 t2 t3", "t1 t2 t34") == "t1 t2"
    assert shared_prompt("t1", "t2") is None
    user = {"role": "user", "content": "t1"}
    assert shared_prompt([user, {"role": "assistant", "content": "t2"}],
                         [user, {"role": "assistant", "content": "t3"}]) == [user]
    rows = [{"chosen": f"t{i % 3} t9 t{i}", "rejected": f"t{i % 3} t9 t{i + 10}"} for i in range(9)]
    pairs = tokenize_preferences(read_preferences(write_jsonl(tmp_path / "implicit.jsonl", rows)),
                                 build_tokenizer(32))
    assert len(set(pairs.prompts)) == 3
    train, held = split_pairs(pairs, 0.34, seed=0)
    assert not set(train.prompts) & set(held.prompts) and len(held) == 3


# ---- PPO prompts
def test_ppo_prompts_from_a_hub_dataset_keep_every_column(hub):
    from rewardlab.ppo.config import DataConfig
    from rewardlab.ppo.prompts import load_prompt_rows

    prompts, columns = load_prompt_rows(DataConfig(dataset_name="org/data", dataset_config="main",
                                                   dataset_train_split="test"))
    assert prompts == [ROWS[4]["prompt"], ROWS[5]["prompt"]]
    assert columns["answer"] == ["a4", "a5"] and set(columns) == {"chosen", "rejected", "answer"}
    text = one_line(lambda: load_prompt_rows(DataConfig(dataset_name="org/data", dataset_config="main",
                                                        prompt_column="question")))
    assert "data.prompt_column='question' is not a column of org/data (config 'main', split 'train')" in text


def test_over_long_prompts_are_dropped_with_a_count(capsys):
    from rewardlab.ppo.prompts import PromptSet
    from rewardlab.tiny import build_tokenizer

    tok = build_tokenizer(32)
    prompts = ["t1 t2", "t1 t2 t3 t4 t5", "t3", "t1 t2 t3 t4"]
    built = PromptSet.build(tok, prompts, {"answer": ["a", "b", "c", "d"]}, max_prompt_length=3)
    assert built.prompts == ["t1 t2", "t3"] and built.columns["answer"] == ["a", "c"]
    assert "dropped 2 of 4 prompts longer than data.max_prompt_length=3 tokens" in capsys.readouterr().err
    PromptSet.build(tok, prompts[:1], max_prompt_length=3)
    assert "dropped" not in capsys.readouterr().err
    text = one_line(lambda: PromptSet.build(tok, prompts[1:2], max_prompt_length=3))
    assert "no prompts left" in text and "max_prompt_length=3" in text


def test_chat_prompts_a_tokenizer_cannot_render():
    from rewardlab.ppo.prompts import PromptSet
    from rewardlab.tiny import build_tokenizer

    text = one_line(lambda: PromptSet.build(build_tokenizer(32, chat_template=False),
                                            [[{"role": "user", "content": "t1"}]]))
    assert "row 1" in text and "chat template" in text


def test_only_the_chosen_configurations_files_are_fetched():
    from rewardlab.local import _config_files

    assert _config_files({"config_name": "main", "data_files": [{"split": "train", "path": "main/train-*"},
                                                                {"split": "test", "path": ["main/test.parquet"]}]}) == \
        ["README.md", "main/train-*", "main/test.parquet"]
    assert _config_files({"data_files": {"train": "a.jsonl", "test": ["b.jsonl"]}}) == ["README.md", "a.jsonl", "b.jsonl"]
    assert _config_files({"data_dir": "socratic/"}) == ["README.md", "socratic/*"]
    assert _config_files({"config_name": "default"}) is None  # nothing named: every file
