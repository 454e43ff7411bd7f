"""Score (prompt, response) pairs with a reward model, then turn the logits into rewards with a pipeline.

Input is JSONL, one sample per line: ``{"prompt": ..., "response": ...}`` (scored as the text
``prompt + response``) or ``{"messages": [...]}`` (rendered with the tokenizer's chat template;
the last message is the response) — or the same rows from any dataset TRL's scripts take (a
.json/.csv/.parquet/.arrow file, a save_to_disk or dataset folder, a Hub dataset; see
`rewardlab.datasets_io`). Centred pipelines (center, lsc, par, standardize) need
reference samples: ``--references`` is JSONL of the same form holding K reference-policy
responses per prompt, matched to the inputs by prompt text (or by the messages before the last).

Each output line is the input row plus ``logits`` (the raw head outputs, H numbers) and
``score`` (the pipeline's reward); a diagnostics summary is printed on stdout. The pipeline may mix
in rule terms (``"0.7*[rm:mean|lsc] + 0.3*[fn:my_rules:correct]"``): a row's other fields (``id``,
``answer`` …) reach them as dataset columns, and a term's values are written under ``terms``.

``--semantics`` is checked against the scored rows: declaring ``bradley_terry`` on heads that
anti-correlate like a classifier's (or ``classifier`` on 2 heads that move together) is refused,
as is a folder whose score head is missing from its weights (a causal-LM folder); the
``--allow-semantics-mismatch`` and ``--allow-untrained-head`` flags override.

Example::

    rewardlab score --reward-model runs/rm --pipeline "mean|center(q=0.5)|logsigmoid" \\
        --input samples.jsonl --references refs.jsonl --output scored.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from rewardlab.atomic import write_jsonl
from rewardlab.datasets_io import add_dataset_arguments
from rewardlab.devices import add_device_argument, resolve_device
from rewardlab.errors import RewardlabError
from rewardlab.reward.metadata import SEMANTICS

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reward-model",
        required=True,
        metavar="PATH",
        help="folder written by save_pretrained (safetensors weights + tokenizer)",
    )
    parser.add_argument(
        "--pipeline",
        required=True,
        metavar="SPEC",
        help="reward pipeline spec, e.g. 'mean|center(q=0.5)|logsigmoid' ('raw' for a 1-head model), or terms with "
             "sources: '0.7*[rm:mean] + 0.3*[fn:package.module:function]' (rule terms read the rows' other fields)",
    )
    parser.add_argument(
        "--semantics",
        choices=SEMANTICS,
        default=None,
        help="head semantics of the reward model (default: its rewardlab metadata)",
    )
    parser.add_argument(
        "--allow-semantics-mismatch",
        action="store_true",
        help="keep --semantics even when the heads' correlation contradicts it (see `rewardlab inspect`)",
    )
    parser.add_argument(
        "--allow-untrained-head",
        action="store_true",
        help="score even if the folder's weights lack the score head (transformers initialises it at random)",
    )
    add_dataset_arguments(parser, "--input", required=True,
                          what="prompt/response or messages rows: a JSONL file, or any dataset")
    parser.add_argument(
        "--references",
        metavar="DATA",
        default=None,
        help="reference-policy samples in the same form, K per prompt (needed by centred pipelines)",
    )
    parser.add_argument(
        "--output", required=True, metavar="FILE", help="JSONL written with logits and score per row"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="rows per micro-batch")
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="longest sequence (default: the tokenizer's, capped by the model's positions)",
    )
    add_device_argument(parser)
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="model precision (default: as saved)"
    )
    parser.add_argument(
        "--nan-policy",
        choices=("error", "drop"),
        default="error",
        help="NaN/inf logits: stop with an error, or drop those rows (written with null score)",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow custom model code from the folder (off by default: it runs arbitrary Python)",
    )


def _check_row(row: Any, where: str) -> dict[str, Any]:
    """A row holding prompt/response strings or a non-empty messages list, else an error naming ``where``."""
    ok_pair = isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str)
    ok_msgs = isinstance(row, dict) and isinstance(row.get("messages"), list) and len(row["messages"]) > 0
    if not (ok_pair or ok_msgs):
        keys = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise RewardlabError(
            f"{where} has {keys}; each row needs string 'prompt' and 'response' fields or a non-empty 'messages' list"
        )
    return row


def read_jsonl(path: str, what: str) -> list[dict[str, Any]]:
    """Rows of a JSONL file, each checked to hold prompt/response strings or a messages list."""
    if not Path(path).is_file():
        raise RewardlabError(f"{what} file {path!r} does not exist; pass a JSONL file")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise RewardlabError(f"{what} {path}:{n} is not valid JSON ({err.msg})") from None
            rows.append(_check_row(row, f"{what} {path}:{n}"))
    if not rows:
        raise RewardlabError(f"{what} file {path!r} has no rows")
    return rows


def read_rows(source: str, what: str, *, config: str | None = None, split: str | None = None) -> list[dict[str, Any]]:
    """Rows of a JSONL file (`read_jsonl`), or of any dataset `rewardlab.datasets_io.load_split` reads."""
    if source.endswith(".jsonl") and config is None and split is None:
        return read_jsonl(source, what)
    from rewardlab.datasets_io import describe, load_split

    ds = load_split(source, config=config, split=split, field=f"--{what}")
    name = describe(source, config, split)
    return [_check_row(row, f"{what} {name}: row {n}") for n, row in enumerate(ds.to_list(), start=1)]


def prompt_of(row: dict[str, Any]) -> str:
    """The text that identifies a row's prompt, for matching inputs with their references."""
    if "messages" in row and "prompt" not in row:
        return json.dumps(row["messages"][:-1], sort_keys=True, ensure_ascii=False)
    return row["prompt"]


def _samples(rows: list[dict[str, Any]]) -> Any:
    """Rows as the reward side reads them: a messages row's last message is its response; every other
    field of a row is a column (None where a row lacks it)."""
    from rewardlab.reward.side import Samples

    pair = [("prompt" in r and "response" in r) for r in rows]
    prompts = [r["prompt"] if ok else r["messages"][:-1] for r, ok in zip(rows, pair, strict=True)]
    responses = [r["response"] if ok else r["messages"][-1:] for r, ok in zip(rows, pair, strict=True)]
    names = list(dict.fromkeys(k for r in rows for k in r if k not in ("prompt", "response", "messages")))
    return Samples(prompts, responses, columns={c: [r.get(c) for r in rows] for c in names})


def score_rows(rows: list[dict[str, Any]], score: Any) -> torch.Tensor:
    """``score(samples)`` over mixed prompt/response and messages rows, each kind scored apart (text is
    joined, conversations go through the chat template), in the rows' order: (N, C)."""
    pairs = [i for i, r in enumerate(rows) if "prompt" in r and "response" in r]
    convs = [i for i, r in enumerate(rows) if not ("prompt" in r and "response" in r)]
    out: torch.Tensor | None = None
    for idx in (pairs, convs):
        if idx:
            part = score(_samples([rows[i] for i in idx]))
            if out is None:
                out = torch.empty(len(rows), part.shape[1])
            elif part.shape[1] != out.shape[1]:  # a rule that returns (B, H): the side widened its columns
                out = torch.cat([out, torch.empty(len(rows), part.shape[1] - out.shape[1])], 1)
            out[idx] = part
    assert out is not None
    return out


def run(args: argparse.Namespace) -> int:
    from rewardlab.reward.baselines import ReferenceRewards, prompt_key
    from rewardlab.reward.pipeline import RewardPipeline
    from rewardlab.reward.scoring import RewardModel
    from rewardlab.reward.side import RewardSide, RewardSpec

    if args.batch_size < 1:
        raise RewardlabError(f"--batch-size must be >= 1; got {args.batch_size}")
    # Parse everything cheap before loading the model, so a typo fails at once.
    device = resolve_device(args.device)  # a device this machine lacks is refused before anything loads
    rows = read_rows(args.input, "input", config=args.dataset_config, split=args.dataset_split)
    ref_rows = read_rows(args.references, "references") if args.references else None
    spec = RewardSpec(args.pipeline, num_models=1)  # sources, and the rule functions imported
    pipe_check = RewardPipeline(spec.terms, semantics=args.semantics)
    if pipe_check.needs_references and ref_rows is None:
        raise RewardlabError(
            f"pipeline '{pipe_check.spec}' compares each reward with reference rewards for the same prompt; "
            "pass --references FILE (K reference-policy samples per prompt), or use a pipeline without "
            "center/lsc/par/standardize"
        )
    spec.check_columns(list(_samples(rows).columns))

    rm = RewardModel.from_pretrained(
        args.reward_model,
        semantics=args.semantics,
        trust_remote_code=args.trust_remote_code,
        device=device,
        dtype=DTYPES[args.dtype] if args.dtype else None,
        batch_size=args.batch_size,
        max_length=args.max_length,
        nan_policy=args.nan_policy,
        allow_untrained_head=args.allow_untrained_head,
    )
    side = RewardSide(spec, [rm], semantics=args.semantics, what="--pipeline")  # e.g. head(k=2) on 2 heads fails here
    raw = score_rows(rows, side.score)
    kept = torch.isfinite(side.proxy(raw)).all(-1)
    keep_idx = kept.nonzero().flatten().tolist()
    if not keep_idx:
        raise RewardlabError(
            "every input row gave NaN/inf logits; nothing to score (check the model and dtype)"
        )
    if not args.allow_semantics_mismatch:  # evidence: the scored rows (random probes when fewer than 8)
        rm.check_declared_semantics(side.proxy(raw)[keep_idx], declared_as="--semantics",
                                    override="--allow-semantics-mismatch")

    ref = None
    if ref_rows is not None and side.needs_references:
        ref_raw = score_rows(ref_rows, side.reference_scores)
        ref_keep = torch.isfinite(ref_raw).all(-1).nonzero().flatten().tolist()
        cache = ReferenceRewards()
        cache.add([prompt_key(prompt_of(ref_rows[i])) for i in ref_keep], ref_raw[ref_keep])
        keys = [prompt_key(prompt_of(rows[i])) for i in keep_idx]
        missing = [prompt_of(rows[i]) for i, k in zip(keep_idx, keys, strict=True) if k not in cache]
        if missing:
            raise RewardlabError(
                f"{len(missing)} input row(s) have no reference samples for their prompt (first: {missing[0][:80]!r}); "
                f"add reference responses for every prompt to {args.references}"
            )
        ref = cache.gather(keys)
    elif ref_rows is not None:
        print(f"note: pipeline '{side.spec}' does not use references; --references ignored", file=sys.stderr)

    out = side.reward(raw[keep_idx], ref=ref)
    scores: list[float | None] = [None] * len(rows)
    terms: list[dict[str, float | None] | None] = [None] * len(rows)
    for j, i in enumerate(keep_idx):
        scores[i] = out.scores[j].item() if out.scorable[j] else None
        terms[i] = {name: (None if math.isnan(v[j].item()) else v[j].item()) for name, v in out.terms.items()}
    model_cols = side.proxy(raw)
    written = []
    for i, row in enumerate(rows):
        extra = {"terms": terms[i]} if len(out.terms) > 1 else {}
        written.append({**row, "logits": model_cols[i].tolist() if kept[i] else None, "score": scores[i], **extra})
    write_jsonl(args.output, written, ensure_ascii=False)

    print(f"rewardlab score: {len(keep_idx)}/{len(rows)} rows scored -> {args.output}")
    print(f"  reward model  {args.reward_model} ({rm.num_heads} head(s), semantics={rm.semantics})")
    print(
        f"  pipeline      {side.spec}"
        + (f" (K={ref.shape[1]} references per prompt)" if ref is not None else "")
    )
    if len(keep_idx) < len(rows):
        print(f"  dropped       {len(rows) - len(keep_idx)} row(s) with NaN/inf logits (score null)")
    for key, value in out.diagnostics.items():
        print(f"  {key:<26} {value: .4f}")
    return 0
