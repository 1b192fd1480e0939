"""Deterministic fault injection for the fault tests; does nothing unless MRLFADS_FAULT is set.

Why: a test that kills a process after a sleep, or after polling for a file, kills it at
a different point each run. Here the process that must fail kills itself at a point named
in the environment, so every run fails at the same epoch or checkpoint count.

``MRLFADS_FAULT`` holds one or more faults separated by ``;``, each ``KIND:KEY=VALUE,...``:

``signal-epoch:epoch=N[,signal=KILL][,trial=NNNNN][,times=1]``
    The training process (``mrlfads train``, or a sweep trial) sends itself ``signal``
    (KILL, TERM, INT or HUP) as epoch N begins: epochs 1..N-1 are finished, written and
    reported, epoch N has not started. ``trial=00001`` limits it to the sweep trial whose
    id ends in ``_00001`` (Tune numbers trials in the order it creates them). ``times``:
    how many times it fires for one run or trial, so that a trial restarted from its
    checkpoint goes on: a file ``mrlfads-fault-<i>`` (``i``: the fault's place in the list)
    counts them, in the run directory for ``train`` and in ``<tmp>/mrlfads-faults/<trial
    id>`` on the trial's node for a trial (Ray gives a trial a different directory when it
    reuses a process, and Tune's trial ids are new in every sweep).

``kill-driver:checkpoints=N[,signal=KILL]``
    The sweep driver sends itself ``signal`` (default KILL; TERM, INT or HUP take the
    Ctrl-C path: Tune stops the sweep and saves its state) once, when Tune has saved its
    experiment state with at least N distinct trial checkpoints registered: at the next
    save after that one (Tune saves every ``TUNE_GLOBAL_CHECKPOINT_S`` = 2 s), so that the
    saved state has had that long to reach the storage path. It prints one line first: how
    many checkpoints that state holds and each trial's newest (the one ``--resume``
    restarts it from, once the state is on storage: Tune copies it there from a staging
    folder in a background thread, which on a loaded machine can lag behind, so storage
    may hold an earlier save or the one the driver died in).

A sweep passes the variable to its trials through Ray's runtime environment (``init_ray``),
so it reaches trial processes on every node. A bad value is an error naming the variable
(exit 2); a valid one is announced on stderr when a command starts.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mrlfads.atomic import write_atomic

ENV = "MRLFADS_FAULT"
MARKER = "mrlfads-fault-{}"  # per fault in the list: how often it fired here
SIGNALS = {name: getattr(signal, f"SIG{name}") for name in ("KILL", "TERM", "INT", "HUP")
           if hasattr(signal, f"SIG{name}")}  # Windows has no SIGKILL or SIGHUP


class FaultError(ValueError):
    """MRLFADS_FAULT does not parse; the message shows the grammar."""


@dataclass(frozen=True)
class EpochSignal:
    epoch: int
    signal: str = "KILL"
    trial: str | None = None
    times: int = 1


@dataclass(frozen=True)
class KillDriver:
    checkpoints: int
    signal: str = "KILL"


Fault = EpochSignal | KillDriver
_GRAMMAR = ("signal-epoch:epoch=N[,signal=KILL|TERM|INT|HUP][,trial=NNNNN][,times=K] or "
            "kill-driver:checkpoints=N[,signal=KILL|TERM|INT|HUP], several separated by ';'")


def _positive(kind: str, key: str, value: str) -> int:
    if not re.fullmatch(r"\d+", value) or int(value) < 1:
        raise FaultError(f"{ENV}: {kind} {key}={value!r} must be a whole number >= 1 ({_GRAMMAR})")
    return int(value)


def _signal(opts: dict[str, str]) -> str:
    sig = opts.get("signal", "KILL").upper().removeprefix("SIG")
    if sig not in SIGNALS:
        raise FaultError(f"{ENV}: signal={opts['signal']!r} is not one of {sorted(SIGNALS)}")
    return sig


def _one(text: str) -> Fault:
    kind, _, rest = text.strip().partition(":")
    opts = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise FaultError(f"{ENV}: {item!r} in {text!r} is not KEY=VALUE ({_GRAMMAR})")
        opts[key.strip()] = value.strip()
    if kind == "signal-epoch":
        unknown = set(opts) - {"epoch", "signal", "trial", "times"}
        if unknown or "epoch" not in opts:
            raise FaultError(f"{ENV}: {text!r} needs epoch= and takes only signal=, trial=, "
                             f"times= ({_GRAMMAR})")
        sig = _signal(opts)
        trial = opts.get("trial")
        if trial is not None and not re.fullmatch(r"\d{5}", trial):
            raise FaultError(f"{ENV}: trial={trial!r} must be Tune's 5-digit trial number, "
                             "e.g. 00001")
        return EpochSignal(_positive(kind, "epoch", opts["epoch"]), sig, trial,
                           _positive(kind, "times", opts.get("times", "1")))
    if kind == "kill-driver":
        if "checkpoints" not in opts or set(opts) - {"checkpoints", "signal"}:
            raise FaultError(f"{ENV}: {text!r} needs checkpoints= and takes only signal= "
                             f"({_GRAMMAR})")
        return KillDriver(_positive(kind, "checkpoints", opts["checkpoints"]), _signal(opts))
    raise FaultError(f"{ENV}: unknown fault {kind!r} in {text!r} ({_GRAMMAR})")


def parse(text: str | None) -> list[Fault]:
    """The faults in ``text`` (the variable's value); [] when unset or empty."""
    return [_one(part) for part in (text or "").split(";") if part.strip()]


def active() -> list[Fault]:
    return parse(os.environ.get(ENV))


def announce() -> list[Fault]:
    """Check the variable (FaultError if it does not parse) and say on stderr what is armed."""
    faults = active()
    if faults:
        print(f"note: {ENV}={os.environ[ENV]!r}: this run will kill itself on purpose "
              "(fault injection for tests; unset it for real work)", file=sys.stderr, flush=True)
    return faults


def worker_env() -> dict[str, str]:
    """What a sweep hands its Ray workers so that trial faults reach them: {} when unset."""
    value = os.environ.get(ENV, "").strip()
    return {ENV: value} if value else {}


def _fired(marker: Path | None) -> int:
    try:
        return int(marker.read_text().strip() or 0) if marker else 0
    except (OSError, ValueError):
        return 0


def _count(marker: Path | None, n: int) -> None:
    if marker is None:
        return
    write_atomic(marker, str(n))  # counted before the signal, which may be KILL


def trial_marker_dir(trial_id: str) -> Path:
    """Where a trial's fault counts live: one folder per trial on its node."""
    return Path(tempfile.gettempdir(), "mrlfads-faults", trial_id)


def epoch_hook(marker_dir: str | os.PathLike | None, trial_id: str | None = None
               ) -> Callable[[int], None] | None:
    """A function to call as each epoch begins (with that epoch's number), or None when no
    ``signal-epoch`` fault applies to this run. ``trial_id``: the sweep trial's id (its
    counts then live in ``trial_marker_dir``); else ``marker_dir``: the run directory."""
    where = trial_marker_dir(trial_id) if trial_id else (
        Path(marker_dir) if marker_dir is not None else None)
    mine = [(f, where / MARKER.format(i) if where is not None else None)
            for i, f in enumerate(active()) if isinstance(f, EpochSignal)
            and (f.trial is None or (trial_id or "").endswith(f"_{f.trial}"))]
    if not mine:
        return None

    def before_epoch(epoch: int) -> None:
        for f, marker in mine:
            fired = _fired(marker)
            if epoch == f.epoch and fired < f.times:
                _count(marker, fired + 1)
                print(f"mrlfads fault: signal-epoch: SIG{f.signal} to pid {os.getpid()} as "
                      f"epoch {epoch} begins{f' (trial {trial_id})' if trial_id else ''}",
                      file=sys.stderr, flush=True)
                os.kill(os.getpid(), SIGNALS[f.signal])

    return before_epoch


def driver_callbacks() -> list:
    """Tune callbacks for the sweep driver: the ``kill-driver`` fault, if set."""
    wanted = [f for f in active() if isinstance(f, KillDriver)]
    if not wanted:
        return []
    from ray import tune

    class KillDriverCallback(tune.Callback):
        """Collects the checkpoints Tune registers (PBT saves one checkpoint again when it
        exploits it: counted once). Tune calls ``get_state`` each time it saves its
        experiment state, so the first call once N are in is a save that holds them; the
        next call, a period later, is where the driver dies."""

        def __init__(self, after: int, sig: str) -> None:
            self.after, self.sig, self.seen, self.trials = after, sig, set(), []
            self.saved, self.count, self.fired = None, 0, False
            # Tune pickles callbacks into the experiment and restores them on --resume:
            # only the driver that armed the fault acts on it
            self.pid = os.getpid()

        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info) -> None:
            self.seen.add(checkpoint.path)
            self.trials = trials

        def get_state(self):
            if os.getpid() != self.pid or self.fired:
                pass  # once: a second SIGINT would make Tune abort instead of stopping
            elif self.saved is None:
                if len(self.seen) >= self.after:  # what this save holds, trial by trial
                    self.saved = {t.trial_id: t.checkpoint.path if t.checkpoint else None
                                  for t in self.trials}
                    self.count = len(self.seen)
            else:
                print(f"mrlfads fault: kill-driver: SIG{self.sig} to pid {os.getpid()}; Tune's "
                      f"saved experiment state holds {self.count} checkpoints; newest per "
                      f"trial: {json.dumps(self.saved, sort_keys=True)}",
                      file=sys.stderr, flush=True)
                self.fired = True
                os.kill(os.getpid(), SIGNALS.get(self.sig, signal.SIGTERM))
            # no state of ours to save: the resumed sweep runs without this callback

    return [KillDriverCallback(wanted[0].checkpoints, wanted[0].signal)]
