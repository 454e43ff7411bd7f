"""Model names as transformers resolves them, and the checks every loader calls before transformers sees a folder.

A model is named as ``transformers.from_pretrained`` takes it: a local folder wins; otherwise a
Hugging Face Hub name (``org/name`` or ``name``, optionally ``@revision``) is fetched once with
``huggingface_hub.snapshot_download`` into its cache (``HF_HUB_CACHE``; ``HF_HUB_OFFLINE=1`` reads
the cache only; ``HF_TOKEN`` for private repositories). ``hub:ORG/NAME`` is still accepted and
always means the Hub. Only what rewardlab loads is fetched: configs, safetensors weights (never
pickle weights) and every tokenizer file (``chat_template.jinja`` included); a repository's Python
files only with ``trust_remote_code``. Each resolution is recorded (name, revision, commit: see
`resolved_models`) and written with the run. A name that cannot be resolved gets one line: the
name, the revision and why (not in the cache while offline, or the Hub's own answer). Datasets
resolve the same way (`data_source`, `hub_dataset_snapshot`; read by `rewardlab.datasets_io`).

A model folder is checked before any weights load: it has ``config.json`` (valid JSON), its
weights are safetensors (a folder with only ``pytorch_model.bin`` — a pickle, which can run code
when loaded — is refused with how to convert it), every ``*.safetensors`` file is as long as its
header says (a truncated copy is named), the shards of a sharded index exist, and (when asked) the
tokenizer files are there.

Example::

    folder = model_folder("runs/sft", "models.sft_model_path", need_tokenizer=True)
    folder = model_folder("Qwen/Qwen2.5-0.5B-Instruct@main", "models.sft_model_path")   # the cached snapshot
    source = data_source("prompts.jsonl", "data.dataset_name", hub_ok=True)   # ("file", "prompts.jsonl")
    source = data_source("org/data@v1", "data.dataset_name", hub_ok=True)     # ("hub", "org/data@v1")
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Literal

from rewardlab.errors import RewardlabError

HUB_PREFIX = "hub:"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model",
                   "vocab.txt")
_PICKLE_WEIGHTS = ("pytorch_model.bin", ".bin", ".pt", ".pth", ".ckpt")
# What rewardlab loads from a Hub repository: configs, safetensors, every tokenizer file (chat_template.jinja too).
_DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.jinja"]
_RESOLVED: dict[str, dict[str, Any]] = {}
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


def hub_name(path: str | os.PathLike[str] | None) -> str | None:
    """``'hub:org/name'`` → ``'org/name'`` (always the Hub); anything else → None."""
    if isinstance(path, str) and path.startswith(HUB_PREFIX):
        return path[len(HUB_PREFIX):].strip() or None
    return None


def as_hub_name(path: str) -> str | None:
    """The Hub name ``path`` stands for when it is not a local path: ``hub:X``, or ``org/name[@revision]`` /
    ``name[@revision]`` that is no file or folder here (as transformers reads a name); else None."""
    explicit = hub_name(path)
    if explicit is not None:
        return explicit
    if os.path.exists(path) or os.path.isabs(path) or path.startswith((".", "~")) or "\\" in path:
        return None
    name = path.rsplit("@", 1)[0] if "@" in path else path
    return path if _REPO_ID.match(name) and ".." not in name and not name.endswith(".") else None


def resolved_models() -> dict[str, dict[str, Any]]:
    """Every Hub name resolved in this process: field → name, revision, commit (written with a run's files)."""
    return {k: dict(v) for k, v in _RESOLVED.items()}


def hub_snapshot(name: str, field: str, *, revision: str | None = None, trust_remote_code: bool = False,
                 repo_type: Literal["model", "dataset"] = "model", allow_patterns: list[str] | None = None) -> str:
    """The local snapshot folder of a Hub model (fetched into the cache when online), recorded in `resolved_models`.

    ``name`` may carry ``@revision`` (a branch, tag or commit); ``revision`` overrides it. A dataset
    repository (``repo_type="dataset"``) fetches ``allow_patterns`` (see `hub_dataset_snapshot`).
    """
    if "@" in name:
        name, _, inline = name.rpartition("@")
        revision = revision or inline
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub import errors as hf

    if repo_type == "model":
        patterns = _DOWNLOAD_PATTERNS + (["*.py"] if trust_remote_code else [])
    else:
        patterns = allow_patterns
    where = f"{field}={name!r}" + (f" (revision {revision!r})" if revision else "")
    local = "no local folder of that name" if repo_type == "model" else "no local file or folder of that name"
    try:
        folder = snapshot_download(name, revision=revision, allow_patterns=patterns, repo_type=repo_type)
    except hf.LocalEntryNotFoundError:
        offline = "HF_HUB_OFFLINE=1 forbids downloading" if constants.HF_HUB_OFFLINE else "the Hub could not be reached"
        raise RewardlabError(
            f"{where}: {local}, and not in the Hugging Face cache ({constants.HF_HUB_CACHE}) while "
            f"{offline}; download it once where the Hub is reachable (`hf download {name}"
            f"{' --repo-type dataset' if repo_type == 'dataset' else ''}"
            f"{f' --revision {revision}' if revision else ''}`), point HF_HUB_CACHE at a cache that holds it, or give "
            f"a local {'folder' if repo_type == 'model' else 'file or folder'}") from None
    except hf.GatedRepoError:
        raise RewardlabError(f"{where}: the repository is gated; accept its terms on huggingface.co and log in "
                             "(`hf auth login`, or HF_TOKEN)") from None
    except hf.RevisionNotFoundError:
        raise RewardlabError(f"{where}: the repository has no such revision (a branch, tag or commit); check the name "
                             "after '@'") from None
    except hf.RepositoryNotFoundError:
        raise RewardlabError(f"{where}: {local}, and no such {'' if repo_type == 'model' else 'dataset '}repository on "
                             "the Hugging Face Hub (or it is private: log in with `hf auth login` or set HF_TOKEN)") from None
    except hf.HFValidationError as err:
        raise RewardlabError(f"{where}: not a local {'folder' if repo_type == 'model' else 'file or folder'}, nor a "
                             f"valid Hub name ({err})") from None
    except (hf.HfHubHTTPError, OSError) as err:
        raise RewardlabError(f"{where}: the Hugging Face Hub answered {type(err).__name__}: "
                             f"{str(err).splitlines()[0][:200]}") from None
    parent = os.path.basename(os.path.dirname(folder))
    _RESOLVED[field] = {"name": name, "revision": revision or "main",
                        "commit": os.path.basename(folder) if parent == "snapshots" else None}
    return folder


def _not_local(field: str, path: str, kind: str, *, hub_names: bool = False) -> RewardlabError:
    if hub_names:
        return RewardlabError(
            f"{field}={path!r} is not a local folder/file ({os.path.abspath(path)} does not exist) nor a Hugging Face "
            f"Hub name (org/name); give the path of a {kind} on this machine, or a Hub name")
    return RewardlabError(
        f"{field}={path!r} is not a local folder/file; this command does not download ({os.path.abspath(path)} "
        f"does not exist: no such file or folder). Give the path of a {kind} on this machine")


def _listing(folder: str, limit: int = 8) -> str:
    names = sorted(os.listdir(folder))
    shown = ", ".join(names[:limit]) + (f", … ({len(names)} entries)" if len(names) > limit else "")
    return shown or "nothing: the folder is empty"


def model_folder(path: str | os.PathLike[str] | None, field: str, *, need_tokenizer: bool = False,
                 trust_remote_code: bool = False) -> str:
    """The local model folder for ``path`` (a Hub name resolved to its cached snapshot), checked before loading.

    Args:
        path: a ``save_pretrained`` folder, or a Hub name (``org/name[@revision]``, ``hub:org/name``).
        field: how the user gave it (``models.sft_model_path``, ``--model``), for the messages.
        need_tokenizer: also require the tokenizer files.
        trust_remote_code: also fetch a Hub repository's Python files.

    Returns:
        The folder to pass to ``from_pretrained``.

    Raises:
        RewardlabError: not set, neither local nor resolvable, not a model folder, pickle-only or truncated
            weights, invalid config.json, missing shards or tokenizer — naming the field, the file and the fix.
    """
    if path is None or (isinstance(path, str) and not path.strip()):
        raise RewardlabError(f"{field} is not set; give a model folder (written by save_pretrained) or a Hub name")
    path = os.fspath(path)
    name = as_hub_name(path)
    if name is not None:
        path = hub_snapshot(name, field, trust_remote_code=trust_remote_code)
    if not os.path.exists(path):
        raise _not_local(field, path, "model folder (written by save_pretrained)", hub_names=True)
    if not os.path.isdir(path):
        raise RewardlabError(f"{field}={path!r} is a file, not a model folder; give the folder that holds "
                             "config.json and the *.safetensors weights")
    _check_config_json(path, field)
    _check_weights(path, field)
    if need_tokenizer and not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise RewardlabError(
            f"{field}={path!r} has no tokenizer files (looked for {', '.join(TOKENIZER_FILES)}); save the tokenizer "
            "beside the model with `tokenizer.save_pretrained(folder)`")
    return path


def _check_config_json(folder: str, field: str) -> None:
    config = os.path.join(folder, "config.json")
    if not os.path.isfile(config):
        if os.path.isfile(os.path.join(folder, "adapter_config.json")):
            raise RewardlabError(
                f"{field}={folder!r} is a PEFT adapter (adapter_config.json), not a full model; merge it into its "
                "base model (`peft_model.merge_and_unload().save_pretrained(folder)`) and give that folder")
        inner = sorted(d for d in os.listdir(folder) if os.path.isfile(os.path.join(folder, d, "config.json")))
        hint = (f"; did you mean {', '.join(os.path.join(folder, d) for d in inner[:3])}?" if inner else
                "; give the folder `save_pretrained` wrote (config.json beside the *.safetensors weights)")
        raise RewardlabError(
            f"{field}={folder!r} has no config.json, so it is not a model folder written by save_pretrained "
            f"(it holds: {_listing(folder)}){hint}")
    try:
        with open(config, encoding="utf-8") as fh:
            json.load(fh)
    except json.JSONDecodeError as err:
        raise RewardlabError(
            f"{config}: line {err.lineno}, column {err.colno}: invalid JSON ({err.msg}); the file is damaged or "
            "truncated — re-copy the model folder or re-save it with save_pretrained") from None
    except UnicodeDecodeError:
        raise RewardlabError(f"{config} is not UTF-8 text; re-copy the model folder") from None


def _check_weights(folder: str, field: str) -> None:
    names = os.listdir(folder)
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as fh:
                shards = sorted(set(json.load(fh).get("weight_map", {}).values()))
        except (json.JSONDecodeError, AttributeError) as err:
            raise RewardlabError(f"{index} is not a valid safetensors index ({err}); re-copy the model folder") from None
        missing = [s for s in shards if not os.path.isfile(os.path.join(folder, s))]
        if missing:
            raise RewardlabError(f"{folder}: the shard(s) {', '.join(missing)} named in model.safetensors.index.json "
                                 "are missing; copy the whole model folder")
    weights = sorted(n for n in names if n.endswith(".safetensors"))
    if not weights:
        pickles = sorted(n for n in names if n.endswith(_PICKLE_WEIGHTS))
        if pickles:
            raise RewardlabError(
                f"{field}={folder!r} has no safetensors weights (only {', '.join(pickles)}: pickle weights, which can "
                "run code when loaded); rewardlab loads safetensors only. Convert them once, where you trust the file: "
                f"`python -c \"from transformers import AutoModel; AutoModel.from_pretrained('{folder}', "
                f"use_safetensors=False).save_pretrained('{folder}')\"` (use the model's Auto class, e.g. "
                "AutoModelForCausalLM, so its head is kept)")
        raise RewardlabError(f"{field}={folder!r} has no *.safetensors weights (it holds: {_listing(folder)}); "
                             "give a folder written by `model.save_pretrained(folder)`")
    for name in weights:
        check_safetensors(os.path.join(folder, name))


def check_safetensors(path: str) -> None:
    """Refuse a safetensors file shorter than its own header says (a truncated copy or write).

    The format is an 8-byte little-endian header length N, N bytes of JSON giving each tensor's
    ``data_offsets`` into the data that follows; the file must hold ``8 + N + max(end offset)`` bytes.
    """
    size = os.path.getsize(path)
    fix = "re-copy the model folder, or re-save it with `model.save_pretrained(folder)`"
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or n > size - 8:
            raise RewardlabError(f"{path} is truncated or not a safetensors file ({size} bytes, header unreadable); {fix}")
        try:
            header = json.loads(fh.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise RewardlabError(f"{path}: the safetensors header is corrupt; {fix}") from None
    if size < 8 + n + end:
        raise RewardlabError(f"{path} is truncated: {size} bytes, but its header describes {8 + n + end}; {fix}")


def check_output_dir(path: str | os.PathLike[str], field: str) -> None:
    """Refuse an output folder that is a file, or lies under one (it could never be created)."""
    given, path = os.fspath(path), os.path.abspath(os.fspath(path))
    if os.path.isfile(path):
        raise RewardlabError(f"{field}={given!r} is a file; give a folder (it is created if missing)")
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    if os.path.isfile(parent):
        raise RewardlabError(f"{field}={given!r} cannot be created: {parent} is a file, not a folder; "
                             "choose another folder")


DATA_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet", ".arrow")
_OTHER_FILE_TYPES = (".txt", ".tsv", ".xlsx", ".xls", ".yaml", ".yml", ".gz", ".zip", ".tar", ".xml", ".html", ".md",
                     ".pkl", ".pt", ".bin", ".ndjson", ".jsonlines", ".feather", ".orc")


def data_source(path: str | os.PathLike[str] | None, field: str, *,
                hub_ok: bool = False) -> tuple[Literal["file", "folder", "hub"], str]:
    """What a data argument names, without reading it: ``("file", path)``, ``("folder", path)`` (a
    ``save_to_disk`` or dataset folder) or ``("hub", name)`` (``org/name[@revision]`` that is no local
    path, or ``hub:org/name``), as ``datasets.load_dataset`` and TRL's ``dataset_name`` take it.

    Args:
        hub_ok: whether this reader takes datasets (folders and Hub names; see `rewardlab.datasets_io`);
            off: local data files only.

    Raises:
        RewardlabError: not set, a missing file, neither local nor a Hub name, or a folder or Hub name
            where only files are read.
    """
    kinds = ".jsonl/.json/.csv/.parquet/.arrow file, a dataset folder or a Hub dataset (org/name)" if hub_ok else \
        ".jsonl/.json/.csv/.parquet file"
    if path is None or (isinstance(path, str) and not path.strip()):
        raise RewardlabError(f"{field} is not set; give a local {kinds}")
    path = os.fspath(path)
    name = hub_name(path)
    if name is not None:
        if not hub_ok:
            raise RewardlabError(
                f"{field}={path!r}: this command reads local files only; save the data as a local file first, "
                "e.g. `datasets.load_dataset(NAME, split='train').to_json('data.jsonl')`")
        return "hub", name
    if os.path.isdir(path):
        if not hub_ok:
            raise RewardlabError(f"{field}={path!r} is a folder; give the data file inside it "
                                 f"(it holds: {_listing(path)})")
        return "folder", path
    if os.path.exists(path):
        return "file", path
    if not hub_ok:
        raise _not_local(field, path, ".jsonl/.json/.csv/.parquet file")
    name = as_hub_name(path)
    ext = os.path.splitext(path)[1].lower()
    if name is None or ext in DATA_EXTENSIONS + _OTHER_FILE_TYPES:  # a file's name: not read as a Hub name
        what = ("" if ext in DATA_EXTENSIONS else f", and unsupported file type {ext!r}" if ext in _OTHER_FILE_TYPES
                else ", nor a Hugging Face Hub dataset name (org/name)")
        raise RewardlabError(f"{field}={path!r}: no such file or folder ({os.path.abspath(path)} does not exist)"
                             f"{what}; give a local {kinds}")
    return "hub", name


def hub_dataset_snapshot(name: str, field: str, *, config: str | None = None) -> str:
    """The cached snapshot of a Hub dataset (``org/name[@revision]``), fetched when online, recorded in
    `resolved_models` under ``field``.

    Only what `datasets` reads for ``config`` comes down: the README.md first (the dataset card, whose
    YAML header declares the configurations and their data files), then that configuration's data
    files, all at the card's commit. A card that declares no configurations means every file.

    Raises:
        RewardlabError: as `hub_snapshot`; or the card declares configurations and ``config`` is none of
            them (None: there are several, none marked default) — the message lists them.
    """
    revision = None
    if "@" in name:
        name, _, revision = name.rpartition("@")
    card = hub_snapshot(name, field, revision=revision, repo_type="dataset", allow_patterns=["README.md"])
    configs = _card_configs(os.path.join(card, "README.md"))
    patterns = None
    if configs:
        chosen = config if config is not None else next(
            (n for n, c in configs.items() if c.get("default")),
            next(iter(configs)) if len(configs) == 1 else "default" if "default" in configs else None)
        if chosen not in configs:
            what = "several configurations" if config is None else f"no configuration {config!r}"
            raise RewardlabError(f"{field}={name!r} has {what}; choose one with dataset_config: {', '.join(configs)}")
        patterns = _config_files(configs[chosen])
    pinned = _RESOLVED[field]["commit"] or revision  # the card's commit: the data files come from the same one
    folder = hub_snapshot(name, field, revision=pinned, repo_type="dataset", allow_patterns=patterns)
    _RESOLVED[field]["revision"] = revision or "main"
    return folder


def _card_configs(readme: str) -> dict[str, dict[str, Any]]:
    """The configurations a dataset card's YAML header declares (``configs:``), by name; {} when none."""
    try:
        with open(readme, encoding="utf-8") as fh:
            text = fh.read()
    except OSError:
        return {}
    if not text.startswith("---"):
        return {}
    import yaml

    try:
        header = yaml.safe_load(text.split("---", 2)[1]) or {}
    except (yaml.YAMLError, IndexError):
        return {}
    configs = header.get("configs") if isinstance(header, dict) else None
    if not isinstance(configs, list):
        return {}
    return {str(c.get("config_name", "default")): c for c in configs if isinstance(c, dict)}


def _config_files(entry: dict[str, Any]) -> list[str] | None:
    """The file patterns one configuration reads (its ``data_files``, ``data_dir``), with the card; None: all."""
    patterns: list[str] = []
    files = entry.get("data_files")
    entries = ([{"path": v} for v in files.values()] if isinstance(files, dict)  # {split: path(s)}
               else files if isinstance(files, list) else [files] if files else [])
    for item in entries:  # a path, a list of paths, or {split, path}
        paths = item.get("path") if isinstance(item, dict) else item
        patterns.extend([paths] if isinstance(paths, str) else list(paths or []))
    if entry.get("data_dir"):
        patterns.append(f"{str(entry['data_dir']).rstrip('/')}/*")
    return ["README.md", *patterns] if patterns else None
