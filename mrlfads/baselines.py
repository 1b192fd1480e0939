"""The spike-smoothing baseline of held-out co-bps (docs/MODEL.md, "The smoothing
baseline"): the score a model must beat before its held-out rates say more than smoothed
held-in spikes do.

As in the Neural Latents Benchmark's smoothing baseline, every held-in neuron's spikes are
convolved with a Gaussian kernel and a Poisson GLM (log link, L2 penalty) maps them, bin by
bin, to every held-out neuron's count. The kernel width and the penalty are chosen on
training trials held back from the fit, never on the trials scored; the chosen pair is then
refitted on every training trial. Numpy and scipy only: no torch, so it scores any model's
output the same way.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.optimize import minimize

from mrlfads.metrics import MetricsError, bits_per_spike

_LOG_RATE_BOUNDS = (-30.0, 20.0)  # log counts per bin; exp() of the linear predictor stays finite


@dataclass(frozen=True)
class SmoothingConfig:
    """The grid searched and how much of the training data chooses from it."""

    widths_s: tuple[float, ...] = (0.02, 0.04, 0.08, 0.16, 0.32)  # Gaussian kernel SDs, seconds
    # L2 penalty per bin on the standardised inputs' weights (the ``alpha`` of
    # sklearn.linear_model.PoissonRegressor, which NLB's baseline uses). Every width is
    # tried at ``first_alpha``, then every penalty at the best width: 8 fits, not 20.
    alphas: tuple[float, ...] = (10.0, 1.0, 0.1, 0.01)
    first_alpha: float = 0.1
    select_fraction: float = 0.25  # training trials held back to choose width and penalty
    # trial-bins one GLM is fitted on (and the held-back trials scored on); whole trials
    # drawn beyond. The fits' cost grows with it times the neurons in times the neurons out.
    max_fit_bins: int = 50_000
    # more held-in neurons than this are reduced to this many leading principal components
    # of their smoothed, standardised counts before the GLM (_Inputs): its cost grows with
    # its inputs
    max_inputs: int = 100
    seed: int = 0


@dataclass
class SmoothingBaseline:
    """A fitted baseline: the chosen kernel width and penalty, and in ``scores`` the
    co-bps on the held-back training trials of each (width, penalty) tried."""

    width_s: float
    alpha: float
    bin_width_s: float
    scores: dict[tuple[float, float], float]
    _inputs: _Inputs  # how smoothed held-in spikes become the GLM's inputs
    _weights: np.ndarray  # (inputs + 1, held-out): the GLM, bias last

    def log_rates(self, heldin: np.ndarray) -> np.ndarray:
        """Predicted log counts per bin (trials, T, held-out) from held-in spikes (trials, T,
        held-in) binned like the training data."""
        X = _design(heldin, self.width_s / self.bin_width_s, self._inputs)
        return _predict(X, self._weights).reshape(*heldin.shape[:2], -1)

    def co_bps(self, heldin: np.ndarray, heldout: np.ndarray) -> float:
        """Held-out bits per spike (``mrlfads.metrics.bits_per_spike``) on these trials."""
        return bits_per_spike(heldout, self.log_rates(heldin))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything the fit holds, as plain arrays (``np.savez``, no pickles)."""
        keys = sorted(self.scores)
        return {"width_s": np.float64(self.width_s), "alpha": np.float64(self.alpha),
                "bin_width_s": np.float64(self.bin_width_s),
                "score_keys": np.array(keys, dtype=np.float64).reshape(-1, 2),
                "score_values": np.array([self.scores[k] for k in keys], dtype=np.float64),
                "mean": self._inputs.mean, "sd": self._inputs.sd,
                "components": self._inputs.components, "scale": self._inputs.scale,
                "weights": self._weights}

    @classmethod
    def from_arrays(cls, a: Mapping[str, np.ndarray]) -> SmoothingBaseline:
        """Inverse of ``to_arrays``; MetricsError where the arrays do not fit together."""
        try:
            inputs = _Inputs(*(np.asarray(a[k]) for k in ("mean", "sd", "components", "scale")))
            weights = np.asarray(a["weights"])
            n, k = inputs.components.shape
            if (inputs.mean.shape != (n,) or inputs.sd.shape != (n,)
                    or inputs.scale.shape != (k,) or weights.ndim != 2
                    or weights.shape[0] != k + 1):
                raise MetricsError("the arrays' shapes do not fit together")
            scores = {(float(w), float(al)): float(v)
                      for (w, al), v in zip(np.asarray(a["score_keys"]).reshape(-1, 2),
                                            np.asarray(a["score_values"]))}
            return cls(float(a["width_s"]), float(a["alpha"]), float(a["bin_width_s"]),
                       scores, inputs, weights)
        except (KeyError, TypeError, ValueError) as exc:
            raise MetricsError(f"not a saved smoothing baseline: {exc}") from exc


def fit_smoothing_baseline(heldin: np.ndarray, heldout: np.ndarray, bin_width_s: float,
                           cfg: SmoothingConfig | None = None) -> SmoothingBaseline:
    """Fit the baseline on training trials: ``heldin`` (trials, T, N) and ``heldout``
    (trials, T, H) spike counts, ``bin_width_s`` seconds a bin."""
    cfg = cfg or SmoothingConfig()
    heldin, heldout = _counts(heldin, "heldin"), _counts(heldout, "heldout")
    if heldin.shape[:2] != heldout.shape[:2]:
        raise MetricsError(f"heldin {heldin.shape} and heldout {heldout.shape} must share "
                           "their trials and bins")
    if heldin.shape[-1] == 0 or heldout.shape[-1] == 0:
        raise MetricsError("the smoothing baseline needs held-in and held-out neurons")
    n = heldin.shape[0]
    if n < 4:
        raise MetricsError(f"the smoothing baseline needs at least 4 training trials, got {n}")
    if cfg.first_alpha not in cfg.alphas:
        raise MetricsError(f"first_alpha {cfg.first_alpha} must be one of alphas {cfg.alphas}")
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(n)
    n_select = max(1, round(n * cfg.select_fraction))
    T = heldin.shape[1]
    select = _at_most(order[:n_select], T, cfg.max_fit_bins)
    fit = _at_most(order[n_select:], T, cfg.max_fit_bins)
    Y_fit = heldout[fit].reshape(-1, heldout.shape[-1])
    scores: dict[tuple[float, float], float] = {}

    def designs(width: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sd_bins = width / bin_width_s
        inputs = _inputs(heldin[fit], sd_bins, cfg.max_inputs)
        return (*(_design(heldin[rows], sd_bins, inputs) for rows in (fit, select)),
                inputs.penalty)

    def score(X_fit, X_sel, penalty, width, alpha, W0):
        W = _fit_glm(X_fit, Y_fit, alpha, W0, penalty)
        pred = _predict(X_sel, W).reshape(len(select), T, -1)
        scores[(width, alpha)] = bits_per_spike(heldout[select], pred)
        return W

    fitted = {}
    for width in cfg.widths_s:  # every kernel at the first penalty
        X_fit, X_sel, penalty = designs(width)
        fitted[width] = score(X_fit, X_sel, penalty, width, cfg.first_alpha, None)
    finite = {k: v for k, v in scores.items() if np.isfinite(v)}
    if finite:  # then every penalty at the best kernel, each from its neighbour's solution
        width = max(finite, key=finite.get)[0]
        X_fit, X_sel, penalty = designs(width)
        for side in (sorted(a for a in cfg.alphas if a > cfg.first_alpha),
                     sorted((a for a in cfg.alphas if a < cfg.first_alpha), reverse=True)):
            W = fitted[width]
            for alpha in side:
                W = score(X_fit, X_sel, penalty, width, alpha, W)
    finite = {k: v for k, v in scores.items() if np.isfinite(v)}
    if not finite:
        raise MetricsError("the smoothing baseline's held-back training trials hold no "
                           "held-out spike to choose a kernel with")
    width, alpha = max(finite, key=finite.get)
    every = _at_most(order, heldin.shape[1], cfg.max_fit_bins)
    inputs = _inputs(heldin[every], width / bin_width_s, cfg.max_inputs)
    X = _design(heldin[every], width / bin_width_s, inputs)
    W = _fit_glm(X, heldout[every].reshape(-1, heldout.shape[-1]), alpha, None, inputs.penalty)
    return SmoothingBaseline(width, alpha, bin_width_s, scores, inputs, W)


def _counts(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)  # counts are exact in float32, at half the memory
    if x.ndim != 3:
        raise MetricsError(f"{name}: expected spike counts (trials, T, neurons), got shape {x.shape}")
    return x


def _at_most(trials: np.ndarray, n_bins: int, max_bins: int) -> np.ndarray:
    """The first of ``trials`` (already shuffled) that fit in ``max_bins`` trial-bins."""
    return trials[: max(1, min(len(trials), max_bins // max(n_bins, 1)))]


def _smooth(spikes: np.ndarray, sd_bins: float) -> np.ndarray:
    return gaussian_filter1d(spikes, sd_bins, axis=1, mode="reflect")


@dataclass
class _Inputs:
    """Smoothed spikes -> GLM inputs: standardised per neuron, rotated onto their principal
    components (at most ``max_inputs`` of them, the leading ones) and each component scaled
    to unit variance. The L2 penalty on a component's weight is divided by that variance
    (``penalty``), which makes the fit exactly the ridge GLM on the standardised spikes
    when no component is dropped; the rotation and scaling only condition it, so that
    L-BFGS needs fewer steps. Dropping components removes the directions of least
    variance, which the penalty shrinks most anyway. (With the penalty left equal on
    unit-variance components, noise directions would be cheap: random-1's 5 Hz baseline
    then scores 0.056 instead of 0.071.)"""

    mean: np.ndarray
    sd: np.ndarray
    components: np.ndarray  # (held-in, k), orthonormal columns
    scale: np.ndarray  # (k,): each component's SD

    @property
    def penalty(self) -> np.ndarray:
        """Per GLM weight (k inputs, then the bias), its share of the L2 penalty."""
        return np.append(1.0 / self.scale.astype(np.float64) ** 2, 0.0)


def _inputs(heldin: np.ndarray, sd_bins: float, max_inputs: int) -> _Inputs:
    s = _smooth(heldin, sd_bins).reshape(-1, heldin.shape[-1])
    sd = s.std(axis=0)
    mean, sd = s.mean(axis=0), np.where(sd > 0, sd, 1.0)  # a silent neuron stays 0
    z = ((s - mean) / sd).astype(np.float32)
    variance, vectors = np.linalg.eigh((z.T @ z).astype(np.float64) / len(z))
    top = np.argsort(variance)[::-1][:max_inputs]
    top = top[variance[top] > 1e-6 * max(variance.max(), 1e-12)]  # no empty directions
    return _Inputs(mean, sd, vectors[:, top].astype(np.float32),
                   np.sqrt(variance[top]).astype(np.float32))


def _design(heldin: np.ndarray, sd_bins: float, inputs: _Inputs) -> np.ndarray:
    """The GLM's inputs (``_Inputs``), one row per trial-bin, with a last column of ones;
    in float32, which halves the fits' time (their sums are taken in float64)."""
    z = ((_smooth(heldin, sd_bins).reshape(-1, heldin.shape[-1]) - inputs.mean)
         / inputs.sd).astype(np.float32)
    z = (z @ inputs.components) / inputs.scale
    return np.hstack([z, np.ones((z.shape[0], 1), np.float32)])


def _predict(X: np.ndarray, W: np.ndarray) -> np.ndarray:
    return np.clip(X @ W.astype(X.dtype), *_LOG_RATE_BOUNDS)


def _fit_glm(X: np.ndarray, Y: np.ndarray, alpha: float, W0: np.ndarray | None,
             penalty: np.ndarray | None = None) -> np.ndarray:
    """Every held-out neuron's Poisson GLM at once (they share X): minimise, per neuron,
    mean over bins of (exp(eta) - y * eta) + alpha / 2 * sum_j penalty_j w_j^2; by default
    every weight's penalty is 1 but the bias's (the last input), which is 0."""
    n, p = X.shape
    q = Y.shape[1]
    if W0 is None:
        W0 = np.zeros((p, q))
        W0[-1] = np.log(np.maximum(Y.mean(axis=0), 1e-6))
    if penalty is None:
        penalised = np.ones((p, 1))
        penalised[-1] = 0.0
    else:
        penalised = np.asarray(penalty, dtype=np.float64).reshape(p, 1)

    Y = Y.astype(X.dtype)

    def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
        W = w.reshape(p, q)
        eta = _predict(X, W)
        mu = np.exp(eta)
        value = (mu - Y * eta).sum(dtype=np.float64) / n + 0.5 * alpha * float(
            (penalised * W**2).sum())
        grad = (X.T @ (mu - Y)).astype(np.float64) / n + alpha * penalised * W
        return value, grad.ravel()

    # ftol: a relative change of 1e-7 in the objective moves co-bps by far less than 1e-4
    res = minimize(objective, W0.ravel(), jac=True, method="L-BFGS-B",
                   options={"maxiter": 500, "ftol": 1e-7})
    return res.x.reshape(p, q)
