"""Value checks on observed data, shared by the writer (inputs) and the reader (shards)."""
from __future__ import annotations

import numpy as np

from mrlfads.data_loaders.errors import DatasetError

_CHUNK = 64  # trials per integrality test: bounds the temporary to a slice of the array


def _fractional(arr: np.ndarray) -> np.ndarray | None:
    """Mask of non-integer entries of finite `arr`, or None if every entry is whole."""
    for start in range(0, len(arr), _CHUNK):
        part = arr[start:start + _CHUNK]
        if (part != np.floor(part)).any():
            return arr != np.floor(arr)
    return None


def check_observations(arr: np.ndarray, obs_model: str, col: str, where: str,
                       trial_ids: np.ndarray | None = None) -> None:
    """Raise DatasetError naming `where`/`col` if `arr` (trials, T, N) holds NaN/inf, or
    negative or fractional values for Poisson counts: the losses would turn NaN (or score a
    likelihood that is not one) silently otherwise."""
    if arr.size == 0:
        return
    lo, hi = arr.min(), arr.max()  # two reductions, no temporaries: the common, clean case
    finite = np.isfinite(lo) and np.isfinite(hi)
    if finite and obs_model != "poisson":
        return
    bad = None
    if not finite:
        bad, what = ~np.isfinite(arr), "NaN or infinite values"
    elif lo < 0:
        bad, what = arr < 0, "negative spike counts"
    else:
        bad, what = _fractional(arr), "fractional spike counts (Poisson counts are whole numbers)"
    if bad is None:
        return
    trial, t, n = (int(i[0]) for i in np.nonzero(bad))
    tid = int(trial_ids[trial]) if trial_ids is not None else trial
    label = "trial_id" if trial_ids is not None else "trial index"
    fix = ("spike counts must be whole numbers >= 0: fix the source recording or re-ingest "
           "with the offending trials excluded (or write non-count data with obs_model "
           "'gaussian')" if obs_model == "poisson" else
           "values must be finite: fill or drop the missing samples before writing the dataset")
    raise DatasetError(
        f"{where}: column {col!r} has {what} ({int(bad.sum())} entries; first at {label} "
        f"{tid}, bin {t}, neuron {n}); {fix}"
    )
