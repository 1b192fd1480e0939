"""Run a server so that it dies with the process that started it, whatever kills that one.

``python -m mrlfads.tracking.server_guard PARENT_PID -- CMD...`` runs CMD in the guard's process
group (the guard is its leader: ``start_new_session``). When the parent is gone (the guard
polls its parent pid twice a second) or the guard is asked to stop, it kills its whole
group: an ``mlflow server`` is ~9 processes, and after SIGTERM its workers otherwise outlive
it by ~50 s or for good. Linux's PR_SET_PDEATHSIG is not used: it fires when the *thread*
that started the guard ends, so a server started from a short-lived thread would die with
that thread while its process lives on.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

GRACE_S = 3.0


def _end_group(child: subprocess.Popen) -> None:
    """SIGTERM the group's other members, then SIGKILL every one left (the guard last)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(0, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        os.killpg(0, signal.SIGKILL)


def main(argv: list[str]) -> int:
    parent, cmd = int(argv[0]), argv[2:]
    assert argv[1] == "--" and cmd, "usage: server_guard PARENT_PID -- CMD..."
    stop = []
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda s, f: stop.append(s))
    if os.getppid() != parent:  # the parent died before the guard started
        return 1
    child = subprocess.Popen(cmd)
    while child.poll() is None:
        if stop or os.getppid() != parent:
            _end_group(child)
        time.sleep(0.5)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
