"""Scratch folders that outlive no process for long.

``tempfile.TemporaryDirectory`` removes its folder only when its process lives to leave the
``with``. A Ray trial killed by a node failure or an OOM kill, or a driver stopped with
SIGKILL, leaves its folders behind (checkpoint copies: a model's size each). Folders made
here carry the host and the process id in their names, and making one first removes this
user's folders of the same prefix whose process, on this host, no longer runs.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from pathlib import Path

import psutil

from mrlfads.pid_space import pid_space


def _host() -> str:
    """This host's name as a folder name can hold it, and its pid space (mrlfads/pid_space.py):
    containers that share a /tmp, even under one host name, never judge each other's pids."""
    name = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
    space = pid_space()
    return f"{name}_{space}" if space else name


def remove_stale(prefix: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Remove ``<root>/<prefix><host>-<pid>-*`` folders of this user and host whose process
    has ended; returns them. Folders of other hosts, users or live processes are kept."""
    root = Path(root if root is not None else tempfile.gettempdir())
    pattern = re.compile(re.escape(f"{prefix}{_host()}-") + r"(\d+)-")
    removed = []
    for path in root.glob(f"{prefix}*"):
        match = pattern.match(path.name)
        if match is None or path.is_symlink() or not path.is_dir():
            continue
        try:
            if hasattr(os, "getuid") and path.stat().st_uid != os.getuid():
                continue
        except OSError:  # gone meanwhile
            continue
        if psutil.pid_exists(int(match[1])):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def scratch_dir(prefix: str, root: str | os.PathLike | None = None
                ) -> tempfile.TemporaryDirectory:
    """A ``TemporaryDirectory`` named ``<prefix><host>-<pid>-XXXX``, made after
    ``remove_stale(prefix)``."""
    remove_stale(prefix, root)
    return tempfile.TemporaryDirectory(prefix=f"{prefix}{_host()}-{os.getpid()}-", dir=root)
