"""`mrlfads train`: fit one model to one dataset, with checkpoints and per-epoch metrics."""
from __future__ import annotations

import argparse
from pathlib import Path

NAME = "train"
HELP = "train one MR-LFADS model on an Arrow dataset (no search)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset directory or URI (from simulate/ingest)")
    p.add_argument("--config", help="YAML with optional model/loss/train sections")
    p.add_argument("--epochs", type=_epochs, help="number of epochs (default: the config's, "
                   "350); the default KL/L2 ramps are stretched to fit, ramps you set must "
                   "end before the last epoch")
    p.add_argument("--out", default="runs/train",
                   help="run directory (default: runs/train): last.pt every epoch, best.pt = "
                        "the lowest smoothed objective among epochs after every KL/L2 ramp "
                        "has finished (earlier epochs are never selected)")
    p.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                   help="override one config field, e.g. --set train.lr=1e-3 (repeatable; "
                   "values are read as YAML 1.2: 1e-3, .5, true, null, [1, 2])")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: train.device)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt (and "
                   "its MLflow run, named in OUT/tracking.json)")
    p.add_argument("--smoke-test", action="store_true", help="tiny model and few epochs")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI "
                   "or the embedded SQLite store under the working directory)")
    p.add_argument("--experiment", default="mrlfads-train", help="MLflow experiment name")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _epochs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of epochs, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"need at least 1 epoch, got {value}")
    return value


def parse_sets(items: list[str]) -> dict[str, object]:
    """``["train.lr=1e-3"]`` -> ``{"train.lr": 0.001}``: values read as YAML 1.2
    (training/yaml12.py), the grammar of every command's --set and of --config files."""
    from training.yaml12 import parse_sets as parse

    return parse(items)


def run(args: argparse.Namespace) -> int:
    from data_loaders.reader import ArrowDataset
    from training import checkpoint as ckpt
    from training.config import RunConfig, fit_ramps, load_config_file
    from training.fit import BEST, LAST, fit
    from training.loop import NonFiniteLossError, Trainer
    from training.tracking_glue import open_run_tracker, save_run_id

    dataset = ArrowDataset.open(args.data)
    overrides = parse_sets(args.set)
    if args.device:
        overrides["train.device"] = args.device
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    out = Path(args.out)
    if args.resume:
        # a resumed run keeps its own config (sizes, ramps); only --set / --epochs change it
        state = ckpt.load(out / LAST)
        saved = ckpt.run_config(state, out / LAST)
        done = state.get("epoch")
        if args.epochs is not None and isinstance(done, int) and args.epochs <= done:
            raise ValueError(f"--epochs {args.epochs}: the run in {out} has already trained "
                             f"{done} epochs; pass more than {done} to continue it")
        cfg = fit_ramps(saved.with_overrides(overrides), explicit=True)
        if args.config:
            print(f"note: --resume keeps the config saved in {out / LAST}; --config is ignored "
                  "(use --set PATH=VALUE to change a field)")
        trainer = Trainer.from_checkpoint(out / LAST, dataset, run_cfg=cfg)
        print(f"resuming {out / LAST} at epoch {trainer.epoch}")
    else:
        if (out / LAST).exists():
            raise ValueError(f"{out} already holds a run (last.pt): pass --resume to continue it "
                             "or choose another --out")
        cfg = RunConfig.for_dataset(dataset.manifest, uri=args.data,
                                    user=load_config_file(args.config), overrides=overrides,
                                    smoke_test=args.smoke_test)
        trainer = Trainer(cfg, dataset)
    tracker = None if args.no_tracking else open_run_tracker(
        args.experiment, out.name, cfg, dataset.manifest, args.tracking_uri, out,
        resume=args.resume)
    status, run_id = "FINISHED", None
    try:
        metrics = fit(trainer, out, tracker=tracker, progress=not args.quiet)
        if tracker is not None:
            from training.report_figures import log_model_figures

            log_model_figures(tracker.log_artifact, trainer.model, dataset, trainer.cfg)
            if (out / BEST).is_file():  # what `mrlfads promote --run` registers
                from tracking.registry import log_run_checkpoint

                log_run_checkpoint(tracker.log_artifact, out / BEST)
                run_id = tracker.active_run_id
    except NonFiniteLossError as exc:
        status = "FAILED"
        print(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if tracker is not None:
            save_run_id(tracker, out)  # the real id, if the run was created during an outage
            tracker.end_run(status=status)
    print(f"done: {trainer.epoch} epochs, objective {metrics.get('objective', float('nan')):.4g}; "
          f"checkpoints in {out} (best.pt, last.pt), metrics in {out / 'metrics.jsonl'}")
    if run_id and not run_id.startswith("pending-"):
        print(f"MLflow run {run_id}; register its best.pt with: mrlfads promote --run {run_id}")
    return 0
