"""Sweeps that lose a process at a chosen point (training/faults.py), and exactly what
survives: which epochs each trial reported, from which process, and what reached MLflow.

Real `mrlfads sweep` drivers join a Ray of their test's own (tests/ray_fixtures.py
`own_ray`: what a sweep does when a process dies must not depend on what earlier tests left
in the session Ray); MRLFADS_FAULT reaches their trials through Ray's runtime environment.
Nothing here sleeps or polls for the moment to strike: the process that fails kills itself
at an epoch or a checkpoint count.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mrlfads.training import faults

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
SMOKE_EPOCHS = 8


def _cli(*args: str, fault: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop(faults.ENV, None)
    if fault:
        env[faults.ENV] = fault
    return subprocess.Popen([sys.executable, "-m", "mrlfads.training.cli", "sweep", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _sweep_args(name: str, storage: Path, own_ray, tracking_uri: str) -> list[str]:
    """What a driver and its `--resume` both pass: the sweep's name and storage, the test's
    own Ray and MLflow store."""
    return ["--name", name, "--storage", str(storage), "--address", own_ray.address,
            "--tracking-uri", tracking_uri, "--quiet"]


def _finish(proc: subprocess.Popen, timeout: float, what: str) -> str:
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{what} did not finish in {timeout:.0f} s:\n" + proc.communicate()[0][-6000:])


def _trial_dirs(exp: Path) -> dict[str, Path]:
    """Tune's trial number (00000...) -> trial directory."""
    out = {}
    for d in exp.iterdir():
        m = re.match(r"trainable_[0-9a-f]+_(\d{5})_", d.name)
        if m and d.is_dir():
            out[m.group(1)] = d
    return out


def _rows(trial_dir: Path) -> pd.DataFrame:
    return pd.read_csv(trial_dir / "progress.csv")


def _epochs(rows: pd.DataFrame) -> list[int]:
    return [int(e) for e in rows["epoch"]]


@pytest.mark.timeout(720)  # a loaded 2-core machine has taken over 360 s
def test_trials_that_kill_themselves_at_chosen_epochs_restart_or_fail_exactly(
        own_ray, tiny_dataset_dir, tmp_path, mlflow_sqlite_uri):
    """Trial 00001 dies as epoch 4 begins, once; trial 00002 dies as epoch 3 begins, twice
    (the smoke sweep allows one retry). Synchronous PBT, 4 members, checkpoints every 2."""
    from mlflow.tracking import MlflowClient

    name = f"trialfault-{os.getpid()}"
    fault = ("signal-epoch:epoch=4,trial=00001;"
             "signal-epoch:epoch=3,trial=00002,times=2")
    proc = _cli("--data", tiny_dataset_dir, "--smoke-test", "--name", name, "--storage",
                str(tmp_path), "--address", own_ray.address, "--tracking-uri", mlflow_sqlite_uri,
                "--quiet", fault=fault)
    out = _finish(proc, 600, "the sweep")
    assert proc.returncode == 0, out[-6000:]
    assert "MRLFADS_FAULT" in out  # announced

    exp = tmp_path / name
    summary = json.loads((exp / "summary.json").read_text())
    dirs = _trial_dirs(exp)
    assert sorted(dirs) == ["00000", "00001", "00002", "00003"]
    ids = {n: re.search(r"_([0-9a-f]+_\d{5})_", d.name).group(1) for n, d in dirs.items()}
    status = {n: summary["trials"][tid] for n, tid in ids.items()}
    assert [status[n] for n in ("00000", "00001", "00003")] == ["TERMINATED"] * 3
    assert status["00002"].startswith("ERROR")
    rows = {n: _rows(d) for n, d in dirs.items()}

    # untouched members: every epoch once (synchronous PBT pauses on checkpoint epochs)
    for n in ("00000", "00003"):
        assert _epochs(rows[n]) == list(range(1, SMOKE_EPOCHS + 1))
    # 00001 reported 1-3, died as 4 began, came back from its checkpoint of epoch 2 in
    # another process: epoch 3 twice, and nothing more from the process that died
    r = rows["00001"]
    assert _epochs(r) == [1, 2, 3, 3, 4, 5, 6, 7, 8]
    killed = r["pid"].iloc[2]
    assert (r["pid"].iloc[3:] != killed).all()
    # 00002 reported 1-2, died as 3 began, and its retry died at the same point
    assert _epochs(rows["00002"]) == [1, 2]
    # how often each fault fired, as each trial counted it on this node
    assert (faults.trial_marker_dir(ids["00001"]) / "mrlfads-fault-0").read_text() == "1"
    assert (faults.trial_marker_dir(ids["00002"]) / "mrlfads-fault-1").read_text() == "2"
    assert not faults.trial_marker_dir(ids["00000"]).exists()
    assert summary["exploits"] >= 1 and summary["history"][-1]["epoch"] == SMOKE_EPOCHS

    # MLflow: one run per trial holding exactly the epochs Tune recorded
    client = MlflowClient(mlflow_sqlite_uri)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id],
                              "tags.`mrlfads.role` = 'trial'")
    by_number = {r.data.tags["mrlfads.trial_id"][-5:]: r for r in runs}
    assert sorted(by_number) == sorted(dirs)
    for n, run in by_number.items():
        steps = sorted(int(m.step) for m in client.get_metric_history(run.info.run_id, "epoch"))
        assert steps == sorted(_epochs(rows[n])), n
        assert run.info.status == ("FAILED" if n == "00002" else "FINISHED")
        # the run names the epochs run twice: 00001's 3 (00002's retry reported nothing)
        restarts = {k: json.loads(v) for k, v in run.data.tags.items()
                    if k.startswith("mrlfads.restart.")}
        assert restarts == ({"mrlfads.restart.1": {"epoch": 3, "resumed_at": 3}}
                            if n == "00001" else {}), n
    assert "died" in by_number["00002"].data.tags["mrlfads.error_cause"].lower()


@pytest.mark.timeout(1200)  # both drivers, and up to 300 s for the dead one's trials to go
def test_driver_killed_at_a_chosen_checkpoint_count_resumes_from_the_saved_checkpoints(
        own_ray, tiny_dataset_dir, tmp_path, mlflow_sqlite_uri):
    """The driver dies once Tune's saved state holds 6 checkpoints (all 4 of epoch 2, and
    at least 2 of epoch 4); the state on storage names a checkpoint for every trial, and
    `--resume` restarts every trial from the one it names and runs the sweep to its end.
    MLflow keeps one run per trial across both drivers, and marks the epochs run twice."""
    from mlflow.tracking import MlflowClient
    from ray.tune import ExperimentAnalysis

    from mrlfads.training import checkpoint as ckpt

    name = f"resume-{os.getpid()}"
    common = _sweep_args(name, tmp_path, own_ray, mlflow_sqlite_uri)
    first = _cli("--data", tiny_dataset_dir, "--smoke-test", *common,
                 fault="kill-driver:checkpoints=6")
    out = _finish(first, 300, "the first driver")
    killed_at = time.time()
    assert first.returncode == -9, out[-6000:]
    line = re.search(r"kill-driver: SIGKILL .* holds (\d+) checkpoints; newest per trial: ", out)
    assert int(line.group(1)) >= 6
    # a trial of the dead driver still running would write epochs into the directories the
    # resumed sweep is checked on
    own_ray.wait_for_no_actors("the killed driver's trials")

    # what --resume will start from: the experiment state the dead driver left on storage.
    # Tune copies each save there from a staging folder in a background thread, so it can
    # be an earlier save than the one the fault counted on, or the one the driver died in
    # (both seen on the loaded 2-core machine): read it, don't assume it
    exp = tmp_path / name
    saved = {}
    for trial in ExperimentAnalysis(str(exp)).trials:
        number = trial.trial_id[-5:]
        assert trial.checkpoint is not None, f"trial {number} has no checkpoint to resume from"
        saved[number] = ckpt.load(Path(trial.checkpoint.path) / "checkpoint.pt")["epoch"]
    assert sorted(saved) == ["00000", "00001", "00002", "00003"]
    assert all(e % 2 == 0 and e >= 2 for e in saved.values())  # checkpoints every 2 epochs

    # what the dead driver logged: each trial's run with epochs 1..its last, RUNNING unless
    # the trial had finished (on an idle machine one can, before the state holds 6 saves)
    client = MlflowClient(mlflow_sqlite_uri)

    def trial_runs() -> dict:
        return {r.data.tags["mrlfads.trial_id"][-5:]: r for r in client.search_runs(
            [client.get_experiment_by_name(name).experiment_id], "tags.`mrlfads.role` = 'trial'")}

    def epochs_logged(run) -> list[int]:
        return sorted(int(m.step) for m in client.get_metric_history(run.info.run_id, "epoch"))

    dead = trial_runs()
    assert sorted(dead) == sorted(saved)
    logged = {n: epochs_logged(r) for n, r in dead.items()}
    for n, steps in logged.items():  # the result of a saved checkpoint was logged first
        assert steps == list(range(1, len(steps) + 1)) and len(steps) >= saved[n], n
        ended = {"RUNNING", "FINISHED"} if len(steps) == SMOKE_EPOCHS else {"RUNNING"}
        assert dead[n].info.status in ended, (n, dead[n].info.status, steps)

    def checkpoint_tags(runs) -> dict:
        """Per trial: (the epoch its tags give its checkpoint, the epoch the file holds)."""
        out = {}
        for n, run in runs.items():
            tags = run.data.tags
            held = ckpt.load(Path(tags["mrlfads.checkpoint"]) / "checkpoint.pt")["epoch"]
            out[n] = (int(tags["mrlfads.checkpoint_epoch"]), held)
        return out

    tagged = checkpoint_tags(dead)
    assert all(a == b for a, b in tagged.values()), tagged

    second = _cli("--resume", *common)
    out = _finish(second, 420, "the resumed sweep")
    assert second.returncode == 0, out[-6000:]
    assert "best trial" in out and "checkpoint:" in out
    summary = json.loads((exp / "summary.json").read_text())
    assert set(summary["trials"].values()) == {"TERMINATED"} and len(summary["trials"]) == 4

    for number, trial_dir in _trial_dirs(exp).items():
        rows = _rows(trial_dir)
        before = rows[rows["timestamp"] <= killed_at]
        after = rows[rows["timestamp"] > killed_at]
        # the first driver's epochs ran once each, in order, up to where it died. Its rows
        # reach storage when Tune syncs the driver's artifacts from the session's staging
        # folder, so a driver killed on a loaded machine can take its newest rows, or all of
        # them (seen beside a sweep on 2 cores), with it: they are a prefix, maybe empty
        assert _epochs(before) == list(range(1, len(before) + 1))
        # the resumed driver ran this trial from its saved checkpoint to the end, every
        # epoch once: members behind caught up before PBT ranked anyone, so no exploit
        # moved a trial across epochs (search_spaces/tune_objects.GridSyncPBT)
        assert _epochs(after) == list(range(saved[number] + 1, SMOKE_EPOCHS + 1)), number
        # so no trial restarted from scratch: no epoch up to its checkpoint ran twice
        assert not rows.loc[rows["epoch"] <= saved[number], "epoch"].duplicated().any()
        # the optimiser ran at the trial's own lr at every epoch, exploits included
        assert (rows["lr"] == rows["hp/train.lr"]).all()
    assert summary["exploits"] >= 1 and summary["history"][-1]["epoch"] == SMOKE_EPOCHS
    assert Path(summary["checkpoint"]).is_file() and summary["checkpoint"].startswith(str(exp))

    # MLflow: the same run per trial, finished; the epochs from its checkpoint on logged
    # again, and a restart tag naming them wherever the dead driver had logged past it
    runs = trial_runs()
    assert {n: r.info.run_id for n, r in runs.items()} == {n: r.info.run_id for n, r in dead.items()}
    tagged = checkpoint_tags(runs)
    assert all(a == b for a, b in tagged.values()), tagged
    for n, run in runs.items():
        assert run.info.status == "FINISHED", n
        assert epochs_logged(run) == sorted(logged[n] + list(range(saved[n] + 1, SMOKE_EPOCHS + 1)))
        replayed = len(logged[n]) > saved[n]
        assert ("mrlfads.restart.1" in run.data.tags) == replayed, n
        if replayed:
            assert json.loads(run.data.tags["mrlfads.restart.1"]) == {
                "epoch": len(logged[n]), "resumed_at": saved[n] + 1}
    assert set(summary["effectome"]) == {"A_to_B", "B_to_A"}
    from mrlfads.training.sweep import CHECKPOINTS_TO_KEEP

    for trial_dir in _trial_dirs(exp).values():
        assert 1 <= len(list(trial_dir.glob("checkpoint_*"))) <= CHECKPOINTS_TO_KEEP


@pytest.mark.timeout(720)
def test_sigterm_to_the_driver_stops_the_sweep_as_interrupted_and_resume_finishes_it(
        own_ray, tiny_dataset_dir, tmp_path, mlflow_sqlite_uri):
    """`kill PID` or a scheduler's stop (SIGTERM) takes Ctrl-C's path: Tune stops the
    sweep and saves its state. The sweep says it was interrupted and how to go on, exits
    130 (not 0: a job scheduler must not read it as done), its MLflow parent run ends KILLED
    and promote refuses it; `--resume` then finishes it, and the parent ends FINISHED."""
    from mlflow.tracking import MlflowClient

    from mrlfads.tracking.registry import TrackingError, find_best_trial

    name = f"term-{os.getpid()}"
    common = _sweep_args(name, tmp_path, own_ray, mlflow_sqlite_uri)
    first = _cli("--data", tiny_dataset_dir, "--smoke-test", *common,
                 fault="kill-driver:checkpoints=4,signal=TERM")
    out = _finish(first, 300, "the signalled driver")
    assert "mrlfads fault: kill-driver: SIGTERM" in out, out[-6000:]
    assert first.returncode == 130, out[-6000:]
    assert re.search(r"interrupted: \d of 4 trials did not finish", out)
    assert (f"continue it with:\n  mrlfads sweep --resume --name {name} --storage {tmp_path} "
            f"--address {own_ray.address}") in out
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    assert 1 <= summary["unfinished"] <= 4
    from mrlfads.training.sweep import UNFINISHED

    assert list(summary["trials"].values()).count(UNFINISHED) == summary["unfinished"]
    own_ray.wait_for_no_actors("the stopped driver's trials")

    client = MlflowClient(mlflow_sqlite_uri)
    exp_id = client.get_experiment_by_name(name).experiment_id

    def runs(role: str) -> list:
        return client.search_runs([exp_id], f"tags.`mrlfads.role` = '{role}'")

    (parent,) = runs("sweep")
    assert parent.info.status == "KILLED"
    assert parent.data.tags["mrlfads.sweep_state"] == (
        "interrupted before every trial finished; `mrlfads sweep --resume` continues the sweep")
    with pytest.raises(TrackingError, match=f"sweep '{name}' stopped before its end"):
        find_best_trial(name, tracking_uri=mlflow_sqlite_uri)

    second = _cli("--resume", *common)
    out = _finish(second, 420, "the resumed sweep")
    assert second.returncode == 0, out[-6000:]
    assert "interrupted" not in out and "best trial:" in out
    assert json.loads((tmp_path / name / "summary.json").read_text())["unfinished"] == 0
    (parent,) = runs("sweep")
    assert parent.info.status == "FINISHED" and parent.data.tags["mrlfads.sweep_state"] == "finished"
    assert {r.info.status for r in runs("trial")} == {"FINISHED"}
    assert find_best_trial(name, tracking_uri=mlflow_sqlite_uri).trial_id
