"""What a single `mrlfads train` run records in MLflow: config, data, code revision.

Sweeps log through the Tune callback in tracking/; this is the one-run path, through the
same Tracker interface (so a tracking outage queues metrics instead of stopping training).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mrlfads.tracking.interface import Tracker, flatten, param_str

RUN_FILE = "tracking.json"  # in the run directory: which MLflow run --resume reopens


def open_run_tracker(experiment: str, run_name: str, run_cfg: Any, manifest: Any,
                     tracking_uri: str | None = None, out_dir: str | Path | None = None,
                     resume: bool = False) -> Tracker:
    """Start an MLflow run for one training run and log its config and dataset manifest,
    with the data named by folder name and manifest digest (``data.digest``), not its path.

    The run id is kept in ``out_dir/tracking.json``; ``resume`` reopens that run (a run
    killed with SIGKILL included) instead of starting a second one. Runs of this host whose
    process is gone are ended as KILLED first (tracking/liveness.py)."""
    from mrlfads.tracking.errors import TrackingError
    from mrlfads.tracking.inputs import dataset_input
    from mrlfads.tracking.liveness import end_dead_runs
    from mrlfads.tracking.mlflow_tracker import MlflowTracker
    from mrlfads.tracking.outbox import is_outage
    from mrlfads.tracking.revision import revision_tags
    from mrlfads.tracking.shareable import (
        DIGEST_PARAM,
        DIGEST_TAG,
        manifest_digest,
        shared_manifest,
        shared_run_config,
    )

    outbox = Path(out_dir) / "outbox.jsonl" if out_dir is not None else None
    tracker = MlflowTracker(tracking_uri, outbox_path=outbox, system_metrics=True)
    try:
        end_dead_runs(tracker.delivery.client)
    except Exception as exc:
        if not is_outage(exc):
            raise
    # what leaves the machine names the data by folder name + manifest digest, never by a
    # local path (tracking/shareable.py); the run directory's checkpoints keep the real path
    shared_cfg = shared_run_config(run_cfg.to_dict())
    digest = manifest_digest(manifest.to_dict())
    tags = {"mrlfads.kind": "train", "mrlfads.dataset": manifest.name, DIGEST_TAG: digest,
            **revision_tags()}
    earlier = _saved_run(out_dir, tracker.tracking_uri) if resume else None
    try:
        tracker.start_run(run_name, experiment=experiment, tags=tags, run_id=earlier)
    except TrackingError as exc:
        print(f"note: cannot reopen MLflow run {earlier} ({exc}); starting a new run")
        tracker = MlflowTracker(tracking_uri, outbox_path=outbox, system_metrics=True)
        tracker.start_run(run_name, experiment=experiment, tags=tags)
    save_run_id(tracker, out_dir)
    flat = {**flatten(shared_cfg), DIGEST_PARAM: digest}
    old = tracker.logged_params
    changed = {k: v for k, v in flat.items() if k in old and old[k] != param_str(v)}
    if changed:  # params cannot change: what --resume --set changed goes in a tag
        tracker.set_tags({"mrlfads.resumed_with": json.dumps(changed, default=str)})
    tracker.log_params({k: v for k, v in flat.items() if k not in changed})
    tracker.log_input(dataset_input(manifest.to_dict(), run_cfg.data.uri))
    with tempfile.TemporaryDirectory() as tmp:
        for name, payload in (("run_config.json", shared_cfg),
                              ("dataset.json", shared_manifest(manifest.to_dict()))):
            path = Path(tmp) / name
            path.write_text(json.dumps(payload, indent=2))
            tracker.log_artifact(str(path))
    return tracker


def save_run_id(tracker: Tracker, out_dir: str | Path | None) -> None:
    """Write the active run's id (resolved once the store has it) to ``out_dir``."""
    run_id = getattr(tracker, "active_run_id", None)
    if out_dir is None or run_id is None:
        return
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path = Path(out_dir) / RUN_FILE
    path.write_text(json.dumps({"run_id": run_id,
                                "tracking_uri": getattr(tracker, "tracking_uri", None)}))


def _saved_run(out_dir: str | Path | None, tracking_uri: str) -> str | None:
    """The run id saved by an earlier run of ``out_dir`` on the same store, else None."""
    path = Path(out_dir) / RUN_FILE if out_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved.get("run_id") if saved.get("tracking_uri") == tracking_uri else None
