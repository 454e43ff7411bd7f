"""Evaluate a reward model on preference pairs: accuracy per reading, calibration, temperature.

    rewardlab evaluate-rm runs/rm --preferences eval.jsonl --plot reliability.png --output eval.json
    rewardlab evaluate-rm Org/RM --preferences org/prefs --dataset-config main --dataset-split test

For every reading of the heads (each head, mean, sum, min, log-odds) it reports preference
accuracy, ECE of σ(r_c − r_r) and NLL; for the principal reading (from the model's semantics,
or --reading) the fitted temperature, head correlation and per-prompt reward offsets.
See docs/reward-models.md for what each number means.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from rewardlab.datasets_io import add_dataset_arguments
    from rewardlab.devices import add_device_argument

    parser.add_argument("model", help="reward model: a folder (save_pretrained, safetensors) or a Hub name")
    add_dataset_arguments(parser, "--preferences", what="preference pairs (prompt/chosen/rejected, TRL's format)",
                          required=True)
    add_device_argument(parser)
    parser.add_argument("--semantics", choices=["bradley_terry", "classifier"], help="declare the head semantics")
    parser.add_argument("--reading", help="principal reading for calibration, e.g. mean or 'head(k=0)'")
    parser.add_argument("--plot", metavar="PNG", help="write a reliability diagram of the principal reading")
    parser.add_argument("--output", metavar="JSON", help="write the full report here")
    parser.add_argument("--bins", type=int, default=10, help="confidence bins for ECE")
    parser.add_argument("--max-length", type=int, default=None, help="keep the last N tokens of each sequence")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")


def format_offsets(o: dict) -> str:
    """One line on the per-prompt offsets; the between-prompt share only where it is identifiable."""
    share = o.get("between_prompt_fraction")
    shown = (f"between-prompt share {share:.0%} (from {o['between_prompt_prompts']} prompts with ≥ 2 pairs)"
             if share is not None and share == share else
             "between-prompt share not identifiable (needs ≥ 2 prompts with ≥ 2 pairs each)")
    return (f"per-prompt offsets ({o['num_prompts']} prompts): mean {o['offset_mean']:+.3f}, std {o['offset_std']:.3f}, "
            f"within-prompt std {o['within_prompt_std']:.3f}, {shown}")


def print_report(report, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    source = f" ({report.semantics_source})" if report.semantics_source else ""
    semantics = f"semantics {report.semantics}{source}" if report.semantics else "semantics undecided"
    table = Table(title=f"{report.num_pairs} preference pairs, {report.num_heads} head(s), {semantics}")
    for col in ("reading", "accuracy", "ECE", "NLL"):
        table.add_column(col)
    for name, r in report.readings.items():
        mark = " *" if name == report.principal else ""
        table.add_row(name + mark, f"{r.accuracy:.3f}", f"{r.ece:.3f}", f"{r.nll:.3f}")
    console.print(table)
    from rewardlab.reward_model.evaluate import T_MAX, T_MIN

    at_bound = not T_MIN * 1.01 < report.temperature < T_MAX * 0.99
    console.print(f"* principal reading {report.principal}: temperature T={report.temperature:.3g} "
                  f"(NLL {report.readings[report.principal].nll:.3f} → {report.nll_at_temperature:.3f}, "
                  f"ECE → {report.ece_at_temperature:.3f})"
                  + (" — T sits at its search bound: this reading barely orders the preferences" if at_bound else ""))
    if report.semantics is None and report.num_heads > 1:
        console.print("semantics undecided: the principal reading assumes Bradley-Terry heads; pass --semantics "
                      "(see `rewardlab inspect`)")
    if report.head_correlation is not None:
        console.print(f"head correlation: {[[round(x, 3) for x in row] for row in report.head_correlation]}")
    if report.offsets:
        console.print(format_offsets(report.offsets))
    if report.plot:
        console.print(f"reliability diagram: {report.plot}")


def run(args: argparse.Namespace) -> int:
    from rewardlab.devices import resolve_device
    from rewardlab.reward_model.evaluate import evaluate_reward_model
    from rewardlab.reward_model.inspect import write_json

    device = resolve_device(args.device)  # a device this machine lacks is refused before anything loads
    report = evaluate_reward_model(args.model, args.preferences, dataset_config=args.dataset_config,
                                   split=args.dataset_split, device=device, semantics=args.semantics,
                                   principal=args.reading, max_length=args.max_length, batch_size=args.batch_size,
                                   n_bins=args.bins, plot=args.plot)
    print_report(report)
    if args.output:
        write_json(report, args.output)
        print(f"wrote {args.output}")
    return 0
