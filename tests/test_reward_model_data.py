"""Reward-model data: formats, tokenisation, and errors that name the file, row and column."""

import json

import pytest

from rewardlab.errors import RewardlabError
from rewardlab.reward_model.data import (
    read_labelled,
    read_preferences,
    split_pairs,
    tokenize_labelled,
    tokenize_preferences,
)
from rewardlab.tiny import build_tokenizer

GOOD = [
    {"prompt": "t2 t3 ", "chosen": "t1 t1", "rejected": "t4 t5"},
    {"prompt": "t6 ", "chosen": "t1 t7", "rejected": "t8 t9"},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(32)


def test_jsonl_csv_parquet_read_the_same(tmp_path, tok):
    import pandas as pd

    jsonl = write_jsonl(tmp_path / "p.jsonl", GOOD)
    pd.DataFrame(GOOD).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame(GOOD).to_parquet(tmp_path / "p.parquet")
    ids = [tokenize_preferences(read_preferences(p), tok).chosen_ids
           for p in (jsonl, str(tmp_path / "p.csv"), str(tmp_path / "p.parquet"))]
    assert ids[0] == ids[1] == ids[2]
    # prompt + chosen, as RewardModel.score_texts tokenises it.
    assert ids[0][0] == tok("t2 t3 t1 t1")["input_ids"]


def test_conversational_rows_use_the_chat_template(tmp_path, tok):
    rows = [{"prompt": [{"role": "user", "content": "t2 t3"}],
             "chosen": [{"role": "assistant", "content": "t1"}],
             "rejected": [{"role": "assistant", "content": "t4"}]}]
    pairs = tokenize_preferences(read_preferences(write_jsonl(tmp_path / "c.jsonl", rows)), tok)
    expected = tok.apply_chat_template(rows[0]["prompt"] + rows[0]["chosen"], tokenize=False)
    assert pairs.chosen_ids[0] == tok(expected, add_special_tokens=False)["input_ids"]
    assert tok.decode(pairs.rejected_ids[0]).split()[-1] == "t4"


def test_margin_column_and_prompt_keys(tmp_path, tok):
    rows = [dict(r, margin=m) for r, m in zip(GOOD, (0.5, 2), strict=True)]
    pairs = tokenize_preferences(read_preferences(write_jsonl(tmp_path / "m.jsonl", rows)), tok)
    assert pairs.margin == [0.5, 2.0]
    assert pairs.prompts == ["t2 t3 ", "t6 "]


def test_long_sequences_keep_their_end(tmp_path, tok):
    rows = [{"prompt": "t2 t3 t4 t5 t6 ", "chosen": "t1 t7", "rejected": "t8 t9"}]
    pairs = tokenize_preferences(read_preferences(write_jsonl(tmp_path / "l.jsonl", rows)), tok, max_length=3)
    assert tok.decode(pairs.chosen_ids[0]).split() == ["t6", "t1", "t7"]


def test_split_keeps_each_prompt_on_one_side(tmp_path, tok):
    rows = [{"prompt": f"t{2 + i % 5} ", "chosen": f"t1 t{10 + j}", "rejected": f"t{10 + j}"}
            for i in range(20) for j in range(2)]
    pairs = tokenize_preferences(read_preferences(write_jsonl(tmp_path / "s.jsonl", rows)), tok)
    train, held = split_pairs(pairs, 0.4, seed=0)
    assert len(train) + len(held) == len(pairs)
    assert not set(train.prompts) & set(held.prompts)
    assert len(set(held.prompts)) == 2


@pytest.mark.parametrize(
    "rows, pattern",
    [
        ([{"prompt": "t2 ", "chosen": "t1"}], r"missing column\(s\) 'rejected'"),
        ([GOOD[0], {"prompt": "t2 ", "chosen": "  ", "rejected": "t4"}], r"row 2, column 'chosen' is an empty string"),
        ([GOOD[0], GOOD[1], {"prompt": "", "chosen": "t1", "rejected": "t4"}], r"row 3, column 'prompt' is an empty"),
        ([{"prompt": "t2 ", "chosen": "t1 t4", "rejected": "t1 t4"}], r"row 1, column 'rejected' equals column 'chosen'"),
        ([{"prompt": "t2 ", "chosen": "t1", "rejected": None}], r"row 1, column 'rejected' is missing"),
        ([{"prompt": "t2 ", "chosen": "t1", "rejected": "t3", "margin": "big"}], r"row 1, column 'margin'"),
    ],
)
def test_bad_preferences_name_file_row_and_column(tmp_path, rows, pattern):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(RewardlabError, match=pattern) as err:
        read_preferences(path)
    assert path in str(err.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(RewardlabError, match="empty") as err:
        read_preferences(str(path))
    assert str(path) in str(err.value)
    csv = tmp_path / "header_only.csv"
    csv.write_text("prompt,chosen,rejected\n")
    with pytest.raises(RewardlabError, match=f"{csv}: the file has no rows"):
        read_preferences(str(csv))


def test_non_utf8_file_names_row_and_column(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(GOOD[0]) + "\n"
    bad = '{"prompt": "t2 ", "chosen": "caf\u00e9", "rejected": "t4"}\n'.encode("latin-1")
    path.write_bytes(good.encode() + bad)
    with pytest.raises(RewardlabError, match=r"row 2, column 'chosen'.*not valid UTF-8") as err:
        read_preferences(str(path))
    assert str(path) in str(err.value)
    csv = tmp_path / "latin1.csv"
    csv.write_bytes(b"prompt,chosen,rejected\nt2,t1,t3\n" + "t2,t1,r\u00e9\n".encode("latin-1"))
    with pytest.raises(RewardlabError, match=r"row 2, column 'rejected'.*not valid UTF-8"):
        read_preferences(str(csv))


def test_malformed_json_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GOOD[0]) + "\n{\"prompt\": \"t2\", \n")
    with pytest.raises(RewardlabError, match=r"row 2 \(line 2\) is not valid JSON"):
        read_preferences(str(path))


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(RewardlabError, match="no such file"):
        read_preferences(str(tmp_path / "nope.jsonl"))
    with pytest.raises(RewardlabError, match="unsupported file type '.txt'"):
        read_preferences(str(tmp_path / "data.txt"))


def test_labelled_data(tmp_path, tok):
    rows = [{"text": "t1 t1", "label": 1}, {"text": "t4", "label": 0}]
    data = tokenize_labelled(read_labelled(write_jsonl(tmp_path / "l.jsonl", rows)), tok)
    assert data.labels == [1, 0]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "t1", "label": 1}, {"text": "t2", "label": -1}])
    with pytest.raises(RewardlabError, match=r"row 2, column 'label'"):
        read_labelled(bad)
    wrong = write_jsonl(tmp_path / "pairs.jsonl", GOOD)
    with pytest.raises(RewardlabError, match=r"missing column\(s\) 'text', 'label'"):
        read_labelled(wrong)


@pytest.mark.parametrize("text, words", [
    ("", "the file is empty"),
    ('{"prompt": "t1"}\n{"prompt": null}\n', "row 2, column 'prompt' is missing (null)"),
    ('{"prompt": "t1"}\n{"prompt": 7}\n', "row 2, column 'prompt' is of type int"),
    ('{"prompt": "t1"}\nnot json\n', "row 2 (line 2) is not valid JSON"),
    ('{"prompt": "t1"}\n{"prompt": "  "}\n', "row 2, column 'prompt' is an empty string"),
    ('{"q": "t1"}\n', "data.prompt_column='prompt' is not a column"),
])
def test_prompt_files_name_file_and_row(tmp_path, text, words):
    from rewardlab.reward_model.data import read_prompts

    path = tmp_path / "prompts.jsonl"
    path.write_text(text)
    with pytest.raises(RewardlabError) as err:
        read_prompts(str(path), str(path))
    assert "prompts.jsonl" in str(err.value) and words in str(err.value), str(err.value)


def test_a_hub_name_not_in_the_cache_is_one_line_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RewardlabError) as err:
        read_preferences("Anthropic/hh-rlhf", field="train_file")
    text = str(err.value)
    assert "\n" not in text and text.startswith("train_file='Anthropic/hh-rlhf': no local file or folder of that name")
    assert "not in the Hugging Face cache" in text and "hf download Anthropic/hh-rlhf --repo-type dataset" in text
