"""`mrlfads import-metrics OUTBOX...`: deliver tracking writes kept during an MLflow outage."""
from __future__ import annotations

import argparse

NAME = "import-metrics"
HELP = ("deliver the metrics, params and artifacts kept in tracking outbox files "
        "(tracking-outbox.jsonl in trial dirs) once the tracking server is back")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("outbox", nargs="+", metavar="OUTBOX_FILE", help="outbox JSON-lines file(s)")
    p.add_argument("--tracking-uri", help="deliver here instead of the URI recorded in the file")


def run(args: argparse.Namespace) -> int:
    from mrlfads.tracking.outbox import import_outbox

    total = 0
    for path in args.outbox:
        n = import_outbox(path, tracking_uri=args.tracking_uri)
        total += n
        print(f"{path}: delivered {n} tracking ops", flush=True)
    print(f"done: {total} ops from {len(args.outbox)} file(s)")
    return 0
