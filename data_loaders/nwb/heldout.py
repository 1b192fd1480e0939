"""Held-out units that fire.

Held-out units are drawn before any spike is read (nwb/ingest.py, nwb/sessions.py). A unit
without a spike in any trial's window adds nothing to co-bps, which counts spikes, so one
drawn held out wastes a slot that model selection ranks on. Once the counts are binned,
each such unit changes places with a held-in unit drawn at random among those that fire.
Every firing unit is then as likely to be held out as any other (the swap treats them
alike), and a dataset whose drawn units all fire is left exactly as drawn.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from mrlfads.data_loaders.nwb.sessions import RegionLayout

SWAP_SEED = 1  # second entropy word of the swap's generator: (ingest seed, SWAP_SEED)


@dataclasses.dataclass(frozen=True)
class UnitGroup:
    """Columns of x/<region> that hold out units together: one session's (its trials only),
    or, for matched files, every file's (units matched by position, all trials)."""

    files: tuple[int, ...]  # files whose rows follow these columns
    trials: slice  # the trials whose spikes count
    n_heldin: int
    n_heldout: int
    where: str = ""  # " in session NAME" for a session's own group, for messages


def groups(layout: RegionLayout, trials: list[slice],
           sessions: list[tuple[str, tuple[int, int]]] | None = None) -> list[UnitGroup]:
    """The groups of one region: one over every file (matched files), or with `sessions`
    (file k's session name and its (held-in, held-out) units here) one per file."""
    if sessions is None:
        return [UnitGroup(tuple(range(len(trials))), slice(None), layout.n_heldin,
                          layout.n_heldout)]
    return [UnitGroup((k,), t, *units, where=f" in session {name}")
            for k, (t, (name, units)) in enumerate(zip(trials, sessions)) if sum(units)]


def swap_silent(x: dict[str, np.ndarray], layouts: list[RegionLayout],
                region_groups: dict[str, list[UnitGroup]], unit_ids: list[np.ndarray],
                seed: int) -> tuple[list[RegionLayout], list[str]]:
    """Swap each silent held-out unit for a firing held-in one, in `x` (in place) and in the
    layouts' rows; held-in and held-out units each stay in ascending unit order. Returns the
    new layouts and a warning per group where units changed places. At least one firing unit
    stays held in; a group without enough firing held-in units keeps the silent held-out
    units it cannot replace (ingest warns of silent units anyway)."""
    rng = np.random.default_rng([seed, SWAP_SEED])
    out, warnings = [], []
    for L in layouts:
        rows = list(L.rows)
        for g in region_groups[L.name]:
            cols = L.cols[g.files[0]]
            fires = x[L.name][g.trials].sum(axis=(0, 1))[cols] > 0  # sums a view: no copy
            held_in = np.arange(g.n_heldin)
            held_out = g.n_heldin + np.arange(g.n_heldout)
            silent = held_out[~fires[held_out]]
            donors = held_in[fires[held_in]]
            n = min(len(silent), len(donors) - 1)  # the encoders keep a firing unit
            if n <= 0:
                continue
            swap_in = np.sort(rng.choice(donors, size=n, replace=False))
            order = np.arange(len(cols))
            order[silent[:n]], order[swap_in] = swap_in, silent[:n]
            key = rows[g.files[0]][order]  # ascending unit rows = ascending position
            order[:g.n_heldin] = order[:g.n_heldin][np.argsort(key[:g.n_heldin], kind="stable")]
            order[g.n_heldin:] = order[g.n_heldin:][np.argsort(key[g.n_heldin:], kind="stable")]
            x[L.name][:, :, cols] = x[L.name][:, :, cols[order]]
            for k in g.files:
                rows[k] = rows[k][order]
            ids = unit_ids[g.files[0]][L.rows[g.files[0]]]  # as drawn
            warnings.append(
                f"region {L.name!r}{g.where}: held-out units {ids[silent[:n]].tolist()} fire no "
                "spike in any trial's window, so they were swapped for held-in units "
                f"{ids[swap_in].tolist()}, drawn at random among those that fire")
        out.append(dataclasses.replace(L, rows=tuple(rows)))
    return out, warnings
