"""Model selection waits for the KL/L2 ramps (docs/MODEL.md, "Ramps and model selection"):
a model from before the message bottleneck acts can look better on held-out neurons while
its communication is wrong, so no best-of choice may pick such an epoch."""
from __future__ import annotations

import math

import numpy as np
import pytest

from mrlfads.config import LossConfig, RampConfig
from mrlfads.config_utils import ConfigError
from mrlfads.data_loaders.testing import make_tiny_dataset
from mrlfads.ramps import RAMPS_DONE, best_trial, selectable
from mrlfads.training import checkpoint as ckpt
from mrlfads.training.config import RunConfig, fit_ramps
from mrlfads.training.fit import BEST, fit
from mrlfads.training.loop import Trainer


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_dataset(tmp_path / "d")


def test_ramps_end_is_the_first_epoch_with_every_weight_at_full(tiny):
    loss = LossConfig()
    assert loss.ramps_end == 250  # messages: start 150 + length 100
    for e in (249, 250):
        full = all(r(e) == 1.0 for r in loss.ramps.values())
        assert full == (e >= loss.ramps_end)


def test_best_pt_ignores_a_better_epoch_from_before_the_ramps(tiny, tmp_path, monkeypatch):
    """The scripted objective is lowest at epoch 1, during the ramps; best.pt must hold the
    best epoch after them (epoch 4: 2.0), not epoch 1 (0.5)."""
    cfg = RunConfig.for_dataset(tiny.manifest, smoke_test=True, overrides={
        "train.epochs": 5, "loss.com_ramp": {"start": 1, "length": 2}})
    assert cfg.loss.ramps_end == 3
    trainer = Trainer(cfg, tiny)
    real = trainer.run_epoch
    scripted = iter([3.0, 0.5, 1.0, 2.5, 2.0])

    def run_epoch():
        m = real()
        value = next(scripted)
        m["objective"] = value
        trainer.history[-1]["objective"] = value
        return m

    monkeypatch.setattr(trainer, "run_epoch", run_epoch)
    fit(trainer, tmp_path / "run", progress=False)
    flags = [m[RAMPS_DONE] for m in trainer.history]
    assert flags == [0.0, 0.0, 0.0, 1.0, 1.0]
    best = ckpt.load(tmp_path / "run" / BEST)
    assert best["epoch"] == 5  # epochs 4 and 5 were eligible; 2.0 < 2.5


def _scripted(trainer, monkeypatch, values):
    real, scripted = trainer.run_epoch, iter(values)

    def run_epoch():
        m = real()
        m["objective"] = trainer.history[-1]["objective"] = next(scripted)
        return m
    monkeypatch.setattr(trainer, "run_epoch", run_epoch)


def test_training_ends_patience_epochs_after_the_best_one(tiny, tmp_path, monkeypatch, capsys):
    """Ramps end at epoch 3 (selectable from epoch 4). The scripted objective's post-ramp
    best is epoch 5 (1.0; epoch 1's 0.1 is during the ramps); with patience 3 the run ends
    after epoch 8 instead of 12, best.pt holding epoch 5; resuming trains nothing more."""
    from mrlfads.tracking.memory import InMemoryTracker
    from mrlfads.training.fit import epochs_since_best, stale

    cfg = RunConfig.for_dataset(tiny.manifest, smoke_test=True, overrides={
        "train.epochs": 12, "train.patience": 3, "loss.com_ramp": {"start": 1, "length": 2}})
    trainer = Trainer(cfg, tiny)
    _scripted(trainer, monkeypatch, [5.0, 0.1, 4.0, 2.0, 1.0, 1.5, 1.2, 1.1, 0.2, 0.1, 0.1, 0.1])
    tracker = InMemoryTracker()
    run_id = tracker.start_run("r", experiment="e")
    fit(trainer, tmp_path / "run", progress=False, tracker=tracker)
    assert [int(m["epoch"]) for m in trainer.history] == list(range(1, 9))
    assert ckpt.load(tmp_path / "run" / BEST)["epoch"] == 5
    assert epochs_since_best(trainer.history) == (5, 3)
    out = capsys.readouterr().out
    assert "stopped at epoch 8 of 12: no better objective in the 3 epochs since epoch 5" in out
    assert "since epoch 5" in tracker.store.runs[run_id].tags["mrlfads.stopped_early"]
    fit(Trainer.from_checkpoint(tmp_path / "run" / "last.pt", tiny), tmp_path / "run",
        progress=False)
    assert ckpt.load(tmp_path / "run" / "last.pt")["epoch"] == 8
    # a tie is a new best (best.pt is saved on <=), and patience 0 never stops
    tie = [{"epoch": e, "objective": v, RAMPS_DONE: 1.0} for e, v in [(1, 2.0), (2, 1.0), (3, 1.0)]]
    assert epochs_since_best(tie) == (3, 0)
    assert epochs_since_best([{"epoch": 1, "objective": 1.0, RAMPS_DONE: 0.0}]) == (None, 0)
    assert not stale(tie + [{"epoch": 9, "objective": 5.0, RAMPS_DONE: 1.0}], 0)
    assert stale(tie + [{"epoch": 9, "objective": 5.0, RAMPS_DONE: 1.0}], 6)


def test_patience_is_checked():
    with pytest.raises(ConfigError, match=r"train.patience=-1 must be >= 0"):
        RunConfig.from_dict({"train": {"patience": -1}})


def test_selectable_reads_the_flag_and_accepts_older_records():
    assert selectable({RAMPS_DONE: 1.0}) and not selectable({RAMPS_DONE: 0.0})
    assert selectable({"objective": 1.0})  # written before the flag existed


def test_best_trial_skips_trials_whose_last_epoch_was_during_the_ramps():
    last = {"a": {"objective": 1.0, RAMPS_DONE: 0.0}, "b": {"objective": 2.0, RAMPS_DONE: 1.0},
            "c": {"objective": math.nan, RAMPS_DONE: 1.0}}
    assert best_trial(last, "objective") == "b"


def test_best_trial_ignores_nan_inf_and_missing_and_breaks_ties_by_the_smallest_key():
    last = {"a": {"objective": 2.0}, "b": {"objective": float("nan")}, "c": {"objective": 1.5},
            "d": {}, "e": {"objective": -math.inf}, "f": {"objective": True}}
    assert best_trial(last, "objective", "min") == "c"
    assert best_trial(last, "objective", "max") == "a"
    assert best_trial({"d": {}}, "objective") is None
    tie = {"t2": {"objective": np.float32(1.0)}, "t1": {"objective": 1.0}, "t3": {"objective": 3}}
    assert best_trial(tie, "objective", "min") == "t1"  # whatever order the caller's dict has
    assert best_trial(tie, "objective", "max") == "t3"
    with pytest.raises(ValueError, match="mode 'best'"):
        best_trial(tie, "objective", "best")


@pytest.fixture
def gaussian(tmp_path):
    return make_tiny_dataset(tmp_path / "g", obs_model="gaussian")


def test_epochs_stretch_the_default_ramps(gaussian):
    cfg = RunConfig.for_dataset(gaussian.manifest, overrides={"train.epochs": 100})
    # every default start and length times 100 / 350, rounded
    assert cfg.loss.ic_ramp == RampConfig(6, 57) and cfg.loss.co_ramp == RampConfig(6, 57)
    assert cfg.loss.com_ramp == RampConfig(43, 29) and cfg.loss.l2_ramp == RampConfig(29, 23)
    assert cfg.loss.ramps_end == 72 < 100
    # the same config from a YAML file's train.epochs, and the default length unchanged
    from_file = RunConfig.for_dataset(gaussian.manifest, user={"train": {"epochs": 100}})
    assert from_file.loss == cfg.loss
    assert RunConfig.for_dataset(gaussian.manifest).loss.ramps == LossConfig().ramps


def test_spike_counts_have_their_own_ramps_stretched_the_same_way(tiny):
    assert tiny.manifest.obs_model == "poisson"
    full = RunConfig.for_dataset(tiny.manifest).loss  # 350 epochs: every ramp done by 72
    assert full.ic_ramp == full.co_ramp == RampConfig(6, 57)
    assert full.com_ramp == RampConfig(43, 29) and full.l2_ramp == RampConfig(29, 23)
    assert full.ramps_end == 72
    short = RunConfig.for_dataset(tiny.manifest, overrides={"train.epochs": 100}).loss
    # 6 * 100/350 = 1.7 -> 2, 57 -> 16.3 -> 16; 43 -> 12.3 -> 12, 29 -> 8.3 -> 8; 29 -> 8, 23 -> 7
    assert short.ic_ramp == short.co_ramp == RampConfig(2, 16)
    assert short.com_ramp == RampConfig(12, 8) and short.l2_ramp == RampConfig(8, 7)
    assert short.ramps_end == 20


def test_ramps_a_user_set_are_kept_or_the_run_is_refused(gaussian):
    tiny = gaussian
    own = {f"loss.{name}": {"start": 5, "length": 20} for name in LossConfig().ramps}
    kept = RunConfig.for_dataset(tiny.manifest, overrides={"train.epochs": 100, **own})
    assert all(r == RampConfig(5, 20) for r in kept.loss.ramps.values())  # not stretched
    # one ramp set, the others default: they end at 220 > 100 epochs, so it is refused
    with pytest.raises(ConfigError, match=r"train.epochs=100 is too short.*end at epoch 220"):
        RunConfig.for_dataset(tiny.manifest, overrides={
            "train.epochs": 100, "loss.com_ramp": {"start": 10, "length": 20}})
    with pytest.raises(ConfigError, match="shorten the ramps you set"):
        fit_ramps(kept.with_overrides({"train.epochs": 25}), explicit=True)
    with pytest.raises(ConfigError, match="Use at least 3 epochs"):
        RunConfig.for_dataset(tiny.manifest, overrides={"train.epochs": 2})
    short = RunConfig.for_dataset(tiny.manifest, overrides={"train.epochs": 3})
    assert short.loss.ramps_end < 3


def test_train_cli_refuses_a_run_too_short_for_its_ramps(gaussian, tmp_path, capsys):
    from mrlfads.training.cli import main

    code = main(["train", "--data", str(tmp_path / "g"), "--epochs", "2", "--out",
                 str(tmp_path / "run"), "--no-tracking", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "too short for the KL/L2 ramps" in err and "Use at least 3 epochs" in err
    assert not (tmp_path / "run" / "last.pt").exists()
