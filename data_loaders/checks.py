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


def check_silenced(arr: np.ndarray, col: str, where: str,
                   trial_ids: np.ndarray | None = None) -> None:
    """Raise DatasetError naming `where`/`col` if `arr` (trials, T), a ``silenced/<region>``
    column of recorded interventions, holds anything but 0 and 1."""
    bad = (arr != 0) & (arr != 1)
    if not bad.any():
        return
    trial, t = (int(i[0]) for i in np.nonzero(bad))
    tid = int(trial_ids[trial]) if trial_ids is not None else trial
    label = "trial_id" if trial_ids is not None else "trial index"
    raise DatasetError(
        f"{where}: values must be 0 or 1 (1 where the region's messages were silenced in that "
        f"bin); column {col!r} holds {float(arr[trial, t]):g} at {label} {tid}, bin {t}"
    )


def check_sessions(manifest, arrays: dict[str, np.ndarray], where: str) -> None:
    """Raise DatasetError naming `where` if a trial's session index is out of range, or a
    trial has a non-zero x entry in a column its session did not record (multi-session
    datasets; a DatasetManifest `manifest` and arrays with `session`, `trial_id`, x/*)."""
    if not manifest.sessions:
        return
    session = arrays["session"]
    tid = arrays["trial_id"]
    names = manifest.session_names
    bad = np.flatnonzero((session < 0) | (session >= len(names)))
    if len(bad):
        raise DatasetError(
            f"{where}: column 'session' is {int(session[bad[0]])} at trial_id {int(tid[bad[0]])}, "
            f"not an index into the {len(names)} sessions of the manifest; re-create the "
            "dataset with session indices 0..S-1")
    masks = manifest.session_masks()
    for r in manifest.regions:
        a = arrays[f"x/{r.name}"]
        for s in np.unique(session):
            rows, off = np.flatnonzero(session == s), np.flatnonzero(~masks[r.name][s])
            if not len(rows) or not len(off):
                continue
            sub = a[np.ix_(rows, np.arange(a.shape[1]), off)]  # (trials of s, T, unrecorded)
            nz = np.nonzero(sub)
            if len(nz[0]):
                i, t, j = (int(v[0]) for v in nz)
                owner = int(np.argmax(masks[r.name][:, off[j]]))
                raise DatasetError(
                    f"{where}: column 'x/{r.name}' is {float(sub[i, t, j]):g} at trial_id "
                    f"{int(tid[rows[i]])}, bin {t}, neuron {int(off[j])}, a neuron of session "
                    f"{names[owner]!r}, but the trial is of session {names[int(s)]!r}, which "
                    f"did not record it ({int(np.count_nonzero(sub))} such entries); entries "
                    "of neurons outside a trial's session must be exactly 0: put each "
                    "session's data in its own columns (manifest.session_columns) and zeros "
                    "elsewhere")
