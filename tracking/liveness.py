"""Which process owns a RUNNING run, and ending runs whose process is gone as KILLED.

Why: a process killed with SIGKILL (or a machine that lost power) cannot end its MLflow run,
which would then show RUNNING for ever. Every run a Tracker starts or reopens is tagged with
the host, pid and start time of the process logging to it; whoever opens the store next
(`mrlfads ui`, `mrlfads train`) ends the runs of this host whose process no longer exists.
Runs of other hosts, or of another pid namespace under the same host name (a container:
mrlfads/pid_space.py), are left alone: nobody here can tell whether their process lives.
"""
from __future__ import annotations

import logging
import os
import socket

from mrlfads.pid_space import pid_space

HOST_TAG, PID_TAG, STARTED_TAG = "mrlfads.host", "mrlfads.pid", "mrlfads.pid_started"
PID_SPACE_TAG = "mrlfads.pid_space"
log = logging.getLogger(__name__)


def _started(pid: int) -> str | None:
    """The process's start time as a string (tells a reused pid apart), None if gone."""
    import psutil

    try:
        return f"{psutil.Process(pid).create_time():.2f}"
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return None


def owner_tags() -> dict[str, str]:
    """The tags that name this process as the one logging to a run."""
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()),
            STARTED_TAG: _started(os.getpid()) or ""}
    return {**tags, PID_SPACE_TAG: pid_space()} if pid_space() else tags


def is_alive(tags: dict[str, str]) -> bool | None:
    """Whether the run's process lives; None when this process cannot tell (other host or
    pid namespace, no tags). Runs tagged before the pid space was count as this one's."""
    if tags.get(HOST_TAG) != socket.gethostname() or not tags.get(PID_TAG, "").isdigit():
        return None
    if tags.get(PID_SPACE_TAG, pid_space()) != pid_space():
        return None
    started = _started(int(tags[PID_TAG]))
    return started is not None and started == tags.get(STARTED_TAG, started)


def end_dead_runs(client) -> list[str]:
    """Set every RUNNING run of this host whose process is gone to KILLED; returns their ids.

    ``client`` is an MlflowClient. Runs without owner tags (other tools) are left alone.
    """
    from mlflow.entities import ViewType

    exp_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    if not exp_ids:
        return []
    where = f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{socket.gethostname()}'"
    ended = []
    for run in client.search_runs(exp_ids, where, max_results=5000):
        if is_alive(run.data.tags) is False:
            client.set_tag(run.info.run_id, "mrlfads.ended_by", "its process was gone")
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    if ended:
        log.warning("marked %d run(s) KILLED: their process is gone (%s)", len(ended),
                    ", ".join(ended))
    return ended
