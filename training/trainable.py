"""The one function Ray Tune sees: build or restore a Trainer, re-apply the trial's own
hyperparameters, train, report every epoch with a checkpoint at the perturbation interval.

Trial config layout (built by ``search_spaces.tune_objects.param_space``)::

    {"run": RunConfig.to_dict() of the sweep's base run (data.uri inside),
     "checkpoint_interval": int,      # == PBT perturbation interval, set by the space
     "build": {path: value},          # structure (Optuna): applied before the model is built
     "hparams": {path: value}}        # mutable (PBT): re-applied after every restore

Paths are dotted RunConfig fields (``train.lr``; ``model.regions.*.gen_dim`` for every
region). PBT's explore step rewrites ``hparams`` only, so a dict of path keys is all that
``custom_explore_fn`` and the result table ever touch.

After an exploit Tune hands this function the donor's checkpoint: weights, Adam moments,
the smoothed objective and the donor's optimiser param groups (its learning rate). The
trial's own ``hparams`` are applied *after* that restore, so the optimiser runs at this
trial's learning rate, not the donor's (the AutoLFADS bug); tests/test_trainable.py pins it.

A loss that goes NaN raises ``NonFiniteLossError``: Tune retries the trial from its last
checkpoint up to ``max_failures`` times (a deterministic NaN recurs), then marks it ERROR
with that message; the rest of the population carries on.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Mapping

CHECKPOINT_FILE = "checkpoint.pt"  # inside each Tune checkpoint directory


def trial_run_config(config: Mapping[str, Any]):
    """The trial's RunConfig: base run + structure + its own hyperparameters, validated."""
    from search_spaces.paths import set_paths
    from training.config import RunConfig

    values = {**config.get("build", {}), **config.get("hparams", {})}
    if "train.lr" in config.get("hparams", {}):
        values["train.lr_plateau"] = False  # the search owns the learning rate
    return RunConfig.from_dict(set_paths(config["run"], values))


def build_trainer(config: Mapping[str, Any], checkpoint_dir: str | None, dataset=None):
    """A Trainer for this trial: fresh, or restored from ``checkpoint_dir`` (possibly a
    donor's) and then given this trial's own hyperparameters."""
    from data_loaders.reader import ArrowDataset
    from training.loop import Trainer

    run_cfg = trial_run_config(config)
    dataset = dataset if dataset is not None else ArrowDataset.open(run_cfg.data.uri)
    if checkpoint_dir is None:
        trainer = Trainer(run_cfg, dataset)
    else:
        trainer = Trainer.from_checkpoint(os.path.join(checkpoint_dir, CHECKPOINT_FILE), dataset)
    # after the restore: the trial's own lr goes into every param group, keeping Adam moments
    trainer.apply_hparams(dict(config.get("hparams", {})))
    return trainer


def should_checkpoint(epoch: int, interval: int, epochs: int) -> bool:
    """Checkpoint on the perturbation grid and at the last epoch."""
    return epoch % interval == 0 or epoch >= epochs


def trainable(config: dict[str, Any]) -> None:
    """Ray Tune function trainable; see the module docstring for the config layout."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        trainer = build_trainer(config, None)
    else:
        with checkpoint.as_directory() as ckpt_dir:
            trainer = build_trainer(config, ckpt_dir)
    interval = int(config["checkpoint_interval"])
    epochs = int(trainer.cfg.train.epochs)
    while trainer.epoch < epochs:
        metrics = trainer.run_epoch()  # NonFiniteLossError propagates: the trial fails
        if should_checkpoint(trainer.epoch, interval, epochs):
            with tempfile.TemporaryDirectory(prefix="mrlfads-ckpt-") as tmp:
                trainer.save_checkpoint(os.path.join(tmp, CHECKPOINT_FILE))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        else:
            tune.report(metrics)
