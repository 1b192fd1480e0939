"""`mrlfads promote --sweep NAME | --run RUN_ID`: register a sweep's best finished trial, or
one finished training run, as an MLflow model that loads without this repository."""
from __future__ import annotations

import argparse
import contextlib
import os

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
    from tracking.registry import find_best_trial

    if args.run:
        if args.metric or args.mode:
            raise TrackingError("--metric and --mode rank a sweep's trials: use them with "
                                "--sweep, not --run")
        return _promote_run(args)
    best = find_best_trial(args.sweep, metric=args.metric, mode=args.mode,
                           tracking_uri=args.tracking_uri)
    if not best.checkpoint:
        raise TrackingError(f"trial {best.trial_id} (run {best.run_id}) of sweep {args.sweep!r} "
                            "recorded no checkpoint (tag mrlfads.checkpoint): was it logged by "
                            "mrlfads sweep with checkpoints on?")
    print(f"best finished trial: {best.trial_id} ({best.metric} = {best.value:.6g})", flush=True)
    _print_metrics(best)
    with local_checkpoint(best.checkpoint) as path:
        model, run_cfg, done = _register(args, args.sweep, best, path)
    _log_figures(best.run_id, model, run_cfg, args.tracking_uri)
    _print_done(done)
    return 0


def _promote_run(args: argparse.Namespace) -> int:
    """One finished run: its logged best.pt, or a trial's own checkpoint."""
    import dataclasses
    import tempfile

    from mlflow.tracking import MlflowClient

    from tracking.registry import download_run_checkpoint, find_run
    from tracking.store import resolve_tracking_uri
    from training import checkpoint as ckpt

    best = find_run(args.run, tracking_uri=args.tracking_uri)
    run = MlflowClient(resolve_tracking_uri(args.tracking_uri)).get_run(args.run)
    sweep = run.data.tags.get("mrlfads.sweep")
    name = args.name or (f"mrlfads-{sweep}" if sweep else f"mrlfads-{run.info.run_name}")
    with contextlib.ExitStack() as stack:
        if best.checkpoint.startswith("runs:/"):
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="mrlfads-promote-"))
            path = str(download_run_checkpoint(best.checkpoint, tmp, tracking_uri=args.tracking_uri))
            saved = ckpt.load(path).get("metrics")
            if isinstance(saved, dict):  # the metrics of the epoch best.pt holds, not the last
                best = dataclasses.replace(best, metrics={**best.metrics, **saved},
                                           value=float(saved.get("objective", best.value)))
        else:
            path = stack.enter_context(local_checkpoint(best.checkpoint))
        print(f"run {best.run_id} ({run.info.run_name}): objective = {best.value:.6g}", flush=True)
        _print_metrics(best)
        model, run_cfg, done = _register(args, sweep, best, path, name=name)
    if not best.checkpoint.startswith("runs:/"):  # `mrlfads train` logged its figures itself
        _log_figures(best.run_id, model, run_cfg, args.tracking_uri)
    _print_done(done)
    return 0


def _register(args, sweep, best, path, name=None):
    from tracking.registry import promote
    from training.checkpoint import load_model

    model, run_cfg, manifest = load_model(path)
    done = promote(sweep, best, model=model, run_cfg=run_cfg, manifest=manifest,
                   checkpoint_file=path, alias=args.alias, tracking_uri=args.tracking_uri,
                   name=name or args.name)
    return model, run_cfg, done


def _print_metrics(best) -> None:
    from tracking.registry import KEY_METRICS

    for key in (k for k in KEY_METRICS if k in best.metrics and k not in (best.metric, "epoch")):
        print(f"  {key} = {best.metrics[key]:.6g}")


def _print_done(done) -> None:
    state = "registered as new" if done.created else "already registered as"
    print(f"{state} {done.name} version {done.version}; alias {done.alias} -> {done.uri}")
    print(f"load it anywhere: mlflow.pyfunc.load_model({done.uri!r})")


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
