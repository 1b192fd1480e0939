"""`mrlfads compare-effectomes OUT OUT ...`: several fits' cut effectomes side by side, and the
pathways whose order the fits disagree on (mrlfads.compare_effectomes)."""
from __future__ import annotations

import argparse

NAME = "compare-effectomes"
HELP = ("compare the effectomes of several fits of one dataset (`mrlfads infer --out` folders, "
        "e.g. from other training seeds): each pathway's mean and range, and the pathways "
        "whose order the fits disagree on")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("fits", nargs="+", metavar="INFER_OUT",
                   help="`mrlfads infer --out` folders (or the effectome.json in each), two or "
                   "more, of one dataset")
    p.add_argument("--out", metavar="FILE.json", help="also write the comparison as JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from mrlfads.atomic import write_atomic
    from mrlfads.training.api import compare_effectomes

    result = compare_effectomes(args.fits)
    console = Console()
    console.print(Text(f"cut effectomes of {len(result['fits'])} fits, by mean", style="bold"),
                  soft_wrap=True)
    table = Table()
    for col in ("tier", "pathway", "mean", "min", "max", "order differs from"):
        table.add_column(col, justify="left" if col in ("pathway", "order differs from")
                         else "right")
    for p in result["pathways"]:
        table.add_row(str(p["tier"] or "-"), p["pathway"], f"{p['mean']:.4g}", f"{p['min']:.4g}", f"{p['max']:.4g}",
                      ", ".join(p["order_differs_from"]) or "-")
    console.print(table)
    n = result["pairs_in_differing_order"]
    print("every fit ranks each tier's pathways above every lower tier's; " + (
        f"within tiers, {n} pair(s) of pathways are ranked differently by some fits: read "
        "their order as uncertain" if n else "every fit ranks every pathway in the same order"))
    if args.out:
        write_atomic(args.out, json.dumps(result, indent=2))
        print(f"wrote {args.out}")
    return 0
