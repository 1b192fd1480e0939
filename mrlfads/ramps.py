"""KL and L2 warm-up ramps of the epoch (docs/MODEL.md, "Ramps and model selection")."""
from __future__ import annotations

from collections.abc import Mapping

# Per-epoch metric: 1.0 once every KL/L2 ramp has reached full weight. Every best-of
# selection (best.pt, the sweep's best trial, promote) ignores epochs where it is 0.
RAMPS_DONE = "ramps_done"


def selectable(metrics: Mapping[str, float]) -> bool:
    """Whether an epoch's metrics may be chosen as a best model (ramps done; metrics
    recorded before this flag existed count as selectable)."""
    return float(metrics.get(RAMPS_DONE, 1.0)) >= 1.0


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
    }
