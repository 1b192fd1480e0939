"""Which pid space this process lives in: a pid means one process only within it.

Two containers can share a host name (``--uts=host``, or a name set by hand) while each has
its own pid namespace; a pid alive in one is absent from the other. Code that judges a
process dead by its host name and pid (stale scratch folders, runs left RUNNING) must also
compare this, or one container would remove the other's live folders and end its live
runs. Linux: the boot id and the pid namespace's inode; elsewhere "" (a host has one pid
space).
"""
from __future__ import annotations

import functools
import hashlib
import os


@functools.cache
def pid_space() -> str:
    """A short id of this boot's pid namespace, "" where /proc does not say."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return hashlib.sha256(f"{boot}/{ns}".encode()).hexdigest()[:12]
