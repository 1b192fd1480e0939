"""Sizes of each simulated benchmark: the SPEC section 7 defaults and a seconds-long smoke preset."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from data_loaders.simulate.train import TrainConfig

KINDS = ("memory-ring", "relay-decision", "random")
OBS_MODELS = ("gaussian", "poisson")


@dataclass(frozen=True)
class SimConfig:
    """Everything that sizes one simulation; the family modules read only what they need."""

    kind: str
    n_trials: int
    n_bins: int
    n_units: int                   # units per region (random: the largest choice)
    train: TrainConfig = field(default_factory=TrainConfig)
    bin_width_s: float = 0.02      # 20 ms bins: a 200-bin trial lasts 4 s
    ic_enc_seq_len: int = 10
    valid_frac: float = 0.2
    heldout_frac: float = 0.1
    # Poisson spikes: unit i fires base_i * exp(gain * h_i(t)) Hz. The base rates are
    # log-normal across units (rate_spread: sd of log base) and scaled so that the mean
    # over units, trials and bins is exactly rate_hz, as in a recording's summary.
    rate_hz: float = 5.0
    rate_spread: float = 0.5
    poisson_gain: float = 0.9
    max_msg_dim: int = 4           # random networks draw message dims from 1..max_msg_dim

    def __post_init__(self) -> None:
        errs = []
        if self.kind not in KINDS:
            errs.append(f"kind: {self.kind!r} is not one of {list(KINDS)}")
        if self.n_trials < 2:
            errs.append(f"trials: need at least 2 (one train, one valid), got {self.n_trials}")
        if self.n_bins < self.ic_enc_seq_len + 1 or self.n_bins < 8:
            errs.append(f"n_bins: {self.n_bins} is too short; need >= 8 and > ic_enc_seq_len "
                        f"({self.ic_enc_seq_len})")
        if self.n_units < 2:
            errs.append(f"n_units: need >= 2 units per region, got {self.n_units}")
        if not 0 < self.valid_frac < 1 or not 0 <= self.heldout_frac < 1:
            errs.append("valid_frac must be in (0, 1) and heldout_frac in [0, 1)")
        if not self.rate_hz > 0:
            errs.append(f"rate_hz: the mean firing rate must be > 0 Hz, got {self.rate_hz}")
        if not self.bin_width_s > 0:
            errs.append(f"bin width: must be > 0 s, got {self.bin_width_s}")
        if self.rate_spread < 0:
            errs.append(f"rate_spread: must be >= 0, got {self.rate_spread}")
        if errs:
            raise ValueError("simulation settings: " + "; ".join(errs))


_DEFAULTS = {
    "memory-ring": SimConfig("memory-ring", 2048, 200, 64,
                             TrainConfig(steps=600, batch_size=32, n_bins=40, lr=3e-3)),
    "relay-decision": SimConfig("relay-decision", 2048, 100, 64,
                                TrainConfig(steps=250, batch_size=32, n_bins=100, lr=3e-3)),
    "random": SimConfig("random", 2048, 100, 64,
                        TrainConfig(steps=400, batch_size=32, n_bins=100, lr=3e-3)),
}
_SMOKE = {"n_trials": 64, "n_bins": 40, "n_units": 8, "ic_enc_seq_len": 5, "max_msg_dim": 2,
              "train": TrainConfig(steps=20, batch_size=8, n_bins=40, lr=1e-2)}


def preset(kind: str, smoke_test: bool = False, *, trials: int | None = None,
           n_bins: int | None = None, n_units: int | None = None, rate_hz: float | None = None,
           bin_ms: float | None = None) -> SimConfig:
    """The default (or smoke) config of `kind`, with optional trials / length / size / mean
    firing rate / bin width overrides."""
    if kind not in _DEFAULTS:
        raise ValueError(f"kind: {kind!r} is not a simulated benchmark; choose one of {list(KINDS)}")
    cfg = _DEFAULTS[kind]
    if smoke_test:
        cfg = dataclasses.replace(cfg, **_SMOKE)
    width = None if bin_ms is None else bin_ms / 1000.0
    over = {k: v for k, v in (("n_trials", trials), ("n_bins", n_bins), ("n_units", n_units),
                              ("rate_hz", rate_hz), ("bin_width_s", width)) if v is not None}
    return dataclasses.replace(cfg, **over) if over else cfg
