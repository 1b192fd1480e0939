"""Sizes of each simulated benchmark: the defaults of docs/MODEL.md, "The simulated benchmark",
and a seconds-long smoke preset."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mrlfads.data_loaders.simulate.train import TrainConfig

STEP_S = 0.02  # duration of one step of every simulated network

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
    # One network step lasts STEP_S in real time, whatever the bins: finer bins split a step
    # (the rates hold over it), coarser bins pool whole steps. Binning then changes what a
    # bin holds, never how fast the network evolves. n_bins counts bins, not steps.
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
        elif self.steps_per_bin is None:
            errs.append(f"bin width: {self.bin_width_s * 1000:g} ms must divide the networks' "
                        f"{STEP_S * 1000:g} ms step (e.g. 5, 10, 20 ms) or be a whole multiple "
                        "of it (40, 60 ms)")
        elif self.n_steps is None:
            errs.append(f"n_bins: {self.n_bins} bins of {self.bin_width_s * 1000:g} ms is not a "
                        f"whole number of {STEP_S * 1000:g} ms network steps; use a multiple of "
                        f"{round(STEP_S / self.bin_width_s)}")
        if self.rate_spread < 0:
            errs.append(f"rate_spread: must be >= 0, got {self.rate_spread}")
        if errs:
            raise ValueError("simulation settings: " + "; ".join(errs))

    @property
    def steps_per_bin(self) -> float | None:
        """Network steps per bin: 1/k for bins that split a step in k, m for bins pooling m
        steps; None when the bin width is neither."""
        split, pool = STEP_S / self.bin_width_s, self.bin_width_s / STEP_S
        if split >= 1 and abs(split - round(split)) < 1e-6:
            return 1.0 / round(split)
        if pool >= 1 and abs(pool - round(pool)) < 1e-6:
            return float(round(pool))
        return None

    @property
    def n_steps(self) -> int | None:
        """Network steps per trial (None if the bins do not tile whole steps)."""
        steps = self.n_bins * (self.steps_per_bin or 0)
        return round(steps) if steps >= 1 and abs(steps - round(steps)) < 1e-6 else None


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
    if n_bins is None and width is not None:
        # keep the preset's trial duration: its bins are whole 20 ms steps
        n_bins = max(1, round(cfg.n_bins * STEP_S / width))
    over = {k: v for k, v in (("n_trials", trials), ("n_bins", n_bins), ("n_units", n_units),
                              ("rate_hz", rate_hz), ("bin_width_s", width)) if v is not None}
    return dataclasses.replace(cfg, **over) if over else cfg
