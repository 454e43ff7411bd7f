"""Writes that a kill cannot leave half done: build beside the target, then one rename.

Every file and folder rewardlab writes for later use (configs, metrics, reports, checkpoints,
model folders) goes through here. The temporary sibling is named ``.tmp-<pid>-<random>-<name>``
(same folder, so the rename is atomic on POSIX; the name keeps its extension for writers that
look at it), and it is removed if the write fails. A folder that replaces an existing one moves
the old one aside first and deletes it only after the rename, so at any moment one of the two
is in place.

Example::

    write_text("runs/x/pipeline.txt", "mean|lsc(q=0.5)\\n")
    with atomic_path("runs/x/report.json") as tmp:
        with open(tmp, "w") as fh:
            json.dump(report, fh)
    with atomic_dir("runs/x/policy") as tmp:
        model.save_pretrained(tmp)
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any


def _sibling(path: str, tag: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}-{name}")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary file path beside ``path``; on success it is renamed onto ``path``."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _sibling(path, "tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Any], **dumps_kwargs: Any) -> None:
    """One ``json.dumps(row, **dumps_kwargs)`` line per row, written atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, **dumps_kwargs) + "\n")


def replace_dir(src: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Rename the folder ``src`` to ``final``; an existing ``final`` is moved aside, then deleted."""
    src, final = os.fspath(src), os.fspath(final)
    old = None
    if os.path.exists(final):
        old = _sibling(final, "old")
        os.rename(final, old)
    os.rename(src, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[str]:
    """Yield an empty temporary folder beside ``final``; on success it takes ``final``'s place."""
    final = os.fspath(final)
    os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
    tmp = _sibling(final, "tmp")
    os.makedirs(tmp)
    try:
        yield tmp
        replace_dir(tmp, final)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
