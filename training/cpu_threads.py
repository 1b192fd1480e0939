"""How many torch threads a command uses when it may share the CPU with other work.

torch's default is a thread per core, whose OpenMP threads spin while they wait. On cores
other processes keep busy, every parallel region then waits for a descheduled thread:
`mrlfads infer` of a 480-trial 4-region fit took 707 s beside two CPU-bound processes on a
2-core VM, 119-212 s with 1 thread, 80 s alone with 2 (docs/PERFORMANCE.md, "Threads and
OMP_WAIT_POLICY"). So ``--threads auto`` counts the cores other processes are using as
the command starts and takes the rest, at least one.
"""
from __future__ import annotations

import argparse
import os

import psutil

SAMPLE_S = 0.5  # how long the CPU's use is measured before choosing


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask, else every core)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def free_cpus(busy_percent: float | None = None, cpus: int | None = None) -> int:
    """The usable cores less those in use now (``psutil.cpu_percent`` over ``SAMPLE_S``,
    rounded to whole cores), at least 1."""
    cpus = usable_cpus() if cpus is None else cpus
    if busy_percent is None:
        busy_percent = psutil.cpu_percent(interval=SAMPLE_S)
    return max(1, cpus - round(busy_percent / 100.0 * cpus))


def parse_threads(text: str) -> int:
    """``--threads``: ``auto`` (0) or a count >= 1."""
    if text == "auto":
        return 0
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 1:
        raise argparse.ArgumentTypeError(f"--threads {text!r}: give auto or a number of "
                                         "threads >= 1")
    return value


def set_threads(threads: int) -> int:
    """torch's intra-op threads and every BLAS/OpenMP pool of the process (numpy's
    OpenBLAS: the metrics' regressions), to ``threads``, or ``free_cpus()`` for 0 (auto);
    returns the count."""
    import torch
    from threadpoolctl import threadpool_limits

    n = threads if threads > 0 else free_cpus()
    torch.set_num_threads(n)
    threadpool_limits(limits=n)
    return n


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=parse_threads, default=0, metavar="N|auto",
                   help="CPU threads (default auto: the cores not busy with other work as the "
                   "command starts, at least 1; spinning threads on busy cores run many "
                   "times slower)")
