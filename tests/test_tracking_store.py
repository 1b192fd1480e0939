"""Opening the embedded SQLite tracking store (tracking/store.py): many processes at once."""
from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from mrlfads.tracking import store
from mrlfads.tracking.errors import TrackingError

N_PROCESSES = 4


def _open_and_create(uri: str, name: str, barrier, results) -> None:
    import os

    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    import mlflow  # noqa: F401  (imported before the barrier: the race is in opening)

    barrier.wait(timeout=120)
    try:
        client = store.mlflow_client(uri)
        store.ensure_experiment(client, name)
        results.put((name, "ok"))
    except Exception as exc:  # noqa: BLE001 (reported to the test, which names it)
        results.put((name, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"))


def test_processes_opening_a_new_store_at_once_all_succeed(tmp_path):
    """Bare MlflowClient construction fails here in most tries ("duplicate column name:
    step", "table params already exists"): MLflow migrates a new SQLite store unlocked."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(N_PROCESSES), ctx.Queue()
    names = [f"exp-{k}" for k in range(N_PROCESSES)]
    procs = [ctx.Process(target=_open_and_create, args=(uri, n, barrier, results)) for n in names]
    for p in procs:
        p.start()
    outcome = dict(results.get(timeout=180) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert outcome == {n: "ok" for n in names}
    client = store.mlflow_client(uri)
    found = {e.name for e in client.search_experiments()}
    assert found == {"Default", *names}
    assert (tmp_path / "mlruns" / "mlflow.db.lock").exists()


def test_a_store_held_by_another_opener_times_out_with_the_lock_named(tmp_path):
    from filelock import FileLock

    db = tmp_path / "mlflow.db"
    held = FileLock(f"{db}.lock")
    held.acquire()
    try:
        with (pytest.raises(TrackingError, match=r"mlflow\.db\.lock.*--tracking-uri"),
              store._opening(f"sqlite:///{db}", timeout_s=0.2)):
            pass
    finally:
        held.release()
    with store._opening(f"sqlite:///{db}", timeout_s=0.2):  # free again
        pass


def test_only_sqlite_uris_have_a_database_file():
    assert store.sqlite_path("sqlite:////data/mlruns/mlflow.db") == Path("/data/mlruns/mlflow.db")
    assert store.sqlite_path("sqlite:///rel/mlflow.db?mode=ro") == Path("rel/mlflow.db")
    assert store.sqlite_path("http://127.0.0.1:5000") is None
    assert store.sqlite_path("postgresql://db/mlflow") is None
    assert store.artifact_root_for("sqlite:////data/mlruns/mlflow.db") == "/data/mlruns/artifacts"
