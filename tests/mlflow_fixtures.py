"""Session-scoped MLflow fixtures: one SQLite store and one real ``mlflow server``.

Why session scope: the first use of a SQLite store runs migrations (~7.5 s) and a server
takes ~30 s to start here; every tracking test shares them (experiments keep tests apart).
Loaded through ``pytest_plugins`` in tests/conftest.py.
"""
from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def mlflow_sqlite_uri(tmp_path_factory) -> str:
    """``sqlite:///.../mlruns/mlflow.db`` with migrations already run."""
    from mlflow.tracking import MlflowClient

    from mrlfads.tracking.store import default_tracking_uri

    uri = default_tracking_uri(tmp_path_factory.mktemp("mlflow_sqlite"))
    MlflowClient(uri).search_experiments()  # runs the migrations once
    return uri


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 (free port) over its own SQLite store."""
    from mrlfads.tracking.server import start_server
    from mrlfads.tracking.store import artifact_root_for, default_tracking_uri

    uri = default_tracking_uri(tmp_path_factory.mktemp("mlflow_server"))
    handle = start_server(uri, artifact_root_for(uri))
    yield handle
    handle.stop()


@pytest.fixture
def experiment_name(request) -> str:
    """A fresh experiment name per test (shared stores, separate experiments)."""
    import uuid

    return f"{request.node.name[:40]}-{uuid.uuid4().hex[:6]}"


def rest(url: str, path: str, body=None, **query):
    """One call to a real MLflow server's REST API (GET with ``query``, POST with ``body``)."""
    full = f"{url}/api/2.0/mlflow/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(full, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"{}")
