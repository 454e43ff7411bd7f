import json
import os

import pytest

from rewardlab.atomic import atomic_dir, atomic_path, replace_dir, write_jsonl, write_text


def test_files_appear_whole_or_not_at_all(tmp_path):
    path = tmp_path / "sub" / "a.txt"
    write_text(path, "old\n")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n"  # the failed write left the previous file …
    assert os.listdir(path.parent) == ["a.txt"]  # … and no temporary file
    with atomic_path(tmp_path / "plot.png") as tmp:
        assert tmp.endswith("plot.png") and os.path.dirname(tmp) == str(tmp_path)  # same folder, same extension
        open(tmp, "w").close()
    write_jsonl(tmp_path / "r.jsonl", [{"a": "é"}, {"b": 1.5}], ensure_ascii=False)
    assert [json.loads(line) for line in (tmp_path / "r.jsonl").read_text(encoding="utf-8").splitlines()] == [{"a": "é"}, {"b": 1.5}]


def test_folders_replace_the_previous_one_only_when_complete(tmp_path):
    final = tmp_path / "policy"
    with atomic_dir(final) as tmp:
        (tmp_path / os.path.basename(tmp) / "w.bin").write_text("v1")
    assert (final / "w.bin").read_text() == "v1"
    with pytest.raises(RuntimeError), atomic_dir(final) as tmp:
        (tmp_path / os.path.basename(tmp) / "w.bin").write_text("v2-partial")
        raise RuntimeError("killed while saving")
    assert (final / "w.bin").read_text() == "v1" and os.listdir(tmp_path) == ["policy"]
    with atomic_dir(final) as tmp:
        (tmp_path / os.path.basename(tmp) / "w.bin").write_text("v2")
    assert (final / "w.bin").read_text() == "v2" and os.listdir(tmp_path) == ["policy"]
    (tmp_path / "run.partial").mkdir()
    (tmp_path / "run.partial" / "m").write_text("x")
    replace_dir(tmp_path / "run.partial", tmp_path / "run")
    assert (tmp_path / "run" / "m").read_text() == "x" and not (tmp_path / "run.partial").exists()
