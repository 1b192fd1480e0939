"""The Tracker on MLflow, through ``MlflowClient`` only (never the fluent "active run").

Why the client API: a Tune driver holds a parent run and many trial runs at once, and a user
may already have a fluent run active; neither may be disturbed. Writes go out as
``log_batch`` (one request per epoch, ~100x faster than one ``log_metric`` per key) and
through an ``Outbox``, so an unreachable server queues them instead of raising.

For HTTP servers the client's own retries are shortened (env defaults
MLFLOW_HTTP_REQUEST_MAX_RETRIES=0, _TIMEOUT=10, _BACKOFF_FACTOR=1, set only if unset): the
outbox retries instead, so a dead server costs a training step milliseconds, not minutes.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from mrlfads.tracking.errors import TrackingError
from mrlfads.tracking.interface import PARENT_TAG, Tracker, check_status, param_str
from mrlfads.tracking.liveness import owner_tags
from mrlfads.tracking.outbox import Delivery, Outbox, is_outage, new_pending_key
from mrlfads.tracking.redact import redact_text, redact_uri
from mrlfads.tracking.store import mlflow_client, resolve_tracking_uri

log = logging.getLogger(__name__)
_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def _now_ms() -> int:
    return int(time.time() * 1000)


class MlflowTracker(Tracker):
    """One active MLflow run at a time; writes survive outages via the outbox.

    ``delivery`` may be shared between trackers (the Tune callback does) so that a parent
    run created during an outage is known to its children's trackers.
    """

    def __init__(self, tracking_uri: str | None = None, *, outbox_path: str | os.PathLike | None = None,
                 system_metrics: bool = False, delivery: Delivery | None = None) -> None:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        if delivery is None:
            uri = resolve_tracking_uri(tracking_uri)
            if uri.startswith(("http://", "https://")):
                for key, value in _HTTP_DEFAULTS.items():
                    os.environ.setdefault(key, value)
            delivery = Delivery(mlflow_client(uri))
        self.delivery = delivery
        # what ops, logs and messages show: never the credentials (tracking/redact.py)
        self.tracking_uri: str = redact_uri(delivery.client.tracking_uri)
        self.outbox = Outbox(outbox_path)
        self.system_metrics = system_metrics
        self._run_id: str | None = None
        self._experiment: str | None = None
        self._params: dict[str, str] = {}
        self._monitor = None

    # -- plumbing ---------------------------------------------------------------------
    @property
    def active_run_id(self) -> str | None:
        """The real run id, or the ``pending-...`` key of a run not yet created."""
        if self._run_id is not None:
            self._run_id = self.delivery.run_ids.get(self._run_id, self._run_id)
        return self._run_id

    def _submit(self, op: dict[str, Any]) -> None:
        """Send ``op`` after anything queued; queue it if the store is away."""
        op = dict(op, tracking_uri=self.tracking_uri, experiment=self._experiment)
        if self.outbox.pending:
            if not self.outbox.due():
                self.outbox.keep(op)
                return
            if not self.outbox.flush(self.delivery):
                self.outbox.keep(op)
                return
        try:
            self.delivery.send(op)
        except Exception as exc:
            if not is_outage(exc):
                raise TrackingError(f"MLflow refused {op['op']} on run {op.get('run')}: "
                                    f"{redact_text(str(exc))}") from exc
            log.warning("tracking store %s unreachable (%s); keeping %s in the outbox",
                        self.tracking_uri, type(exc).__name__, op["op"])
            self.outbox.failed()
            self.outbox.keep(op)

    def _active(self) -> str:
        if self._run_id is None:
            raise TrackingError("no active run: call start_run(...) before logging")
        return self.active_run_id  # type: ignore[return-value]

    def flush(self) -> bool:
        """Try to deliver the outbox now (ignoring backoff). True when nothing is left."""
        return not self.outbox.pending or self.outbox.flush(self.delivery)

    # -- Tracker ----------------------------------------------------------------------
    def start_run(self, name: str, *, experiment: str, tags: Mapping[str, str] | None = None,
                  parent_run_id: str | None = None, run_id: str | None = None) -> str:
        if self._run_id is not None:
            raise TrackingError(
                f"run {self.active_run_id} is still active on this tracker: end_run() it first, "
                "or use another tracker for a second run")
        self._experiment = experiment
        # host + pid of the process logging: a later process ends the run as KILLED once
        # that process is gone (tracking/liveness.py)
        str_tags = {**owner_tags(), **{k: param_str(v) for k, v in (tags or {}).items()}}
        if run_id is not None:
            self._run_id = run_id
            self._params = self._existing_params(run_id)
            self._submit({"op": "reopen_run", "run": run_id})
            if parent_run_id is not None:
                str_tags[PARENT_TAG] = parent_run_id
            if str_tags:
                self.set_tags(str_tags)
        else:
            key = new_pending_key()
            self._run_id, self._params = key, {}
            self._submit({"op": "create_run", "key": key, "name": name, "tags": str_tags,
                          "parent": parent_run_id, "start_time": _now_ms()})
        self._start_system_metrics(resume=run_id is not None)
        return self.active_run_id  # type: ignore[return-value]

    @property
    def logged_params(self) -> dict[str, str]:
        """The params the active run holds (a reopened run's earlier ones included)."""
        return dict(self._params)

    def _existing_params(self, run_id: str) -> dict[str, str]:
        try:
            real = self.delivery.resolve(run_id, self._experiment)
            return dict(self.delivery.client.get_run(real).data.params) if real else {}
        except Exception as exc:
            if not is_outage(exc):
                raise TrackingError(f"run_id {run_id!r} cannot be re-opened: {exc}") from exc
            return {}

    def _start_system_metrics(self, resume: bool) -> None:
        run_id = self.active_run_id
        if not self.system_metrics or run_id is None or run_id.startswith("pending-"):
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # the monitor announces its start, its stop and a GPU it did not find at INFO, four
        # lines around every run's own output; warnings still show, and a level set by the
        # user for this logger is kept
        quiet = logging.getLogger("mlflow.system_metrics")
        if quiet.level == logging.NOTSET:
            quiet.setLevel(logging.WARNING)
        try:
            self._monitor = SystemMetricsMonitor(run_id, resume_logging=resume,
                                                 tracking_uri=self.delivery.client.tracking_uri)
            self._monitor.start()
        except Exception as exc:
            log.warning("system metrics not started: %s", exc)
            self._monitor = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        run = self._active()
        new: dict[str, str] = {}
        for key, value in params.items():
            s = param_str(value)
            old = self._params.get(key)
            if old is not None and old != s:
                raise TrackingError(
                    f"param {key!r} already logged as {old!r}, cannot change it to {s!r}: "
                    f"log changing values as metric 'hp/{key}'")
            if old is None:
                new[key] = s
        self._params.update(new)
        items = list(new.items())
        for i in range(0, len(items), 100):
            self._submit({"op": "log_batch", "run": run, "params": dict(items[i:i + 100])})

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        run, ts = self._active(), _now_ms()
        rows = [[k, float(v), ts, int(step)] for k, v in metrics.items()]
        if rows:
            self._submit({"op": "log_batch", "run": run, "metrics": rows})

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        run = self._active()
        if not os.path.isfile(local_path):
            raise TrackingError(f"artifact {local_path!r} is not a file")
        self._submit({"op": "log_artifact", "run": run, "path": os.path.abspath(local_path),
                      "artifact_path": artifact_path})

    def log_input(self, dataset: Mapping[str, Any]) -> None:
        self._submit({"op": "log_inputs", "run": self._active(), "datasets": [dict(dataset)]})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        run = self._active()
        items = [(k, param_str(v)) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self._submit({"op": "log_batch", "run": run, "tags": dict(items[i:i + 100])})

    def end_run(self, status: str = "FINISHED") -> None:
        check_status(status)
        if self._run_id is None:
            return
        if self._monitor is not None:
            try:
                self._monitor.finish()
            except Exception as exc:
                log.warning("system metrics did not stop cleanly: %s", exc)
            self._monitor = None
        self._submit({"op": "end_run", "run": self._active(), "status": status, "end_time": _now_ms()})
        self._run_id, self._params = None, {}

    def close(self) -> None:
        """End an active run and make one last delivery attempt (the rest stays in the file)."""
        super().close()
        if self.outbox.pending and not self.flush():
            where = self.outbox.path or "memory only (no outbox path was given)"
            log.warning("%d tracking ops undelivered; kept in %s", len(self.outbox.pending), where)
