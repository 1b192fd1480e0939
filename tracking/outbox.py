"""Keep tracking calls that could not be delivered, and deliver them later.

Why: a tracking outage must never kill training. Every MLflow write is an *op* (a JSON-able
dict). An op that fails for lack of a server is kept in memory and appended to a JSON-lines
outbox file (next to the checkpoint / in the trial dir); the next log call retries the queue
with exponential backoff, in order. If the process ends first, ``import_outbox(path)``
(``mrlfads import-metrics FILE``) delivers the file later.

Runs created during an outage get a ``pending-<uuid>`` key; the run is created with the tag
``mrlfads.local_key`` so a key resolves to its real run in any process, and re-delivering a
``create_run`` never makes a second run. MLflow's SQL store ignores a metric it already has
(same key, step, timestamp, value), so re-delivery does not duplicate metrics either.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mrlfads.atomic import write_atomic
from mrlfads.tracking.errors import TrackingError
from mrlfads.tracking.redact import redact_uri, same_store_from_env

LOCAL_KEY_TAG = "mrlfads.local_key"
PENDING_PREFIX = "pending-"
# MLflow error codes that mean "your request is wrong", not "the server is away".
_CLIENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                  "BAD_REQUEST", "INVALID_STATE", "MALFORMED_REQUEST", "PERMISSION_DENIED"}
MAX_METRICS, MAX_PARAMS, MAX_TAGS = 1000, 100, 100  # MLflow's log_batch limits


def new_pending_key() -> str:
    return f"{PENDING_PREFIX}{uuid.uuid4().hex}"


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` means the store is unreachable/unwell (retry later), not a bad call."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code not in _CLIENT_ERRORS
    return isinstance(exc, Exception)


class Delivery:
    """Sends ops through one MlflowClient, resolving pending run keys to real run ids."""

    def __init__(self, client) -> None:
        self.client = client
        self.run_ids: dict[str, str] = {}   # pending key -> real run id
        self._experiments: dict[str, str] = {}

    def experiment_id(self, name: str) -> str:
        from mrlfads.tracking.store import ensure_experiment

        if name not in self._experiments:
            self._experiments[name] = ensure_experiment(self.client, name)
        return self._experiments[name]

    def resolve(self, key: str | None, experiment: str | None = None) -> str | None:
        """Real run id for ``key`` (a run id or a pending key); None if not created yet."""
        if key is None or not key.startswith(PENDING_PREFIX):
            return key
        if key in self.run_ids:
            return self.run_ids[key]
        exp_ids = [self.experiment_id(experiment)] if experiment else [
            e.experiment_id for e in self.client.search_experiments()]
        runs = self.client.search_runs(exp_ids, f"tags.`{LOCAL_KEY_TAG}` = '{key}'", max_results=1)
        if runs:
            self.run_ids[key] = runs[0].info.run_id
            return self.run_ids[key]
        return None

    def send(self, op: dict[str, Any]) -> None:
        """Deliver one op; raises whatever MLflow raises."""
        from mlflow.entities import Metric, Param, RunTag

        kind = op["op"]
        if kind == "create_run":
            if self.resolve(op["key"], op["experiment"]) is not None:
                return  # delivered before (e.g. a retry after a timeout)
            tags = dict(op.get("tags") or {})
            parent = self.resolve(op.get("parent"), op["experiment"])
            if parent is not None:
                tags["mlflow.parentRunId"] = parent
            tags[LOCAL_KEY_TAG] = op["key"]
            run = self.client.create_run(self.experiment_id(op["experiment"]), run_name=op["name"],
                                         tags=tags, start_time=op.get("start_time"))
            self.run_ids[op["key"]] = run.info.run_id
            return
        run_id = self.resolve(op["run"], op.get("experiment"))
        if run_id is None:
            raise TrackingError(f"outbox op for run {op['run']} comes before its create_run op")
        if kind == "log_batch":
            metrics = [Metric(k, float(v), int(ts), int(step)) for k, v, ts, step in op.get("metrics", [])]
            params = [Param(k, v) for k, v in (op.get("params") or {}).items()]
            tags = [RunTag(k, v) for k, v in (op.get("tags") or {}).items()]
            for i in range(0, max(len(metrics), 1), MAX_METRICS):
                self.client.log_batch(run_id, metrics=metrics[i:i + MAX_METRICS],
                                      params=params if i == 0 else [], tags=tags if i == 0 else [])
        elif kind == "log_artifact":
            self.client.log_artifact(run_id, op["path"], op.get("artifact_path"))
        elif kind == "log_inputs":
            self.client.log_inputs(run_id, datasets=[_dataset_input(d) for d in op["datasets"]])
        elif kind == "end_run":
            self.client.set_terminated(run_id, status=op["status"], end_time=op.get("end_time"))
        elif kind == "reopen_run":
            self.client.update_run(run_id, status="RUNNING")
        else:
            raise TrackingError(f"unknown outbox op {kind!r}")


def _dataset_input(d: dict[str, Any]):
    """A tracking/inputs.py dict as MLflow's DatasetInput (its context as the input tag)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from mrlfads.tracking.inputs import CONTEXT_TAG

    ds = Dataset(d["name"], d["digest"], d["source_type"], d["source"], d.get("schema"),
                 d.get("profile"))
    return DatasetInput(ds, [InputTag(CONTEXT_TAG, d["context"])] if d.get("context") else [])


class Outbox:
    """The queue of undelivered ops, mirrored in a JSON-lines file (if a path is given)."""

    def __init__(self, path: str | os.PathLike | None = None, *, base_delay_s: float = 1.0,
                 max_delay_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path) if path is not None else None
        self.pending: list[dict[str, Any]] = []
        self.base_delay_s, self.max_delay_s, self.clock = base_delay_s, max_delay_s, clock
        self.failures = 0
        self.next_try = 0.0

    def due(self) -> bool:
        """Whether enough time has passed since the last failure to try the server again."""
        return self.clock() >= self.next_try

    def failed(self) -> None:
        self.failures += 1
        delay = min(self.max_delay_s, self.base_delay_s * 2 ** (self.failures - 1))
        self.next_try = self.clock() + delay

    def keep(self, op: dict[str, Any]) -> None:
        """Queue ``op`` and append it to the file (artifacts copied beside it first)."""
        if op["op"] == "log_artifact":  # the caller may delete its file (a temp dir) right after
            if self.path is not None:
                base = self.path.with_name(self.path.name + ".files")
            else:
                base = Path(tempfile.gettempdir(), "mrlfads-outbox-files")
            store = base / uuid.uuid4().hex
            store.mkdir(mode=0o700, parents=True, exist_ok=True)
            op = dict(op, path=shutil.copy2(op["path"], store))
        self.pending.append(op)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with _private_open(self.path, "a") as f:
                f.write(json.dumps(op) + "\n")

    def flush(self, delivery: Delivery) -> bool:
        """Send the queue in order; stop at the first outage. True when it is empty."""
        sent = 0
        try:
            for op in self.pending:
                delivery.send(op)
                sent += 1
        except Exception as exc:
            if not is_outage(exc):
                bad = self.pending[sent]
                self._drop(sent + 1, delivery)  # a bad op would block the queue forever
                raise TrackingError(f"tracking store refused {bad['op']} ({exc}); "
                                    "the op was dropped") from exc
            self._drop(sent, delivery)
            self.failed()
            return False
        self._drop(sent, delivery)
        self.failures, self.next_try = 0, 0.0
        return True

    def _drop(self, sent: int, delivery: Delivery) -> None:
        """Forget the first ``sent`` ops and rewrite the file with the rest (ids resolved)."""
        if sent == 0:
            return
        self.pending = [_with_resolved_ids(op, delivery) for op in self.pending[sent:]]
        if self.path is None:
            return
        if not self.pending:
            self.path.unlink(missing_ok=True)
            return
        write_atomic(self.path, "".join(json.dumps(op) + "\n" for op in self.pending),
                     private=True)


def _private_open(path: Path, mode: str):
    """Open for writing, creating the file readable by its owner only (0600): the ops hold
    run names, params and paths that are nobody else's business."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)  # a file left by an older version may be world-readable
    return os.fdopen(fd, mode, encoding="utf-8")


def _with_resolved_ids(op: dict[str, Any], delivery: Delivery) -> dict[str, Any]:
    out = dict(op)
    for field in ("run", "parent"):
        if out.get(field) in delivery.run_ids:
            out[field] = delivery.run_ids[out[field]]
    return out


def read_outbox(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Parse an outbox file; errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise TrackingError(f"outbox file {str(p)!r} does not exist")
    ops = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            op = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrackingError(f"{p}:{n}: not a JSON outbox line ({exc.msg}); "
                                "was the file truncated? delete that line and retry") from None
        if not isinstance(op, dict) or "op" not in op:
            raise TrackingError(f"{p}:{n}: not an outbox op (no 'op' field)")
        ops.append(op)
    return ops


def import_outbox(path: str | os.PathLike, tracking_uri: str | None = None) -> int:
    """Deliver an outbox file; returns how many ops were delivered.

    The URI recorded in the ops is used unless ``tracking_uri`` is given. Delivered ops are
    removed from the file (the file is deleted when empty), so importing twice is harmless.
    """
    from mrlfads.tracking.store import mlflow_client

    ops = read_outbox(path)
    if not ops:
        Path(path).unlink(missing_ok=True)
        return 0
    uri = tracking_uri or same_store_from_env(ops[0].get("tracking_uri"))
    if not uri:
        raise TrackingError(f"{path}: no tracking URI recorded; pass --tracking-uri")
    box = Outbox(path)
    box.pending = ops
    delivery = Delivery(mlflow_client(uri))
    if not box.flush(delivery):
        done = len(ops) - len(box.pending)
        raise TrackingError(f"{path}: delivered {done} of {len(ops)} ops, then "
                            f"{redact_uri(uri)} stopped answering; start the tracking server "
                            "and run the import again")
    return len(ops)

