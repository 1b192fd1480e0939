"""Binned spike counts -> an NWB file, so demos and tests can go simulate -> NWB -> ingest.

Each count c in a bin becomes c spike times drawn uniformly inside the bin (away from its
edges), so re-binning the file with the same bins gives back exactly the same counts. One
electrode per unit, whose `location` is the region name; trials table with start/stop,
condition and perturbed; a boolean Units column `heldout` marks held-out neurons, so
`ingest(..., IngestOptions(heldout_column="heldout", perturb_column="perturbed"))` returns
the dataset's x columns unchanged. Recorded interventions become the trials columns
`silenced_region`, `silence_start_time` and `silence_stop_time`, which
`--silence-region-column silenced_region --silence-time-columns
silence_start_time,silence_stop_time` reads back into the same bins.
"""
from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping

import numpy as np

from mrlfads.data_loaders.errors import IngestError

EDGE_MARGIN = 0.05  # spikes sit in [5 %, 95 %] of their bin: no float ties with the edges


def write_nwb_from_arrays(
    path: str | os.PathLike, *, counts: Mapping[str, np.ndarray], bin_width_s: float,
    n_heldout: Mapping[str, int] | None = None, trial_id: np.ndarray | None = None,
    condition: np.ndarray | None = None, perturbed: np.ndarray | None = None,
    trial_gap_s: float = 0.1, seed: int = 0, identifier: str = "mrlfads-export",
    silenced: Mapping[str, np.ndarray] | None = None,
) -> str:
    """Write counts[region] (trials, T, N) as an NWB file at `path`; returns the path.

    Trial k spans [k * (T * bin + gap), ... + T * bin). The last n_heldout[region] units of
    each region get heldout=True (the dataset's held-in-first layout). silenced[region]
    (trials, T) 0/1: recorded interventions, at most one region and one run of bins per
    trial (what the trials columns can say).
    """
    import pynwb

    path = os.fspath(path)
    regions = list(counts)
    arrays = {r: np.asarray(counts[r]) for r in regions}
    n_trials, n_bins = arrays[regions[0]].shape[:2]
    for r, a in arrays.items():
        if a.ndim != 3 or a.shape[:2] != (n_trials, n_bins):
            raise IngestError(f"counts[{r!r}]: shape {a.shape}, expected ({n_trials}, {n_bins}, N)")
        if np.any(a < 0) or np.any(a != np.round(a)):
            raise IngestError(f"counts[{r!r}]: NWB export writes spike times, so counts must be "
                              "integers >= 0; export a Poisson dataset (simulate with obs='poisson')")
    starts = np.arange(n_trials) * (n_bins * bin_width_s + trial_gap_s)  # (trials,)
    nwb = pynwb.NWBFile(session_description="exported by mrlfads", identifier=identifier,
                        session_start_time=dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc))
    _add_trials(nwb, starts, n_bins * bin_width_s, trial_id, condition, perturbed,
                _silence_times(silenced, starts, n_trials, bin_width_s, trial_id))
    device = nwb.create_device(name="probe", description="one electrode per exported unit")
    nwb.add_unit_column(name="heldout", description="held-out neuron of the source dataset")
    rng = np.random.default_rng(seed)
    bin_starts = (starts[:, None] + np.arange(n_bins) * bin_width_s).reshape(-1)  # (trials*T,)
    electrode = 0
    for r in regions:
        group = nwb.create_electrode_group(name=r, description=f"region {r}", location=r,
                                           device=device)
        n_units = arrays[r].shape[2]
        n_out = int((n_heldout or {}).get(r, 0))
        for u in range(n_units):
            nwb.add_electrode(group=group, location=r)
            c = arrays[r][:, :, u].reshape(-1).astype(np.int64)  # (trials, T) -> (trials*T,)
            jitter = rng.uniform(EDGE_MARGIN, 1 - EDGE_MARGIN, size=int(c.sum())) * bin_width_s
            spikes = np.sort(np.repeat(bin_starts, c) + jitter)
            nwb.add_unit(spike_times=spikes, electrodes=[electrode], heldout=u >= n_units - n_out)
            electrode += 1
    with pynwb.NWBHDF5IO(path, "w") as io:
        io.write(nwb)
    return path


def _silence_times(silenced, starts, n_trials, bin_width_s, trial_id):
    """(region or "", start s, stop s) per trial from silenced[region] (trials, T); None
    without. A trial silencing two regions, or one in two separate runs of bins, has no
    such row: refused, naming it."""
    if not silenced:
        return None
    region = np.full(n_trials, "", dtype=object)
    t0, t1 = np.full(n_trials, np.nan), np.full(n_trials, np.nan)
    ids = np.arange(n_trials) if trial_id is None else np.asarray(trial_id)
    for r, marks in silenced.items():
        for k in np.flatnonzero(np.asarray(marks).any(1)):
            on = np.flatnonzero(marks[k])
            if region[k] or on[-1] - on[0] + 1 != len(on):
                what = "two regions" if region[k] else f"{r} in separate runs of bins"
                raise IngestError(f"silenced: trial {int(ids[k])} silences {what}; NWB trials "
                                  "columns hold one region and one window per trial")
            region[k] = r
            t0[k] = starts[k] + on[0] * bin_width_s
            t1[k] = starts[k] + (on[-1] + 1) * bin_width_s
    return region, t0, t1


def _add_trials(nwb, starts, duration, trial_id, condition, perturbed, silence=None) -> None:
    nwb.add_trial_column(name="condition", description="task condition")
    nwb.add_trial_column(name="perturbed", description="perturbation (e.g. photostim) trial")
    if silence is not None:
        nwb.add_trial_column(name="silenced_region", description="region whose messages an "
                             "intervention silenced ('' for none)")
        nwb.add_trial_column(name="silence_start_time", description="intervention start (s)")
        nwb.add_trial_column(name="silence_stop_time", description="intervention stop (s)")
    n = len(starts)
    ids = np.arange(n) if trial_id is None else np.asarray(trial_id)
    cond = np.full(n, "", dtype=object) if condition is None else np.asarray(condition)
    pert = np.zeros(n, bool) if perturbed is None else np.asarray(perturbed, dtype=bool)
    for k in range(n):
        extra = {} if silence is None else {
            "silenced_region": str(silence[0][k]), "silence_start_time": float(silence[1][k]),
            "silence_stop_time": float(silence[2][k])}
        nwb.add_trial(start_time=float(starts[k]), stop_time=float(starts[k] + duration),
                      condition=str(cond[k]), perturbed=bool(pert[k]), id=int(ids[k]), **extra)


def dataset_to_nwb(ds, path: str | os.PathLike, bin_width_s: float | None = None,
                   seed: int = 0) -> str:
    """Write an ArrowDataset (or its URI) as an NWB file; returns the path.

    Trials keep their ids, conditions and perturbed flags (perturbed = the dataset's
    `perturbed` column, else its "perturbed" split), and recorded interventions their
    region and times. Ground truth and ext are not exported.
    """
    from mrlfads.data_loaders import schema
    from mrlfads.data_loaders.errors import DatasetError
    from mrlfads.data_loaders.reader import ArrowDataset

    if not isinstance(ds, ArrowDataset):
        ds = ArrowDataset.open(ds)
    m = ds.manifest
    if m.obs_model != "poisson":
        raise IngestError(f"{ds.uri}: obs_model is {m.obs_model!r}; NWB export writes spike times, "
                          "so it needs a Poisson dataset (e.g. `mrlfads simulate --obs poisson`)")
    cols = [schema.TRIAL_ID, schema.SPLIT, schema.CONDITION] + [schema.x_col(r) for r in m.region_names]
    cols += [schema.silenced_col(r) for r in m.silenced]
    a = ds.arrays(columns=cols)
    try:
        perturbed = ds.arrays(columns=[schema.PERTURBED])[schema.PERTURBED].astype(bool)
    except DatasetError:  # no perturbed column in this dataset
        perturbed = a[schema.SPLIT] == "perturbed"
    return write_nwb_from_arrays(
        path, counts={r: a[schema.x_col(r)] for r in m.region_names},
        bin_width_s=bin_width_s or m.bin_width_s,
        n_heldout={r.name: r.n_heldout for r in m.regions}, trial_id=a[schema.TRIAL_ID],
        condition=a[schema.CONDITION], perturbed=perturbed, seed=seed, identifier=m.name,
        silenced={r: a[schema.silenced_col(r)] for r in m.silenced} or None)
