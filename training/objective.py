"""The validation score a run is selected on, and what keeps it honest.

A model can lower its reconstruction loss by copying its input to its output (identity
overfitting, the AutoLFADS lesson): a search ranked on plain reconstruction rewards exactly
the models that learned nothing. Every selection (PBT, best.pt, the sweep's best trial)
therefore ranks on a score the encoders could not copy:

1. held-out neurons (``valid/heldout_loss``): never an input, predicted from the factors;
2. sample validation (``valid/sv_recon_loss``): held-in elements hidden from the encoders
   in every epoch and scored only there (``train.sv_rate``, training/masks.py);
3. coordinated dropout (``train.cd_rate`` > 0): training never rewards reconstructing what
   the encoders saw, so plain reconstruction stays a fair score.

``train.objective: heldout`` (the default) takes the first of 1-2 the data and config
allow, ``sv`` takes 2, ``recon`` takes plain reconstruction (protected only by 3).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

HELDOUT = "valid/heldout_loss"
SV_RECON = "valid/sv_recon_loss"
RECON = "valid/recon_loss"

# what to do about an unprotected objective, for messages
FIX = ("add held-out neurons (mrlfads ingest --heldout 0.1), or hide elements from the "
       "encoders: --set train.sv_rate=0.1 (sample validation) or train.cd_rate=0.3 "
       "(coordinated dropout, > 0 for every trial)")

# per-epoch metrics that score the reconstruction of held-in data the encoders saw
_RECON_METRICS = ("valid/recon_loss", "valid/loss", "valid/elbo")
_RECON_PREFIXES = ("valid/recon/", "valid/bps", "valid/r2", "valid/psth_r2")


@dataclass(frozen=True)
class Objective:
    """``metric``: the per-epoch validation metric smoothed into ``objective``;
    ``protection``: why a copy-the-input model cannot win on it (None: nothing does);
    ``exposed``: regions whose reconstruction nothing protects while the objective ranks
    on other regions' held-out neurons."""

    metric: str
    protection: str | None
    exposed: tuple[str, ...] = ()

    def describe(self) -> str:
        how = self.protection or "UNPROTECTED: a model copying its input can win"
        return f"smoothed {self.metric} ({how})"


def resolve_objective(cfg: Any) -> Objective:
    """The objective of a RunConfig (its data's held-out neurons are in cfg.model.regions)."""
    t = cfg.train
    regions = cfg.model.regions
    with_heldout = [r.name for r in regions if r.n_heldout > 0]
    if t.objective == "heldout" and with_heldout:
        exposed = () if t.sv_rate > 0 or t.cd_rate > 0 else tuple(
            r.name for r in regions if r.n_heldout == 0)
        return Objective(HELDOUT, "held-out neurons", exposed)
    if t.objective in ("heldout", "sv") and t.sv_rate > 0:
        return Objective(SV_RECON, "sample validation, train.sv_rate")
    if t.cd_rate > 0:
        return Objective(RECON, "coordinated dropout, train.cd_rate")
    return Objective(RECON, None)


def metric_protection(metric: str, cfg: Any) -> str | None:
    """What protects a ranking metric of a search (``objective`` or a per-epoch key) from
    identity overfitting; None when it scores reconstruction nothing protects. Metrics that
    are not reconstructions (held-out scores, ground-truth recovery) count as protected."""
    if metric == "objective":
        return resolve_objective(cfg).protection
    if metric.startswith("valid/sv_recon"):
        return "sample validation, train.sv_rate" if cfg.train.sv_rate > 0 else None
    if metric in _RECON_METRICS or metric.startswith(_RECON_PREFIXES):
        return "coordinated dropout, train.cd_rate" if cfg.train.cd_rate > 0 else None
    return "not a reconstruction of the encoders' input"


def unprotected_warning(obj: Objective) -> str | None:
    """The warning `mrlfads train` prints for an objective that can reward copying."""
    if obj.protection is None:
        return (f"the objective ({obj.metric}) is plain reconstruction, which a model copying "
                f"its input wins; best.pt may be such a model. To protect it, {FIX}.")
    if obj.exposed:
        return (f"regions {list(obj.exposed)} have no held-out neurons: the objective ranks on "
                "the other regions' held-out neurons, and nothing stops these regions copying "
                "their input; set train.sv_rate (e.g. 0.1) or train.cd_rate to protect them.")
    return None
