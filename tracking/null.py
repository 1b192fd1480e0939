"""The tracker behind ``--no-tracking``: accepts every call, keeps nothing."""
from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from tracking.interface import Tracker, check_status


class NullTracker(Tracker):
    """Does nothing, quickly; ``start_run`` still returns an id so callers need no branches."""

    def __init__(self) -> None:
        self._run_id: str | None = None

    @property
    def active_run_id(self) -> str | None:
        return self._run_id

    def start_run(self, name: str, *, experiment: str, tags: Mapping[str, str] | None = None,
                  parent_run_id: str | None = None, run_id: str | None = None) -> str:
        self._run_id = run_id or f"null-{uuid.uuid4().hex}"
        return self._run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def end_run(self, status: str = "FINISHED") -> None:
        check_status(status)
        self._run_id = None
