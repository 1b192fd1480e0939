"""`mrlfads ui`: the MLflow UI over the project's tracking store, on 127.0.0.1."""
from __future__ import annotations

import argparse
import time

NAME = "ui"
HELP = "start the MLflow UI over the project's tracking store and print its address"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; others expose runs to the network)")
    p.add_argument("--tracking-uri", help="store to show (default: MLFLOW_TRACKING_URI, else "
                   "sqlite under $MRLFADS_HOME or the current directory)")


def run(args: argparse.Namespace) -> int:
    from mrlfads.tracking.errors import TrackingError
    from mrlfads.tracking.redact import redact_uri
    from mrlfads.tracking.server import start_server
    from mrlfads.tracking.store import artifact_root_for, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    _end_dead_runs(uri)
    if uri.startswith(("http://", "https://")):
        print(f"the tracking store is already a server: open {redact_uri(uri)}")
        return 0
    root = artifact_root_for(uri)
    if root is None:
        raise TrackingError(f"mrlfads ui serves local SQLite stores; for {uri} run "
                            "`mlflow server --backend-store-uri ...` yourself")
    print(f"starting the MLflow UI over {uri} (about 30 s)...", flush=True)
    server = start_server(uri, root, host=args.host, port=args.port)
    print(f"MLflow UI: {server.url}  (Ctrl-C stops it)", flush=True)
    try:
        while server.process.poll() is None:
            time.sleep(1)
        raise TrackingError(f"the MLflow UI exited (code {server.process.returncode}); "
                            f"its log: {server.log_path}")
    finally:
        server.stop()


def _end_dead_runs(uri: str) -> None:
    """Runs left RUNNING by a process that is gone show as KILLED (tracking/liveness.py)."""
    from mrlfads.tracking.liveness import end_dead_runs
    from mrlfads.tracking.outbox import is_outage
    from mrlfads.tracking.store import mlflow_client

    try:
        ended = end_dead_runs(mlflow_client(uri))
    except Exception as exc:
        if not is_outage(exc):
            raise
        return
    if ended:
        print(f"{len(ended)} run(s) whose process is gone are now KILLED")
