"""From hidden units to a recorded dataset: Poisson spikes, held-out neurons, train/valid split."""
from __future__ import annotations

import numpy as np


def unit_base_rates(hidden: np.ndarray, mean_hz: float, spread: float, gain: float,
                    rng: np.random.Generator) -> np.ndarray:
    """(units,) base rates in Hz: log-normal across units (sd ``spread`` of log rate), scaled
    so that ``base * exp(gain * h)`` averages exactly ``mean_hz`` over units, trials and bins.

    Recorded units differ in rate by an order of magnitude; one shared base would hide the
    per-neuron offsets a model must learn."""
    n = hidden.shape[-1]
    shape = np.exp(spread * rng.standard_normal(n))  # (units,)
    modulation = np.exp(gain * hidden.astype(np.float64)).reshape(-1, n).mean(0)  # (units,)
    return shape * mean_hz / float(np.mean(shape * modulation))


def poisson_rates(hidden: np.ndarray, base_hz: np.ndarray | float, gain: float,
                  bin_width_s: float) -> np.ndarray:
    """Expected spike counts per bin: base_hz * exp(gain * h) * bin width (h in (-1, 1));
    ``base_hz`` is one rate per unit (last axis of ``hidden``) or one for all."""
    rate = np.asarray(base_hz, np.float64) * np.exp(gain * hidden.astype(np.float64))
    return (rate * bin_width_s).astype(np.float32)


def steps_to_bins(a: np.ndarray, steps_per_bin: float) -> np.ndarray:
    """(trials, steps, ...) -> (trials, bins, ...): a bin that splits a step in k holds the
    step's value (k copies); a bin that pools m steps holds their mean."""
    if steps_per_bin < 1:
        return np.repeat(a, round(1 / steps_per_bin), axis=1)
    m = round(steps_per_bin)
    if m == 1:
        return a
    return a.reshape(a.shape[0], a.shape[1] // m, m, *a.shape[2:]).mean(2).astype(a.dtype)


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
