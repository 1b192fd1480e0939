"""Run a server so that it dies with the process that started it, whatever kills that one.

``python -m tracking.server_guard PARENT_PID -- CMD...`` runs CMD in the guard's process
group (the guard is its leader: ``start_new_session``). When the parent is gone (Linux tells
the guard at once through PR_SET_PDEATHSIG; elsewhere the guard notices within half a
second) or the guard is asked to stop, it kills its whole group: an ``mlflow server`` is ~9
processes, and after SIGTERM its workers otherwise outlive it by ~50 s or for good.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
GRACE_S = 3.0


def _die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the polling below still notices


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
    _die_with_parent()
    stop = []
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda s, f: stop.append(s))
    if os.getppid() != parent:  # the parent died before the prctl above
        return 1
    child = subprocess.Popen(cmd)
    while child.poll() is None:
        if stop or os.getppid() != parent:
            _end_group(child)
        time.sleep(0.5)
    return child.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
