"""The one function Ray Tune sees: build or restore a Trainer, re-apply the trial's own
hyperparameters, train, report every epoch with a checkpoint at the perturbation interval.

Trial config layout (built by ``mrlfads.search_spaces.tune_objects.param_space``)::

    {"run": the sweep's base RunConfig (data.uri inside),
     "checkpoint_interval": int,      # == PBT perturbation interval, set by the space
     "build": {path: value},          # structure (Optuna): applied before the model is built
     "hparams": {path: value}}        # mutable (PBT): re-applied after every restore

Paths are dotted RunConfig fields (``train.lr``; ``model.regions.*.gen_dim`` for every
region), set by ``mrlfads.config_utils.with_overrides`` as ``--set`` is. PBT's explore
step rewrites ``hparams`` only, so a dict of path keys is all that ``custom_explore_fn``
and the result table ever touch.

After an exploit Tune hands this function the donor's checkpoint: weights, Adam moments,
the smoothed objective and the donor's optimiser param groups (its learning rate). The
trial's own ``hparams`` are applied *after* that restore, so the optimiser runs at this
trial's learning rate, not the donor's (the AutoLFADS bug); tests/test_trainable.py pins it.

A loss that goes NaN or inf (``NonFiniteLossError``) never passes silently. In a PBT sweep
the trial restarts from its last good checkpoint (the last one it reported, or the one it
started from; from scratch before it has one) with its next explore step: the space's own
bounded step (search_spaces/explore.py) applied to the values it was running, seeded by
those values, so a rerun takes the same steps. Each restart shows as the metric
``nonfinite_restarts`` and, on the next result, ``nonfinite/events`` (JSON: epoch, cause,
old and new values), which tracking turns into tags; the ``hp/*`` metrics show the values
really used. Tune's ``trial.config`` keeps the values PBT gave: Tune has no public way for
a trial to change it, so a later exploit of this trial explores around those. After
``NONFINITE_RESTARTS`` restarts the trial raises, naming every step, and ends ERROR (its
MLflow run FAILED with the cause); the file ``nonfinite.json`` in the trial directory
makes Tune's own retries (``max_failures``) fail at once instead of replaying the same
steps. Without a PBT space (``trainable``, Optuna spaces) a non-finite loss fails the trial.
"""
from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path
from typing import Any, Callable, Mapping

from mrlfads.atomic import write_atomic
from mrlfads.files import CHECKPOINT  # the file in each Tune checkpoint directory
from mrlfads.scratch import scratch_dir

NONFINITE_RESTARTS = 3  # explore steps a trial may take away from non-finite losses
STATE_FILE = "nonfinite.json"  # in the trial directory: restarts so far (survives retries)


def trial_run_config(config: Mapping[str, Any]):
    """The trial's RunConfig: the base run (a RunConfig; a plain dict is read as one) with
    its structure and its own hyperparameters set, validated once."""
    from mrlfads.training.config import RunConfig

    run = config["run"]
    run = run if isinstance(run, RunConfig) else RunConfig.from_dict(run)
    values = {**config.get("build", {}), **config.get("hparams", {})}
    if "train.lr" in config.get("hparams", {}):
        values["train.lr_plateau"] = False  # the search owns the learning rate
    return run.with_overrides(values)


def build_trainer(config: Mapping[str, Any], checkpoint_dir: str | None, dataset=None):
    """A Trainer for this trial: fresh, or restored from ``checkpoint_dir`` (possibly a
    donor's) and then given this trial's own hyperparameters."""
    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.training.loop import Trainer
    from mrlfads.training.resources import trial_device

    run_cfg = trial_run_config(config)
    dataset = dataset if dataset is not None else ArrowDataset.open(run_cfg.data.uri)
    device = trial_device(run_cfg.train.device)  # auto: the trial's GPU share or the CPU
    if checkpoint_dir is None:
        trainer = Trainer(run_cfg, dataset, device=device)
    else:
        trainer = Trainer.from_checkpoint(os.path.join(checkpoint_dir, CHECKPOINT), dataset,
                                          device=device)
    # after the restore: the trial's own lr goes into every param group, keeping Adam moments
    trainer.apply_hparams(dict(config.get("hparams", {})))
    return trainer


def should_checkpoint(epoch: int, interval: int, epochs: int) -> bool:
    """Checkpoint on the perturbation grid and at the last epoch."""
    return epoch % interval == 0 or epoch >= epochs


def nonfinite_explore(values: Mapping[str, float], space: Any, restart: int) -> dict[str, float]:
    """The explore step a trial takes away from a non-finite loss: the space's PBT step,
    seeded by (space seed, the values, restart number), hence the same in every rerun."""
    import numpy as np

    from mrlfads.search_spaces.explore import explore

    key = zlib.crc32(json.dumps(dict(values), sort_keys=True).encode())
    return explore(values, space, np.random.default_rng([int(space.seed), key, int(restart)]))


def _load_state(path: Path | None, config_hparams: Mapping[str, Any]) -> dict[str, Any]:
    """This trial's restart record, if it belongs to the values PBT gave it; after an
    exploit (new values) the trial starts a fresh record."""
    fresh = {"config_hparams": dict(config_hparams), "hparams": dict(config_hparams),
             "restarts": 0, "events": [], "failed": None}
    if path is None or not path.is_file():
        return fresh
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return fresh
    return state if state.get("config_hparams") == fresh["config_hparams"] else fresh


def _save_state(path: Path | None, state: Mapping[str, Any]) -> None:
    if path is not None:
        write_atomic(path, json.dumps(state, indent=1))


def _give_up_message(exc: Exception, state: Mapping[str, Any]) -> str:
    steps = "; ".join(f"epoch {e['epoch']}: {e['new']}" for e in state["events"])
    return (f"{exc} The trial restarted {state['restarts']} times from its last good "
            f"checkpoint with explored hyperparameters ({steps}) and the loss went non-finite "
            f"every time: the trial ends as failed. Narrow the search space (e.g. the upper "
            f"bound of train.lr) if other trials fail too.")


def train_trial(config: Mapping[str, Any], report: Callable[[dict, str | None], None], *,
                space: Any = None, restore_dir: str | None = None,
                state_path: Path | None = None, dataset: Any = None,
                max_restarts: int = NONFINITE_RESTARTS,
                before_epoch: Callable[[int], None] | None = None) -> None:
    """The trial's epochs, Ray-free: ``report(metrics, checkpoint_dir or None)`` once per
    epoch; non-finite losses restart as the module docstring says (``space``: a PBT
    SearchSpace, or None to fail at once). ``state_path``: the trial's restart record.
    ``before_epoch(n)`` runs as epoch n begins (training/faults.py)."""
    from mrlfads.training.loop import NonFiniteLossError

    state = _load_state(state_path, config.get("hparams", {}))
    if state["failed"]:  # Tune retrying a trial that already gave up: same steps, same end
        raise NonFiniteLossError(state["failed"])
    can_restart = space is not None and space.kind == "pbt" and bool(state["hparams"])
    trainer = build_trainer({**config, "hparams": state["hparams"]}, restore_dir, dataset)
    interval = int(config["checkpoint_interval"])
    epochs = int(trainer.cfg.train.epochs)
    pending: list[dict[str, Any]] = []
    with scratch_dir("mrlfads-good-") as keep:
        good = None  # epoch of the last good checkpoint (a copy in `keep`); None: none yet
        if restore_dir is not None:
            shutil.copy2(os.path.join(restore_dir, CHECKPOINT), keep)
            good = trainer.epoch
        while trainer.epoch < epochs:
            if before_epoch is not None:
                before_epoch(trainer.epoch + 1)
            try:
                # a checkpoint's epoch reports its cut effectome: what a sweep's summary shows
                metrics = trainer.run_epoch(
                    cut_effectome=should_checkpoint(trainer.epoch + 1, interval, epochs))
            except NonFiniteLossError as exc:
                if not can_restart:
                    raise
                if state["restarts"] >= max_restarts:
                    state["failed"] = _give_up_message(exc, state)
                    _save_state(state_path, state)
                    raise NonFiniteLossError(state["failed"]) from None
                new = nonfinite_explore(state["hparams"], space, state["restarts"])
                event = {"restart": state["restarts"] + 1, "epoch": trainer.epoch + 1,
                         "cause": str(exc), "old": state["hparams"], "new": new,
                         "from": "scratch" if good is None else f"checkpoint of epoch {good}"}
                state.update(restarts=event["restart"], hparams=new,
                             events=[*state["events"], event])
                _save_state(state_path, state)
                pending.append(event)
                trainer = build_trainer({**config, "hparams": new},
                                        None if good is None else keep, trainer.dataset)
                continue
            metrics["nonfinite_restarts"] = float(state["restarts"])
            # always present (empty without events): every report must have the same keys
            metrics["nonfinite/events"] = json.dumps(pending) if pending else ""
            pending = []
            if should_checkpoint(trainer.epoch, interval, epochs):
                with scratch_dir("mrlfads-ckpt-") as tmp:
                    trainer.save_checkpoint(os.path.join(tmp, CHECKPOINT))
                    shutil.copy2(os.path.join(tmp, CHECKPOINT), keep)
                    good = trainer.epoch
                    report(metrics, tmp)
            else:
                report(metrics, None)


def _tune_run(config: Mapping[str, Any], space: Any) -> None:
    from ray import tune

    from mrlfads.training import faults

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        if checkpoint_dir is None:
            tune.report(metrics)
        else:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(checkpoint_dir))

    trial_dir = tune.get_context().get_trial_dir()
    state_path = Path(trial_dir, STATE_FILE) if trial_dir else None
    checkpoint = tune.get_checkpoint()
    with scratch_dir("mrlfads-restore-") as local:
        if checkpoint is not None:  # a local copy: Tune's may be a download it deletes
            with checkpoint.as_directory() as ckpt_dir:
                shutil.copy2(os.path.join(ckpt_dir, CHECKPOINT), local)
        train_trial(config, report, space=space, state_path=state_path,
                    restore_dir=None if checkpoint is None else local,
                    before_epoch=faults.epoch_hook(None, tune.get_context().get_trial_id()))


def trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable without a search space: a non-finite loss fails the
    trial (Tune then retries it from its last checkpoint up to ``max_failures``)."""
    _tune_run(config, None)


def trainable_for(space: Any) -> Callable[[dict[str, Any]], None]:
    """The trainable a sweep over ``space`` runs: with a PBT space, a trial whose loss goes
    non-finite restarts with the space's explore step (module docstring)."""

    def trainable(config: dict[str, Any]) -> None:
        _tune_run(config, space)

    return trainable
