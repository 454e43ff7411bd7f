"""A PPO run's prompts: read once (before any model loads), tokenised, each with its dataset row.

The data is any source TRL's ``dataset_name`` takes (`rewardlab.datasets_io`): a Hub dataset, a local
file or folder; prompts over ``data.max_prompt_length`` tokens are dropped with a printed count.

Every column besides the prompt stays attached to its prompt, so rule terms of the reward side
can read a ground-truth ``answer`` (TRL passes dataset columns to reward functions the same way).
The batch of an update is a seeded permutation per pass over the data, indexed by update, so any
update can be rebuilt from its number alone (resume) and process layouts share one global order.
Evaluation prompts (`eval_prompt_rows`) come from ``eval_dataset``, ``data.dataset_test_split`` or a
seeded held-out ``data.eval_fraction`` of the training prompts.

Example::

    rows = load_prompt_rows(cfg.data)                  # (prompts, columns), every row checked
    rows, eval_rows = eval_prompt_rows(cfg.data, rows, seed=cfg.run.seed)  # evaluation prompts, or None
    prompts = PromptSet.build(tokenizer, *rows, max_prompt_length=128)
    ids, mask, rows = prompts.batch(first_prompt=0, num_prompts=8, samples_per_prompt=2, seed=0, pad_id=0)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rewardlab.errors import RewardlabError
from rewardlab.ops import pad_rows
from rewardlab.ppo.config import DataConfig


def load_prompt_rows(d: DataConfig) -> tuple[list[Any], dict[str, list[Any]]]:
    """(prompts, other columns) of ``data.dataset_name``: a Hub dataset, a local file or folder
    (`rewardlab.datasets_io.load_split`), at ``data.dataset_config`` / ``data.dataset_train_split``.

    Every prompt is checked: a missing, null, empty or non-text prompt, an empty file or a line that
    is not JSON raise `RewardlabError` naming the file, the row (1-based) and the fix.
    """
    from rewardlab.datasets_io import describe, load_split

    ds = load_split(d.dataset_name, config=d.dataset_config, split=d.dataset_train_split, field="data.dataset_name")
    return prompt_rows(ds, d.prompt_column, describe(d.dataset_name, d.dataset_config, d.dataset_train_split))


def eval_prompt_rows(d: DataConfig, rows: tuple[list[Any], dict[str, list[Any]]], eval_dataset: Any = None, *,
                     seed: int) -> tuple[tuple[list[Any], dict[str, list[Any]]], tuple[list[Any], dict[str, list[Any]]] | None]:
    """(training rows, evaluation rows or None): the prompts that evaluate the policy during training.

    In order of precedence: ``eval_dataset`` (Python; anything `prompt_rows` reads), the
    ``data.dataset_test_split`` split of ``data.dataset_name``, or a held-out ``data.eval_fraction`` of
    the training rows (`hold_out`: seeded, and removed from training). None of them: no evaluation rows.
    """
    if eval_dataset is not None:
        return rows, prompt_rows(eval_dataset, d.prompt_column, "eval_dataset")
    if d.dataset_test_split is not None:
        from rewardlab.datasets_io import describe, load_split

        if d.dataset_name is None:
            raise RewardlabError(f"data.dataset_test_split={d.dataset_test_split!r} reads a split of data.dataset_name, "
                                 "which is not set (the prompts came from Python); pass eval_dataset= instead")
        ds = load_split(d.dataset_name, config=d.dataset_config, split=d.dataset_test_split, field="data.dataset_name")
        return rows, prompt_rows(ds, d.prompt_column, describe(d.dataset_name, d.dataset_config, d.dataset_test_split))
    if d.eval_fraction > 0:
        return hold_out(rows, d.eval_fraction, seed)
    return rows, None


def hold_out(rows: tuple[list[Any], dict[str, list[Any]]], fraction: float,
             seed: int) -> tuple[tuple[list[Any], dict[str, list[Any]]], tuple[list[Any], dict[str, list[Any]]]]:
    """Split rows into (kept, held out): round(fraction · n) of the n distinct prompts (at least 1), picked by a
    permutation seeded by ``seed`` (its own generator: the global RNG is untouched), go with every row that
    holds them, so no held-out prompt is trained on; both parts keep the data's order."""
    prompts, columns = rows
    from rewardlab.reward_model.data import prompt_key

    keys = [prompt_key(p) for p in prompts]
    distinct = list(dict.fromkeys(keys))
    n = len(distinct)
    k = max(1, round(fraction * n))
    if k >= n:
        raise RewardlabError(f"data.eval_fraction={fraction} holds out {k} of the {n} distinct prompts, leaving none "
                             "to train on; use a smaller fraction or more prompts")
    held = {distinct[i] for i in torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].tolist()}

    def pick(keep: bool) -> tuple[list[Any], dict[str, list[Any]]]:
        idx = [i for i, key in enumerate(keys) if (key in held) != keep]
        return [prompts[i] for i in idx], {c: [v[i] for i in idx] for c, v in columns.items()}

    return pick(True), pick(False)


def load_prompts(d: DataConfig) -> list[Any]:
    """The prompt texts (or chat conversations) alone; see `load_prompt_rows`."""
    return load_prompt_rows(d)[0]


def prompt_rows(data: Any, column: str = "prompt", name: str = "prompts") -> tuple[list[Any], dict[str, list[Any]]]:
    """(prompts, other columns) from a `datasets.Dataset`, a list of row dicts, or a list of prompts.

    Args:
        data: a dataset (or anything with ``column_names`` and column access), rows as dicts with
            a ``column`` key, or the prompts themselves (text or lists of messages; no columns).
        column: the prompt column (``data.prompt_column``).
        name: how messages name the data (a path, ``hub:NAME``, ``prompts=``).
    """
    from rewardlab.reward_model.data import check_text_value

    if hasattr(data, "column_names"):
        if column not in data.column_names:
            raise RewardlabError(f"data.prompt_column={column!r} is not a column of {name}; columns: "
                                 f"{list(data.column_names)}; set data.prompt_column to the column that holds the prompts")
        prompts = list(data[column])
        columns = {c: list(data[c]) for c in data.column_names if c != column}
    else:
        rows = list(data)
        if rows and isinstance(rows[0], Mapping):
            missing = [i + 1 for i, r in enumerate(rows) if column not in r]
            if missing:
                raise RewardlabError(f"{name}: row {missing[0]} has no {column!r} key (keys: {sorted(rows[missing[0] - 1])}); "
                                     "give every row the prompt column, or set data.prompt_column")
            names = list(dict.fromkeys(k for r in rows for k in r if k != column))
            prompts = [r[column] for r in rows]
            columns = {c: [r.get(c) for r in rows] for c in names}
        else:
            prompts, columns = rows, {}
    if not prompts:
        raise RewardlabError(f"{name} holds no prompts; give at least one")
    for row, value in enumerate(prompts, start=1):
        check_text_value(name, row, column, value)
    return prompts, columns


def tokenize_prompts(tokenizer, prompts: Sequence[Any], max_prompt_length: int | None = None) -> list[list[int]]:
    """Token ids per prompt (chat conversations through the tokenizer's chat template); too long: dropped."""
    return [ids for ids in _tokenize(tokenizer, prompts, max_prompt_length) if ids is not None]


def _tokenize(tokenizer, prompts: Sequence[Any], max_prompt_length: int | None) -> list[list[int] | None]:
    """Token ids per prompt, None for a prompt over ``max_prompt_length``; refuses an empty result."""
    out: list[list[int] | None] = []
    for row, p in enumerate(prompts, start=1):
        if isinstance(p, str):
            ids = tokenizer(p, add_special_tokens=True)["input_ids"]
        elif getattr(tokenizer, "chat_template", None) is None:
            raise RewardlabError(f"prompts: row {row} is a conversation (a list of messages) but the policy's tokenizer "
                                 "has no chat template; set tokenizer.chat_template or give plain-text prompts")
        else:
            try:
                ids = tokenizer.apply_chat_template(list(p), add_generation_prompt=True, tokenize=True,
                                                    return_dict=False)
            except Exception as err:  # jinja's TemplateError (roles that must alternate), a missing key …
                detail = next((ln for ln in str(err).splitlines() if ln.strip()), type(err).__name__)[:200]
                raise RewardlabError(f"prompts: row {row}: the tokenizer's chat template cannot render it "
                                     f"({type(err).__name__}: {detail}); fix the messages or the template") from None
        out.append(list(ids) if max_prompt_length is None or len(ids) <= max_prompt_length else None)
    if all(ids is None for ids in out):
        raise RewardlabError(f"no prompts left: all {len(prompts)} are longer than data.max_prompt_length="
                             f"{max_prompt_length} tokens; raise it, or give shorter prompts")
    if any(ids is not None and len(ids) == 0 for ids in out):
        raise RewardlabError("some prompts tokenise to zero tokens; remove empty prompts")
    return out


@dataclass
class PromptSet:
    """The prompts a run trains on: token ids, and each prompt's row (the prompt as given, its columns)."""

    ids: list[list[int]]              # token ids of each prompt (policy tokenizer)
    prompts: list[Any]                # each prompt as the data gives it: text or chat messages
    columns: dict[str, list[Any]]     # every other dataset column, one value per prompt

    @classmethod
    def build(cls, tokenizer, prompts: Sequence[Any], columns: Mapping[str, Sequence[Any]] | None = None, *,
              max_prompt_length: int | None = None) -> PromptSet:
        """Tokenise; prompts longer than ``max_prompt_length`` are dropped with their rows, the count printed
        (once, by the main process); none left is refused."""
        ids = _tokenize(tokenizer, prompts, max_prompt_length)
        keep = [i for i, x in enumerate(ids) if x is not None]
        if len(keep) < len(ids) and os.environ.get("RANK", "0") == "0":
            print(f"rewardlab: dropped {len(ids) - len(keep)} of {len(ids)} prompts longer than "
                  f"data.max_prompt_length={max_prompt_length} tokens", file=sys.stderr)
        return cls([ids[i] for i in keep], [prompts[i] for i in keep],
                   {c: [list(v)[i] for i in keep] for c, v in (columns or {}).items()})

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    def rows(self, idx: Sequence[int]) -> tuple[list[Any], dict[str, list[Any]]]:
        """The prompts and columns of rows ``idx`` (prompt indices, repeats allowed)."""
        return [self.prompts[i] for i in idx], {c: [v[i] for i in idx] for c, v in self.columns.items()}

    def batch(self, *, first_prompt: int, num_prompts: int, samples_per_prompt: int, seed: int,
              pad_id: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Left-padded ids of ``num_prompts`` prompts from global position ``first_prompt`` on, each
        repeated ``samples_per_prompt`` times, and the prompt index of every row.

        Global position j is prompt ``perm_e[j mod n]`` of pass e = j div n over the n prompts, with
        perm_e a permutation seeded by (seed + e).

        Shapes: → (B, Tq), (B, Tq), B prompt indices, B = num_prompts · samples_per_prompt.
        """
        n = len(self.ids)
        rows, perms = [], {}
        for j in range(first_prompt, first_prompt + num_prompts):
            epoch, pos = divmod(j, n)
            if epoch not in perms:
                perms[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
            rows.extend([int(perms[epoch][pos])] * samples_per_prompt)
        ids, mask = pad_rows([self.ids[i] for i in rows], pad_id, side="left")
        return ids, mask, rows
