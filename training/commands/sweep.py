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
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="override a run-config field for every trial, e.g. train.epochs=500 "
                   "(repeatable; values are read as YAML 1.2: 1e-3, .5, true, null)")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep --name whose driver died, from its checkpoints")
    p.add_argument("--smoke-test", action="store_true",
                   help="tiny population, model and epochs: a sweep with exploits in ~1 minute")
    p.add_argument("--no-tracking", action="store_true", help="do not log the sweep to MLflow")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in the work dir)")
    p.add_argument("--quiet", action="store_true", help="no live table of trials")


def tracking_callbacks(plan, args: argparse.Namespace) -> list:
    """Tune callbacks that log the sweep to MLflow, from the tracking package when it
    offers ``tracking.tune_callback.sweep_callbacks(plan, tracking_uri=...)``."""
    if args.no_tracking:
        return []
    try:
        from tracking.tune_callback import sweep_callbacks
    except ImportError:
        return []
    return list(sweep_callbacks(plan, tracking_uri=args.tracking_uri))


def make_plan(args: argparse.Namespace):
    """The sweep's plan from the command line (no Ray yet): a new one, or the one --resume
    continues; --set and --config values are read as YAML 1.2 (training/yaml12.py)."""
    from training import sweep
    from training.config import load_config_file
    from training.yaml12 import parse_sets

    if args.resume:
        if not args.name:
            raise sweep.SweepError("--resume needs --name: the name of the sweep to continue "
                                   "(a directory under --storage)")
        return sweep.load_plan(args.storage, args.name)
    if not args.data:
        raise sweep.SweepError("--data is required: the dataset directory or URI to sweep on")
    return sweep.plan_sweep(
        args.data, space=args.space, name=args.name, storage=args.storage,
        run_overrides=parse_sets(args.set), user_config=load_config_file(args.config),
        smoke_test=args.smoke_test)


def run(args: argparse.Namespace) -> int:
    from training import sweep

    plan = make_plan(args)
    print(f"sweep {plan.name}: {plan.space.kind}, "
          f"{plan.space.scheduler.population if plan.space.kind == 'pbt' else plan.space.scheduler.num_samples}"
          f" trials x {plan.epochs} epochs, storage {plan.experiment_path}", flush=True)
    callbacks = tracking_callbacks(plan, args)
    summary = sweep.run_sweep(plan, address=args.address, resume=args.resume,
                              callbacks=callbacks,
                              tracking=not args.no_tracking, verbose=0 if args.quiet else 1)
    print(sweep.format_summary(summary), flush=True)
    undelivered = [f for cb in callbacks for f in getattr(cb, "outbox_files", [])]
    if undelivered:
        print("the tracking server was unreachable at the end; deliver the queued metrics with:\n"
              f"  mrlfads import-metrics {' '.join(map(str, undelivered))}", file=sys.stderr)
    if summary.best_trial is None:
        print("error: no trial finished", file=sys.stderr)
        return 1
    return 0
