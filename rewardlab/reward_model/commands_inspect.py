"""Diagnose a reward model: head semantics, each reading's accuracy, the recommended pipeline.

    rewardlab inspect runs/rm
    rewardlab inspect path/to/trl-model --preferences eval.jsonl --output inspect.json
    rewardlab inspect Org/RM --preferences org/prefs --dataset-split test --device cpu

Works on models trained by rewardlab (semantics from their metadata), by TRL's RewardTrainer
(one output) and on 2-logit models from older TRL or cross-entropy classifiers (semantics
inferred from how the heads correlate; --preferences makes the inference much stronger and
adds accuracy and calibration per reading). See docs/reward-models.md.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rewardlab.datasets_io import add_dataset_arguments
    from rewardlab.devices import add_device_argument

    parser.add_argument("model", help="reward model: a folder (save_pretrained, safetensors) or a Hub name")
    add_dataset_arguments(parser, "--preferences", what="preference pairs (prompt/chosen/rejected, TRL's format)")
    add_device_argument(parser)
    parser.add_argument("--output", metavar="JSON", help="write the full report here")
    parser.add_argument("--semantics", choices=["bradley_terry", "classifier"], help="declare the head semantics")
    parser.add_argument("--plot", metavar="PNG", help="reliability diagram of the recommended reading (needs --preferences)")
    parser.add_argument("--max-length", type=int, default=None, help="keep the last N tokens of each sequence")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")


def print_report(report, console=None) -> None:
    """The report as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    s = report.semantics
    console.print(f"[bold]{report.model}[/bold]  {report.architecture}, num_labels={report.num_labels}")
    console.print(f"semantics: [bold]{s.semantics or 'undecided'}[/bold] (source: {s.source}, confidence: {s.confidence})")
    for line in s.evidence:
        console.print(f"  • {line}")
    table = Table(title="readings")
    for col in ("reading", "verdict", "accuracy", "ECE", "why"):
        table.add_column(col, overflow="fold")
    style = {"recommended": "green", "wrong": "red", "ok": "", "same": "dim"}
    for r in report.readings:
        table.add_row(
            r.reading, f"[{style[r.verdict]}]{r.verdict}[/]" if style[r.verdict] else r.verdict,
            "" if r.accuracy is None else f"{r.accuracy:.3f}", "" if r.ece is None else f"{r.ece:.3f}", r.why,
        )
    console.print(table)
    ev = report.evaluation
    if ev is not None:
        line = f"{ev.num_pairs} pairs; {ev.principal}: temperature fit T={ev.temperature:.3g}, ECE {ev.readings[ev.principal].ece:.3f} → {ev.ece_at_temperature:.3f} at T"
        console.print(line)
        if ev.offsets:
            from rewardlab.reward_model.commands_evaluate import format_offsets

            console.print(format_offsets(ev.offsets))
    if report.agreement is not None:
        print_agreement(report.agreement, console)
    console.print(f"recommended pipeline: [bold green]{report.recommended_spec or '(declare the semantics first)'}[/]")
    console.print(f"  why: {report.why}")


def print_agreement(agreement, console) -> None:
    """The BT heads' agreement as a table: one row per head (accuracy with preferences), then the summary."""
    from rich.table import Table

    a = agreement
    kind = "bootstrap ensemble" if a.ensemble == "bootstrap" else "heads"
    what = "preference responses" if a.source == "preferences" else "random token sequences"
    table = Table(title=f"agreement of the {kind} (on {a.num_sequences} {what})")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for k, acc in enumerate(a.head_accuracy or []):
        table.add_row(f"head {k} accuracy", f"{acc:.3f}")
    table.add_row("mean correlation between heads", f"{a.mean_correlation:+.3f}")
    table.add_row("mean std across heads (reward units)", f"{a.mean_head_std:.4g}")
    table.add_row("std of the mean reward (for scale)", f"{a.reward_std:.4g}")
    if a.winner_disagreement is not None:
        table.add_row("pairs whose winner the heads dispute", f"{a.winner_disagreement:.3f}")
    console.print(table)


def run(args: argparse.Namespace) -> int:
    from rewardlab.devices import resolve_device
    from rewardlab.errors import RewardlabError
    from rewardlab.reward_model.inspect import inspect_reward_model, write_json

    if args.preferences is None and (args.dataset_config or args.dataset_split):
        raise RewardlabError("--dataset-config and --dataset-split choose a part of --preferences; give --preferences")
    device = resolve_device(args.device)  # a device this machine lacks is refused before anything loads
    report = inspect_reward_model(args.model, args.preferences, dataset_config=args.dataset_config,
                                  split=args.dataset_split, device=device, semantics=args.semantics,
                                  max_length=args.max_length, batch_size=args.batch_size, plot=args.plot)
    print_report(report)
    if args.output:
        write_json(report, args.output)
        print(f"wrote {args.output}")
    return 0
