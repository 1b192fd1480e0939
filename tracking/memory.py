"""In-memory tracker: the fake the contract test runs beside real MLflow, and the store the
unit tests inspect. Several trackers may share one ``MemoryStore`` (as several MLflow
clients share one server)."""
from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any

from mrlfads.tracking.errors import TrackingError
from mrlfads.tracking.interface import PARENT_TAG, Tracker, check_status, param_str


@dataclasses.dataclass
class MemoryRun:
    run_id: str
    name: str
    experiment: str
    status: str = "RUNNING"
    params: dict[str, str] = dataclasses.field(default_factory=dict)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    # key -> [(step, value), ...] in logging order (repeats and rewinds kept, like MLflow)
    metrics: dict[str, list[tuple[int, float]]] = dataclasses.field(default_factory=dict)
    artifacts: dict[str, str] = dataclasses.field(default_factory=dict)  # artifact path -> local
    inputs: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # datasets, once each

    def latest(self, key: str) -> float:
        """The value at the largest step (MLflow's "latest" metric)."""
        return max(self.metrics[key], key=lambda sv: sv[0])[1]


class MemoryStore:
    """Runs by id; what a test asserts against."""

    def __init__(self) -> None:
        self.runs: dict[str, MemoryRun] = {}

    def runs_in(self, experiment: str) -> list[MemoryRun]:
        return [r for r in self.runs.values() if r.experiment == experiment]


class InMemoryTracker(Tracker):
    """Keeps everything in a ``MemoryStore``; never fails for lack of a server."""

    def __init__(self, store: MemoryStore | None = None) -> None:
        self.store = store if store is not None else MemoryStore()
        self._run: MemoryRun | None = None

    @property
    def active_run_id(self) -> str | None:
        return self._run.run_id if self._run is not None else None

    def _active(self) -> MemoryRun:
        if self._run is None:
            raise TrackingError("no active run: call start_run(...) before logging")
        return self._run

    def start_run(self, name: str, *, experiment: str, tags: Mapping[str, str] | None = None,
                  parent_run_id: str | None = None, run_id: str | None = None) -> str:
        if self._run is not None:
            raise TrackingError(
                f"run {self._run.run_id} ({self._run.name!r}) is still active on this tracker: "
                "end_run() it first, or use another tracker for a second run")
        if run_id is not None:
            if run_id not in self.store.runs:
                raise TrackingError(f"run_id {run_id!r} does not exist; omit run_id to create a run")
            run = self.store.runs[run_id]
            run.status = "RUNNING"
        else:
            run = MemoryRun(run_id=uuid.uuid4().hex, name=name, experiment=experiment)
            run.tags["mlflow.runName"] = name
            self.store.runs[run.run_id] = run
        if parent_run_id is not None:
            run.tags[PARENT_TAG] = parent_run_id
        run.tags.update({k: param_str(v) for k, v in (tags or {}).items()})
        self._run = run
        return run.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        run = self._active()
        for key, value in params.items():
            new = param_str(value)
            old = run.params.get(key)
            if old is not None and old != new:
                raise TrackingError(
                    f"param {key!r} already logged as {old!r}, cannot change it to {new!r}: "
                    f"log changing values as metric 'hp/{key}'")
            run.params[key] = new

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        run = self._active()
        for key, value in metrics.items():
            run.metrics.setdefault(key, []).append((int(step), float(value)))

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        run = self._active()
        if not os.path.isfile(local_path):
            raise TrackingError(f"artifact {local_path!r} is not a file")
        name = os.path.basename(local_path)
        run.artifacts[f"{artifact_path}/{name}" if artifact_path else name] = local_path

    def log_input(self, dataset: Mapping[str, Any]) -> None:
        run = self._active()
        if not any((d["name"], d["digest"]) == (dataset["name"], dataset["digest"]) for d in run.inputs):
            run.inputs.append(dict(dataset))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._active().tags.update({k: param_str(v) for k, v in tags.items()})

    def end_run(self, status: str = "FINISHED") -> None:
        check_status(status)
        if self._run is None:
            return
        self._run.status = status
        self._run.tags.setdefault("mrlfads.end_time", str(time.time()))
        self._run = None
