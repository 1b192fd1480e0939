"""Build small NWB files from explicit spike times, for tests and benchmarks (pynwb only).

Test files are made in a temp dir at test time (no binary fixtures in git); each argument
maps onto one NWB feature ingest reads, so a test can break exactly one thing.
"""
from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def build_nwb(
    path: str | os.PathLike, *, spikes: Sequence[Sequence[float]],
    locations: Sequence[str] | None = None, unit_columns: Mapping[str, Sequence[Any]] | None = None,
    trials: Sequence[tuple[float, float]] | None = None,
    trial_columns: Mapping[str, Sequence[Any]] | None = None,
    timeseries: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    unit_ids: Sequence[int] | None = None,
    obs_intervals: Sequence[Sequence[tuple[float, float]]] | None = None,
) -> str:
    """Write an NWB file: unit i has spike times spikes[i] (written as given, sorted or not)
    and, if `locations` is given, one electrode with location locations[i]; trials are
    (start, stop) pairs with extra trials columns; timeseries[name] = (times, values) go to
    acquisition; obs_intervals[i] are unit i's observation intervals (Units.obs_intervals).
    spikes=[] writes no Units table; trials=None writes no trials table."""
    import pynwb

    path = os.fspath(path)
    nwb = pynwb.NWBFile(session_description="test", identifier=os.path.basename(path),
                        session_start_time=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc))
    if locations is not None:
        device = nwb.create_device(name="probe")
        group = nwb.create_electrode_group(name="shank", description="test", location="brain",
                                           device=device)
        for loc in locations:
            nwb.add_electrode(group=group, location=loc)
    for col in unit_columns or {}:
        nwb.add_unit_column(name=col, description=col)
    for i, st in enumerate(spikes):
        extra = {c: v[i] for c, v in (unit_columns or {}).items()}
        if locations is not None:
            extra["electrodes"] = [i]
        if unit_ids is not None:
            extra["id"] = int(unit_ids[i])
        if obs_intervals is not None:
            extra["obs_intervals"] = np.asarray(obs_intervals[i], dtype=np.float64).reshape(-1, 2)
        nwb.add_unit(spike_times=np.asarray(st, dtype=np.float64), **extra)
    if trials is not None:
        for col in trial_columns or {}:
            nwb.add_trial_column(name=col, description=col)
        for k, (start, stop) in enumerate(trials):
            nwb.add_trial(start_time=float(start), stop_time=float(stop),
                          **{c: v[k] for c, v in (trial_columns or {}).items()})
    for name, (times, values) in (timeseries or {}).items():
        nwb.add_acquisition(pynwb.TimeSeries(name=name, data=np.asarray(values), unit="a.u.",
                                             timestamps=np.asarray(times, dtype=np.float64)))
    with pynwb.NWBHDF5IO(path, "w") as io:
        io.write(nwb)
    return path


def synthetic_session(path: str | os.PathLike, *, n_units: int, n_trials: int,
                      regions: Sequence[str] = ("A", "B"), rate_hz: float = 20.0,
                      trial_s: float = 2.0, gap_s: float = 0.5, seed: int = 0) -> str:
    """A large Poisson session for benchmarks: units spread over `regions` round-robin,
    trials of `trial_s` with a go cue 1 s in, a photostim flag on every 10th trial."""
    rng = np.random.default_rng(seed)
    starts = np.arange(n_trials) * (trial_s + gap_s)
    total = starts[-1] + trial_s
    spikes = [np.sort(rng.uniform(0, total, rng.poisson(rate_hz * total))) for _ in range(n_units)]
    return build_nwb(
        path, spikes=spikes, locations=[regions[i % len(regions)] for i in range(n_units)],
        trials=[(float(s), float(s + trial_s)) for s in starts],
        trial_columns={"go_cue_time": starts + 1.0, "photostim": np.arange(n_trials) % 10 == 9},
    )
