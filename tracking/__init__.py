"""MLflow tracking: runs, metrics, figures, PBT lineage and the model registry.

Importing this package is cheap (no mlflow); the heavy parts load on use. The training loop
gets its tracker from ``make_tracker``:

    tracker = make_tracker(enabled=not args.no_tracking, tracking_uri=args.tracking_uri,
                           outbox_path=run_dir / "tracking-outbox.jsonl")
"""
from __future__ import annotations

import os

from tracking.errors import TrackingError
from tracking.interface import Tracker

__all__ = ["Tracker", "TrackingError", "make_tracker"]


def make_tracker(*, enabled: bool = True, tracking_uri: str | None = None,
                 outbox_path: str | os.PathLike | None = None, system_metrics: bool = True) -> Tracker:
    """A NullTracker when tracking is off, else an MlflowTracker over the resolved store."""
    if not enabled:
        from tracking.null import NullTracker

        return NullTracker()
    from tracking.mlflow_tracker import MlflowTracker

    return MlflowTracker(tracking_uri, outbox_path=outbox_path, system_metrics=system_metrics)
