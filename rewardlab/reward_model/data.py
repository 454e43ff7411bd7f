"""Reward-model data: preference pairs and labelled responses, read through `datasets`, checked, tokenised.

Data comes from any source `rewardlab.datasets_io.load_split` reads: a local JSONL (``.jsonl``/``.json``),
CSV, Parquet or Arrow file, a ``save_to_disk`` or dataset folder, a Hub dataset, or a ``datasets.Dataset``.
Two kinds:

- **preferences** (Bradley-Terry training, evaluation, inspect): columns ``chosen`` and
  ``rejected``, usually ``prompt``, optionally a numeric ``margin`` — TRL's preference format. Values
  are plain text, or conversational message lists (``[{"role": "user", "content": "…"}, …]``)
  rendered with the tokenizer's chat template. Without a ``prompt`` column the prompt is implicit:
  chosen and rejected each hold the whole text or conversation, and the part they share is taken
  as the prompt for per-prompt statistics and splits (`shared_prompt`).
- **labelled** (classifier training): columns ``text`` and an integer ``label`` (e.g. 1 = good,
  0 = bad), optionally ``prompt``.

Every problem is reported as a `RewardlabError` naming the file (or dataset), the row (1-based, as
a spreadsheet counts data rows) and the column, with what to do about it.

Example::

    ds = read_preferences("train.jsonl")
    ds = read_preferences("org/prefs", config="main", split="test")
    pairs = tokenize_preferences(ds, tokenizer, max_length=512)
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rewardlab.errors import RewardlabError

logger = logging.getLogger(__name__)

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}
PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")


# --------------------------------------------------------------------------------------------
# Reading a file
# --------------------------------------------------------------------------------------------
def _format_of(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise RewardlabError(
            f"{path}: unsupported file type {ext or '(no extension)'!r}; use one of {', '.join(FORMATS)}"
        )
    return FORMATS[ext]


def _locate_bad_utf8(path: str, fmt: str, raw: bytes, err: UnicodeDecodeError) -> str:
    """Where the undecodable bytes sit: 'row R, column C' when the row can be parsed, else the line."""
    line = raw[: err.start].count(b"\n") + 1
    text = raw.decode("utf-8", errors="replace")
    try:
        if fmt == "json":
            for i, ln in enumerate(text.splitlines()):
                if "\ufffd" in ln:
                    rec = json.loads(ln)
                    col = next((k for k, v in rec.items() if "\ufffd" in json.dumps(v, ensure_ascii=False)), "?")
                    return f"row {i + 1}, column {col!r} (line {i + 1}, byte {err.start})"
        elif fmt == "csv":
            for i, rec in enumerate(csv.DictReader(io.StringIO(text))):
                col = next((k for k, v in rec.items() if v is not None and "\ufffd" in str(v)), None)
                if col is not None:
                    return f"row {i + 1}, column {col!r} (line {line}, byte {err.start})"
    except (ValueError, AttributeError):
        pass
    return f"line {line} (byte {err.start})"


def _check_text_file(path: str, fmt: str) -> None:
    """Empty and non-UTF-8 text files fail here, with a message, before `datasets` sees them."""
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise RewardlabError(f"{path}: the file is empty; expected a header row (CSV) or one JSON object per line")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        where = _locate_bad_utf8(path, fmt, raw, err)
        raise RewardlabError(
            f"{path}: {where} is not valid UTF-8 ({err.reason}: {raw[err.start:err.end]!r}); "
            "re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 in > out`"
        ) from None
    if fmt == "csv" and sum(1 for row in csv.reader(io.StringIO(raw.decode("utf-8"))) if row) < 2:
        raise RewardlabError(f"{path}: the file has no rows (only a header, or nothing)")


def _locate_bad_json(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        for i, ln in enumerate(f):
            if not ln.strip():
                continue
            try:
                rec = json.loads(ln)
            except json.JSONDecodeError as err:
                return f"row {i + 1} (line {i + 1}) is not valid JSON: {err.msg} at column {err.colno}"
            if not isinstance(rec, dict):
                return f"row {i + 1} (line {i + 1}) is a JSON {type(rec).__name__}, not an object with named columns"
    return "the file could not be parsed"


def read_table(path: str):
    """Load a JSONL, CSV, Parquet or Arrow file as a `datasets.Dataset` (no cache files).

    Raises:
        RewardlabError: missing, empty, non-UTF-8 or unparsable file, naming where.
    """
    import datasets

    from rewardlab.local import data_source

    path = os.fspath(path)
    if os.path.splitext(path)[1]:
        _format_of(path)  # an unsupported extension says so first
    data_source(path, "data file")  # a name that is not a local file is refused (no download)
    fmt = _format_of(path)
    if fmt in ("json", "csv"):
        _check_text_file(path, fmt)
    elif os.path.getsize(path) == 0:
        raise RewardlabError(f"{path}: the file is empty; expected {'a Parquet table' if fmt == 'parquet' else 'an Arrow table'}")
    from rewardlab.datasets_io import quiet_datasets

    try:
        with quiet_datasets():  # its "Failed to load JSON" line would repeat ours
            if fmt == "arrow":  # a table written by datasets (save_to_disk's data-*.arrow), memory-mapped
                ds = datasets.Dataset.from_file(path)
            else:
                loader = {"json": datasets.Dataset.from_json, "csv": datasets.Dataset.from_csv,
                          "parquet": datasets.Dataset.from_parquet}[fmt]
                ds = loader(path, keep_in_memory=True)
    except Exception as err:  # datasets wraps parser errors in several types; report where.
        detail = _locate_bad_json(path) if fmt == "json" else f"{type(err).__name__}: {str(err)[:300]}"
        raise RewardlabError(f"{path}: could not read the {fmt} file: {detail}; fix or remove that row") from None
    if len(ds) == 0:
        raise RewardlabError(f"{path}: the file has no rows")
    return ds


# --------------------------------------------------------------------------------------------
# Checking columns and values
# --------------------------------------------------------------------------------------------
def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _text_of(value: Any) -> str:
    """The comparable content of a value: the text, or the messages' contents joined."""
    if isinstance(value, str):
        return value
    return "\n".join(str(m.get("content") or "") for m in value)


def _require_columns(ds, path: str, required: Sequence[str], hint: str) -> None:
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise RewardlabError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))} (found: {', '.join(ds.column_names)}); {hint}"
        )


def check_text_value(path: str, row: int, col: str, value: Any, allow_messages: bool = True) -> None:
    """Refuse a null, empty or non-text value, naming the file, the row (1-based) and the column."""
    where = f"{path}: row {row}, column {col!r}"
    if value is None:
        raise RewardlabError(f"{where} is missing (null); fill it in or drop the row")
    if isinstance(value, str):
        if not value.strip():
            raise RewardlabError(f"{where} is an empty string; fill it in or drop the row")
        return
    if allow_messages and _is_messages(value):
        if not value or not any(str(m.get("content") or "").strip() for m in value):
            raise RewardlabError(f"{where} holds no message with content; fill it in or drop the row")
        return
    raise RewardlabError(
        f"{where} is of type {type(value).__name__} ({str(value)[:60]!r}); expected text"
        + (" or a list of {'role': …, 'content': …} messages" if allow_messages else "")
    )


def _load(source: Any, config: str | None, split: str | None, field: str):
    """(dataset, how messages name it) for any source `load_split` reads."""
    from rewardlab.datasets_io import describe, load_split

    return load_split(source, config=config, split=split, field=field), describe(source, config, split)


def read_preferences(source: Any, *, config: str | None = None, split: str | None = None,
                     field: str = "preferences"):
    """Read and check preference data (see the module docstring for its columns).

    Checks, for every row: chosen and rejected present, non-empty, text or messages, and
    different from each other; prompt (when the column exists) non-empty; margin (when the
    column exists) a finite number.

    Args:
        source: a file, a dataset folder, a Hub dataset or a ``datasets.Dataset`` (`load_split`).
        config, split: the dataset's configuration and split (None: its only split).
        field: how the user gave ``source`` (``train_file``, ``--preferences``), for messages.

    Returns:
        A `datasets.Dataset` with every column of the data.

    Raises:
        RewardlabError: naming the file, row and column of the first problem.
    """
    ds, name = _load(source, config, split, field)
    _require_columns(
        ds, name, ("chosen", "rejected"),
        "preference data needs 'chosen' and 'rejected' (and usually 'prompt'); 'text' and 'label' rows are "
        "classifier training data (`rewardlab train-rm --mode classifier`), not preferences",
    )
    cols = ds.to_dict()  # plain lists: indexing a datasets column row by row is slow
    chosen, rejected = cols["chosen"], cols["rejected"]
    prompts, margins = cols.get("prompt"), cols.get("margin")
    for i in range(len(ds)):
        row = i + 1
        if prompts is not None:
            check_text_value(name, row, "prompt", prompts[i])
        check_text_value(name, row, "chosen", chosen[i])
        check_text_value(name, row, "rejected", rejected[i])
        if _text_of(chosen[i]).strip() == _text_of(rejected[i]).strip():
            raise RewardlabError(
                f"{name}: row {row}, column 'rejected' equals column 'chosen' ({_text_of(chosen[i])[:60]!r}); "
                "a pair with identical responses carries no preference — drop the row"
            )
        if margins is not None:
            m = margins[i]
            if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m):
                raise RewardlabError(f"{name}: row {row}, column 'margin' is {m!r}; expected a finite number")
    return ds


def read_prompts(source, name: str, column: str = "prompt") -> list:
    """Prompts from a file (or a `datasets.Dataset`): every row text or a message list, non-empty.

    Args:
        source: a file path (read with `read_table`) or an already loaded dataset.
        name: how to name it in messages (the path, or ``hub:NAME``).
        column: the column with the prompts (``data.prompt_column``).

    Raises:
        RewardlabError: naming the file, the row and what to fix.
    """
    ds = read_table(source) if isinstance(source, (str, os.PathLike)) else source
    if column not in ds.column_names:
        raise RewardlabError(f"data.prompt_column={column!r} is not a column of {name}; columns: {ds.column_names}; "
                             "set data.prompt_column to the column that holds the prompts")
    prompts = list(ds[column])
    for row, value in enumerate(prompts, start=1):
        check_text_value(name, row, column, value)
    return prompts


def read_labelled(source: Any, *, config: str | None = None, split: str | None = None, field: str = "data"):
    """Read and check classifier data: ``text`` (non-empty), integer ``label`` ≥ 0, optional ``prompt``.

    ``source``, ``config``, ``split`` and ``field`` as in `read_preferences`.

    Raises:
        RewardlabError: naming the file, row and column of the first problem.
    """
    ds, name = _load(source, config, split, field)
    _require_columns(
        ds, name, ("text", "label"),
        "classifier data needs 'text' and an integer 'label' (e.g. 1 = good, 0 = bad); for preference "
        "pairs use --mode bradley_terry",
    )
    cols = ds.to_dict()
    texts, labels, prompts = cols["text"], cols["label"], cols.get("prompt")
    for i in range(len(ds)):
        row = i + 1
        if prompts is not None:
            check_text_value(name, row, "prompt", prompts[i])
        check_text_value(name, row, "text", texts[i])
        y = labels[i]
        if isinstance(y, float) and y.is_integer():
            y = int(y)
        if isinstance(y, bool) or not isinstance(y, int) or y < 0:
            raise RewardlabError(f"{name}: row {row}, column 'label' is {labels[i]!r}; expected an integer class ≥ 0")
    return ds


# --------------------------------------------------------------------------------------------
# Tokenising
# --------------------------------------------------------------------------------------------
@dataclass
class TokenizedPairs:
    """Preference pairs as token ids, ready for collation.

    Attributes:
        chosen_ids: one id list per pair (prompt followed by the chosen response).
        rejected_ids: the same for the rejected response.
        margin: per-pair margin, or None when the data has no margin column.
        prompts: a key per pair identifying its prompt (for per-prompt statistics and splits): the
            prompt column, or for an implicit prompt what chosen and rejected share (`shared_prompt`).
    """

    chosen_ids: list[list[int]]
    rejected_ids: list[list[int]]
    margin: list[float] | None
    prompts: list[str]

    def __len__(self) -> int:
        return len(self.chosen_ids)


@dataclass
class TokenizedLabels:
    """Labelled responses as token ids; ``prompts``: a key per row from the prompt column (None without one)."""

    input_ids: list[list[int]]
    labels: list[int]
    prompts: list[str] | None

    def __len__(self) -> int:
        return len(self.input_ids)


def prompt_key(prompt: Any) -> str:
    """A hashable key for a prompt: the text itself, or the messages as canonical JSON."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def render(prompt: Any, response: Any, tokenizer) -> str:
    """The text a reward model reads for one (prompt, response).

    Plain text is concatenated as given (``prompt + response``, as TRL and
    ``RewardModel.score_texts`` do: put the separator you want at the end of the prompt or the
    start of the response). Messages are rendered with the tokenizer's chat template, the
    prompt's messages followed by the response's (as ``RewardModel.score_messages``).
    """
    if prompt is not None and isinstance(prompt, str) != isinstance(response, str):
        raise RewardlabError(
            "a row mixes plain-text and conversational values for prompt and response; use one format per row"
        )
    if isinstance(response, str):
        return (prompt or "") + response
    if getattr(tokenizer, "chat_template", None) is None:
        raise RewardlabError(
            "the data is conversational (lists of messages) but the tokenizer has no chat template; "
            "set tokenizer.chat_template or give plain-text columns"
        )
    try:
        return tokenizer.apply_chat_template(list(prompt or []) + list(response), tokenize=False)
    except Exception as err:  # jinja's TemplateError (e.g. roles that must alternate), a missing key …
        from rewardlab.datasets_io import first_line

        detail = first_line(err, 200)
        raise RewardlabError(f"the tokenizer's chat template cannot render these messages ({type(err).__name__}: "
                             f"{detail}); fix the messages or the template") from None


def shared_prompt(chosen: Any, rejected: Any) -> Any:
    """The prompt an implicit-prompt pair shares: its leading messages, or its leading words; None if nothing.

    TRL's implicit-prompt format puts the whole conversation (or text) in chosen and rejected; what
    they have in common before they part is the prompt. Text is cut back to a word boundary, so a
    word both responses begin with stays in the responses.
    """
    if isinstance(chosen, str) and isinstance(rejected, str):
        prefix = os.path.commonprefix([chosen, rejected])
        n = len(prefix)
        ends_word = [n == len(t) or t[n].isspace() for t in (chosen, rejected)]
        if prefix and not prefix[-1].isspace() and not all(ends_word):  # inside a word: cut before it
            prefix = prefix[: max(prefix.rfind(c) for c in " \n\t") + 1]
        return prefix.rstrip() or None  # as TRL's extract_prompt: the responses keep their leading space
    if isinstance(chosen, list) and isinstance(rejected, list):
        k = 0
        while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
            k += 1
        return chosen[:k] or None
    return None


def _render_column(prompts: list[Any], responses: list[Any], tokenizer, column: str) -> list[str]:
    """`render` every row, a problem naming its row and column."""
    out = []
    for row, (p, r) in enumerate(zip(prompts, responses, strict=True), start=1):
        try:
            out.append(render(p, r, tokenizer))
        except RewardlabError as err:
            raise RewardlabError(f"row {row}, column {column!r}: {err}") from None
    return out


def _prompt_keys(cols: dict[str, list[Any]]) -> list[str]:
    """A key per pair for per-prompt statistics: the prompt column, else the prompt chosen and rejected share."""
    if "prompt" in cols:
        return [prompt_key(p) for p in cols["prompt"]]
    keys = []
    for i, (chosen, rejected) in enumerate(zip(cols["chosen"], cols["rejected"], strict=True)):
        shared = shared_prompt(chosen, rejected)
        keys.append(prompt_key(shared) if shared is not None else f"\0row {i}")  # nothing shared: a prompt of its own
    return keys


def _encode(texts: list[str], conversational: list[bool], tokenizer, max_length: int | None, what: str) -> list[list[int]]:
    """Tokenise as `RewardModel` does, keeping the *last* max_length tokens.

    Plain text gets the tokenizer's own special tokens (``add_special_tokens=True``, as
    ``RewardModel.score_texts``); chat-template text already holds its special tokens
    (as ``RewardModel.score_messages``). The reward is read at the last token, so an over-long
    sequence loses its beginning (the prompt's start), never the end of the response; the count
    is logged.
    """
    ids: list[list[int]] = [[] for _ in texts]
    for flag in (False, True):
        idx = [i for i, c in enumerate(conversational) if c == flag]
        if idx:
            enc = tokenizer([texts[i] for i in idx], add_special_tokens=not flag)["input_ids"]
            for i, x in zip(idx, enc, strict=True):
                ids[i] = list(x)
    if max_length is not None:
        long = sum(len(x) > max_length for x in ids)
        if long:
            logger.warning("%d of %d %s sequences exceed max_length=%d; kept their last %d tokens",
                           long, len(ids), what, max_length, max_length)
            ids = [x[-max_length:] for x in ids]
    empty = [i for i, x in enumerate(ids) if not x]
    if empty:
        raise RewardlabError(f"{what}: row {empty[0] + 1} tokenises to no tokens; check the text and the tokenizer")
    return ids


def tokenize_preferences(ds, tokenizer, max_length: int | None = None) -> TokenizedPairs:
    """Token ids of every pair: render(prompt, chosen) and render(prompt, rejected), tokenised.

    Args:
        ds: a dataset from `read_preferences`.
        tokenizer: the reward model's tokenizer.
        max_length: keep at most the last max_length tokens of each sequence.
    """
    cols = ds.to_dict()
    prompts = cols.get("prompt") or [None] * len(ds)
    chosen = _render_column(prompts, cols["chosen"], tokenizer, "chosen")
    rejected = _render_column(prompts, cols["rejected"], tokenizer, "rejected")
    conv = [not isinstance(c, str) for c in cols["chosen"]]
    return TokenizedPairs(
        chosen_ids=_encode(chosen, conv, tokenizer, max_length, "chosen"),
        rejected_ids=_encode(rejected, conv, tokenizer, max_length, "rejected"),
        margin=[float(m) for m in cols["margin"]] if "margin" in cols else None,
        prompts=_prompt_keys(cols),
    )


def tokenize_labelled(ds, tokenizer, max_length: int | None = None) -> TokenizedLabels:
    """Token ids of every labelled response: render(prompt, text), tokenised."""
    cols = ds.to_dict()
    prompts = cols.get("prompt") or [None] * len(ds)
    texts = _render_column(prompts, cols["text"], tokenizer, "text")
    conv = [not isinstance(t, str) for t in cols["text"]]
    return TokenizedLabels(
        input_ids=_encode(texts, conv, tokenizer, max_length, "text"),
        labels=[int(y) for y in cols["label"]],
        prompts=[prompt_key(p) for p in prompts] if "prompt" in cols else None,
    )


def split_pairs(pairs: TokenizedPairs, eval_fraction: float, seed: int) -> tuple[TokenizedPairs, TokenizedPairs]:
    """Hold out a random eval_fraction of the pairs, keeping every prompt on one side.

    Splitting by prompt keeps held-out accuracy honest when a prompt has several pairs.
    """
    import random

    keys = pairs.prompts
    unique = sorted(set(keys))
    random.Random(seed).shuffle(unique)
    n_eval = max(1, round(eval_fraction * len(unique)))
    if n_eval >= len(unique):
        raise RewardlabError(
            f"eval_fraction={eval_fraction} leaves no training prompts ({len(unique)} distinct prompts); lower it"
        )
    held = set(unique[:n_eval])
    idx_eval = [i for i, k in enumerate(keys) if k in held]
    idx_train = [i for i, k in enumerate(keys) if k not in held]

    def take(idx: list[int]) -> TokenizedPairs:
        return TokenizedPairs(
            chosen_ids=[pairs.chosen_ids[i] for i in idx],
            rejected_ids=[pairs.rejected_ids[i] for i in idx],
            margin=None if pairs.margin is None else [pairs.margin[i] for i in idx],
            prompts=[pairs.prompts[i] for i in idx],
        )

    return take(idx_train), take(idx_eval)
