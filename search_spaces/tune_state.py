"""What Tune saved of a sweep: each trial's status in the experiment state on storage.

Why not the trials Tune returns, or those its callbacks see at the end: when a sweep is
interrupted (Ctrl-C, SIGTERM), Tune first saves its state, with the trials still running
as RUNNING, and then stops them, which marks them TERMINATED in memory only (Ray 2.60,
``ray/tune/tune.py``: ``runner.checkpoint(force=True)``, then ``runner.cleanup()``). The
saved state is what ``--resume`` reads and runs on; it tells a sweep that finished from one
that was stopped.
"""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)

ENDED = ("TERMINATED", "ERROR")  # statuses of trials that will not run again


def saved_trial_statuses(experiment_path: str) -> dict[str, str]:
    """Tune trial id -> status in the experiment state saved at ``experiment_path`` (local
    or remote); {} where no state can be read."""
    from ray.tune import ExperimentAnalysis

    try:
        return {t.trial_id: str(t.status) for t in ExperimentAnalysis(experiment_path).trials}
    except Exception as exc:  # noqa: BLE001 - no state, or one Tune cannot read: no statuses
        log.warning("could not read the saved state of %s: %s", experiment_path, exc)
        return {}


def unfinished(statuses: dict[str, str]) -> int:
    """Trials that ``--resume`` would run on (neither TERMINATED nor ERROR)."""
    return sum(s not in ENDED for s in statuses.values())
