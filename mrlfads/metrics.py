"""The metrics of docs/MODEL.md, "Metrics", as pure functions on arrays.

Every function takes numpy arrays (torch tensors are accepted and converted; torch is never
imported here) and returns plain floats / numpy arrays, so the training loop, the tracking
code and offline analysis all score a model the same way. Shapes follow the data:
``(trials, T, N)`` for per-region activity, ``(trials, T, d)`` for messages and inputs.
Pathways are keyed ``(src, dst)``; the strings ``"src->dst"`` are accepted too.

Arguments come data first, then the model's prediction (``bits_per_spike(counts,
log_rates)``, ``r2(y_true, y_pred)``), as in the loss's NLLs (mrlfads/loss.py). R^2 here is
always "variance weighted": ``1 - sum(SSE) / sum(SST)`` pooled over output columns, SST
taken about each column's own mean (see :func:`r2`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "EMA",
    "MetricsError",
    "apply_linear_map",
    "bits_per_spike",
    "condition_groups",
    "effectome",
    "effectome_cosine",
    "effectome_metrics",
    "fit_linear_map",
    "inferred_input_r2",
    "message_r2",
    "psth_r2",
    "r2",
    "rank_correlation",
]

_NULL_RATE_FLOOR = 1e-9  # counts/bin; keeps log(null) finite for a silent neuron


class MetricsError(ValueError):
    """A metric was given inputs it cannot score (wrong shape, missing key, bad value)."""


# ----------------------------------------------------------------------------- helpers
def _np(x: Any, name: str) -> np.ndarray:
    """numpy float64 copy-free view of an array or a torch tensor (detached, on CPU)."""
    if hasattr(x, "detach"):  # torch.Tensor without importing torch
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise MetricsError(f"{name}: expected a numeric array, got {type(x).__name__} ({e})")


def _same_shape(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
    if a.shape != b.shape:
        raise MetricsError(f"{na} has shape {a.shape} but {nb} has shape {b.shape}; "
                           "they must match")


def _klr(k: np.ndarray, log_rates: np.ndarray) -> np.ndarray:
    """k * log_rate with 0 * -inf = 0 (a zero rate is fine where no spike was seen)."""
    with np.errstate(invalid="ignore"):
        return np.where(k == 0, 0.0, k * log_rates)


def _pair(key: Any) -> tuple[str, str]:
    """Normalise a pathway key: ``(src, dst)`` or ``"src->dst"`` -> ``(src, dst)``."""
    if isinstance(key, str):
        parts = key.split("->")
        if len(parts) == 2 and all(parts):
            return parts[0], parts[1]
    elif isinstance(key, tuple) and len(key) == 2:
        return str(key[0]), str(key[1])
    raise MetricsError(f"pathway key {key!r}: use a (src, dst) tuple or the string 'src->dst'")


# ----------------------------------------------------------------------------- R^2
def r2(y_true: Any, y_pred: Any, multioutput: str = "variance_weighted") -> float | np.ndarray:
    """Coefficient of determination; the last axis holds the outputs (neurons / dims).

    Inputs are (..., N), e.g. (trials, T, N); all leading axes are pooled into samples.
    Per neuron n: ``R2_n = 1 - SSE_n / SST_n`` with ``SST_n`` about neuron n's mean over all
    samples. ``multioutput`` picks the summary:

    - ``"variance_weighted"`` (default, the region's R^2 we log):
      ``1 - sum_n SSE_n / sum_n SST_n``, i.e. per-neuron R^2 averaged with weights SST_n, so
      high-variance neurons count more; a constant neuron adds its SSE but no variance.
    - ``"uniform_average"``: plain mean of per-neuron R^2 over neurons with SST_n > 0.
    - ``"raw_values"``: the (N,) per-neuron R^2, NaN where SST_n = 0.

    Perfect prediction gives 1, predicting each neuron's mean gives 0, worse is negative.
    NaN if no neuron varies (R^2 undefined).
    """
    yt, yp = _np(y_true, "y_true"), _np(y_pred, "y_pred")
    _same_shape(yt, yp, "y_true", "y_pred")
    if yt.ndim == 1:
        yt, yp = yt[:, None], yp[:, None]
    yt = yt.reshape(-1, yt.shape[-1])  # (samples, N)
    yp = yp.reshape(-1, yp.shape[-1])  # (samples, N)
    if yt.shape[0] < 2:
        raise MetricsError(f"r2 needs at least 2 samples, got {yt.shape[0]}")
    sse = ((yt - yp) ** 2).sum(axis=0)  # (N,)
    sst = ((yt - yt.mean(axis=0)) ** 2).sum(axis=0)  # (N,)
    if multioutput == "variance_weighted":
        total = sst.sum()
        return float(1.0 - sse.sum() / total) if total > 0 else float("nan")
    with np.errstate(divide="ignore", invalid="ignore"):
        per = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.nan)
    if multioutput == "raw_values":
        return per
    if multioutput == "uniform_average":
        return float(np.nanmean(per)) if np.any(sst > 0) else float("nan")
    raise MetricsError(f"multioutput={multioutput!r}: use 'variance_weighted', "
                       "'uniform_average' or 'raw_values'")


# ----------------------------------------------------------------------------- bits/spike
def bits_per_spike(counts: Any, log_rates: Any) -> float:
    """Bits per spike, the Neural Latents Benchmark's definition
    (``nlb_tools.evaluation.bits_per_spike``): the model's Poisson log-likelihood gain over
    a per-neuron mean-rate null, per spike.

    ``bps = (LL_model - LL_null) / (n_spikes * ln 2)``, Poisson log-likelihoods summed over
    every trial, bin and neuron of ``counts`` (trials, T, N); ``log_rates`` is the model's
    log count per bin, same shape. The null predicts, in every bin, neuron n's mean count per
    bin over these same trials and bins: the evaluated data, never another split. A model
    predicting exactly that mean scores 0, better is positive. Several regions pool by
    concatenating their neurons (NLB scores all held-out neurons as one array), which weights
    each region by its spikes. NLB takes rates and adds 1e-9 inside the log; here the
    log-rates are used as given (the same for any rate far above 1e-9). NaN if ``counts``
    holds no spikes.
    """
    k, lr = _np(counts, "counts"), _np(log_rates, "log_rates")
    _same_shape(k, lr, "counts", "log_rates")
    if k.ndim < 2:
        raise MetricsError(f"counts: expected (trials, T, N), got shape {k.shape}")
    if np.any(k < 0):
        raise MetricsError("counts: spike counts must be non-negative")
    n_neurons = k.shape[-1]
    k2 = k.reshape(-1, n_neurons)  # (trials*T, N)
    null = k2.mean(axis=0)  # (N,) mean count per bin over the evaluated trials and bins
    n_spikes = k2.sum()
    if n_spikes <= 0:
        return float("nan")
    # log(k!) cancels between model and null, so it is left out of both. A neuron with no
    # spike here has null rate 0 and adds 0 to LL_null (k log 0 = 0): the floor keeps it so.
    ll_model = (_klr(k, lr) - np.exp(lr)).sum()
    ll_null = (_klr(k2, np.log(np.maximum(null, _NULL_RATE_FLOOR))) - null).sum()
    return float((ll_model - ll_null) / (n_spikes * math.log(2.0)))


# ----------------------------------------------------------------------------- PSTH R^2
PSTH_MIN_TRIALS = 3  # trials a condition needs for its empirical PSTH to be scored


def condition_groups(conditions: Any, min_trials: int = PSTH_MIN_TRIALS) -> list[np.ndarray]:
    """Trial indices of each condition with at least ``min_trials`` trials, conditions in
    sorted order. The empty label (a dataset without conditions) is never a condition."""
    labels = np.asarray(conditions).astype(str).reshape(-1)
    groups = []
    for label in sorted(set(labels.tolist()) - {""}):
        idx = np.flatnonzero(labels == label)
        if idx.size >= min_trials:
            groups.append(idx)
    return groups


def psth_r2(data: Any, rates: Any, conditions: Any, min_trials: int = PSTH_MIN_TRIALS) -> float:
    """R^2 of the model's condition-averaged rates against the data's PSTHs.

    ``data`` and ``rates`` are (trials, T, N) in the same units (counts per bin and predicted
    counts per bin for Poisson; values and predicted means for Gaussian); ``conditions``
    holds one label per trial. For each condition c with at least ``min_trials`` trials,
    ``D_c`` = mean of ``data`` over c's trials and ``P_c`` = mean of ``rates`` over them,
    both (T, N). The kept conditions' PSTHs are stacked over time into (C*T, N) arrays D and
    P, and ``R^2 = 1 - sum_n SSE_n / sum_n SST_n`` with ``SSE_n = sum (D - P)^2`` and
    ``SST_n`` about neuron n's mean of D: variance-weighted over neurons (as NLB's psth R^2
    concatenates condition PSTHs; the data PSTHs are not smoothed here, so trial-to-trial
    noise left in them caps the score below 1). NaN when fewer than 2 conditions have
    ``min_trials`` trials: condition structure is what this scores.
    """
    d, p = _np(data, "data"), _np(rates, "rates")
    _same_shape(d, p, "data", "rates")
    if d.ndim != 3:
        raise MetricsError(f"data: expected (trials, T, N), got shape {d.shape}")
    labels = np.asarray(conditions).reshape(-1)
    if labels.shape[0] != d.shape[0]:
        raise MetricsError(f"conditions has {labels.shape[0]} labels but data has "
                           f"{d.shape[0]} trials; give one condition per trial")
    groups = condition_groups(labels, min_trials)
    if len(groups) < 2 or d.shape[-1] == 0:
        return float("nan")
    true = np.concatenate([d[idx].mean(axis=0) for idx in groups])  # (C*T, N)
    pred = np.concatenate([p[idx].mean(axis=0) for idx in groups])  # (C*T, N)
    return float(r2(true, pred))


# ----------------------------------------------------------------------------- effectome
def effectome(messages: Mapping[Any, Any], regions: Sequence[str]) -> np.ndarray:
    """Effectome: (R, R) matrix, ``E[r, s]`` = RMS of the message means s -> r.

    ``messages`` maps ``(src, dst)`` to posterior message means (trials, T, com_dim);
    ``E[dst, src] = sqrt(mean(m**2))`` over trials, time and dims, so rows are receivers
    (indexed like the manifest's ``comm_matrix[dst][src]``). The diagonal is NaN: a region
    sends no message to itself. Every ordered pair of distinct regions must be present.
    """
    regions = list(regions)
    idx = {name: i for i, name in enumerate(regions)}
    if len(idx) != len(regions):
        raise MetricsError(f"regions {regions}: names must be unique")
    E = np.full((len(regions), len(regions)), np.nan)
    for key, m in messages.items():
        src, dst = _pair(key)
        for name in (src, dst):
            if name not in idx:
                raise MetricsError(f"messages[{key!r}]: region {name!r} is not in regions "
                                   f"{regions}")
        if src == dst:
            raise MetricsError(f"messages[{key!r}]: a region does not message itself")
        arr = _np(m, f"messages[{key!r}]")
        if arr.size == 0:
            raise MetricsError(f"messages[{key!r}] is empty (shape {arr.shape})")
        E[idx[dst], idx[src]] = math.sqrt(float(np.mean(arr**2)))
    missing = [f"{s}->{d}" for s in regions for d in regions
               if s != d and np.isnan(E[idx[d], idx[s]])]
    if missing:
        raise MetricsError(f"messages: no entry for pathway(s) {', '.join(missing)}; "
                           "give the message means of every ordered pair of regions")
    return E


def effectome_metrics(E: Any, regions: Sequence[str], prefix: str = "effectome/") -> dict:
    """Flatten an effectome into metric keys ``<prefix><src>_to_<dst>`` (diagonal skipped),
    the MLflow-safe names of DESIGN.md."""
    E = _np(E, "E")
    regions = list(regions)
    if E.shape != (len(regions), len(regions)):
        raise MetricsError(f"E has shape {E.shape} but there are {len(regions)} regions")
    return {f"{prefix}{s}_to_{r}": float(E[i, j])
            for i, r in enumerate(regions) for j, s in enumerate(regions) if i != j}


def effectome_cosine(E: Any, true_comm: Any) -> float:
    """Cosine similarity between the off-diagonal entries of ``E`` and of the true
    communication matrix (both (R, R), indexed ``[dst][src]``; the diagonal is ignored).

    1 means the same pattern up to scale, 0 means inferred communication only where there
    is none (or vice versa). Returns NaN, with a RuntimeWarning giving the reason, when
    either off-diagonal vector is all zero (e.g. a truth with no pathways, or messages that
    collapsed to zero) or when R = 1: the cosine is undefined there, and 0 would wrongly
    read as "orthogonal".
    """
    E, T = _np(E, "E"), _np(true_comm, "true_comm")
    if E.ndim != 2 or E.shape[0] != E.shape[1]:
        raise MetricsError(f"E must be a square (R, R) matrix, got shape {E.shape}")
    if T.shape != E.shape:
        raise MetricsError(f"true_comm has shape {T.shape} but E has shape {E.shape}; both "
                           "must be (R, R) over the same regions in the same order")
    off = ~np.eye(E.shape[0], dtype=bool)
    a, b = E[off], T[off]  # (R*(R-1),)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise MetricsError("E / true_comm: off-diagonal entries must be finite")
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        which = "E" if na == 0 else "true_comm"
        warnings.warn(f"effectome_cosine: off-diagonal of {which} is all zero (or R = 1); "
                      "cosine undefined, returning NaN", RuntimeWarning, stacklevel=2)
        return float("nan")
    return float(a @ b / (na * nb))


# ----------------------------------------------------------------------------- cross-validated linear R^2
def fit_linear_map(X: Any, Y: Any) -> np.ndarray:
    """Least-squares map with intercept from X (..., dx) to Y (..., dy), leading axes pooled
    into samples: W (dx + 1, dy) minimising ``sum((Y - [X, 1] W)^2)``. The regression that
    :func:`message_r2` and :func:`inferred_input_r2` cross-validate, and that the figures use
    to show inferred messages in the truth's coordinates (they are identified only up to
    such a map)."""
    X, Y = _np(X, "X"), _np(Y, "Y")
    x, y = X.reshape(-1, X.shape[-1]), Y.reshape(-1, Y.shape[-1])  # (samples, dx), (samples, dy)
    if x.shape[0] != y.shape[0]:
        raise MetricsError(f"X has {x.shape[0]} samples but Y has {y.shape[0]}; they must match")
    W, *_ = np.linalg.lstsq(np.hstack([x, np.ones((x.shape[0], 1))]), y, rcond=None)
    return W


def apply_linear_map(X: Any, W: Any) -> np.ndarray:
    """``[X, 1] W`` for X (..., dx) and W (dx + 1, dy) from :func:`fit_linear_map`: (..., dy)."""
    X, W = _np(X, "X"), _np(W, "W")
    return X @ W[:-1] + W[-1]


def _cv_linear_r2(X: np.ndarray, Y: np.ndarray, seed: int) -> float:
    """Fit Y ~ X (with intercept) by least squares on half the trials (a seeded split),
    return the variance-weighted R^2 on the other half. X (trials, T, dx), Y (trials, T, dy).
    """
    n = X.shape[0]
    perm = np.random.default_rng(seed).permutation(n)
    fit, test = perm[: n // 2], perm[n // 2:]
    W = fit_linear_map(X[fit], Y[fit])  # (dx+1, dy)
    return r2(Y[test], apply_linear_map(X[test], W))


def _cv_r2_dict(inferred: Mapping, true: Mapping, seed: int, what: str, norm) -> dict:
    """Shared driver of message_r2 / inferred_input_r2: one score per key of ``true``."""
    by_norm = {norm(k): v for k, v in inferred.items()}
    out: dict = {}
    for key, y in true.items():
        nk = norm(key)
        if nk not in by_norm:
            raise MetricsError(f"{what}: ground truth has {key!r} but the inferred dict does "
                               f"not (has {sorted(map(str, by_norm))})")
        X = _np(by_norm[nk], f"inferred[{key!r}]")
        Y = _np(y, f"true[{key!r}]")
        if X.ndim == 2:
            X = X[..., None]
        if Y.ndim == 2:
            Y = Y[..., None]
        if X.ndim != 3 or Y.ndim != 3 or X.shape[:2] != Y.shape[:2]:
            raise MetricsError(f"{what}[{key!r}]: inferred {X.shape} and true {Y.shape} must "
                               "both be (trials, T, dims) with the same trials and T")
        if X.shape[0] < 2:
            raise MetricsError(f"{what}[{key!r}]: need at least 2 trials to split, got "
                               f"{X.shape[0]}")
        out[key] = float("nan") if Y.shape[-1] == 0 else _cv_linear_r2(X, Y, seed)
    scored = [v for v in out.values() if np.isfinite(v)]
    out["mean"] = float(np.mean(scored)) if scored else float("nan")
    return out


def message_r2(inferred: Mapping[Any, Any], true: Mapping[Any, Any], seed: int = 0) -> dict:
    """Message-content R^2 per pathway, cross-validated over trials.

    ``inferred[(src, dst)]`` is (trials, T, d_inf), ``true[(src, dst)]`` (trials, T, d_true).
    For each pathway in ``true``: shuffle trials with ``seed``, fit a linear map with
    intercept from inferred to true messages on the first half (``trials // 2``), and score
    variance-weighted R^2 (over true dims) on the rest. Any invertible linear transform of
    the truth scores 1; unrelated noise scores about 0 or below. Returns
    ``{key: R^2, ..., "mean": mean over scored pathways}`` with the keys of ``true``. A
    pathway whose true message has no dims or no variance on the test half is NaN and left
    out of the mean (pass only present pathways, e.g. ``comm_matrix[dst][src] > 0``).
    """
    return _cv_r2_dict(inferred, true, seed, "message_r2", _pair)


def inferred_input_r2(inferred_inputs: Mapping[str, Any], true_inputs: Mapping[str, Any],
                      seed: int = 0) -> dict:
    """Inferred-input R^2 per region against the true unobserved inputs, scored exactly as
    :func:`message_r2` (seeded half-split of trials, linear map with intercept fit on one
    half, variance-weighted R^2 on the other). ``inferred_inputs[r]`` is (trials, T,
    co_dim), ``true_inputs[r]`` (trials, T, d). Returns ``{region: R^2, ..., "mean": ...}``.
    """
    return _cv_r2_dict(inferred_inputs, true_inputs, seed, "inferred_input_r2", str)


# ----------------------------------------------------------------------------- perturbations
def rank_correlation(predicted_effects: Any, measured_effects: Any) -> float:
    """Spearman rank correlation between predicted and measured perturbation effects.

    Arrays of equal shape (flattened), or dicts ``{name: effect}`` matched by key (e.g.
    per-region mean |change of rate|). NaN if either side is constant (ranks undefined).
    """
    from scipy.stats import spearmanr  # lazy: keeps `import mrlfads` light

    if isinstance(predicted_effects, Mapping) or isinstance(measured_effects, Mapping):
        if not (isinstance(predicted_effects, Mapping) and isinstance(measured_effects, Mapping)):
            raise MetricsError("rank_correlation: give two dicts or two arrays, not one of each")
        if set(predicted_effects) != set(measured_effects):
            raise MetricsError(f"rank_correlation: keys differ: predicted "
                               f"{sorted(predicted_effects)} vs measured "
                               f"{sorted(measured_effects)}")
        keys = list(measured_effects)
        predicted_effects = [float(_np(predicted_effects[k], str(k))) for k in keys]
        measured_effects = [float(_np(measured_effects[k], str(k))) for k in keys]
    p = _np(predicted_effects, "predicted_effects").reshape(-1)
    m = _np(measured_effects, "measured_effects").reshape(-1)
    _same_shape(p, m, "predicted_effects", "measured_effects")
    if p.size < 2:
        raise MetricsError(f"rank_correlation needs at least 2 effects, got {p.size}")
    if np.all(p == p[0]) or np.all(m == m[0]):
        return float("nan")
    return float(spearmanr(p, m).statistic)


# ----------------------------------------------------------------------------- smoothing
class EMA:
    """Exponential moving average of the training loop's objective, one value at a time:
    ``s_0 = v_0``, ``s_t = alpha * v_t + (1 - alpha) * s_{t-1}`` (pandas' ``ewm(alpha=...,
    adjust=False)``), ``alpha`` in (0, 1] the weight of the newest value, 1 meaning no
    smoothing. A NaN makes every later value NaN (a diverged trial stays visibly diverged).
    Its state (``state_dict``) goes in the checkpoint so resuming equals not stopping."""

    def __init__(self, alpha: float):
        if not (isinstance(alpha, (int, float)) and 0.0 < alpha <= 1.0):
            raise MetricsError(f"alpha={alpha!r}: the EMA weight of the newest value must be "
                               "in (0, 1]; 1 disables smoothing")
        self.alpha = float(alpha)
        self.value: float | None = None

    def update(self, v: float) -> float:
        """Fold in one value and return the smoothed value."""
        v = float(v)
        self.value = v if self.value is None else self.alpha * v + (1 - self.alpha) * self.value
        return self.value

    def state_dict(self) -> dict:
        return {"alpha": self.alpha, "value": self.value}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore the running value (alpha stays this object's own, as PBT expects)."""
        self.value = None if state.get("value") is None else float(state["value"])
