"""The sweep driver: a search space + a dataset -> a Ray Tune experiment, resumable.

``plan_sweep`` resolves everything that can be wrong before Ray starts (space, dataset,
base run config, every range checked against RunConfig validation); ``run_sweep`` builds
the Tuner (or restores one whose driver died), runs it with a live table and returns a
``SweepSummary`` of the best trial. Local Ray by default; ``address`` joins a cluster.
On several nodes ``storage`` must be shared (s3://... or a shared mount): that is where
checkpoints move between trials when PBT exploits across nodes.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from mrlfads.search_spaces.errors import SearchSpaceError
from mrlfads.search_spaces.space import SearchSpace
from mrlfads.training.config import RunConfig

DEFAULT_SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "pbt.yaml"
PLAN_FILE = "mrlfads_sweep.json"  # the plan, saved in the experiment dir for --resume
SUMMARY_FILE = "summary.json"
# Per trial, after the sweep has finished. While it runs every checkpoint is kept: an
# asynchronous PBT member exploits its donor's checkpoint of some epochs ago, and a donor
# that kept checkpointing meanwhile would have pruned it ("Could not recover from
# checkpoint as it does not exist on storage anymore").
CHECKPOINTS_TO_KEEP = 2
EFFECTOME_CUT = "effectome_cut/"  # metric prefix of the default effectome
SMOKE = {"population": 4, "interval": 2, "epochs": 8, "samples": 4}


class SweepError(ValueError):
    """A sweep cannot start or resume as asked; the message says what to do."""


@dataclass(frozen=True)
class SweepPlan:
    """Everything a sweep needs, JSON-able (``to_dict``) so --resume can rebuild it from
    storage; the base run config stays a RunConfig up to the trainable."""

    name: str
    storage: str
    space: SearchSpace
    run: RunConfig  # the base run config (data.uri inside)
    burn_in: int
    smoke_test: bool = False

    @property
    def experiment_path(self) -> str:
        return f"{self.storage.rstrip('/')}/{self.name}"

    @property
    def epochs(self) -> int:
        return int(self.run.train.epochs)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "storage": self.storage, "space": self.space.to_dict(),
                "run": self.run.to_dict(), "burn_in": self.burn_in, "smoke_test": self.smoke_test}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepPlan":
        return cls(d["name"], d["storage"], SearchSpace.from_dict(d["space"], source=PLAN_FILE),
                   RunConfig.from_dict(d["run"]), int(d["burn_in"]),
                   bool(d.get("smoke_test", False)))


UNFINISHED = "unfinished (--resume continues it)"  # a trial an interrupt cut short


@dataclass
class SweepSummary:
    """The outcome: best trial, its lineage's hyperparameter history, metrics, effectome."""

    experiment_path: str
    best_trial: str | None
    best_metrics: dict[str, float] = field(default_factory=dict)
    hparams: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: epoch, hp/*, objective
    # "src_to_dst" -> the cut effectome (target readout change when the pathway is silenced)
    effectome: dict[str, float] = field(default_factory=dict)
    effectome_message_rms: dict[str, float] = field(default_factory=dict)  # the paper's
    checkpoint: str | None = None
    trials: dict[str, str] = field(default_factory=dict)  # id -> TERMINATED, UNFINISHED, ERROR: why
    exploits: int = 0
    objective: str = ""  # what `objective` is (training/objective.py)
    # trials neither TERMINATED nor ERROR in the state Tune saved: an interrupt (Ctrl-C,
    # SIGTERM, SIGHUP) stopped the sweep, and `--resume` runs them on
    unfinished: int = 0
    # the data alone: smoothed held-in spikes' held-out co-bps (training/smoothing.py)
    baseline: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def smoke_space(space: SearchSpace) -> SearchSpace:
    """A space small enough that a sweep with exploits finishes in about a minute."""
    if space.kind == "pbt":
        cpu = min(space.resources.cpu, 0.5)  # the whole population runs at once on 2 cores
        # synch: every member ranks at the same epoch, so the first perturbation exploits
        small = space.with_scheduler(population=SMOKE["population"], synch=True,
                                     perturbation_interval=SMOKE["interval"], patience=2)
    else:
        cpu = space.resources.cpu
        small = space.with_scheduler(num_samples=SMOKE["samples"], max_concurrent=2,
                                     grace_period=SMOKE["interval"])
    return replace(small, resources=replace(small.resources, cpu=cpu), max_failures=1)


def _local_storage(storage: str | None) -> str:
    if storage is None:
        return str(Path.cwd() / "sweeps")
    if "://" in storage:
        return storage
    return str(Path(storage).expanduser().resolve())


def _check_ranges(space: SearchSpace, run: RunConfig) -> None:
    """Both ends of every range (and every choice) must give a valid RunConfig."""
    from mrlfads.config_utils import ConfigError

    errors = []
    for hp in space.hyperparameters:
        values = hp.choices if hp.type == "categorical" else hp.bounds
        for value in values:
            try:
                run.with_overrides({hp.path: value})
            except ConfigError as exc:
                errors.append(f"`hyperparameters.{hp.path}` value {value!r}: {exc}")
    if errors:
        raise SearchSpaceError("the search space does not fit the run config:\n  "
                               + "\n  ".join(errors))


def _least_protected(space: SearchSpace, cfg):
    """(cfg with the smallest train.cd_rate any trial may run at, whether the space searches
    it): a searched coordinated dropout protects every trial only as far as that value."""
    cd = [min(float(v) for v in (hp.choices if hp.type == "categorical" else hp.bounds))
          for hp in space.hyperparameters if hp.path == "train.cd_rate"]
    if not cd:
        return cfg, False
    return replace(cfg, train=replace(cfg.train, cd_rate=min(cd))), True


def _check_protected(space: SearchSpace, cfg) -> None:
    """Refuse a search that could promote a model copying its input (training/objective.py):
    its ranking metric must be protected for every trial, and PBT may only mutate what can
    change mid-run."""
    from mrlfads.training.loop import MUTABLE_PREFIXES
    from mrlfads.training.objective import FIX, metric_protection

    if space.kind == "pbt":
        fixed = [p for p in space.paths if not p.startswith(MUTABLE_PREFIXES)]
        if fixed:
            raise SweepError(
                f"the PBT space searches {fixed}, which cannot change during training (only "
                f"paths starting with {MUTABLE_PREFIXES} can; train.sv_rate fixes which data "
                "elements are validation data): move them under `fixed:` in the space, or "
                "search them with an optuna space")
    cfg, searched = _least_protected(space, cfg)
    metric = space.scheduler.metric
    if metric_protection(metric, cfg) is None:
        where = (f"a train.cd_rate range reaching {cfg.train.cd_rate}" if searched
                 else "train.cd_rate=0")
        n_out = sum(r.n_heldout for r in cfg.model.regions)
        why = (f"train.objective={cfg.train.objective!r}, {n_out} held-out neurons, "
               f"train.sv_rate={cfg.train.sv_rate}, {where}" if metric == "objective"
               else f"it scores held-in elements the encoders saw, {where}")
        raise SweepError(
            f"this search ranks trials on {metric!r}, an unprotected reconstruction ({why}): "
            f"it would pick models that copy their input to their output. To protect it, "
            f"{FIX}.")


def plan_sweep(data: str, *, space: SearchSpace | str | Path | None = None,
               name: str | None = None, storage: str | None = None,
               run_overrides: dict[str, Any] | None = None, user_config: dict | None = None,
               smoke_test: bool = False) -> SweepPlan:
    """Validate the space and dataset (manifest and every shard's values) and build the
    base run config; no Ray yet."""
    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.search_spaces.tune_objects import resolve_burn_in
    from mrlfads.training.config import fit_ramps, sets_ramps

    if not isinstance(space, SearchSpace):
        space = SearchSpace.from_yaml(space or DEFAULT_SPACE)
    if "://" not in str(data):
        data = str(Path(data).resolve())  # Ray workers run in their own directories
    if smoke_test:
        space = smoke_space(space)
    dataset = ArrowDataset.open(data)
    # Every shard checked here, once: a bad value would otherwise fail each trial in turn,
    # inside Ray, after the cluster started (docs/RELIABILITY.md).
    dataset.validate()
    manifest = dataset.manifest
    base = RunConfig.for_dataset(manifest, uri=str(data), user=user_config, smoke_test=smoke_test)
    fixed = {"train.threads": max(1, int(math.floor(space.resources.cpu)))}
    if smoke_test:
        fixed["train.epochs"] = SMOKE["epochs"]
    fixed.update(space.fixed)
    fixed.update(run_overrides or {})
    explicit_ramps = smoke_test or sets_ramps(user_config, fixed)
    run = fit_ramps(base.with_overrides(fixed), explicit=explicit_ramps)
    _check_ranges(space, run)
    _check_protected(space, run)
    burn_in = resolve_burn_in(space, run.loss) if space.kind == "pbt" else 0
    if space.kind == "pbt" and burn_in + space.scheduler.perturbation_interval > run.train.epochs:
        raise SearchSpaceError(
            f"burn-in ({burn_in} epochs) + one perturbation interval "
            f"({space.scheduler.perturbation_interval}) exceeds train.epochs="
            f"{run.train.epochs}: PBT would never exploit. Raise train.epochs (e.g. "
            "`fixed: {train.epochs: ...}` in the space) or shorten burn_in")
    name = name or f"{space.kind}-{manifest.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return SweepPlan(name, _local_storage(storage), space, run, burn_in, smoke_test)


# ---------------------------------------------------------------------------------- Ray side
def _filesystem(path: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path)


def _write_json(path: str, payload: dict[str, Any]) -> None:
    fs, p = _filesystem(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(p) as out:
        out.write(json.dumps(payload, indent=2, default=str).encode())


def load_plan(storage: str | None, name: str) -> SweepPlan:
    """The plan a sweep was started with, read back from its experiment directory."""
    path = f"{_local_storage(storage).rstrip('/')}/{name}/{PLAN_FILE}"
    try:
        fs, p = _filesystem(path)
        with fs.open_input_stream(p) as inp:
            return SweepPlan.from_dict(json.loads(inp.read()))
    except (OSError, FileNotFoundError) as exc:
        raise SweepError(f"cannot resume sweep {name!r}: {path} is missing ({exc}); check "
                         "--name and --storage (the values the sweep was started with)") from exc


# Ray reads this once, when it is imported: "0" makes a local Ray take the loopback address
# as its node address, so its GCS, raylet and workers listen on 127.0.0.1 only (by default
# they listen on every interface). Token auth (Ray's default) stays on either way.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def local_ray_on_loopback() -> None:
    """Keep the next local Ray on 127.0.0.1; call before ``ray`` is imported (the CLI does)."""
    os.environ.setdefault(LOOPBACK_ENV, "0")


def init_ray(address: str | None = None) -> None:
    """Connect to ``address`` (auto | ray://HOST:PORT), or start a local Ray with no setup,
    on 127.0.0.1 (``local_ray_on_loopback``) and with Ray's token auth."""
    if address is None:
        local_ray_on_loopback()
    import ray

    if ray.is_initialized():
        return
    from mrlfads.training.faults import worker_env
    from mrlfads.training.signals import installed, interrupt_on_termination

    ours = installed()
    fault = worker_env()  # MRLFADS_FAULT reaches the trials on every node (training/faults.py)
    # address None: a Ray of this sweep's own ("local"), even where other Rays run on the
    # machine; without it ray.init joins the newest of them, and dies with its owner
    ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
             configure_logging=True, logging_level="WARNING",
             **({"runtime_env": {"env_vars": fault}} if fault else {}))
    if ours:  # ray.init replaces the SIGTERM handler; keep SIGTERM on Ctrl-C's path
        interrupt_on_termination()


def reporter(plan: SweepPlan):
    """The live table: trial, status, epoch, objective, key losses and each hyperparameter."""
    from ray.tune import CLIReporter

    metrics = {"epoch": "epoch", plan.space.scheduler.metric: plan.space.scheduler.metric,
               "valid/heldout_loss": "heldout", "valid/recon_loss": "recon", "lr": "lr now"}
    group = "hparams" if plan.space.kind == "pbt" else "build"
    params = {f"{group}/{p}": p for p in plan.space.paths}
    return CLIReporter(metric_columns=metrics, parameter_columns=params, max_report_frequency=10,
                       sort_by_metric=True, metric=plan.space.scheduler.metric,
                       mode=plan.space.scheduler.mode)


def make_stopper(plan: SweepPlan):
    """Population plateau (PBT) and the per-trial stop at the last epoch."""
    from mrlfads.training.stopper import PopulationPlateauStopper

    s, pbt = plan.space.scheduler, plan.space.kind == "pbt"
    return PopulationPlateauStopper(
        s.metric, s.mode, s.perturbation_interval if pbt else 1, s.patience if pbt else None,
        plan.burn_in, s.min_delta, max_epochs=plan.epochs)


def make_run_config(plan: SweepPlan, *, callbacks: Sequence[Any] = (), verbose: int = 1):
    """Where results go, how failures are retried (from the last checkpoint), what stops."""
    from ray import tune

    return tune.RunConfig(
        name=plan.name, storage_path=plan.storage, stop=make_stopper(plan),
        failure_config=tune.FailureConfig(max_failures=plan.space.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # pruned after the sweep
        callbacks=list(callbacks), progress_reporter=reporter(plan) if verbose else None,
        verbose=verbose,
    )


def build_tuner(plan: SweepPlan, *, resume: bool = False, callbacks: Sequence[Any] = (),
                reuse_actors: bool = True, verbose: int = 1):
    """A new Tuner for ``plan``, or the restored one (``resume``) continuing where it died."""
    from ray import tune

    from mrlfads.search_spaces import tune_objects
    from mrlfads.training.resources import trial_resources
    from mrlfads.training.trainable import trainable_for

    space = plan.space
    # the space travels with the trainable: its explore step restarts non-finite trials;
    # resources: auto becomes a GPU share or CPUs here, from the cluster (training/resources.py)
    fn = tune.with_resources(trainable_for(space),
                             trial_resources(space.resources, echo=verbose > 0))
    if resume:
        if not tune.Tuner.can_restore(plan.experiment_path):
            raise SweepError(f"no restorable sweep at {plan.experiment_path}: start it without "
                             "--resume, or check --name/--storage")
        return tune.Tuner.restore(plan.experiment_path, trainable=fn, resume_unfinished=True,
                                  resume_errored=False)
    return tune.Tuner(
        fn, param_space=tune_objects.param_space(space, plan.run),
        tune_config=tune_objects.tune_config(space, max_epochs=plan.epochs, burn_in=plan.burn_in,
                                             reuse_actors=reuse_actors, run=plan.run),
        run_config=make_run_config(plan, callbacks=callbacks, verbose=verbose),
    )


def run_sweep(plan: SweepPlan, *, address: str | None = None, resume: bool = False,
              callbacks: Sequence[Any] = (), tracking: bool = False,
              reuse_actors: bool = True, verbose: int = 1,
              baseline: dict[str, float] | None = None) -> SweepSummary:
    """Run (or resume) the sweep and summarise the best trial.

    ``callbacks`` are extra Tune callbacks (e.g. tracking's MLflow LoggerCallback);
    ``tracking`` is recorded in the plan file so a resumed sweep knows it was tracked;
    ``baseline`` (training/smoothing.py) goes into the summary beside the best trial.
    """
    from ray import tune

    if verbose:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # CLIReporter draws the table
    # snapshot the experiment state every 2 s (Tune's default: 10 s), so a driver killed
    # right after a checkpoint resumes from that checkpoint, not the one before
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    init_ray(address)
    if not resume:
        if tune.Tuner.can_restore(plan.experiment_path):
            raise SweepError(f"sweep {plan.name!r} already exists at {plan.experiment_path}: "
                             "pass --resume to continue it, or choose another --name")
        _write_json(f"{plan.experiment_path}/{PLAN_FILE}", {**plan.to_dict(), "tracking": tracking})
    from mrlfads.search_spaces.tune_state import STOP_REQUESTED, InterruptWatch
    from mrlfads.training.faults import driver_callbacks

    # InterruptWatch records a stop signal (search_spaces/tune_state.py); the fault
    # callbacks are [] unless MRLFADS_FAULT asks
    callbacks = [InterruptWatch(), *driver_callbacks(), *callbacks]
    tuner = build_tuner(plan, resume=resume, callbacks=callbacks, reuse_actors=reuse_actors,
                        verbose=verbose)
    results = tuner.fit()
    summary = summarize(results, plan, interrupted=STOP_REQUESTED.is_set())
    summary.baseline = dict(baseline or {})
    _write_json(f"{plan.experiment_path}/{SUMMARY_FILE}", summary.to_dict())
    if not summary.unfinished:  # else --resume needs them
        prune_checkpoints(plan.experiment_path, CHECKPOINTS_TO_KEEP)
    return summary


def prune_checkpoints(experiment_path: str, keep: int) -> int:
    """Delete all but the newest ``keep`` ``checkpoint_NNNNNN`` folders of every trial of
    a finished sweep (local or remote storage); returns how many were deleted. The newest is
    what summaries, ``promote`` and lineage read; older ones only served PBT exploits."""
    import pyarrow.fs as pafs

    fs, root = _filesystem(experiment_path)
    deleted = 0
    for trial in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if trial.type != pafs.FileType.Directory:
            continue
        found = fs.get_file_info(pafs.FileSelector(trial.path))
        ckpts = sorted(i.path for i in found if i.type == pafs.FileType.Directory
                       and re.fullmatch(r"checkpoint_\d+", i.base_name))
        for path in ckpts[:max(len(ckpts) - keep, 0)]:
            fs.delete_dir(path)
            deleted += 1
    return deleted


def _latest_effectome(result) -> dict[str, float]:
    """The cut effectome of the trial's last report that has one: a trial computes it at
    its checkpoints, new bests and last epoch (training/loop.py, run_epoch), so a sweep
    stopped early can end a trial on an epoch without it."""
    m = result.metrics or {}
    keys = [k for k in m if k.startswith(EFFECTOME_CUT)]
    if all(isinstance(m[k], (int, float)) and math.isfinite(m[k]) for k in keys):
        return {k: m[k] for k in keys}
    df = getattr(result, "metrics_dataframe", None)
    if df is None or not keys or not set(keys) <= set(df.columns):
        return {}
    done = df[keys].dropna()
    return {} if done.empty else {k: float(v) for k, v in done.iloc[-1].items()}


def summarize(results, plan: SweepPlan, interrupted: bool = False) -> SweepSummary:
    """Best finished trial by its last ``metric`` (``mrlfads.ramps.best_trial``, the rule
    the tracking callback follows too); history from its checkpoint's lineage.
    ``interrupted``: a stop signal ended the run (search_spaces/tune_state.py), so the trials
    that neither failed nor reached their last epoch are marked as cut short."""
    from mrlfads.ramps import best_trial
    from mrlfads.search_spaces.tune_state import cut_short

    summary = SweepSummary(plan.experiment_path, None)
    summary.objective = _objective_text(plan)
    finished = {}
    for r in results:
        trial_id = _trial_id(r.path)
        if r.error is not None:
            summary.trials[trial_id] = "ERROR: " + str(r.error).strip().splitlines()[-1][:300]
            continue
        cut = interrupted and cut_short(r.metrics)
        summary.trials[trial_id] = UNFINISHED if cut else "TERMINATED"
        summary.unfinished += int(cut)
        finished[trial_id] = r
    summary.exploits = _count_exploits(plan.experiment_path)
    best_id = best_trial({t: r.metrics or {} for t, r in finished.items()},
                         plan.space.scheduler.metric, plan.space.scheduler.mode)
    if best_id is None:
        return summary
    best = finished[best_id]
    m = best.metrics
    summary.best_trial = best_id
    summary.best_metrics = {k: v for k, v in m.items()
                            if isinstance(v, (int, float)) and not k.startswith(("config", "hp/"))}
    summary.hparams = dict((best.config or {}).get("hparams") or (best.config or {}).get("build") or {})
    summary.effectome = {k.split("/", 1)[1]: v for k, v in _latest_effectome(best).items()}
    summary.effectome_message_rms = {k.split("/", 1)[1]: v for k, v in m.items()
                                     if k.startswith("effectome/")}
    if best.checkpoint is not None:
        from mrlfads.training.checkpoint import CHECKPOINT_NAME

        summary.checkpoint = f"{best.checkpoint.path.rstrip('/')}/{CHECKPOINT_NAME}"
        summary.history = _lineage_history(best.checkpoint)
    return summary


def _objective_text(plan: SweepPlan) -> str:
    from mrlfads.training.objective import resolve_objective

    cfg, _ = _least_protected(plan.space, plan.run)
    return resolve_objective(cfg).describe()


def _trial_id(path: str) -> str:
    """Tune's trial id from a trial directory (``trainable_<id>_<n>_<tag>_<date>``): a
    result's own ``trial_id`` can be its donor's after a late exploit."""
    match = re.search(r"_([0-9a-f]+_\d{5})_", Path(path).name)
    return match.group(1) if match else Path(path).name


def _lineage_history(checkpoint) -> list[dict[str, float]]:
    """Per-epoch hyperparameters and objective of the model in ``checkpoint``: the Trainer
    keeps its history through exploits, so this is the lineage, donors included."""
    from mrlfads.training import checkpoint as ckpt

    with checkpoint.as_directory() as d:
        history = ckpt.load(os.path.join(d, ckpt.CHECKPOINT_NAME)).get("history", [])
    keep = ("epoch", "objective", "lr")
    return [{k: float(v) for k, v in row.items() if k in keep or k.startswith("hp/")}
            for row in history]


def _count_exploits(experiment_path: str) -> int:
    """Exploit events PBT logged (one line per exploit in pbt_global.txt), 0 if none."""
    try:
        fs, p = _filesystem(f"{experiment_path}/pbt_global.txt")
        with fs.open_input_stream(p) as inp:
            return sum(1 for line in inp.read().decode().splitlines() if line.strip())
    except (OSError, FileNotFoundError):
        return 0


def format_summary(summary: SweepSummary) -> str:
    """The end-of-sweep report a person reads."""
    from mrlfads.training.smoothing import MEANING

    lines = [f"sweep: {summary.experiment_path}", f"trials: {len(summary.trials)}, "
             f"exploits: {summary.exploits}"]
    lines += [f"  {t}: {s}" for t, s in sorted(summary.trials.items()) if s != "TERMINATED"]
    if summary.unfinished:
        lines.append(f"interrupted: {summary.unfinished} of {len(summary.trials)} trials did not "
                     "finish; their state is saved for --resume")
    if summary.best_trial is None:
        return "\n".join(lines + ["no trial finished: see the errors above"])
    m = summary.best_metrics
    best = "best trial so far" if summary.unfinished else "best trial"
    lines.append(f"{best}: {summary.best_trial} (epoch {int(m.get('epoch', 0))}, "
                 f"objective {m.get('objective', float('nan')):.5g})")
    if summary.objective:
        lines.append(f"objective: {summary.objective}")
    lines.append("hyperparameters: " + ", ".join(f"{k}={_fmt(v)}" for k, v in summary.hparams.items()))
    for key in sorted(k for k in m if k.startswith("valid/") and k.count("/") == 1):
        lines.append(f"  {key}: {m[key]:.5g}")
    for key, value in sorted(summary.baseline.items()):
        if key.count("/") == 1:
            lines.append(f"  {key}: {value:.5g} ({MEANING})")
    if summary.effectome:
        lines.append("effectome (cut: RMS change of the target's readout when the pathway is "
                     "silenced, src_to_dst): " + ", ".join(
                         f"{k}={v:.3g}" for k, v in sorted(summary.effectome.items())))
    if summary.effectome_message_rms:
        lines.append("effectome (RMS message, src_to_dst): " + ", ".join(
            f"{k}={v:.3g}" for k, v in sorted(summary.effectome_message_rms.items())))
    if summary.history:
        lines.append("hyperparameter history of the best model (the first epoch, each that "
                     "changed them, the last):")
        hp_keys = sorted({k for row in summary.history for k in row if k.startswith("hp/")})
        previous = None
        for i, row in enumerate(summary.history):
            values = [row.get(k) for k in hp_keys]
            if values == previous and i != len(summary.history) - 1:
                continue
            previous = values
            lines.append(f"  {int(row.get('epoch', 0)):4d}: " + ", ".join(
                f"{k[3:]}={_fmt(row[k])}" for k in hp_keys if k in row))
    lines.append(f"checkpoint: {summary.checkpoint}")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
