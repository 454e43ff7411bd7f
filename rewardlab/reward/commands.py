"""Score (prompt, response) pairs with a reward model, then turn the logits into rewards with a pipeline.

Input is JSONL, one sample per line: ``{"prompt": ..., "response": ...}`` (scored as the text
``prompt + response``) or ``{"messages": [...]}`` (rendered with the tokenizer's chat template;
the last message is the response). Centred pipelines (center, lsc, par, standardize) need
reference samples: ``--references`` is JSONL of the same form holding K reference-policy
responses per prompt, matched to the inputs by prompt text (or by the messages before the last).

Each output line is the input row plus ``logits`` (the raw head outputs, H numbers) and
``score`` (the pipeline's reward); a diagnostics summary is printed on stdout.

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
import sys
from pathlib import Path
from typing import Any

import torch

from rewardlab.atomic import write_jsonl
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
        help="reward pipeline spec, e.g. 'mean|center(q=0.5)|logsigmoid' ('raw' for a 1-head model)",
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
    parser.add_argument(
        "--input", required=True, metavar="FILE", help="JSONL of prompt/response or messages rows"
    )
    parser.add_argument(
        "--references",
        metavar="FILE",
        default=None,
        help="JSONL of reference-policy samples, K per prompt (needed by centred pipelines)",
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
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cpu)")
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
            ok_pair = (
                isinstance(row, dict)
                and isinstance(row.get("prompt"), str)
                and isinstance(row.get("response"), str)
            )
            ok_msgs = (
                isinstance(row, dict) and isinstance(row.get("messages"), list) and len(row["messages"]) > 0
            )
            if not (ok_pair or ok_msgs):
                keys = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise RewardlabError(
                    f"{what} {path}:{n} has {keys}; each row needs string 'prompt' and 'response' fields "
                    "or a non-empty 'messages' list"
                )
            rows.append(row)
    if not rows:
        raise RewardlabError(f"{what} file {path!r} has no rows")
    return rows


def prompt_of(row: dict[str, Any]) -> str:
    """The text that identifies a row's prompt, for matching inputs with their references."""
    if "messages" in row and "prompt" not in row:
        return json.dumps(row["messages"][:-1], sort_keys=True, ensure_ascii=False)
    return row["prompt"]


def score_rows(rm: Any, rows: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw logits (N, H) for mixed prompt/response and messages rows, and the kept mask (N,)."""
    logits = torch.empty(len(rows), rm.num_heads)
    kept = torch.ones(len(rows), dtype=torch.bool)
    pairs = [i for i, r in enumerate(rows) if "prompt" in r and "response" in r]
    convs = [i for i, r in enumerate(rows) if not ("prompt" in r and "response" in r)]
    if pairs:
        logits[pairs] = rm.score_texts(
            [rows[i]["prompt"] for i in pairs], [rows[i]["response"] for i in pairs]
        )
        kept[pairs] = rm.last_kept_mask
    if convs:
        logits[convs] = rm.score_messages([rows[i]["messages"] for i in convs])
        kept[convs] = rm.last_kept_mask
    return logits, kept


def _check_fits(spec: str, semantics: str | None, num_heads: int) -> None:
    """Apply a fresh pipeline to made-up logits of the model's shape, naming --pipeline on failure."""
    from rewardlab.reward.pipeline import RewardPipeline

    probe = RewardPipeline.from_spec(spec, semantics=semantics)
    logits = torch.linspace(-1.0, 1.0, 4 * num_heads).view(4, num_heads)
    ref = logits.unsqueeze(1) + torch.linspace(-0.5, 0.5, 2).view(1, 2, 1) if probe.needs_references else None
    try:
        probe(logits, ref=ref)
    except RewardlabError as err:
        raise RewardlabError(f"--pipeline {spec!r} does not fit the reward model ({num_heads} outputs): {err}") from None


def run(args: argparse.Namespace) -> int:
    from rewardlab.reward.baselines import ReferenceRewards, prompt_key
    from rewardlab.reward.pipeline import RewardPipeline
    from rewardlab.reward.scoring import RewardModel

    if args.batch_size < 1:
        raise RewardlabError(f"--batch-size must be >= 1; got {args.batch_size}")
    # Parse everything cheap before loading the model, so a typo fails at once.
    rows = read_jsonl(args.input, "input")
    ref_rows = read_jsonl(args.references, "references") if args.references else None
    pipe_check = RewardPipeline.from_spec(args.pipeline, semantics=args.semantics)
    if pipe_check.needs_references and ref_rows is None:
        raise RewardlabError(
            f"pipeline '{pipe_check.spec}' compares each reward with reference rewards for the same prompt; "
            "pass --references FILE (K reference-policy samples per prompt), or use a pipeline without "
            "center/lsc/par/standardize"
        )

    rm = RewardModel.from_pretrained(
        args.reward_model,
        semantics=args.semantics,
        trust_remote_code=args.trust_remote_code,
        device=args.device,
        dtype=DTYPES[args.dtype] if args.dtype else None,
        batch_size=args.batch_size,
        max_length=args.max_length,
        nan_policy=args.nan_policy,
        allow_untrained_head=args.allow_untrained_head,
    )
    pipe = RewardPipeline.from_spec(args.pipeline, semantics=rm.semantics)
    _check_fits(args.pipeline, rm.semantics, rm.num_heads)  # e.g. head(k=2) on 2 heads, before scoring every row
    logits, kept = score_rows(rm, rows)
    keep_idx = kept.nonzero().flatten().tolist()
    if not keep_idx:
        raise RewardlabError(
            "every input row gave NaN/inf logits; nothing to score (check the model and dtype)"
        )
    if not args.allow_semantics_mismatch:  # evidence: the scored rows (random probes when fewer than 8)
        rm.check_declared_semantics(logits[keep_idx], declared_as="--semantics", override="--allow-semantics-mismatch")

    ref = None
    if ref_rows is not None and pipe.needs_references:
        ref_logits, ref_kept = score_rows(rm, ref_rows)
        cache = ReferenceRewards()
        ref_keep = ref_kept.nonzero().flatten().tolist()
        cache.add([prompt_key(prompt_of(ref_rows[i])) for i in ref_keep], ref_logits[ref_keep])
        keys = [prompt_key(prompt_of(rows[i])) for i in keep_idx]
        missing = [prompt_of(rows[i]) for i, k in zip(keep_idx, keys, strict=True) if k not in cache]
        if missing:
            raise RewardlabError(
                f"{len(missing)} input row(s) have no reference samples for their prompt (first: {missing[0][:80]!r}); "
                f"add reference responses for every prompt to {args.references}"
            )
        ref = cache.gather(keys)
    elif ref_rows is not None:
        print(f"note: pipeline '{pipe.spec}' does not use references; --references ignored", file=sys.stderr)

    out = pipe(logits[keep_idx], ref=ref)
    scores: list[float | None] = [None] * len(rows)
    for i, s in zip(keep_idx, out.scores.tolist(), strict=True):
        scores[i] = s
    written = []
    for i, row in enumerate(rows):
        finite = bool(kept[i])
        written.append({**row, "logits": logits[i].tolist() if finite else None, "score": scores[i]})
    write_jsonl(args.output, written, ensure_ascii=False)

    print(f"rewardlab score: {len(keep_idx)}/{len(rows)} rows scored -> {args.output}")
    print(f"  reward model  {args.reward_model} ({rm.num_heads} head(s), semantics={rm.semantics})")
    print(
        f"  pipeline      {pipe.spec}"
        + (f" (K={ref.shape[1]} references per prompt)" if ref is not None else "")
    )
    if len(keep_idx) < len(rows):
        print(f"  dropped       {len(rows) - len(keep_idx)} row(s) with NaN/inf logits (score null)")
    for key, value in out.diagnostics.items():
        print(f"  {key:<26} {value: .4f}")
    return 0
