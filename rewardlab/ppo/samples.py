"""Samples tables: a fixed set of prompts, the policy's response to each, and every reading of its reward.

Every ``run.sample_steps`` updates (None: about 10 times per run, as TRL's ``num_sample_generations``;
0: never) the trainer samples one response for each of ``run.num_sample_prompts`` fixed prompts: the
first evaluation prompts when the run has some, else training prompts picked once by a seeded
permutation. Each prompt always gets the same seed (`SAMPLES_STREAM`), so its samples are comparable
across updates, and neither training's sampling seeds nor the global RNG are touched: a run with
samples follows the same trajectory as one without.

A row holds the prompt, the response, each reward term's raw outputs and value, the pipeline's score
(stateful transforms read, not updated), the raw reward-model reading, the KL to the reference, the
length and whether it stopped. Rows go to ``<output_dir>/samples.jsonl``, to the terminal as a table
and to every tracker as a table (docs/ppo.md, "Watching a run: samples and evaluation").

Example::

    rows = sample_rows(scored, update=10, split="samples")      # scored: a ScoredSamples
    SamplesFile("runs/x", resume_update=None).append(rows)
    print_samples(rows, title="samples after update 10")
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rewardlab.atomic import write_text
from rewardlab.tracking import read_jsonl, truncate_jsonl

__all__ = ["SAMPLES_FILE", "SAMPLES_STREAM", "SamplesFile", "ScoredSamples", "print_samples", "proxy_reading",
           "read_samples", "resolve_sample_steps", "sample_prompt_indices", "sample_rows", "table_rows"]

SAMPLES_FILE = "samples.jsonl"
#: `rewardlab.ppo.rollout.episode_seeds`' update slot for samples and evaluation: far beyond any training
#: update, so these draws never repeat a rollout's (the study's evaluation uses the same offset).
SAMPLES_STREAM = 1_000_000


@dataclass
class ScoredSamples:
    """One response per prompt from one policy, read every way the run reads a reward."""

    prompts: list[Any]          # B prompts as the data gives them: text or chat messages
    responses: list[str]        # B decoded responses, special tokens removed
    scores: Tensor              # (B,) the pipeline's score, penalties included (state not updated)
    terms: dict[str, Tensor]    # each term's value (B,), NaN where it does not apply
    raw: dict[str, Tensor]      # each term's raw outputs (B, H): reward-model heads or a rule's numbers
    proxy: Tensor               # (B,) the raw reward-model reading (`proxy_reading`)
    kl: Tensor | None           # (B,) Σ_t log π(y_t) − log π_ref(y_t) (k1); None for the reference's samples
    lengths: Tensor             # (B,) response tokens
    finished: Tensor            # (B,) bool, the response ended with a stop token

    def __len__(self) -> int:
        return len(self.prompts)


def resolve_sample_steps(sample_steps: int | None, num_updates: int) -> int:
    """Updates between samples tables: ``run.sample_steps``, or for None about 10 per run (TRL's
    ``num_sample_generations=10``: every max(1, num_updates // 10)); 0: off."""
    return max(1, num_updates // 10) if sample_steps is None else sample_steps


def sample_prompt_indices(num_prompts: int, n: int, *, seed: int, first: bool) -> list[int]:
    """The fixed prompts of the samples table: the first ``n`` (``first``: evaluation prompts), else ``n``
    picked by a permutation seeded by ``seed`` (its own generator; the global RNG is untouched)."""
    n = min(n, num_prompts)
    if first:
        return list(range(n))
    return torch.randperm(num_prompts, generator=torch.Generator().manual_seed(seed))[:n].tolist()


def proxy_reading(proxy: Tensor) -> Tensor:
    """Each sample's raw reward-model reading: the mean over the heads of `RewardSide.proxy` (a run without
    reward models: its rules' numbers), NaN entries left out — per sample, what the alarm's proxy averages.

    Shapes: (B, H) → (B,).
    """
    x = proxy.double()
    finite = torch.isfinite(x)
    return torch.where(finite, x, 0.0).sum(1) / finite.sum(1)  # NaN for a row with no finite entry


def sample_rows(s: ScoredSamples, *, update: int, split: str, reference: ScoredSamples | None = None,
                limit: int | None = None) -> list[dict[str, Any]]:
    """The JSON rows of ``s`` (the first ``limit``): one per prompt; NaN becomes null.

    Args:
        s: the policy's scored samples.
        update: updates done when they were drawn (0: the starting policy).
        split: which table: ``samples`` (the fixed prompts) or ``eval`` (the evaluation's first prompts).
        reference: the reference policy's samples of the same prompts (evaluation): their response and raw
            reading go into each row, under ``reference``.
    """
    rows = []
    for i in range(len(s) if limit is None else min(limit, len(s))):
        row = {"update": int(update), "split": split, "prompt": s.prompts[i], "response": s.responses[i],
               "raw": {name: [_num(v) for v in x[i].tolist()] for name, x in s.raw.items()},
               "terms": {name: _num(x[i]) for name, x in s.terms.items()},
               "score": _num(s.scores[i]), "raw_reward": _num(s.proxy[i]),
               "kl": None if s.kl is None else _num(s.kl[i]), "length": int(s.lengths[i]),
               "finished": bool(s.finished[i])}
        if reference is not None:
            row["reference"] = {"response": reference.responses[i], "raw_reward": _num(reference.proxy[i])}
        rows.append(row)
    return rows


def _num(x: Any) -> float | None:
    v = float(x)
    return v if math.isfinite(v) else None


class SamplesFile:
    """``<output_dir>/samples.jsonl``: started afresh by a new run; a resumed run keeps the rows up to its
    checkpoint's update (later ones belong to the part being redone, as in ``metrics.jsonl``) and appends.

    Args:
        output_dir: the run folder.
        resume_update: the checkpoint's update when resuming, else None.
        enabled: False on processes other than the main one (then nothing is written).
    """

    def __init__(self, output_dir: str | os.PathLike[str], *, resume_update: int | None, enabled: bool = True) -> None:
        self.path = os.path.join(os.fspath(output_dir), SAMPLES_FILE)
        self.enabled = enabled
        if not enabled:
            return
        if os.path.exists(self.path):
            if resume_update is None:
                write_text(self.path, "")
            else:
                truncate_jsonl(self.path, "update", resume_update)

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append rows (one JSON line each), flushed at once."""
        if not self.enabled or not rows:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_samples(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a ``samples.jsonl`` (or of the run folder holding it)."""
    return read_jsonl(path, SAMPLES_FILE)


def prompt_text(prompt: Any) -> str:
    """A prompt as one line of text: itself, or a conversation's turns as ``role: content``."""
    if isinstance(prompt, str):
        return prompt
    return " | ".join(f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, Mapping) else str(m)
                      for m in prompt)


def table_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows flattened for a tracker's table: text, numbers, and each term as ``term/<name>`` (raw outputs as
    ``raw/<name>``, a JSON list)."""
    out = []
    for r in rows:
        flat = {"update": r["update"], "prompt": prompt_text(r["prompt"]), "response": r["response"],
                "score": r["score"], "raw_reward": r["raw_reward"], "kl": r["kl"], "length": r["length"],
                "finished": r["finished"]}
        flat.update({f"term/{k}": v for k, v in r["terms"].items()})
        flat.update({f"raw/{k}": json.dumps(v) for k, v in r["raw"].items()})
        if "reference" in r:
            flat["reference_response"] = r["reference"]["response"]
            flat["reference_raw_reward"] = r["reference"]["raw_reward"]
        out.append(flat)
    return out


def print_samples(rows: Sequence[Mapping[str, Any]], *, title: str, width: int = 48, file: Any = None) -> None:
    """A small table of ``rows`` (texts cut to ``width`` characters): rich on a terminal (above a live
    progress bar), plain lines otherwise."""
    import rich

    def cut(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= width else text[:width - 1] + "…"

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3g}"  # three significant figures, as the log line

    console = rich.get_console() if file is None else None
    if console is not None and console.is_terminal:
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for name in ("prompt", "response", "score", "raw", "kl", "len", "eos"):
            text = name in ("prompt", "response")
            table.add_column(name, justify="left" if text else "right", no_wrap=not text)  # narrow: texts wrap
        for r in rows:
            table.add_row(cut(prompt_text(r["prompt"])), cut(r["response"]), fmt(r["score"]), fmt(r["raw_reward"]),
                          fmt(r["kl"]), str(r["length"]), "y" if r["finished"] else "n")
        console.print(table)
        return
    out = file or sys.stdout
    print(title, file=out)
    for r in rows:
        print(f"  score {fmt(r['score'])}  raw {fmt(r['raw_reward'])}  kl {fmt(r['kl'])}  len {r['length']}"
              f"{'' if r['finished'] else ' (no eos)'}  {cut(prompt_text(r['prompt']))!r} → {cut(r['response'])!r}",
              file=out)
    out.flush()
