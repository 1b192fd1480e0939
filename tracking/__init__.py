"""MLflow tracking: runs, metrics, figures, PBT lineage and the model registry.

Importing this package is cheap (no mlflow); the heavy parts load on use. A training run
logs through ``mrlfads.training.tracking_glue.open_run_tracker`` (an ``MlflowTracker``; nothing at
all with ``--no-tracking``), a sweep through ``mrlfads.tracking.tune_callback``.
"""
from __future__ import annotations

from mrlfads.tracking.errors import TrackingError
from mrlfads.tracking.interface import Tracker

__all__ = ["Tracker", "TrackingError"]
