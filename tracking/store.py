"""Where runs live: the embedded SQLite store by default, any server by URI.

Default (no server to run): ``sqlite:///<workdir>/mlruns/mlflow.db`` with artifacts under
``<workdir>/mlruns/artifacts/<experiment>``, created on first use. ``workdir`` is
``$MRLFADS_HOME`` or the current directory. ``--tracking-uri`` beats
``MLFLOW_TRACKING_URI`` beats the default.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from mrlfads.tracking.errors import TrackingError

STORE_DIR = "mlruns"
DB_NAME = "mlflow.db"
ARTIFACT_DIR = "artifacts"
# MLflow 3's UI opens an experiment in its GenAI (traces) view unless told it holds models
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
_SCHEMES = ("sqlite", "http", "https", "postgresql", "mysql", "mssql", "file", "databricks")


def workdir() -> Path:
    """The project's working directory: $MRLFADS_HOME, else the current directory."""
    return Path(os.environ.get("MRLFADS_HOME") or os.getcwd()).resolve()


def default_tracking_uri(root: str | os.PathLike | None = None) -> str:
    """``sqlite:///<root>/mlruns/mlflow.db`` (the folder is created)."""
    base = Path(root).resolve() if root is not None else workdir()
    store = base / STORE_DIR
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / DB_NAME}"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for any other store."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri[len("sqlite:///"):].split("?", 1)[0])


def artifact_root_for(tracking_uri: str) -> str | None:
    """Local artifact root beside a SQLite store; None for servers (they choose)."""
    db = sqlite_path(tracking_uri)
    return None if db is None else str(db.parent / ARTIFACT_DIR)


def mlflow_client(tracking_uri: str, registry_uri: str | None = None):
    """An ``MlflowClient`` for ``tracking_uri``, safe to open from many processes at once.

    MLflow creates a new SQLite store's tables when the first client opens it, without a
    lock: two processes doing so together (two `mrlfads train` started at once on a fresh
    project) collide and one dies with "duplicate column name". So a SQLite store is opened
    under an exclusive lock on ``<db>.lock`` beside it. Other stores are opened as MLflow
    opens them (a server migrates its store once, at its own start)."""
    from mlflow.tracking import MlflowClient

    with _opening(tracking_uri):
        return MlflowClient(tracking_uri, registry_uri=registry_uri)


@contextlib.contextmanager
def _opening(tracking_uri: str, timeout_s: float = 300.0):
    from filelock import FileLock, Timeout

    db = sqlite_path(tracking_uri)
    if db is None:
        yield
        return
    lock = FileLock(f"{db}.lock", timeout=timeout_s)
    try:
        lock.acquire()
        locked = True
    except Timeout:
        raise TrackingError(
            f"another process has held {lock.lock_file} for {timeout_s:.0f} s while opening "
            f"the tracking store {db}; retry when it is done, or pass --tracking-uri to use "
            "another store") from None
    except OSError:  # a store in a folder this user cannot write to: open it unlocked
        locked = False
    try:
        yield
    finally:
        if locked:
            lock.release()


def resolve_tracking_uri(flag: str | None = None) -> str:
    """The URI to use: the flag, then MLFLOW_TRACKING_URI, then the embedded default."""
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if "://" not in uri or scheme not in _SCHEMES:
        raise TrackingError(
            f"tracking URI {uri!r} is not understood: use sqlite:///path/to/mlflow.db, "
            "http://host:port (an MLflow server) or a database URI")
    return uri


def experiment_slug(name: str) -> str:
    """A file-system-safe folder name for an experiment's artifacts."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "experiment"


def ensure_experiment(client, name: str) -> str:
    """The id of experiment ``name``, created on first use (artifact root set for SQLite).

    Tolerates two processes creating it at once. ``client`` is an ``MlflowClient``.
    """
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    root = artifact_root_for(client.tracking_uri)
    location = Path(root, experiment_slug(name)).as_uri() if root else None
    try:
        return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
    except MlflowException:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id
