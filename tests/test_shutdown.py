"""Signals end runs and servers cleanly; a run killed with -9 is found and reopened.

Real processes, a real SQLite MLflow store and a real `mlflow server`. A training run
signals itself as a chosen epoch begins (MRLFADS_FAULT, training/faults.py), so the epochs
written before the signal are known exactly; `ui` is signalled once it has printed its
address.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHORT_RAMPS = "loss:\n" + "".join(f"  {r}: {{start: 0, length: 1}}\n"
                                  for r in ("ic_ramp", "co_ramp", "com_ramp", "l2_ramp"))


def _wait_for(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


EPOCHS = 6


def _train(tmp_path, uri: str, experiment: str, fault: str
           ) -> tuple[subprocess.CompletedProcess, Path]:
    """`mrlfads train` for EPOCHS epochs with MRLFADS_FAULT=``fault``: the run signals
    itself as the epoch the fault names begins (training/faults.py), never at a time."""
    from mrlfads.data_loaders.testing import make_tiny_dataset
    from mrlfads.training.faults import ENV

    make_tiny_dataset(tmp_path / "data")
    (tmp_path / "ramps.yaml").write_text(SHORT_RAMPS)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "mrlfads.training.cli", "train", "--data", str(tmp_path / "data"),
           "--out", str(out), "--smoke-test", "--epochs", str(EPOCHS), "--config",
           str(tmp_path / "ramps.yaml"), "--tracking-uri", uri, "--experiment", experiment,
           "--quiet"]
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", **{ENV: fault})
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240, check=False), out


def _runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client, client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def _epochs_done(out: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _steps(client, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "epoch"))


def test_sigterm_to_train_ends_its_run_killed_like_ctrl_c(tmp_path, mlflow_sqlite_uri,
                                                         experiment_name):
    from mrlfads.training import checkpoint as ckpt

    proc, out = _train(tmp_path, mlflow_sqlite_uri, experiment_name,
                       "signal-epoch:epoch=3,signal=TERM")
    assert proc.returncode == 130, proc.stderr[-2000:]  # the CLI's Ctrl-C exit code
    assert "interrupted" in proc.stderr
    # epochs 1 and 2 finished and were written everywhere; epoch 3 never began
    assert _epochs_done(out) == [1, 2] and ckpt.load(out / "last.pt")["epoch"] == 2
    client, (run,) = _runs(mlflow_sqlite_uri, experiment_name)
    assert run.info.status == "KILLED" and _steps(client, run.info.run_id) == [1, 2]


def test_train_killed_with_9_is_marked_killed_and_resume_reopens_the_same_run(
        tmp_path, mlflow_sqlite_uri, experiment_name):
    from mrlfads.tracking.liveness import end_dead_runs
    from mrlfads.training import checkpoint as ckpt
    from mrlfads.training.cli import main

    proc, out = _train(tmp_path, mlflow_sqlite_uri, experiment_name, "signal-epoch:epoch=4")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    # killed as epoch 4 began: 3 epochs in metrics.jsonl, last.pt and MLflow, nothing more
    assert _epochs_done(out) == [1, 2, 3] and ckpt.load(out / "last.pt")["epoch"] == 3
    client, (run,) = _runs(mlflow_sqlite_uri, experiment_name)
    assert run.info.status == "RUNNING" and _steps(client, run.info.run_id) == [1, 2, 3]
    assert json.loads((out / "tracking.json").read_text())["run_id"] == run.info.run_id
    # what `mrlfads ui` and `mrlfads train` do first (other tests' dead runs may share the store)
    assert run.info.run_id in end_dead_runs(client)
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert run.info.run_id not in end_dead_runs(client)  # done once

    assert main(["train", "--data", str(out.parent / "data"), "--out", str(out), "--resume",
                 "--epochs", str(EPOCHS), "--tracking-uri", mlflow_sqlite_uri,
                 "--experiment", experiment_name, "--quiet"]) == 0
    _, runs = _runs(mlflow_sqlite_uri, experiment_name)
    assert [r.info.run_id for r in runs] == [run.info.run_id]  # no second run
    again = runs[0]
    assert again.info.status == "FINISHED" and again.data.metrics["epoch"] == EPOCHS
    assert again.data.tags["mrlfads.pid"] == str(os.getpid())
    # every epoch exactly once, in the file and in MLflow: the resume went on from epoch 4
    assert _epochs_done(out) == list(range(1, EPOCHS + 1))
    assert _steps(client, run.info.run_id) == list(range(1, EPOCHS + 1))


def _group(pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    return out


def _start_ui(tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """`mrlfads ui` in a subprocess; returns it and its MLflow server's process group."""
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "mrlfads.training.cli", "ui"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("MLflow UI:"):
            break
    assert proc.poll() is None
    (guard,) = psutil.Process(proc.pid).children()
    return proc, guard.pid  # the guard leads the server's process group


@pytest.mark.slow  # two `mlflow server` starts (~30-50 s each here)
@pytest.mark.timeout(400)
def test_ui_server_dies_with_ui_on_sigterm_and_on_sigkill(tmp_path):
    proc, pgid = _start_ui(tmp_path)
    assert len(_group(pgid)) >= 3  # guard, mlflow, its workers
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130 and "interrupted" in rest
    _wait_for(lambda: not _group(pgid), 20, "the server's processes to end after SIGTERM")

    proc, pgid = _start_ui(tmp_path)
    proc.kill()  # no handler runs: the guard sees its parent die
    proc.wait(timeout=30)
    _wait_for(lambda: not _group(pgid), 20, "the server's processes to end after SIGKILL")


@pytest.mark.slow  # one `mlflow server` start (~30-50 s here)
@pytest.mark.timeout(300)
def test_a_server_started_from_a_thread_outlives_the_thread(tmp_path):
    """The guard follows the process, not the thread that started it (the PBT outage test
    restarts its server from a thread that then ends)."""
    import threading

    from mrlfads.tracking.server import start_server
    from mrlfads.tracking.store import default_tracking_uri

    uri = default_tracking_uri(tmp_path / "store")
    box = []
    worker = threading.Thread(target=lambda: box.append(start_server(uri, tmp_path / "art")))
    worker.start()
    worker.join(timeout=240)
    (server,) = box
    try:
        time.sleep(2.0)  # a guard tied to the thread ends its group at once; polling: 0.5 s
        assert server.healthy(), "the server died with the thread that started it"
    finally:
        server.stop()


def test_a_run_of_another_pid_namespace_under_this_host_name_is_never_judged():
    """A container that shares the host name but not the pid namespace: its pids mean
    nothing here, so its run is neither alive nor dead to this process. Runs tagged
    before the pid space was recorded are judged as before."""
    from mrlfads.pid_space import pid_space
    from mrlfads.tracking.liveness import PID_SPACE_TAG, is_alive, owner_tags

    mine = owner_tags()
    assert is_alive(mine) is True
    dead = {**mine, "mrlfads.pid": "999999999"}
    assert is_alive(dead) is False
    assert is_alive({k: v for k, v in dead.items() if k != PID_SPACE_TAG}) is False
    other = {**dead, PID_SPACE_TAG: "0123456789ab"}
    if pid_space():
        assert mine[PID_SPACE_TAG] == pid_space()
        assert is_alive(other) is None and is_alive({**mine, PID_SPACE_TAG: "x"}) is None
