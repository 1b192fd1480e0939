"""Non-finite losses: `mrlfads train` names the term, the epoch and a checkpoint that exists;
a sweep trial restarts from its last good checkpoint with its next explore step, or ends
failed with the cause on its MLflow run (slow: a real local Ray and a real SQLite MLflow).

The NaN is real, not mocked: ``loss.l2_scale = 1e39`` overflows float32 as soon as the L2
ramp is above 0, so ``loss.l2_ramp = {start: S, length: 0}`` makes epoch S + 1 (1-based)
the first non-finite one; ``train.lr = 1e6`` blows up the first epoch.
"""
from __future__ import annotations

import json
import os
import shutil

import pytest

from mrlfads.data_loaders.reader import ArrowDataset
from mrlfads.search_spaces.space import SearchSpace
from mrlfads.training import checkpoint as ckpt
from mrlfads.training import trainable as tr
from mrlfads.training.cli import main
from mrlfads.training.config import RunConfig
from mrlfads.training.loop import NonFiniteLossError

HUGE = 1e39  # > float32 max: the weighted L2 term is inf once its ramp is above 0


def _space(seed: int = 0, l2_weight: float = 1e300) -> SearchSpace:
    return SearchSpace.from_dict({
        "kind": "pbt", "seed": seed, "max_failures": 1,
        "scheduler": {"population": 2, "perturbation_interval": 2, "burn_in": 0},
        "hyperparameters": {
            "train.lr": {"bounds": [1e-4, 1e7], "scale": "log", "explore_weight": 0.01},
            "loss.l2_scale": {"bounds": [1e-3, HUGE], "scale": "log",
                              "explore_weight": l2_weight}}})


@pytest.fixture(scope="module")
def run(tiny_dataset_dir):
    """Smoke sizes, 4 epochs, the L2 ramp stepping to 1 at 0-based epoch 2."""
    ds = ArrowDataset.open(tiny_dataset_dir)
    return RunConfig.for_dataset(ds.manifest, uri=tiny_dataset_dir, smoke_test=True, overrides={
        "train.epochs": 4, "loss.l2_ramp.start": 2, "loss.l2_ramp.length": 0}).to_dict()


def _config(run, **hparams):
    return {"run": run, "checkpoint_interval": 2, "build": {}, "hparams": hparams}


class Reports:
    """A stand-in for tune.report: keeps metrics, and a copy of every checkpoint."""

    def __init__(self, root):
        self.root, self.metrics, self.checkpoints = root, [], {}

    def __call__(self, metrics, checkpoint_dir):
        self.metrics.append(dict(metrics))
        if checkpoint_dir is not None:
            dst = self.root / f"epoch{int(metrics['epoch'])}"
            shutil.copytree(checkpoint_dir, dst)
            self.checkpoints[int(metrics["epoch"])] = str(dst)


# ------------------------------------------------------------------ mrlfads train
def test_train_nan_in_first_epoch_names_no_checkpoint(tiny_dataset_dir, tmp_path, capsys):
    code = main(["train", "--data", tiny_dataset_dir, "--smoke-test", "--epochs", "4",
                 "--out", str(tmp_path / "r"), "--no-tracking", "--quiet",
                 "--set", f"loss.l2_scale={HUGE}"])
    out = capsys.readouterr().out
    assert code == 1
    assert "non-finite in epoch 1 (non-finite terms: loss)" in out
    assert "holds no checkpoint" in out and "last.pt" not in out
    assert "--set train.lr=0.0025" in out  # a quarter of the smoke lr 0.01
    assert not (tmp_path / "r" / "last.pt").exists()


def test_train_nan_later_names_the_epoch_and_an_existing_checkpoint(tiny_dataset_dir, tmp_path,
                                                                     capsys):
    code = main(["train", "--data", tiny_dataset_dir, "--smoke-test", "--epochs", "4",
                 "--out", str(tmp_path / "r"), "--no-tracking", "--quiet",
                 "--set", f"loss.l2_scale={HUGE}", "--set", "loss.l2_ramp.start=2",
                 "--set", "loss.l2_ramp.length=0"])
    out = capsys.readouterr().out
    assert code == 1
    last = tmp_path / "r" / "last.pt"
    assert "non-finite in epoch 3" in out and f"Last good checkpoint (epoch 2): {last}" in out
    assert ckpt.load(last)["epoch"] == 2
    assert "--resume --set train.lr=0.0025" in out


# ------------------------------------------------------------------ sweep trials, no Ray
def test_explore_step_is_seeded_by_the_values_and_stays_in_bounds():
    space = _space(l2_weight=0.3)
    values = {"train.lr": 0.01, "loss.l2_scale": 10.0}
    a, b = tr.nonfinite_explore(values, space, 0), tr.nonfinite_explore(values, space, 0)
    assert a == b and a != tr.nonfinite_explore(values, space, 1)
    assert 0.01 / 1.01 <= a["train.lr"] <= 0.01 * 1.01
    assert 10.0 / 1.3 <= a["loss.l2_scale"] <= 10.0 * 1.3
    top = tr.nonfinite_explore({"train.lr": 1e7, "loss.l2_scale": HUGE}, space, 0)
    assert top["train.lr"] <= 1e7 and top["loss.l2_scale"] <= HUGE


def test_restart_from_the_last_good_checkpoint_with_the_explored_values(run, tmp_path,
                                                                         monkeypatch):
    safe = {"train.lr": 0.01, "loss.l2_scale": 1.0}
    monkeypatch.setattr(tr, "nonfinite_explore", lambda values, space, restart: dict(safe))
    reports = Reports(tmp_path)
    tr.train_trial(_config(run, **{"train.lr": 0.01, "loss.l2_scale": HUGE}), reports,
                   space=_space(), state_path=tmp_path / tr.STATE_FILE)
    m = reports.metrics
    assert [x["epoch"] for x in m] == [1.0, 2.0, 3.0, 4.0]  # epoch 3 went NaN, then passed
    assert [x["nonfinite_restarts"] for x in m] == [0.0, 0.0, 1.0, 1.0]
    assert [x["hp/loss.l2_scale"] for x in m] == [HUGE, HUGE, 1.0, 1.0]  # what really ran
    assert [x["nonfinite/events"] == "" for x in m] == [True, True, False, True]
    (event,) = json.loads(m[2]["nonfinite/events"])
    assert (event["restart"], event["epoch"], event["from"]) == (1, 3, "checkpoint of epoch 2")
    assert event["old"]["loss.l2_scale"] == HUGE and event["new"] == safe
    assert "non-finite in epoch 3" in event["cause"]
    # epoch 3 is exactly what the epoch-2 checkpoint trains to with the new values
    again = tr.build_trainer(_config(run, **safe), reports.checkpoints[2]).run_epoch()
    assert again["objective"] == m[2]["objective"] and again["train/loss"] == m[2]["train/loss"]
    state = json.loads((tmp_path / tr.STATE_FILE).read_text())
    assert state["restarts"] == 1 and state["hparams"] == safe and state["failed"] is None


def test_before_any_checkpoint_the_restart_is_from_scratch(run, tmp_path, monkeypatch):
    start = {"train.lr": 0.01, "loss.l2_scale": HUGE}
    safe = {"train.lr": 0.01, "loss.l2_scale": 1.0}
    monkeypatch.setattr(tr, "nonfinite_explore", lambda values, space, restart: dict(safe))
    early = {**run, "loss": {**run["loss"], "l2_ramp": {"start": 0, "length": 0}}}
    reports = Reports(tmp_path)
    tr.train_trial(_config(early, **start), reports, space=_space())
    (event,) = json.loads(reports.metrics[0]["nonfinite/events"])
    assert (event["epoch"], event["from"]) == (1, "scratch")
    fresh = tr.build_trainer(_config(early, **safe), None).run_epoch()
    assert fresh["objective"] == reports.metrics[0]["objective"]


def test_a_trial_that_stays_non_finite_fails_and_tunes_retry_fails_at_once(run, tmp_path):
    state = tmp_path / tr.STATE_FILE
    config = _config(run, **{"train.lr": 1e6, "loss.l2_scale": 1.0})  # NaN in every epoch 1
    reports = Reports(tmp_path)
    with pytest.raises(NonFiniteLossError) as info:
        tr.train_trial(config, reports, space=_space(l2_weight=0.3), state_path=state)
    msg = str(info.value)
    assert "non-finite in epoch 1" in msg and f"restarted {tr.NONFINITE_RESTARTS} times" in msg
    assert "ends as failed" in msg and reports.metrics == []
    saved = json.loads(state.read_text())
    assert saved["failed"] == msg and len(saved["events"]) == tr.NONFINITE_RESTARTS
    assert all(e["from"] == "scratch" for e in saved["events"])
    lrs = [e["new"]["train.lr"] for e in saved["events"]]
    assert len(set(lrs)) == 3 and all(1e6 / 1.01**3 <= lr <= 1e6 * 1.01**3 for lr in lrs)
    # Tune retrying the trial (same config): the same end, without training again
    with pytest.raises(NonFiniteLossError) as again:
        tr.train_trial(config, reports, space=_space(), state_path=state, dataset=object())
    assert str(again.value) == msg


def test_without_a_pbt_space_a_non_finite_loss_fails_the_trial(run, tmp_path):
    reports = Reports(tmp_path)
    with pytest.raises(NonFiniteLossError, match="non-finite in epoch 3"):
        tr.train_trial(_config(run, **{"train.lr": 0.01, "loss.l2_scale": HUGE}), reports)
    assert [x["epoch"] for x in reports.metrics] == [1.0, 2.0]


def test_an_exploited_trial_starts_a_fresh_record(tmp_path):
    path = tmp_path / tr.STATE_FILE
    tr._save_state(path, {"config_hparams": {"train.lr": 0.1}, "hparams": {"train.lr": 0.05},
                          "restarts": 3, "events": [{}], "failed": "gave up"})
    assert tr._load_state(path, {"train.lr": 0.1})["failed"] == "gave up"  # a retry: same
    fresh = tr._load_state(path, {"train.lr": 0.2})  # PBT gave new values: new record
    assert fresh["restarts"] == 0 and fresh["hparams"] == {"train.lr": 0.2} and not fresh["failed"]


# ------------------------------------------------------------------ a real sweep
def _recovering_space(start: dict) -> tuple[SearchSpace, float]:
    """A space whose seed makes the first explore step from ``start`` land on a finite
    L2 scale (computed with the trainable's own step, so the test knows the value)."""
    for seed in range(100):
        space = _space(seed)
        new = tr.nonfinite_explore(start, space, 0)["loss.l2_scale"]
        if new < 1e10:
            return space, new
    raise AssertionError("no seed in 0..99 explores the L2 scale below 1e10")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_real_sweep_restarts_one_trial_and_fails_the_other_with_its_cause(
        run, tmp_path, ray_session, mlflow_sqlite_uri):
    from mlflow.tracking import MlflowClient
    from ray import tune

    from mrlfads.tracking.tune_callback import MlflowTuneCallback

    nan_later = {"train.lr": 0.01, "loss.l2_scale": HUGE}  # NaN in epoch 3, then recovers
    nan_always = {"train.lr": 1e6, "loss.l2_scale": 1.0}  # NaN in epoch 1, whatever the step
    space, explored = _recovering_space(nan_later)
    name = "nonfinite-sweep"
    cb = MlflowTuneCallback(name, tracking_uri=mlflow_sqlite_uri, metric="objective", mode="min",
                            hparams={f"hparams.{p}": p for p in nan_later}, system_metrics=False)
    tuner = tune.Tuner(
        tune.with_resources(tr.trainable_for(space), {"cpu": 1}),
        param_space={**_config(run), "hparams": tune.grid_search([nan_later, nan_always])},
        tune_config=tune.TuneConfig(reuse_actors=False),
        run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), callbacks=[cb],
                                  verbose=0, failure_config=tune.FailureConfig(max_failures=1)))
    results = tuner.fit()

    by_lr = {r.config["hparams"]["train.lr"]: r for r in results}
    assert by_lr[0.01].error is None and by_lr[1e6].error is not None
    assert by_lr[0.01].metrics["epoch"] == 4 and by_lr[0.01].metrics["nonfinite_restarts"] == 1
    client = MlflowClient(mlflow_sqlite_uri)
    exp = client.get_experiment_by_name(name)
    runs = {float(r.data.params["hparams.train.lr"]): r for r in client.search_runs(
        [exp.experiment_id]) if r.data.tags.get("mrlfads.role") == "trial"}
    ok, bad = runs[0.01], runs[1e6]

    assert ok.info.status == "FINISHED"
    event = json.loads(ok.data.tags["mrlfads.nonfinite.1"])
    assert (event["epoch"], event["from"]) == (3, "checkpoint of epoch 2")
    assert event["new"]["loss.l2_scale"] == explored
    l2 = {m.step: m.value for m in client.get_metric_history(ok.info.run_id, "hp/loss.l2_scale")}
    assert l2 == {1: HUGE, 2: HUGE, 3: explored, 4: explored}  # the values that really ran
    restarts = client.get_metric_history(ok.info.run_id, "nonfinite_restarts")
    assert {m.step: m.value for m in restarts} == {1: 0.0, 2: 0.0, 3: 1.0, 4: 1.0}
    assert [a.path for a in client.list_artifacts(ok.info.run_id, "nonfinite")] == [
        "nonfinite/events.json"]

    assert bad.info.status == "FAILED"
    cause = bad.data.tags["mrlfads.error_cause"]
    assert cause.startswith("NonFiniteLossError: the loss became non-finite in epoch 1")
    assert f"restarted {tr.NONFINITE_RESTARTS} times" in cause
    text = open(client.download_artifacts(bad.info.run_id, "error.txt", str(tmp_path))).read()
    assert text.count("Failure # ") == 2  # Tune's retry (max_failures=1) failed too
    assert not client.get_metric_history(bad.info.run_id, "objective")  # never carried on
    # Tune's retry read the trial's record and failed at once: no fourth explore step
    record = json.loads(open(os.path.join(by_lr[1e6].path, tr.STATE_FILE)).read())
    assert len(record["events"]) == tr.NONFINITE_RESTARTS and record["failed"] == cause.split(
        ": ", 1)[1]
