"""Signals end runs and servers cleanly; a run killed with -9 is found and reopened.

Real processes, a real SQLite MLflow store and a real `mlflow server`; each kill waits for a
file the run writes (last.pt, the UI's address line), never for a fixed time.
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


@pytest.fixture
def long_train(tmp_path, mlflow_sqlite_uri, experiment_name):
    """Start `mrlfads train` for 500 epochs; returns (process, run dir) once last.pt exists."""
    from data_loaders.testing import make_tiny_dataset

    make_tiny_dataset(tmp_path / "data")
    (tmp_path / "ramps.yaml").write_text(SHORT_RAMPS)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "training.cli", "train", "--data", str(tmp_path / "data"),
           "--out", str(out), "--smoke-test", "--epochs", "500", "--config",
           str(tmp_path / "ramps.yaml"), "--tracking-uri", mlflow_sqlite_uri, "--experiment",
           experiment_name, "--quiet"]
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: (out / "last.pt").exists() or proc.poll() is not None, 180, "last.pt")
        assert proc.poll() is None, proc.communicate()
        yield proc, out
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _runs(uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    return client, client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_sigterm_to_train_ends_its_run_killed_like_ctrl_c(long_train, mlflow_sqlite_uri,
                                                         experiment_name):
    proc, out = long_train
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]  # the CLI's Ctrl-C exit code
    assert "interrupted" in stderr
    _, (run,) = _runs(mlflow_sqlite_uri, experiment_name)
    assert run.info.status == "KILLED"


def test_train_killed_with_9_is_marked_killed_and_resume_reopens_the_same_run(
        long_train, mlflow_sqlite_uri, experiment_name):
    from tracking.liveness import end_dead_runs
    from training.cli import main

    proc, out = long_train
    proc.kill()
    proc.wait(timeout=30)
    client, (run,) = _runs(mlflow_sqlite_uri, experiment_name)
    assert run.info.status == "RUNNING" and run.data.tags["mrlfads.pid"] == str(proc.pid)
    assert json.loads((out / "tracking.json").read_text())["run_id"] == run.info.run_id
    # what `mrlfads ui` and `mrlfads train` do first (other tests' dead runs may share the store)
    assert run.info.run_id in end_dead_runs(client)
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    assert run.info.run_id not in end_dead_runs(client)  # done once

    done = len((out / "metrics.jsonl").read_text().splitlines())
    assert main(["train", "--data", str(out.parent / "data"), "--out", str(out), "--resume",
                 "--epochs", str(done + 3), "--tracking-uri", mlflow_sqlite_uri,
                 "--experiment", experiment_name, "--quiet"]) == 0
    _, runs = _runs(mlflow_sqlite_uri, experiment_name)
    assert [r.info.run_id for r in runs] == [run.info.run_id]  # no second run
    again = runs[0]
    assert again.info.status == "FINISHED" and again.data.metrics["epoch"] == done + 3
    assert again.data.tags["mrlfads.pid"] == str(os.getpid())
    # -9 may land between last.pt, metrics.jsonl and MLflow: at most that one epoch is lost
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "epoch")}
    assert max(steps) == done + 3 and len(steps) >= done + 1
    assert set(range(done + 2, done + 4)) <= steps


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
    proc = subprocess.Popen([sys.executable, "-m", "training.cli", "ui"], cwd=tmp_path, env=env,
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

    from tracking.server import start_server
    from tracking.store import default_tracking_uri

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
