"""Whether a sweep was interrupted, and which of its trials an interrupt cut short.

Tune's own record cannot tell. When a sweep is interrupted (Ctrl-C, or SIGTERM/SIGHUP,
which take Ctrl-C's path: training/signals.py), Tune stops the trials still running and
marks them TERMINATED, as if they had finished (Ray 2.60, ``ray/tune/tune.py``:
``runner.cleanup()``). Its saved state is no better: a trial that ends while it has no
live actor (one whose process died, or a PAUSED member stopped by the population plateau)
keeps the status it had at its last save. So the interrupt is recorded as it happens:
``InterruptWatch``, a Tune callback, wraps the SIGINT handler Tune installs for the run, and
``STOP_REQUESTED`` is set when that handler is called.

Imports Ray: import this module only after ``training.sweep.local_ray_on_loopback`` (a Ray
imported earlier binds to the machine's public address).
"""
from __future__ import annotations

import signal
import threading
from typing import Any

from ray import tune

# Set when a stop signal reaches the sweep driver while Tune runs (this process only).
STOP_REQUESTED = threading.Event()


class InterruptWatch(tune.Callback):
    """Records an interrupt of the Tune run it is a callback of (in ``STOP_REQUESTED``).

    Tune installs its SIGINT handler before it sets its callbacks up, so ``setup`` finds it
    and wraps it; Tune's handler then restores the one from before the run, wrapper and
    all. Stateless, so a resumed sweep's restored copy does the same."""

    def setup(self, **info: Any) -> None:
        STOP_REQUESTED.clear()
        if threading.current_thread() is not threading.main_thread():
            return  # Tune installs no handler off the main thread either
        tune_handler = signal.getsignal(signal.SIGINT)

        def record_then_stop(signum, frame):
            STOP_REQUESTED.set()
            if callable(tune_handler):
                return tune_handler(signum, frame)
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, record_then_stop)


def cut_short(result_metrics: dict[str, Any] | None) -> bool:
    """Whether a trial that did not fail, stopped by an interrupt, had not finished: its last
    result is not the one Tune marks ``done`` (the last epoch)."""
    return not (result_metrics or {}).get("done")
