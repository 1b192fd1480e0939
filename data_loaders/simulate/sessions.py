"""Several recording sessions of one simulated network (`mrlfads simulate --sessions S`).

Session k holds trials [k * n, (k + 1) * n) and records, in each region, its own random
subset of round(frac * units) of the network's units (at least 1), drawn independently of the
other sessions: two sessions may record the same unit, but in the dataset they are different
neurons with different ids (session name / unit index), as in acute recordings. Each session
holds out its own neurons. The dataset layout is data_loaders/sessions.py's union layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mrlfads.data_loaders.manifest import RegionSpec
from mrlfads.data_loaders.sessions import SessionSpec, columns
from mrlfads.data_loaders.simulate.observe import heldout_order


@dataclass
class SessionLayout:
    regions: tuple[RegionSpec, ...]
    sessions: tuple[SessionSpec, ...]
    session: np.ndarray               # (trials,) int64 session of each trial
    x: dict[str, np.ndarray]          # region -> (trials, T, N) union columns, 0 off-session
    rates: dict[str, np.ndarray]      # region -> (trials, T, N) true rate of each column's unit


def check_sessions(n_sessions: int, session_frac: float | None) -> float:
    """The fraction of units each session records (default 1 / n_sessions), validated."""
    if not isinstance(n_sessions, (int, np.integer)) or isinstance(n_sessions, bool) or n_sessions < 1:
        raise ValueError(f"sessions: must be an integer >= 1, got {n_sessions!r}")
    frac = 1.0 / n_sessions if session_frac is None else session_frac
    if not isinstance(frac, (int, float)) or not 0 < frac <= 1:
        raise ValueError(f"session_frac: the fraction of each region's units a session records "
                         f"must be in (0, 1], got {session_frac!r}")
    return float(frac)


def layout(region_names, n_units, observed: dict[str, np.ndarray], rates: dict[str, np.ndarray],
           n_sessions: int, frac: float, heldout_frac: float, units_rng: np.random.Generator,
           heldout_rng: np.random.Generator) -> SessionLayout:
    """observed/rates[region]: (S * n, T, units) in network unit order, for every trial."""
    n_total = next(iter(observed.values())).shape[0]
    n_per = n_total // n_sessions
    session = np.repeat(np.arange(n_sessions), n_per).astype(np.int64)
    picked: list[dict[str, np.ndarray]] = []  # per session: region -> units, column order
    specs = []
    for k in range(n_sessions):
        units, counts = {}, {}
        for name, n in zip(region_names, n_units):
            subset = np.sort(units_rng.choice(n, size=max(1, round(frac * n)), replace=False))
            order, n_out = heldout_order(len(subset), heldout_frac, heldout_rng)
            units[name] = subset[order]
            counts[name] = (len(subset) - n_out, n_out)
        picked.append(units)
        specs.append(SessionSpec(f"s{k}", counts, {},
                                 {"trials": [k * n_per, (k + 1) * n_per],
                                  "units": {r: u.tolist() for r, u in units.items()}}))
    regions, x, truth = [], {}, {}
    for name in region_names:
        n_cols = sum(sum(s.units[name]) for s in specs)
        ids = np.empty(n_cols, dtype=object)
        x[name] = np.zeros((n_total, observed[name].shape[1], n_cols), np.float32)
        truth[name] = np.empty_like(x[name])
        for k, s in enumerate(specs):
            cols, units = columns(specs, name, k), picked[k][name]
            rows = slice(k * n_per, (k + 1) * n_per)
            x[name][rows, :, cols] = observed[name][rows][..., units]
            truth[name][..., cols] = rates[name][..., units]
            ids[cols] = [f"{s.name}/{u}" for u in units]
        regions.append(RegionSpec(name, sum(s.units[name][0] for s in specs),
                                  sum(s.units[name][1] for s in specs), tuple(ids.tolist())))
    return SessionLayout(tuple(regions), tuple(specs), session, x, truth)
