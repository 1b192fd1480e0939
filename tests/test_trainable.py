"""The trainable's restore path: after an exploit the trial trains with its OWN
hyperparameters (learning rate included), on the donor's weights and Adam moments."""
from __future__ import annotations

import os

import pytest
import torch

from mrlfads.config_utils import ConfigError
from mrlfads.files import CHECKPOINT
from mrlfads.training.config import RunConfig
from mrlfads.training.trainable import build_trainer, should_checkpoint, trial_run_config


@pytest.fixture(scope="module")
def base_run(tiny_dataset_dir):
    from mrlfads.data_loaders.reader import ArrowDataset

    ds = ArrowDataset.open(tiny_dataset_dir)
    return RunConfig.for_dataset(ds.manifest, uri=tiny_dataset_dir, smoke_test=True)


def _config(run, **hparams):
    return {"run": run, "checkpoint_interval": 2, "build": {}, "hparams": hparams}


def test_trial_run_config_applies_build_and_hparams(base_run):
    trial = {"run": base_run, "build": {"model.regions.*.gen_dim": 5},
             "hparams": {"train.lr": 3e-4, "loss.kl_com_ratio": 20.0}}
    cfg = trial_run_config(trial)
    assert [r.gen_dim for r in cfg.model.regions] == [5, 5]
    assert cfg.train.lr == 3e-4 and cfg.loss.kl_com_scale == cfg.loss.kl_co_scale / 20.0
    assert cfg.train.lr_plateau is False  # the search, not a plateau schedule, owns lr
    assert base_run.train.lr_plateau is True  # the base run is not changed
    assert trial_run_config({**trial, "run": base_run.to_dict()}) == cfg  # its dict reads the same
    with pytest.raises(ConfigError, match="config path 'train.nope': no field 'nope'"):
        trial_run_config({"run": base_run, "hparams": {"train.nope": 1.0}})


def test_exploit_runs_at_the_new_trials_lr_not_the_donors(base_run, tmp_path):
    donor_lr, own_lr = 1e-2, 1e-4
    donor = build_trainer(_config(base_run, **{"train.lr": donor_lr, "model.dropout": 0.05}), None)
    donor.run_epoch()
    donor.run_epoch()
    donor.save_checkpoint(os.path.join(tmp_path, CHECKPOINT))
    donor_state = donor.optimizer.state_dict()["state"]

    own = {"train.lr": own_lr, "model.dropout": 0.4, "loss.kl_ic_scale": 0.25}
    trainer = build_trainer(_config(base_run, **own), str(tmp_path))

    assert trainer.epoch == 2  # the donor's progress, not a fresh start
    restored = trainer.optimizer.state_dict()["state"]
    for key, state in donor_state.items():  # Adam moments kept from the donor
        assert torch.equal(restored[key]["exp_avg"], state["exp_avg"])
        assert torch.equal(restored[key]["exp_avg_sq"], state["exp_avg_sq"])
    # every group's lr is the training step's tensor (float32), set to the trial's own
    assert all(g["lr"] is trainer.step.lr for g in trainer.optimizer.param_groups)
    assert float(trainer.step.lr) == pytest.approx(own_lr, rel=1e-7)
    assert trainer.cfg.loss.kl_ic_scale == 0.25 and trainer.cfg.model.dropout == 0.4
    assert trainer.model.dropout_p == 0.4  # the model's live dropout rate

    metrics = trainer.run_epoch()
    assert metrics["lr"] == own_lr and metrics["hp/train.lr"] == own_lr
    assert metrics["epoch"] == 3.0


def test_checkpoints_land_on_the_perturbation_grid_and_the_last_epoch():
    assert [e for e in range(1, 8) if should_checkpoint(e, 3, 7)] == [3, 6, 7]
    assert [e for e in range(1, 7) if should_checkpoint(e, 2, 6)] == [2, 4, 6]
