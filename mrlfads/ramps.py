"""KL and L2 warm-up ramps of the epoch (docs/MODEL.md, "Ramps and model selection")."""
from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Mapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)

# Per-epoch metric: 1.0 once every KL/L2 ramp has reached full weight. Every best-of
# selection (best.pt, the sweep's best trial: ``best_trial``, promote) ignores epochs where
# it is 0.
RAMPS_DONE = "ramps_done"


def selectable(metrics: Mapping[str, float]) -> bool:
    """Whether an epoch's metrics may be chosen as a best model (ramps done; metrics
    recorded before this flag existed count as selectable)."""
    return float(metrics.get(RAMPS_DONE, 1.0)) >= 1.0


def _finite(value: object) -> bool:
    return (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value))


def best_trial(last: Mapping[K, Mapping[str, float]], metric: str,
               mode: str = "min") -> K | None:
    """The trial whose latest ``metric`` is best: the one rule of the sweep summary, the
    Tune callback's parent run and ``promote``, so they name the same trial.

    ``last`` maps each trial that finished (callers leave failed ones out) to its latest
    metrics. NaN, infinite and missing values never win, nor a trial whose latest epoch came
    before its KL/L2 ramps had finished; a tie goes to the smallest key. None: no candidate.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode {mode!r} must be 'min' or 'max'")
    sign = 1.0 if mode == "min" else -1.0
    scored = [(sign * float(m[metric]), key) for key, m in last.items()
              if _finite(m.get(metric)) and selectable(m)]
    return min(scored, key=lambda s: (s[0], str(s[1])))[1] if scored else None


def ramp(epoch: float, start: int, length: int) -> float:
    """rho(e) = clip((e + 1 - start) / (length + 1), 0, 1).

    ``length=0`` gives a step to 1 at ``epoch = start``.
    """
    value = (float(epoch) + 1.0 - float(start)) / (float(length) + 1.0)
    return min(max(value, 0.0), 1.0)


def loss_weights(loss_cfg, epoch: float) -> dict[str, float]:
    """Effective weights of every regularised term at ``epoch`` (ramp x scale)."""
    return {
        "kl_ic": loss_cfg.ic_ramp(epoch) * loss_cfg.kl_ic_scale,
        "kl_co": loss_cfg.co_ramp(epoch) * loss_cfg.kl_co_scale,
        "kl_com": loss_cfg.com_ramp(epoch) * loss_cfg.kl_com_scale,
        "l2": loss_cfg.l2_ramp(epoch) * loss_cfg.l2_scale,
        "sparsity": loss_cfg.com_ramp(epoch) * loss_cfg.pathway_sparsity,
    }
