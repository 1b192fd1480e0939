"""Hyperparameter sweeps and the model registry for the Python API: `plan_sweep`, `sweep`
and `promote`, which `mrlfads sweep` and `mrlfads promote` call. Ray and MLflow are imported
here only when a sweep runs or a model is promoted."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mrlfads.training.api.datasets import Dataset
    from mrlfads.training.api.models import Model
    from mrlfads.training.sweep import SweepPlan, SweepSummary


@dataclass
class SweepResult:
    """A sweep's outcome: its ``plan``, its ``summary`` (best trial, its metrics and
    hyperparameter history, the effectome; ``summary.unfinished`` > 0 when an interrupt
    stopped it and ``resume=True`` continues it; training/sweep.py) and the MLflow outbox
    files that could not be delivered (deliver them with ``mrlfads import-metrics``)."""

    plan: SweepPlan
    summary: SweepSummary
    undelivered: list[str] = field(default_factory=list)

    @property
    def best_trial(self) -> str | None:
        return self.summary.best_trial

    def best_model(self) -> Model:
        """The best trial's checkpoint as a `Model`."""
        from mrlfads.training.api.models import load

        if not self.summary.checkpoint:
            raise ValueError(f"sweep {self.plan.name!r}: no trial finished with a checkpoint")
        with local_checkpoint(self.summary.checkpoint) as path:
            return load(path)

    def __str__(self) -> str:
        from mrlfads.training.sweep import format_summary

        return format_summary(self.summary)


def plan_sweep(data: Dataset | str | os.PathLike | None = None, *,
               space: str | os.PathLike | None = None, name: str | None = None,
               storage: str | None = None, config: str | os.PathLike | Mapping | None = None,
               overrides: Mapping[str, Any] | Iterable[str] | None = None,
               smoke_test: bool = False, resume: bool = False) -> SweepPlan:
    """The sweep's plan, validated against the data and the space; no Ray yet. With
    ``resume``, the plan stored for sweep ``name`` under ``storage``."""
    from mrlfads.training import sweep
    from mrlfads.training.api.models import _overrides
    from mrlfads.training.config import load_config_file

    if resume:
        if not name:
            raise sweep.SweepError("--resume needs --name: the name of the sweep to continue "
                                   "(a directory under --storage)")
        return sweep.load_plan(storage, name)
    if data is None:
        raise sweep.SweepError("--data is required: the dataset directory or URI to sweep on")
    uri = getattr(data, "uri", None) or os.fspath(data)
    user = dict(config) if isinstance(config, Mapping) else load_config_file(config)
    return sweep.plan_sweep(uri, space=space, name=name, storage=storage,
                            run_overrides=_overrides(overrides), user_config=user,
                            smoke_test=smoke_test)


def sweep(data: Dataset | str | os.PathLike | SweepPlan | None = None, *,
          space: str | os.PathLike | None = None, name: str | None = None,
          storage: str | None = None, config: str | os.PathLike | Mapping | None = None,
          overrides: Mapping[str, Any] | Iterable[str] | None = None, smoke_test: bool = False,
          resume: bool = False, address: str | None = None, tracking: bool = True,
          tracking_uri: str | None = None, verbose: int = 1) -> SweepResult:
    """Search hyperparameters with population-based training (or Optuna) on Ray: a local
    Ray on 127.0.0.1 by default, the cluster at ``address`` otherwise. ``data`` may be a
    plan from `plan_sweep`. Prints one line naming the sweep, then Tune's table of trials
    (``verbose=0``: none); ``tracking`` logs every trial to MLflow."""
    from mrlfads.training import sweep as sweeps

    if address is None:
        sweeps.local_ray_on_loopback()  # before anything imports ray
    plan = data if isinstance(data, sweeps.SweepPlan) else plan_sweep(
        data, space=space, name=name, storage=storage, config=config, overrides=overrides,
        smoke_test=smoke_test, resume=resume)
    size = (plan.space.scheduler.population if plan.space.kind == "pbt"
            else plan.space.scheduler.num_samples)
    print(f"sweep {plan.name}: {plan.space.kind}, {size} trials x {plan.epochs} epochs, "
          f"storage {plan.experiment_path}", flush=True)
    from mrlfads.training.smoothing import for_sweep

    baseline = for_sweep(plan)  # smoothed spikes' held-out co-bps: the score to beat
    callbacks = _tracking_callbacks(plan, tracking_uri, baseline) if tracking else []
    summary = sweeps.run_sweep(plan, address=address, resume=resume, callbacks=callbacks,
                               tracking=tracking, verbose=verbose, baseline=baseline)
    undelivered = [str(f) for cb in callbacks for f in getattr(cb, "outbox_files", [])]
    return SweepResult(plan, summary, undelivered)


def _tracking_callbacks(plan, tracking_uri: str | None,
                        baseline: dict[str, float] | None = None) -> list:
    """Tune callbacks that log the sweep to MLflow (tracking/tune_callback.py); each trial's
    run gets its model's figures when it ends (training/report_figures.py); the parent run
    gets the ``baseline`` metrics (training/smoothing.py)."""
    try:
        from mrlfads.tracking.tune_callback import sweep_callbacks
    except ImportError:
        return []
    from mrlfads.training.report_figures import checkpoint_figures

    return list(sweep_callbacks(plan, tracking_uri=tracking_uri,
                                trial_figures=checkpoint_figures, baseline=baseline))


@contextlib.contextmanager
def local_checkpoint(path: str):
    """A local checkpoint file for a Tune checkpoint directory (local or s3://...). A path
    under the home directory is tagged ``~/...`` (tracking/shareable.py)."""
    from mrlfads.training.checkpoint import CHECKPOINT_NAME

    path = os.path.expanduser(path) if path.startswith("~") else path
    if os.path.isfile(path):
        yield path
    elif "://" not in path or path.startswith("file://"):
        yield os.path.join(path.removeprefix("file://"), CHECKPOINT_NAME)
    else:
        from ray.tune import Checkpoint

        with Checkpoint(path).as_directory() as d:
            yield os.path.join(d, CHECKPOINT_NAME)


def promote(sweep: str | None = None, *, run: str | None = None, name: str | None = None,
            metric: str | None = None, mode: str | None = None, alias: str = "champion",
            tracking_uri: str | None = None, echo: Callable[[str], None] | None = None):
    """Register the best finished trial of ``sweep`` (ranked by ``metric``/``mode``, default
    the sweep's objective), or the finished `mrlfads train` run ``run`` (its best.pt), as a
    version of an MLflow model (default ``mrlfads-<sweep>`` or ``mrlfads-<run name>``) and
    point ``alias`` at it. Returns the registry's answer (``.name``, ``.version``, ``.uri``:
    load it with `load`). ``echo`` gets the progress lines."""
    from mrlfads.tracking.errors import TrackingError
    from mrlfads.tracking.registry import no_artifact_progress_bars

    if (sweep is None) == (run is None):
        raise TrackingError("name one of --sweep NAME or --run RUN_ID to promote")
    with no_artifact_progress_bars():
        return _promote(sweep, run=run, name=name, metric=metric, mode=mode, alias=alias,
                        tracking_uri=tracking_uri, echo=echo or _say)


def _promote(sweep, *, run, name, metric, mode, alias, tracking_uri, echo):
    from mrlfads.tracking.errors import TrackingError
    from mrlfads.tracking.registry import find_best_trial

    if run:
        if metric or mode:
            raise TrackingError("--metric and --mode rank a sweep's trials: use them with "
                                "--sweep, not --run")
        return _promote_run(run, name=name, alias=alias, tracking_uri=tracking_uri, echo=echo)
    best = find_best_trial(sweep, metric=metric, mode=mode, tracking_uri=tracking_uri)
    if not best.checkpoint:
        raise TrackingError(f"trial {best.trial_id} (run {best.run_id}) of sweep {sweep!r} "
                            "recorded no checkpoint (tag mrlfads.checkpoint): was it logged by "
                            "mrlfads sweep with checkpoints on?")
    echo(f"best finished trial: {best.trial_id} ({best.metric} = {best.value:.6g})")
    _echo_metrics(best, echo)
    with local_checkpoint(best.checkpoint) as path:
        model, run_cfg, done = _register(sweep, best, path, name, alias, tracking_uri)
    _log_figures(best.run_id, model, run_cfg, tracking_uri, echo)
    return done


def _promote_run(run_id: str, *, name, alias, tracking_uri, echo):
    """One finished run: its logged best.pt, or a trial's own checkpoint."""
    import dataclasses
    import tempfile

    from mrlfads.tracking.registry import download_run_checkpoint, find_run
    from mrlfads.tracking.store import mlflow_client, resolve_tracking_uri
    from mrlfads.tracking.tags import SWEEP
    from mrlfads.training import checkpoint as ckpt

    best = find_run(run_id, tracking_uri=tracking_uri)
    run = mlflow_client(resolve_tracking_uri(tracking_uri)).get_run(run_id)
    sweep = run.data.tags.get(SWEEP)
    name = name or (f"mrlfads-{sweep}" if sweep else f"mrlfads-{run.info.run_name}")
    with contextlib.ExitStack() as stack:
        if best.checkpoint.startswith("runs:/"):
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="mrlfads-promote-"))
            path = str(download_run_checkpoint(best.checkpoint, tmp, tracking_uri=tracking_uri))
            saved = ckpt.load(path).get("metrics")
            if isinstance(saved, dict):  # the metrics of the epoch best.pt holds, not the last
                best = dataclasses.replace(best, metrics={**best.metrics, **saved},
                                           value=float(saved.get("objective", best.value)))
        else:
            path = stack.enter_context(local_checkpoint(best.checkpoint))
        echo(f"run {best.run_id} ({run.info.run_name}): objective = {best.value:.6g}")
        _echo_metrics(best, echo)
        model, run_cfg, done = _register(sweep, best, path, name, alias, tracking_uri)
    if not best.checkpoint.startswith("runs:/"):  # `mrlfads train` logged its figures itself
        _log_figures(best.run_id, model, run_cfg, tracking_uri, echo)
    return done


def _say(text: str) -> None:
    print(text, flush=True)


def _register(sweep, best, path, name, alias, tracking_uri):
    from mrlfads.tracking.registry import promote as register
    from mrlfads.training.checkpoint import load_model

    model, run_cfg, manifest = load_model(path)
    done = register(sweep, best, model=model, run_cfg=run_cfg, manifest=manifest,
                    checkpoint_file=path, alias=alias, tracking_uri=tracking_uri, name=name)
    return model, run_cfg, done


def _echo_metrics(best, echo) -> None:
    from mrlfads.tracking.registry import KEY_METRICS

    for key in (k for k in KEY_METRICS if k in best.metrics and k not in (best.metric, "epoch")):
        echo(f"  {key} = {best.metrics[key]:.6g}")


def _log_figures(run_id: str, model, run_cfg: dict, tracking_uri: str | None, echo) -> None:
    """Effectome, rates and messages of the promoted model, on its trial's run."""
    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.tracking.store import mlflow_client, resolve_tracking_uri
    from mrlfads.training.config import RunConfig
    from mrlfads.training.report_figures import log_model_figures

    cfg = RunConfig.from_dict(run_cfg)
    try:
        dataset = ArrowDataset.open(cfg.data.uri)
    except (ValueError, OSError) as exc:  # the data may live elsewhere than the sweep ran
        echo(f"note: no figures ({exc})")
        return
    client = mlflow_client(resolve_tracking_uri(tracking_uri))
    log_model_figures(lambda path, where: client.log_artifact(run_id, path, where),
                      model, dataset, cfg)
    echo(f"logged figures to run {run_id} (artifacts/figures)")
