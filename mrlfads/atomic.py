"""Atomic file writes: a reader, or a process killed mid-write, sees a file's old content or
its new content, never part of either.

Every file mrlfads writes whole (checkpoints, a run's config and metrics, dataset shards
and manifests, caches, reports, the tracking outbox, NWB results, the compiled loop) goes
through ``replacing``: the new content is written to a temporary sibling and moved onto the
final name with ``os.replace``, which is atomic within one folder. Lines appended to a log
(an epoch's metrics, a new outbox op) and the output folder ``infer`` swaps in
(training/infer_io.py) are not whole-file writes and keep their own rules. The temporary name says what it is
(``.NAME.tmp-PID-HEX``, ``TEMP_NAME_RE``), so a dataset folder that a killed write left
behind can be recognised (data_loaders/schema.py).
"""
from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

TEMP_NAME_RE = re.compile(r"^\.[^/]+\.tmp-[0-9]+-[0-9a-f]+$")


def temp_name(path: str | os.PathLike, suffix: str = "") -> Path:
    """A fresh temporary name beside ``path``: ``.NAME.tmp-PID-HEX`` and ``suffix`` (for a
    library that wants its own extension, as pynwb wants .nwb)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


@contextmanager
def replacing(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary name beside ``path`` for the caller (or a library such as pynwb or
    a compiler) to write; when the block ends normally that file replaces ``path``, when it
    raises the file is removed and ``path`` is untouched. Creates ``path``'s folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "w", *, private: bool = False
                ) -> Iterator[IO]:
    """``open(path, mode)`` ("w" or "wb") that publishes the file only when the block ends
    without error, after flushing it to disk. ``private`` creates it readable by its owner
    only (0600); otherwise it gets the umask's mode, as ``open`` would give it."""
    if mode not in ("w", "wb"):
        raise ValueError(f"open_atomic writes whole files: mode 'w' or 'wb', not {mode!r}")
    with replacing(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_atomic(path: str | os.PathLike, data: str | bytes | memoryview, *,
                 private: bool = False) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; returns the path."""
    with open_atomic(path, "w" if isinstance(data, str) else "wb", private=private) as f:
        f.write(data)
    return Path(path)
