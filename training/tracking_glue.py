"""What a single `mrlfads train` run records in MLflow: config, data, code revision.

Sweeps log through the Tune callback in tracking/; this is the one-run path, through the
same Tracker interface (so a tracking outage queues metrics instead of stopping training).
"""
from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tracking.interface import Tracker, flatten


def git_revision(cwd: str | Path | None = None) -> str:
    """The current commit (with ``-dirty`` when the tree has changes), or ``unknown``."""
    here = Path(cwd or Path(__file__).resolve().parent)
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def open_run_tracker(experiment: str, run_name: str, run_cfg: Any, manifest: Any,
                     tracking_uri: str | None = None, out_dir: str | Path | None = None) -> Tracker:
    """Start an MLflow run for one training run and log its config and dataset manifest."""
    from tracking.mlflow_tracker import MlflowTracker

    outbox = Path(out_dir) / "outbox.jsonl" if out_dir is not None else None
    tracker = MlflowTracker(tracking_uri, outbox_path=outbox, system_metrics=True)
    tracker.start_run(run_name, experiment=experiment,
                      tags={"mrlfads.kind": "train", "mrlfads.git_revision": git_revision(),
                            "mrlfads.dataset": manifest.name})
    tracker.log_params(flatten(run_cfg.to_dict()))
    with tempfile.TemporaryDirectory() as tmp:
        for name, payload in (("run_config.json", run_cfg.to_dict()),
                              ("dataset.json", manifest.to_dict())):
            path = Path(tmp) / name
            path.write_text(json.dumps(payload, indent=2))
            tracker.log_artifact(str(path))
    return tracker
