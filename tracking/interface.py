"""The small tracking interface the training loop and the Tune callback talk to.

Why an interface: the loop must run without MLflow (`--no-tracking`, unit tests) and must
never die because a tracking server is down. One tracker instance holds at most one active
run; code that needs several runs at once (the Tune callback) holds several trackers.

Contract (checked against every implementation by tests/test_tracking_contract.py):
- ``start_run`` creates a run in ``experiment`` (created on first use) and returns its id;
  ``run_id=`` re-opens an existing run instead (a resumed trial keeps its run); starting
  while this tracker already has an active run raises TrackingError.
- ``log_params`` may repeat a key with the same value; a different value raises
  TrackingError (MLflow forbids it): log changing hyperparameters as ``hp/<path>`` metrics.
- ``log_metrics`` accepts repeated and rewound steps (PBT restores rewind epochs).
- ``log_input`` records the run's dataset (tracking/inputs.py); the same dataset twice is
  once. Trackers that keep nothing may ignore it (the default).
- Nothing here touches MLflow's global "active run", so a run someone else started with
  ``mlflow.start_run()`` is left alone.
"""
from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
PARENT_TAG = "mlflow.parentRunId"


class Tracker(abc.ABC):
    """Start / log / end one run at a time."""

    @abc.abstractmethod
    def start_run(self, name: str, *, experiment: str, tags: Mapping[str, str] | None = None,
                  parent_run_id: str | None = None, run_id: str | None = None) -> str:
        """Create (or re-open with ``run_id``) a run and make it this tracker's active run."""

    @abc.abstractmethod
    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log constant parameters (values are stored as strings)."""

    @abc.abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log one value per key at ``step``; steps may repeat or go backwards."""

    @abc.abstractmethod
    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        """Copy a local file into the run's artifacts (under ``artifact_path``)."""

    @abc.abstractmethod
    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) tags on the active run."""

    def log_input(self, dataset: Mapping[str, Any]) -> None:
        """Record the dataset the active run reads (a ``mrlfads.tracking.inputs.dataset_input`` dict)."""

    @abc.abstractmethod
    def end_run(self, status: str = "FINISHED") -> None:
        """Close the active run with FINISHED, FAILED or KILLED; a no-op without one."""

    @property
    @abc.abstractmethod
    def active_run_id(self) -> str | None:
        """The id of the active run, or None."""

    def close(self) -> None:
        """Release resources (threads, files). Ends an active run as FINISHED."""
        if self.active_run_id is not None:
            self.end_run("FINISHED")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.active_run_id is not None:
            self.end_run("FAILED" if exc_type is not None else "FINISHED")
        self.close()


def check_status(status: str) -> str:
    """Validate an end-of-run status (a typo must not leave a run RUNNING forever)."""
    from mrlfads.tracking.errors import TrackingError

    if status not in RUN_STATUSES:
        raise TrackingError(f"end_run status {status!r} is not one of {RUN_STATUSES}")
    return status


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> dotted keys (config field paths), the form params and hp/ metrics use."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, prefix=f"{path}."))
        else:
            out[path] = value
    return out


def param_str(value: Any) -> str:
    """The string MLflow stores for a param value (so equality checks match MLflow's)."""
    return str(value)
