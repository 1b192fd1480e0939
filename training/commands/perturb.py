"""`mrlfads perturb`: in-silico perturbation of a fitted model, one per run: the flags of
`Model.perturb` (training/api/perturb.py, which says what is computed and written), and a
table of the predicted (and, against a recorded perturbation, measured) change per region.
"""
from __future__ import annotations

import argparse

from mrlfads.training.cpu_threads import add_threads_argument

NAME = "perturb"
HELP = ("silence a region's messages, one pathway, or a region's inferred inputs over a "
        "window and report the predicted effect on every neuron")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint file or models:/NAME@ALIAS")
    p.add_argument("--data", required=True, help="dataset directory or URI")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--silence", metavar="REGION", help="region whose outgoing messages are cut")
    what.add_argument("--cut", metavar="SRC->DST", help="one pathway to cut (quote it in a shell)")
    what.add_argument("--silence-inputs", metavar="REGION",
                      help="region whose inferred inputs (unobserved regions) are silenced")
    p.add_argument("--channels", metavar="I,J,...",
                   help="only these message dimensions (--silence, --cut; 0..com_dim-1) or input "
                   "dimensions (--silence-inputs; 0..co_dim-1); default: all")
    p.add_argument("--window", required=True, metavar="START:STOP", help="trial bins, e.g. 50:100")
    p.add_argument("--split", default="valid", help="unperturbed trials to run (default: valid)")
    p.add_argument("--out", metavar="DIR",
                   help="write report.json, effects.npz and the scatter figure here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--device", default="auto")
    add_threads_argument(p)
    p.add_argument("--tracking-uri", help="MLflow tracking URI for models:/ URIs")


def run(args: argparse.Namespace) -> int:
    from mrlfads.training.api import load
    from mrlfads.training.cpu_threads import set_threads

    set_threads(args.threads)
    model = load(args.model, tracking_uri=args.tracking_uri)
    result = model.perturb(args.data, window=args.window, silence=args.silence, cut=args.cut,
                           silence_inputs=args.silence_inputs, channels=args.channels,
                           split=args.split, device=args.device, out=args.out,
                           overwrite=args.overwrite)
    _print_table(result.report)
    if args.out:
        print(f"wrote {args.out}")
    return 0


def _print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    p = report["perturbation"]
    what = {"silence": f"silencing {p['target']}'s messages", "cut": f"cutting {p['target']}",
            "inputs": f"silencing {p['target']}'s inferred inputs"}[p["kind"]]
    if p["channels"] is not None:
        what += f" (channels {','.join(map(str, p['channels']))})"
    console = Console()
    # the heading is its own line: a table's title wraps at the table's width
    seconds = ""
    if "window_s" in report:  # outputs written before it lack it
        lo, hi = report["window_s"]
        seconds = f"{lo:g} to {hi:g} s from {report['time_from']}; "
    console.print(Text(f"{what} over bins {p['window'][0]}:{p['window'][1]} "
                       f"({seconds}{report['trials']} trials)", style="bold"), soft_wrap=True)
    table = Table()
    table.add_column("region")
    table.add_column("predicted mean |change|", justify="right")
    measured = report.get("measured_mean_abs_change")
    if measured:
        table.add_column("measured mean |change|", justify="right")
        table.add_column("rank corr. per neuron", justify="right")
        table.add_column("signed rank corr.", justify="right")
    # outputs written before the signed correlation per region lack it
    signed = report.get("rank_correlation_signed_by_region", {})
    for name, value in report["mean_abs_rate_change"].items():
        row = [f"{value:.4g}"]
        if measured:
            row += [f"{measured[name]:.4g}", f"{report['rank_correlation_by_region'][name]:.3f}",
                    f"{signed[name]:.3f}" if name in signed else ""]
        table.add_row(name, *row)
    console.print(table)
    if measured and p["kind"] == "silence":
        print(f"{p['target']}'s own neurons: a recorded silencing also suppresses them "
              "directly, which cutting the model's messages does not predict; what the "
              "silencing does through its messages is in the other regions' rows")
    if "rank_correlation" in report:
        print(f"rank correlation predicted vs measured (all neurons): sizes "
              f"{report['rank_correlation']:.3f} (ranking neurons by firing rate alone: "
              f"{report['rank_correlation_rate_only']:.3f}), signed changes "
              f"{report['rank_correlation_signed']:.3f}")
