"""What the fit figures show, computed from plain arrays (numpy only, testable by hand).

Kept apart from the drawing (tracking/fit_figures.py) so that each number a figure shows
(a condition average, a principal component, a message in the truth's coordinates) can be
checked against a hand computation.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mrlfads import metrics as M

ALL_TRIALS = "all trials"
MAX_CONDITIONS = 8  # more lines per panel than this cannot be told apart


def condition_groups(conditions: Any, n_trials: int,
                     max_conditions: int = MAX_CONDITIONS) -> list[tuple[str, np.ndarray]]:
    """(label, trial indices) of the conditions to draw: the ``max_conditions`` with the
    most trials (ties by label), in label order. Without labels (none, or all empty) one
    group holds every trial."""
    labels = None if conditions is None else np.asarray(conditions).astype(str).reshape(-1)
    if labels is None or not np.any(labels != ""):
        return [(ALL_TRIALS, np.arange(n_trials))]
    if labels.shape[0] != n_trials:
        raise ValueError(f"{labels.shape[0]} condition labels for {n_trials} trials")
    counts = {c: int(np.sum(labels == c)) for c in set(labels.tolist()) - {""}}
    kept = sorted(sorted(counts, key=lambda c: (-counts[c], c))[:max_conditions])
    return [(c, np.flatnonzero(labels == c)) for c in kept]


def condition_means(x: np.ndarray, groups: Sequence[tuple[str, np.ndarray]]) -> np.ndarray:
    """(C, T, N): the mean over each group's trials of ``x`` (trials, T, N)."""
    x = np.asarray(x, dtype=np.float64)
    return np.stack([x[idx].mean(axis=0) for _, idx in groups])


def most_active(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` neurons of ``x`` (trials, T, N) with the highest mean over
    trials and bins, highest first (ties: lower index first); none of none (a region a
    session did not record)."""
    if x.shape[-1] == 0:
        return np.zeros(0, dtype=np.int64)
    mean = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1]).mean(axis=0)
    return np.argsort(-mean, kind="stable")[: min(k, mean.shape[0])]


def pca(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Principal components of ``x`` (..., d), leading axes pooled into samples:
    (components (d, k), mean (d,), fraction of variance each explains (k,)), k = min(n, d),
    components ordered by variance, each with its largest entry positive (a fixed sign)."""
    flat = np.asarray(x, dtype=np.float64).reshape(-1, x.shape[-1])
    mean = flat.mean(axis=0)
    _, s, vt = np.linalg.svd(flat - mean, full_matrices=False)
    k = min(n, vt.shape[0])
    comps = vt[:k].T  # (d, k)
    signs = np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(k)])
    comps = comps * np.where(signs == 0, 1.0, signs)
    var = s**2
    explained = var[:k] / var.sum() if var.sum() > 0 else np.zeros(k)
    return comps, mean, explained


def project(x: np.ndarray, comps: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``(x - mean) @ comps``: (..., d) -> (..., k)."""
    return (np.asarray(x, dtype=np.float64) - mean) @ comps


def align_to_truth(inferred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inferred messages (or inputs) (trials, T, d_inf) in the truth's coordinates
    (trials, T, d_true): the least-squares linear map with intercept from inferred to true
    (``mrlfads.metrics.fit_linear_map``, the regression message_r2 scores) fitted on every
    trial given and applied to them. Returns (aligned, W)."""
    W = M.fit_linear_map(inferred, true)
    return M.apply_linear_map(inferred, W), W
