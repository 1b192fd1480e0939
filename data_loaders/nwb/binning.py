"""Spike-time histograms per trial and unit, and per-bin means of a TimeSeries.

All trials' bin edges are laid end to end in one sorted array, so a unit's spikes are
binned with one `np.searchsorted` (O(spikes x log edges)) and one `np.bincount`, whatever
the number of trials. Bins are half-open, [edge_k, edge_k+1), like np.histogram's inner bins.
"""
from __future__ import annotations

import numpy as np

TIME_TOL = 1e-9  # seconds: float slack (how far touching windows may overlap by rounding)


def window_edges(t0: np.ndarray, n_bins: int, bin_width_s: float) -> np.ndarray:
    """Bin edges (n_trials, n_bins + 1) of windows starting at `t0` (seconds)."""
    return np.asarray(t0, dtype=np.float64)[:, None] + np.arange(n_bins + 1) * bin_width_s


def n_bins_for(window_s: float, bin_width_s: float) -> int:
    """Whole bins that fit in `window_s` (a float-rounding hair counts as a whole bin)."""
    return int(np.floor(window_s / bin_width_s + 1e-9))


def bin_spikes(spikes: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts (n_trials, n_bins) of sorted `spikes` in each trial's bins.

    `edges` (n_trials, n_bins + 1) must hold non-overlapping windows in time order (the
    caller validates trials; ingest sorts them), so their flattening is sorted. Windows
    that touch can overlap by a float-rounding hair (0.3 + 3 x 0.1 > 0.6); such a window
    ends where the next one starts.
    """
    n_trials, n_edges = edges.shape
    n_bins = n_edges - 1
    flat = edges.reshape(-1)  # (n_trials * (n_bins + 1),)
    assert np.all(np.diff(flat) >= -TIME_TOL), "trial windows must be sorted and non-overlapping"
    flat = np.minimum.accumulate(flat[::-1])[::-1]  # a hair past the next start ends there
    pos = np.searchsorted(flat, spikes, side="right") - 1  # last edge <= spike
    trial, k = np.divmod(pos, n_edges)
    keep = (pos >= 0) & (k < n_bins)  # k == n_bins: past a window's end, in a gap
    counts = np.bincount(trial[keep] * n_bins + k[keep], minlength=n_trials * n_bins)
    return counts.reshape(n_trials, n_bins)  # (n_trials * n_bins,) -> (n_trials, n_bins)


def first_unsorted(spikes: np.ndarray) -> int | None:
    """Index of the first spike earlier than its predecessor, or None if sorted."""
    bad = np.flatnonzero(np.diff(spikes) < 0)
    return int(bad[0]) + 1 if len(bad) else None


def bin_timeseries(times: np.ndarray, values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean value (n_trials, n_bins, D) of samples in each bin; a bin with no sample holds
    the last earlier sample (sample-and-hold, right for sparse stimulus channels), or 0."""
    n_trials, n_edges = edges.shape
    n_bins, d = n_edges - 1, values.shape[1]
    if len(values) == 0:
        return np.zeros((n_trials, n_bins, d))
    flat = edges.reshape(-1)  # (n_trials * (n_bins + 1),)
    csum = np.vstack([np.zeros((1, d)), np.cumsum(values, axis=0)])  # (n + 1, D)
    idx = np.searchsorted(times, flat, side="left")  # samples before each edge
    idx = idx.reshape(n_trials, n_edges)
    lo, hi = idx[:, :-1], idx[:, 1:]  # (n_trials, n_bins) sample ranges [lo, hi)
    count = (hi - lo)[..., None]
    sums = csum[hi] - csum[lo]  # (n_trials, n_bins, D)
    held = np.where((lo > 0)[..., None], values[np.maximum(lo - 1, 0)], 0.0)
    return np.where(count > 0, sums / np.maximum(count, 1), held)
