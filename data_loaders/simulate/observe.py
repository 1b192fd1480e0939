"""From hidden units to a recorded dataset: Poisson spikes, held-out neurons, train/valid split."""
from __future__ import annotations

import numpy as np


def poisson_rates(hidden: np.ndarray, base_hz: float, gain: float, bin_width_s: float) -> np.ndarray:
    """Expected spike counts per bin: base_hz * exp(gain * h) * bin width (h in (-1, 1))."""
    return (base_hz * bin_width_s * np.exp(gain * hidden.astype(np.float64))).astype(np.float32)


def poisson_counts(rates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Spike counts (float32 holding non-negative integers) drawn from per-bin rates."""
    return rng.poisson(rates.astype(np.float64)).astype(np.float32)


def heldout_order(n_units: int, frac: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """(unit order with held-in units first then held-out, both ascending; number held out).

    Keeps at least one held-in unit; holds out round(frac * n), at least 1 when frac > 0."""
    n_out = round(frac * n_units)
    if frac > 0:
        n_out = max(1, n_out)
    n_out = min(n_out, n_units - 1)
    out = np.sort(rng.permutation(n_units)[:n_out])
    keep = np.setdiff1d(np.arange(n_units), out)
    return np.concatenate([keep, out]).astype(int), n_out


def train_valid_split(n_trials: int, valid_frac: float, rng: np.random.Generator) -> np.ndarray:
    """'train'/'valid' labels; round(valid_frac * n) seeded trials (>= 1) are 'valid'."""
    n_valid = min(max(1, round(valid_frac * n_trials)), n_trials - 1)
    labels = np.full(n_trials, "train", dtype=object)
    labels[rng.permutation(n_trials)[:n_valid]] = "valid"
    return labels
