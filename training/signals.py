"""SIGTERM and SIGHUP take the path Ctrl-C takes: SIGINT's handler, a KeyboardInterrupt.

Why: `kill PID`, a closed terminal or a job scheduler's stop must still end MLflow runs as
KILLED, stop the servers the CLI started and let Tune save its state; with Python's default
handlers those processes die without running a single ``finally``.
"""
from __future__ import annotations

import signal
import threading

SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None))
                if s is not None)


def _interrupt(signum, frame):
    """Do what Ctrl-C would do now: call the SIGINT handler in place (Tune's stops a sweep
    gracefully and saves its state), else raise KeyboardInterrupt."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not _interrupt:
        return handler(signal.SIGINT, frame)
    raise KeyboardInterrupt(f"{signal.Signals(signum).name} received")


def interrupt_on_termination() -> bool:
    """Install the handlers (main thread only); True when they are in place."""
    if threading.current_thread() is not threading.main_thread():
        return False
    for sig in SIGNALS:
        signal.signal(sig, _interrupt)
    return True


def installed() -> bool:
    return bool(SIGNALS) and signal.getsignal(SIGNALS[0]) is _interrupt
