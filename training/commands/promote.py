"""`mrlfads promote --sweep NAME | --run RUN_ID`: register a sweep's best finished trial, or
one finished training run, as an MLflow model that loads without this repository."""
from __future__ import annotations

import argparse

NAME = "promote"
HELP = ("register the best finished trial of a sweep (or one finished `mrlfads train` run) "
        "as a version of an MLflow model and point an alias (default: champion) at it")


def add_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--sweep", help="the sweep's name (its MLflow experiment); registers "
                       "its best finished trial as mrlfads-<sweep>")
    which.add_argument("--run", metavar="RUN_ID", help="the MLflow run id of a finished "
                       "`mrlfads train` run (printed at its end; RUN_DIR/tracking.json); "
                       "registers its best.pt as mrlfads-<run name>")
    p.add_argument("--name", help="registered model name (default: mrlfads-<sweep> or "
                   "mrlfads-<run name>)")
    p.add_argument("--metric", help="metric that ranks trials (default: the sweep's objective)")
    p.add_argument("--mode", choices=["min", "max"], help="default: the sweep's mode (min)")
    p.add_argument("--alias", default="champion", help="registry alias to set (default: champion)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                   "else sqlite in the work dir)")


def run(args: argparse.Namespace) -> int:
    from mrlfads.training.api import promote

    done = promote(args.sweep, run=args.run, name=args.name, metric=args.metric, mode=args.mode,
                   alias=args.alias, tracking_uri=args.tracking_uri)
    state = "registered as new" if done.created else "already registered as"
    print(f"{state} {done.name} version {done.version}; alias {done.alias} -> {done.uri}")
    print(f"load it anywhere: mlflow.pyfunc.load_model({done.uri!r})")
    return 0
