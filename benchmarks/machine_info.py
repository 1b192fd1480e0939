"""The machine a benchmark ran on, in one line, for docs/PERFORMANCE.md's tables.

Every benchmark names its machine the same way, so numbers from different scripts can be
matched to one machine. Imported by the scripts in this folder (run as
``python benchmarks/NAME.py``, which puts this folder on sys.path).
"""
from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or what the platform module knows elsewhere."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def describe(versions: bool = False) -> str:
    """'<CPU model>, <n> cores, <m> GiB RAM' (and Python's and torch's versions)."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    out = f"{cpu_model()}, {os.cpu_count()} cores, {ram:.0f} GiB RAM"
    if versions:
        import torch

        out += f", Python {platform.python_version()}, torch {torch.__version__}"
    return out
