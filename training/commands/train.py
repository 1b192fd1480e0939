"""`mrlfads train`: fit one model to one dataset, with checkpoints and per-epoch metrics."""
from __future__ import annotations

import argparse
from pathlib import Path

from mrlfads.training.commands import at_least

NAME = "train"
HELP = "train one MR-LFADS model on an Arrow dataset (no search)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset directory or URI (from simulate/ingest)")
    p.add_argument("--config", help="YAML with optional model/loss/train sections, over the "
                   "defaults for the data's observations (spike counts start from lower KL "
                   "weights, lr 5e-4 and coordinated dropout: docs/MODEL.md, 'Defaults')")
    p.add_argument("--epochs", type=at_least(1, "epoch"),
                   help="number of epochs (default: the config's, 350); the default KL/L2 "
                   "ramps are stretched to fit, ramps you set must end before the last epoch. "
                   "Training ends sooner once train.patience (50) epochs after the ramps "
                   "bring no better objective (--set train.patience=0: every epoch)")
    p.add_argument("--out", default="runs/train",
                   help="run directory (default: runs/train): last.pt every epoch, best.pt = "
                        "the lowest smoothed objective among epochs after every KL/L2 ramp "
                        "has finished (earlier epochs are never selected)")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="PATH=VALUE",
                   help="override config fields, e.g. --set train.lr=1e-3 train.seed=1 "
                   "(repeatable; values are read as YAML 1.2: 1e-3, .5, true, null, [1, 2])")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: train.device)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (and "
                   "its MLflow run, named in OUT/tracking.json)")
    p.add_argument("--smoke-test", action="store_true", help="tiny model and few epochs")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI "
                   "or the embedded SQLite store under the working directory)")
    p.add_argument("--experiment", default="mrlfads-train", help="MLflow experiment name")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from mrlfads.training.api import fit
    from mrlfads.training.loop import NonFiniteLossError
    from mrlfads.training.yaml12 import parse_sets

    try:
        model = fit(args.data, config=args.config, out=args.out, overrides=parse_sets(args.set),
                    epochs=args.epochs, device=args.device, resume=args.resume,
                    smoke_test=args.smoke_test, tracking=not args.no_tracking,
                    tracking_uri=args.tracking_uri, experiment=args.experiment,
                    progress=not args.quiet)
    except NonFiniteLossError as exc:
        print(f"error: {exc}")
        return 1
    last = model.history[-1] if model.history else {}
    out = Path(args.out)
    print(f"done: {int(last.get('epoch', 0))} epochs, objective "
          f"{last.get('objective', float('nan')):.4g}; checkpoints in {out} (best.pt, last.pt), "
          f"metrics in {out / 'metrics.jsonl'}")
    if model.run_id and not model.run_id.startswith("pending-"):
        print(f"MLflow run {model.run_id}; register its best.pt with: "
              f"mrlfads promote --run {model.run_id}")
    return 0
