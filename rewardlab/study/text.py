"""Text ↔ ids for the study, in one place: how prompts are padded and how responses are read.

Every stage that generates (SFT samples for preferences, evaluation) goes through
`encode_prompts`, which left-pads whatever ``padding_side`` the tokenizer declares (generation
appends after the last column, so right padding would put pad tokens inside the prompt), and
every stage that hands a response to the gold goes through `decode_responses`, so the gold sees
the same text in labelling and in evaluation. The rules are stated in
`rewardlab.study.tasks.base`.

Example::

    ids, mask = encode_prompts(tok, ["( [ =", "( ="])          # (2, 3), left-padded
    texts, finished = decode_responses(tok, response_ids)     # cut at EOS, special tokens skipped
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rewardlab.ops.masked import pad_rows


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and attention mask, encoded with the tokenizer's special tokens.

    Shapes: -> (B, T_max), (B, T_max)
    """
    rows = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return pad_rows(rows, pad, side="left")


def decode_responses(tokenizer: Any, response_ids: torch.Tensor) -> tuple[list[str], list[bool]]:
    """Response texts cut before the first EOS, special tokens skipped; and whether each had an EOS.

    Shapes: response_ids (B, T) -> B texts, B flags
    """
    eos = tokenizer.eos_token_id
    texts, finished = [], []
    for row in response_ids.tolist():
        done = eos in row
        row = row[: row.index(eos)] if done else row
        texts.append(tokenizer.decode(row, skip_special_tokens=True))
        finished.append(done)
    return texts, finished
