"""Datasets as TRL's scripts take them: one loader for PPO prompts and every preference command.

A source is what ``datasets.load_dataset`` and TRL's ``dataset_name`` take, plus what Python holds:

- a ``datasets.Dataset`` (used as it is) or ``DatasetDict`` (its split picked);
- a local file: ``.jsonl``/``.json``/``.csv``/``.parquet`` (read with errors naming the row) or ``.arrow``;
- a local folder written by ``save_to_disk`` (a Dataset or a DatasetDict), or a dataset folder of data
  files, its configurations declared in README.md's YAML header as on the Hub;
- a Hugging Face Hub dataset, ``org/name[@revision]`` that is no local path (or ``hub:org/name``):
  fetched into the Hub cache (``HF_HUB_CACHE``; ``HF_HUB_OFFLINE=1`` reads the cache only), its commit
  recorded with the run as a model's is (`rewardlab.local.hub_dataset_snapshot`), then read as a
  dataset folder.

``config`` names the configuration (TRL's ``dataset_config``); ``split`` the split, in ``datasets``'
split syntax (``train``, ``train[:100]``, ``train[:10%]+test``); ``split=None`` takes a dataset's only
split. Every column is kept. Each problem is one `RewardlabError` line: the field, the value, and the
choices (configurations, splits) or the fix.

Example::

    ds = load_split("org/data", config="main", split="train[:1000]", field="data.dataset_name")
    ds = load_split("prefs.parquet", field="train_file")
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

from rewardlab.errors import RewardlabError

__all__ = ["DATA_HELP", "add_dataset_arguments", "describe", "load_split"]


def describe(source: Any, config: str | None = None, split: str | None = None) -> str:
    """How messages name a source: a file by its path, a dataset with its configuration and split."""
    if not isinstance(source, (str, os.PathLike)):
        return f"the {type(source).__name__}"
    name = os.fspath(source)
    if os.path.isfile(name):
        return name
    extra = ", ".join(p for p in (f"config {config!r}" if config else "", f"split {split!r}" if split else "") if p)
    return f"{name} ({extra})" if extra else name


def load_split(source: Any, *, config: str | None = None, split: str | None = "train",
               field: str = "data.dataset_name"):
    """One split of a dataset (see the module docstring for what ``source`` may be) as a ``datasets.Dataset``.

    Args:
        source: a Dataset, a DatasetDict, a local file or folder, or a Hub dataset name.
        config: the configuration (subset) of a dataset folder or Hub dataset.
        split: the split, or a split expression; None: the only split.
        field: how the user gave the source (``data.dataset_name``, ``--preferences``), for messages
            and for the record of a resolved Hub commit.

    Raises:
        RewardlabError: a name neither local nor in the Hub cache (offline) or on the Hub, a missing
            revision, an unknown or missing configuration (listing them), an absent split (listing
            them), an unsupported file, no rows.
    """
    import datasets

    from rewardlab.local import data_source, hub_dataset_snapshot

    if isinstance(source, datasets.Dataset):  # already one split
        ds = source
    elif isinstance(source, datasets.DatasetDict):
        ds = _pick(source, split, "the DatasetDict given")
    else:
        kind, name = data_source(source, field, hub_ok=True)
        where = f"{field}={os.fspath(source)!r}"
        if kind == "file":
            ds = _from_file(name, config, split, where)
        elif kind == "folder":
            ds = _from_folder(name, config, split, where)
        else:
            ds = _from_dataset_folder(hub_dataset_snapshot(name, field, config=config), config, split, where)
    if len(ds) == 0:
        raise RewardlabError(f"{describe(source, config, split)}: no rows; give data with at least one row")
    return ds


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------
def _split_names(split: str) -> list[str]:
    """The split names in a split expression: ``'train[:10%]+test'`` → ``['train', 'test']``."""
    return [part.split("[", 1)[0].strip() for part in split.split("+")]


def _pick(splits: Mapping[str, Any], split: str | None, where: str):
    """A split (or split expression) of in-memory splits; ``None``: the only one."""
    import datasets

    names = list(splits)
    if split is None:
        if len(names) != 1:
            raise RewardlabError(f"{where} has the splits {', '.join(names)}; name the one to read")
        return splits[names[0]]
    missing = [s for s in _split_names(split) if s not in splits]
    if missing:
        raise RewardlabError(f"{where} has no split {missing[0]!r}; its splits: {', '.join(names) or 'none'}")
    if split in splits:
        return splits[split]
    try:
        parts = datasets.ReadInstruction.from_spec(split).to_absolute({k: len(v) for k, v in splits.items()})
    except (ValueError, AssertionError) as err:
        raise RewardlabError(f"{where}: split {split!r} is not a split expression ({err}); write e.g. "
                             "'train', 'train[:100]' or 'train[:10%]+test'") from None
    picked = [splits[p.splitname].select(range(p.from_, p.to)) for p in parts]
    return picked[0] if len(picked) == 1 else datasets.concatenate_datasets(picked)


# --------------------------------------------------------------------------------------------
# Local files and folders
# --------------------------------------------------------------------------------------------
def _from_file(path: str, config: str | None, split: str | None, where: str):
    """A data file: one split, ``train`` (as ``load_dataset('json', data_files=…)`` names it)."""
    from rewardlab.reward_model.data import read_table

    if config:
        raise RewardlabError(f"{where} is a single file, which has no configurations (dataset_config={config!r}); "
                             "leave the configuration unset, or give a dataset folder or a Hub dataset")
    ds = read_table(path)
    if split is None or split == "train":
        return ds
    if "train" not in _split_names(split) or len(set(_split_names(split))) > 1:
        raise RewardlabError(f"{where} is a single file: its one split is 'train' (split {split!r} asked); give "
                             "a dataset with that split (a folder or a Hub dataset), or a file of its own")
    return _pick({"train": ds}, split, where)


def _from_folder(folder: str, config: str | None, split: str | None, where: str):
    """A ``save_to_disk`` folder (state.json / dataset_dict.json), else a dataset folder of data files."""
    import datasets

    if os.path.isfile(os.path.join(folder, "dataset_dict.json")) or os.path.isfile(os.path.join(folder, "state.json")):
        if config:
            raise RewardlabError(f"{where} is a save_to_disk folder, which has no configurations "
                                 f"(dataset_config={config!r}); leave the configuration unset")
        try:
            saved = datasets.load_from_disk(folder, keep_in_memory=False)
        except Exception as err:  # datasets raises several types for a damaged folder
            raise RewardlabError(f"{where}: could not read the save_to_disk folder ({type(err).__name__}: "
                                 f"{first_line(err)}); write it again with `dataset.save_to_disk(folder)`") from None
        if isinstance(saved, datasets.Dataset):
            return _pick({"train": saved}, split, where)
        return _pick(saved, split, where)
    return _from_dataset_folder(folder, config, split, where)


def _from_dataset_folder(folder: str, config: str | None, split: str | None, where: str):
    """``datasets.load_dataset(folder, config, split=split)``, its errors turned into one line with the choices."""
    import datasets

    try:
        with quiet_datasets():
            loaded = datasets.load_dataset(folder, config, split=split)
    except Exception as err:  # ValueError for configs and splits, FileNotFoundError for no data files, …
        raise _explain(folder, config, split, where, err) from None
    return _pick(loaded, None, where) if isinstance(loaded, datasets.DatasetDict) else loaded


def _explain(folder: str, config: str | None, split: str | None, where: str, err: Exception) -> RewardlabError:
    """Why `load_dataset` failed, with the configurations or splits to choose from when that is why."""
    import datasets

    text = first_line(err)
    try:
        configs = datasets.get_dataset_config_names(folder)
    except Exception:  # the folder itself is the problem: say what datasets said
        configs = []
    if configs and (config is None and "config name is missing" in text.lower() or
                    config is not None and config not in configs):
        what = "several configurations" if config is None else f"no configuration {config!r}"
        return RewardlabError(f"{where} has {what}; choose one with dataset_config: {', '.join(configs)}")
    unknown = re.search(r'Unknown split "([^"]+)"\. Should be one of \[(.*)\]', str(err))
    if unknown:
        shown = f" (config {config!r})" if config else ""
        return RewardlabError(f"{where}{shown} has no split {unknown.group(1)!r}; its splits: "
                              f"{unknown.group(2).replace(chr(39), '')}")
    if "no (supported) data files" in text.lower() or isinstance(err, FileNotFoundError):
        return RewardlabError(f"{where}: no data files found in {folder} ({text}); a dataset folder holds "
                              ".jsonl/.json/.csv/.parquet/.arrow files (per split: train.jsonl, test.jsonl …)")
    return RewardlabError(f"{where}: datasets could not load it ({type(err).__name__}: {text})")


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first non-blank line of an error's message (at most ``limit`` characters), else its type's name."""
    lines = [ln for ln in str(err).splitlines() if ln.strip()]
    return lines[0][:limit] if lines else type(err).__name__


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """`datasets` without progress bars or log lines inside the block (rewardlab says what went wrong itself)."""
    import datasets

    datasets.disable_progress_bars()
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)


DATA_HELP = "a Hub dataset, a local .jsonl/.json/.csv/.parquet/.arrow file, a save_to_disk or dataset folder"


def add_dataset_arguments(parser: Any, flag: str, *, what: str, required: bool = False) -> None:
    """A command's data option ``flag`` (``what`` it holds) and the ``--dataset-config`` / ``--dataset-split``
    that choose a part of it, as `load_split` reads them."""
    parser.add_argument(flag, metavar="DATA", required=required, help=f"{what}: {DATA_HELP}")
    parser.add_argument("--dataset-config", metavar="NAME", help=f"the configuration (subset) of {flag}")
    parser.add_argument("--dataset-split", metavar="SPLIT",
                        help=f"the split of {flag} to read, e.g. test or 'test[:500]' (default: the only split)")
