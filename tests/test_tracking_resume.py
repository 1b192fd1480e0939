"""A sweep's MLflow record across a dead driver and `mrlfads sweep --resume`
(tracking/tune_callback.py): the resumed callback re-opens the runs and reads back what the
dead one recorded, so events number on, replayed epochs are marked, and the best trial is
chosen among every trial, also those that ended before the driver died.

The callbacks are driven by hand (one per driver) against a real SQLite store; a real
driver kill and resume: tests/test_sweep_faults.py."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("ray")
from mlflow.tracking import MlflowClient

from mrlfads.ramps import RAMPS_DONE
from mrlfads.search_spaces.tune_state import STOP_REQUESTED
from mrlfads.tracking.tune_callback import MlflowTuneCallback


def _trial(tid: str, lr: float, tmp_path) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid, experiment_tag=tid, local_path=None,
                           local_experiment_path=str(tmp_path), config={"hparams": {"train.lr": lr}},
                           checkpoint=None, error_file=None, get_error=lambda: "boom",
                           status="RUNNING")


def _report(cb, trial, epoch: int, objective: float, lr: float) -> None:
    trial.config = {"hparams": {"train.lr": lr}}
    cb.log_trial_result(epoch, trial, {"epoch": epoch, "objective": objective, RAMPS_DONE: 1.0,
                                       "config": trial.config})


def _callback(name: str, uri: str, resume: bool) -> MlflowTuneCallback:
    cb = MlflowTuneCallback(name, tracking_uri=uri, metric="objective", mode="min",
                            hparams={"hparams.train.lr": "train.lr"}, resume=resume,
                            system_metrics=False)
    cb.setup()
    return cb


def _tag(run, key: str) -> dict:
    return json.loads(run.data.tags[key])


def test_a_resumed_sweep_numbers_on_marks_replays_and_counts_trials_ended_before(
        tmp_path, mlflow_sqlite_uri, caplog):
    name = "resume-record"
    client = MlflowClient(mlflow_sqlite_uri)
    a, b, c, d = (_trial(f"t0000_0000{i}", lr, tmp_path)
                  for i, lr in enumerate((0.01, 0.02, 0.03, 0.04)))

    # the first driver: c finishes with the lowest objective of the trials that did not
    # fail, d fails lower still; b is exploited after epochs 2 and 4; the driver dies with
    # a at epoch 4 and b at 6 (no trial end, no experiment end)
    first = _callback(name, mlflow_sqlite_uri, resume=False)
    for trial in (a, b, c, d):
        first.log_trial_start(trial)
    for epoch in (1, 2, 3, 4):
        _report(first, c, epoch, 0.5 - 0.1 * epoch, 0.03)
    first.log_trial_end(c)
    _report(first, d, 1, 0.01, 0.04)
    first.log_trial_end(d, failed=True)
    for epoch in (1, 2, 3, 4):
        _report(first, a, epoch, 1.0, 0.01)
    for epoch, lr in ((1, 0.02), (2, 0.02), (3, 0.05), (4, 0.05), (5, 0.07), (6, 0.07)):
        _report(first, b, epoch, 0.9, lr)
    runs = {r.data.tags["mrlfads.trial_id"]: r for r in client.search_runs(
        [client.get_experiment_by_name(name).experiment_id], "tags.`mrlfads.role` = 'trial'")}
    assert {t: r.info.status for t, r in runs.items()} == {
        a.trial_id: "RUNNING", b.trial_id: "RUNNING", c.trial_id: "FINISHED",
        d.trial_id: "FAILED"}
    assert _tag(runs[b.trial_id], "pbt.exploit.2")["resumed_at"] == 5
    parent_id = first.parent_run_id

    # the resumed driver: Tune restarts a from its checkpoint of epoch 2 and b from its
    # checkpoint of epoch 3 (before its second exploit, which is lost); b is exploited again
    second = _callback(name, mlflow_sqlite_uri, resume=True)
    assert second.parent_run_id == parent_id
    second.log_trial_start(a)
    b.config = {"hparams": {"train.lr": 0.05}}  # the config of b's checkpoint
    second.log_trial_start(b)
    for epoch in (3, 4, 5, 6, 7):
        _report(second, a, epoch, 0.95, 0.01)
    for epoch, lr in ((4, 0.05), (5, 0.05), (6, 0.05), (7, 0.09)):
        _report(second, b, epoch, 0.85, lr)
    for trial in (a, b):
        second.log_trial_end(trial)
    a.status = b.status = c.status = "TERMINATED"
    d.status = "ERROR"
    second.on_experiment_end([a, b, c, d])
    # every hook ran to its end (a failing one only logs a warning: tune_callback._safe)
    assert not [r for r in caplog.records if "failed" in r.getMessage()]

    runs = {r.data.tags["mrlfads.trial_id"]: r for r in client.search_runs(
        [client.get_experiment_by_name(name).experiment_id], "tags.`mrlfads.role` = 'trial'")}
    assert {r.info.run_id for r in runs.values()} == set(first.run_ids.values())  # re-opened
    assert {t: r.info.status for t, r in runs.items()} == {
        a.trial_id: "FINISHED", b.trial_id: "FINISHED", c.trial_id: "FINISHED",
        d.trial_id: "FAILED"}
    # b's params are its starting config (its exploited values are hp/* curves)
    assert runs[b.trial_id].data.params["hparams.train.lr"] == "0.02"
    # the replayed epochs are logged twice and the restart says which
    steps = sorted(int(m.step) for m in client.get_metric_history(
        runs[a.trial_id].info.run_id, "epoch"))
    assert steps == [1, 2, 3, 3, 4, 4, 5, 6, 7]
    assert _tag(runs[a.trial_id], "mrlfads.restart.1") == {"epoch": 4, "resumed_at": 3}
    assert _tag(runs[b.trial_id], "mrlfads.restart.1") == {"epoch": 6, "resumed_at": 4}
    assert not any(k.startswith("mrlfads.restart.") for k in runs[c.trial_id].data.tags)
    # b's exploits: the first kept, the second lost with epochs 4-6 and marked so, the
    # resumed driver's numbered after them (not written over the first)
    one, two, three = (_tag(runs[b.trial_id], f"pbt.exploit.{n}") for n in (1, 2, 3))
    assert (one["epoch"], one["resumed_at"], one.get("superseded")) == (2, 3, None)
    assert (two["epoch"], two["resumed_at"], two["superseded"]) == (4, 5, True)
    assert (three["epoch"], three["resumed_at"], three["new"]) == (6, 7, {"train.lr": 0.09})
    n_exploits = {int(m.step): m.value for m in client.get_metric_history(
        runs[b.trial_id].info.run_id, "pbt/n_exploits")}
    assert n_exploits == {3: 1.0, 5: 2.0, 7: 3.0}
    # the best trial is chosen among every trial that did not fail, c included
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["mrlfads.sweep_state"] == "finished"
    assert parent.data.tags["mrlfads.best_trial_id"] == c.trial_id
    assert parent.data.tags["mrlfads.best_run_id"] == runs[c.trial_id].info.run_id
    exploits = json.loads(Path(client.download_artifacts(
        parent_id, "pbt/exploits.json", str(tmp_path))).read_text())
    assert [e.get("superseded", False) for e in exploits[b.trial_id]] == [False, True, False]


def test_checkpoint_tags_name_the_epoch_the_checkpoint_holds_in_either_order(tmp_path):
    """A trial's ``mrlfads.checkpoint_epoch`` is the epoch of the result that carried the
    checkpoint (Ray's ``checkpoint_dir_name``), whether Tune registers the save before or
    after that result reaches the callback, and a donor's for an exploited trial."""
    from mrlfads.tracking.memory import InMemoryTracker, MemoryStore

    store = MemoryStore()
    cb = MlflowTuneCallback("ckpt-tags", metric="objective", mode="min", system_metrics=False,
                            hparams={"hparams.train.lr": "train.lr"},
                            tracker_factory=lambda outbox: InMemoryTracker(store))
    cb.setup()
    a, b = (_trial(f"t0000_0000{i}", 0.01, tmp_path) for i in (0, 1))
    for trial in (a, b):
        trial.path = str(tmp_path / trial.trial_id)
        cb.log_trial_start(trial)

    def report(trial, epoch, folder=None, lr=0.01):
        trial.config = {"hparams": {"train.lr": lr}}
        cb.log_trial_result(epoch, trial, {"epoch": epoch, "objective": 1.0,
                                           "checkpoint_dir_name": folder, "config": trial.config})

    def save(trial, folder):
        trial.checkpoint = SimpleNamespace(path=f"{trial.path}/{folder}")
        cb.log_trial_save(trial)

    def tags(trial):
        run = next(r for r in store.runs.values() if r.tags.get("mrlfads.trial_id") == trial.trial_id)
        return run.tags["mrlfads.checkpoint"].rsplit("/", 2)[-2:], int(run.tags["mrlfads.checkpoint_epoch"])

    report(a, 1)
    report(a, 2, "checkpoint_000000")
    save(a, "checkpoint_000000")  # the save after its result
    assert tags(a) == ([a.trial_id, "checkpoint_000000"], 2)
    report(a, 3)
    assert tags(a)[1] == 2  # a later result without a checkpoint changes nothing
    save(a, "checkpoint_000001")  # the save before its result
    report(a, 4, "checkpoint_000001")
    assert tags(a) == ([a.trial_id, "checkpoint_000001"], 4)
    for epoch in (1, 2, 3, 4):
        report(b, epoch)
    b.checkpoint = a.checkpoint  # b exploits a: restored from a's checkpoint of epoch 4
    report(b, 5, lr=0.02)
    assert tags(b) == ([a.trial_id, "checkpoint_000001"], 4)


def test_runs_of_trials_that_ended_while_the_driver_was_dead_end_as_the_trials_did(
        tmp_path, mlflow_sqlite_uri):
    """Tune restores a trial that ended (in error or not) before the driver's last state
    save as ERROR or TERMINATED and never starts it again, so no hook of the resumed
    driver sees it end: its run must still end FAILED (with the cause) or FINISHED, not
    stay RUNNING, nor stay KILLED when `mrlfads ui` or `train` ended it as an orphan."""
    from mrlfads.tracking.liveness import end_dead_runs

    name = "resume-ended"
    client = MlflowClient(mlflow_sqlite_uri)
    e, f, g, h = (_trial(f"t0000_0000{i}", 0.01, tmp_path) for i in range(4))
    e.get_error = lambda: "Traceback ...\nNonFiniteLossError: loss became non-finite (terms: elbo)"
    first = _callback(name, mlflow_sqlite_uri, resume=False)
    for trial in (e, f, g, h):
        first.log_trial_start(trial)
    for epoch in (1, 2):
        _report(first, e, epoch, 0.1, 0.01)  # the lowest objective, but it failed
        _report(first, f, epoch, 0.5, 0.01)
        _report(first, g, epoch, 0.7, 0.01)
        _report(first, h, epoch, 0.9, 0.01)
    # the driver dies: nothing ends; h's run is then ended KILLED as an orphan, as
    # `mrlfads ui` does for a run whose process is gone (here: a pid that is not alive)
    h_run = first.run_ids[h.trial_id]
    client.set_tag(h_run, "mrlfads.pid", "999999999")
    assert h_run in end_dead_runs(client)
    ids = dict(first.run_ids)

    second = _callback(name, mlflow_sqlite_uri, resume=True)
    e.status, f.status, h.status = "ERROR", "TERMINATED", "TERMINATED"
    second.log_trial_start(g)  # g is restarted from its checkpoint and finishes
    _report(second, g, 2, 0.7, 0.01)
    second.log_trial_end(g)
    g.status = "TERMINATED"
    second.on_experiment_end([e, f, g, h])

    status = {tid: client.get_run(ids[tid]).info.status for tid in ids}
    assert status == {e.trial_id: "FAILED", f.trial_id: "FINISHED", g.trial_id: "FINISHED",
                      h.trial_id: "FINISHED"}
    assert client.get_run(ids[e.trial_id]).data.tags["mrlfads.error_cause"] == (
        "NonFiniteLossError: loss became non-finite (terms: elbo)")
    # the failed trial is never the best, though its objective was the lowest
    parent = client.get_run(second.parent_run_id)
    assert parent.data.tags["mrlfads.best_trial_id"] == f.trial_id


def test_a_restored_trial_that_never_ended_keeps_its_run_open(tmp_path, mlflow_sqlite_uri):
    """A trial the resumed sweep neither ran nor saw end (the sweep stopped first) is not
    marked finished: its run stays as the dead driver left it."""
    name = "resume-pending"
    client = MlflowClient(mlflow_sqlite_uri)
    p = _trial("t0000_00000", 0.01, tmp_path)
    first = _callback(name, mlflow_sqlite_uri, resume=False)
    first.log_trial_start(p)
    _report(first, p, 1, 0.5, 0.01)
    second = _callback(name, mlflow_sqlite_uri, resume=True)
    p.status = "PENDING"
    STOP_REQUESTED.set()  # what InterruptWatch records when a stop signal ends the run
    try:
        second.on_experiment_end([p])
    finally:
        STOP_REQUESTED.clear()
    assert client.get_run(first.run_ids[p.trial_id]).info.status == "RUNNING"
    # the sweep was stopped by a signal: interrupted, not finished
    parent = client.get_run(second.parent_run_id)
    assert parent.info.status == "KILLED"
    assert parent.data.tags["mrlfads.sweep_state"] == (
        "interrupted before every trial finished; `mrlfads sweep --resume` continues the sweep")


def test_the_data_baseline_is_logged_once_on_the_parent_run(tmp_path, mlflow_sqlite_uri):
    """The smoothing baseline (training/smoothing.py) goes to the parent run at step 0 when
    the sweep begins, and a resumed driver does not log it again."""
    name = "baseline-record"
    client = MlflowClient(mlflow_sqlite_uri)
    for resume in (False, True):
        cb = MlflowTuneCallback(name, tracking_uri=mlflow_sqlite_uri, metric="objective",
                                mode="min", resume=resume, system_metrics=False,
                                baseline={"valid/smoothing_co_bps": 0.0625,
                                          "valid/smoothing_co_bps/A": float("nan")})
        cb.setup()
        cb.on_experiment_end([])
    (logged,) = client.get_metric_history(cb.parent_run_id, "valid/smoothing_co_bps")
    assert (logged.value, logged.step) == (0.0625, 0)
    assert "valid/smoothing_co_bps/A" not in client.get_run(cb.parent_run_id).data.metrics
