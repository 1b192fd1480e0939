"""`mrlfads sweep --data DIR`: a PBT (or Optuna) hyperparameter sweep on Ray Tune."""
from __future__ import annotations

import argparse
import sys

NAME = "sweep"
HELP = ("search hyperparameters with population-based training (or Optuna) on Ray: local by "
        "default, a cluster with --address; resumable with --resume")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset directory or URI (s3://... on a cluster)")
    p.add_argument("--space", help="search-space YAML (default: search_spaces/pbt.yaml)")
    p.add_argument("--name", help="sweep name (default: KIND-DATASET-TIMESTAMP); needed for --resume")
    p.add_argument("--address", help="Ray cluster to join: auto or ray://HOST:PORT "
                   "(default: start a local Ray)")
    p.add_argument("--storage", help="where trials and checkpoints go (default: ./sweeps); "
                   "shared storage (s3://... or a shared mount) on several nodes")
    p.add_argument("--config", help="run-config YAML (model/loss/train sections) for every trial")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="PATH=VALUE",
                   help="override run-config fields for every trial, e.g. train.epochs=500 "
                   "(repeatable; values are read as YAML 1.2: 1e-3, .5, true, null)")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep --name whose driver died, from its checkpoints")
    p.add_argument("--smoke-test", action="store_true",
                   help="tiny population, model and epochs: a sweep with exploits in ~1 minute")
    p.add_argument("--no-tracking", action="store_true", help="do not log the sweep to MLflow")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in the work dir)")
    p.add_argument("--quiet", action="store_true", help="no live table of trials")


def make_plan(args: argparse.Namespace):
    """The sweep's plan from the command line (no Ray yet): a new one, or the one --resume
    continues; --set and --config values are read as YAML 1.2 (training/yaml12.py)."""
    from mrlfads.training.api import plan_sweep
    from mrlfads.training.yaml12 import parse_sets

    return plan_sweep(args.data, space=args.space, name=args.name, storage=args.storage,
                      config=args.config, overrides=parse_sets(args.set),
                      smoke_test=args.smoke_test, resume=args.resume)


def run(args: argparse.Namespace) -> int:
    from mrlfads.training.api import sweep

    result = sweep(make_plan(args), resume=args.resume, address=args.address,
                   tracking=not args.no_tracking, tracking_uri=args.tracking_uri,
                   verbose=0 if args.quiet else 1)
    print(result, flush=True)
    if result.undelivered:
        print("the tracking server was unreachable at the end; deliver the queued metrics with:\n"
              f"  mrlfads import-metrics {' '.join(result.undelivered)}", file=sys.stderr)
    if result.summary.unfinished:
        from mrlfads.training.cli import EXIT_INTERRUPTED

        plan = result.plan
        again = f"mrlfads sweep --resume --name {plan.name} --storage {plan.storage}"
        if args.address:
            again += f" --address {args.address}"
        print(f"interrupted: the sweep stopped before its end; continue it with:\n  {again}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.best_trial is None:
        print("error: no trial finished", file=sys.stderr)
        return 1
    return 0
