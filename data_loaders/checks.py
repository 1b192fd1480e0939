"""Value checks on observed data, shared by the writer (inputs) and the reader (shards)."""
from __future__ import annotations

import numpy as np

from data_loaders.errors import DatasetError


def check_observations(arr: np.ndarray, obs_model: str, col: str, where: str,
                       trial_ids: np.ndarray | None = None) -> None:
    """Raise DatasetError naming `where`/`col` if `arr` (trials, T, N) holds NaN/inf, or
    negative values for Poisson counts: the losses would turn NaN silently otherwise."""
    if arr.size == 0:
        return
    lo, hi = arr.min(), arr.max()  # two reductions, no temporaries: the common, clean case
    if np.isfinite(lo) and np.isfinite(hi) and (obs_model != "poisson" or lo >= 0):
        return
    bad = ~np.isfinite(arr)
    what = "NaN or infinite values"
    if not bad.any():
        bad = arr < 0
        what = "negative spike counts"
    trial, t, n = (int(i[0]) for i in np.nonzero(bad))
    tid = int(trial_ids[trial]) if trial_ids is not None else trial
    fix = ("spike counts must be finite and >= 0: fix the source recording or re-ingest "
           "with the offending trials excluded" if obs_model == "poisson" else
           "values must be finite: fill or drop the missing samples before writing the dataset")
    raise DatasetError(
        f"{where}: column {col!r} has {what} ({int(bad.sum())} entries; first at trial_id "
        f"{tid}, bin {t}, neuron {n}); {fix}"
    )
