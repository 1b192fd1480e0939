"""`mrlfads promote --sweep NAME`: register a sweep's best finished trial as an MLflow model."""
from __future__ import annotations

import argparse
import contextlib
import os

NAME = "promote"
HELP = ("register the best finished trial of a sweep as a version of the MLflow model "
        "mrlfads-<sweep> and point an alias (default: champion) at it")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sweep", required=True, help="the sweep's name (its MLflow experiment)")
    p.add_argument("--metric", help="metric that ranks trials (default: the sweep's objective)")
    p.add_argument("--mode", choices=["min", "max"], help="default: the sweep's mode (min)")
    p.add_argument("--alias", default="champion", help="registry alias to set (default: champion)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                   "else sqlite in the work dir)")


@contextlib.contextmanager
def local_checkpoint(path: str):
    """A local checkpoint file for a Tune checkpoint directory (local or s3://...). A path
    under the home directory is tagged ``~/...`` (tracking/shareable.py)."""
    from training.checkpoint import CHECKPOINT_NAME

    path = os.path.expanduser(path) if path.startswith("~") else path
    if os.path.isfile(path):
        yield path
    elif "://" not in path or path.startswith("file://"):
        yield os.path.join(path.removeprefix("file://"), CHECKPOINT_NAME)
    else:
        from ray.tune import Checkpoint

        with Checkpoint(path).as_directory() as d:
            yield os.path.join(d, CHECKPOINT_NAME)


def run(args: argparse.Namespace) -> int:
    from tracking.errors import TrackingError
    from tracking.registry import KEY_METRICS, find_best_trial, promote
    from training.checkpoint import load_model

    best = find_best_trial(args.sweep, metric=args.metric, mode=args.mode,
                           tracking_uri=args.tracking_uri)
    if not best.checkpoint:
        raise TrackingError(f"trial {best.trial_id} (run {best.run_id}) of sweep {args.sweep!r} "
                            "recorded no checkpoint (tag mrlfads.checkpoint): was it logged by "
                            "mrlfads sweep with checkpoints on?")
    print(f"best finished trial: {best.trial_id} ({best.metric} = {best.value:.6g})", flush=True)
    for key in (k for k in KEY_METRICS if k in best.metrics and k not in (best.metric, "epoch")):
        print(f"  {key} = {best.metrics[key]:.6g}")
    with local_checkpoint(best.checkpoint) as path:
        model, run_cfg, manifest = load_model(path)
        done = promote(args.sweep, best, model=model, run_cfg=run_cfg, manifest=manifest,
                       checkpoint_file=path, alias=args.alias, tracking_uri=args.tracking_uri)
    _log_figures(best.run_id, model, run_cfg, args.tracking_uri)
    state = "registered as new" if done.created else "already registered as"
    print(f"{state} {done.name} version {done.version}; alias {done.alias} -> {done.uri}")
    return 0


def _log_figures(run_id: str, model, run_cfg: dict, tracking_uri: str | None) -> None:
    """Effectome, rates and messages of the promoted model, on its trial's run."""
    from mlflow import MlflowClient

    from data_loaders.reader import ArrowDataset
    from tracking.store import resolve_tracking_uri
    from training.config import RunConfig
    from training.report_figures import log_model_figures

    cfg = RunConfig.from_dict(run_cfg)
    try:
        dataset = ArrowDataset.open(cfg.data.uri)
    except (ValueError, OSError) as exc:  # the data may live elsewhere than the sweep ran
        print(f"note: no figures ({exc})")
        return
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    log_model_figures(lambda path, where: client.log_artifact(run_id, path, where),
                      model, dataset, cfg)
    print(f"logged figures to run {run_id} (artifacts/figures)")
