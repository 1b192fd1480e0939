"""Frozen configs of the model and its loss (docs/MODEL.md, "Generative model" to "Loss").

Every dimension can differ per region (neurons, generator, factors, external inputs); the
encoder/controller/message sizes are shared. Defaults: docs/MODEL.md, "Defaults".
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from mrlfads.config_utils import ConfigError, type_problems

OBS_MODELS = ("poisson", "gaussian")
MESSAGE_SOURCES = ("rates", "factors", "generator")
CONTROLLER_SEES = ("own", "all")
INPUT_PRIORS = ("white", "ar1")
_REGION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def pathway_pair(entry: str) -> tuple[str, str]:
    """``"src->dst"`` (spaces around the names allowed) -> ``(src, dst)``; ``dst`` is ""
    where there is no arrow."""
    src, _, dst = entry.partition("->")
    return src.strip(), dst.strip()


def _check(errors: list[str], where: str) -> None:
    if errors:
        raise ConfigError(f"invalid {where}: " + "; ".join(errors))


@dataclass(frozen=True)
class RegionConfig:
    """One recorded region: held-in/held-out neuron counts, optional per-region sizes."""

    name: str
    n_heldin: int
    n_heldout: int = 0
    ext_dim: int = 0
    gen_dim: int | None = None  # None -> 2 * n_heldin
    fac_dim: int | None = None  # None -> n_heldin

    def __post_init__(self) -> None:
        _check(type_problems(self), f"region {self.name!r}")  # before any comparison
        errors = []
        if not isinstance(self.name, str) or not _REGION_NAME.match(self.name):
            errors.append(f"name {self.name!r} must match {_REGION_NAME.pattern}")
        if self.n_heldin < 1:
            errors.append(f"n_heldin={self.n_heldin} must be >= 1")
        for key in ("n_heldout", "ext_dim"):
            if getattr(self, key) < 0:
                errors.append(f"{key}={getattr(self, key)} must be >= 0")
        for key in ("gen_dim", "fac_dim"):
            value = getattr(self, key)
            if value is not None and value < 1:
                errors.append(f"{key}={value} must be >= 1 (or null for the default)")
        _check(errors, f"region {self.name!r}")

    @property
    def gen_size(self) -> int:
        return self.gen_dim if self.gen_dim is not None else 2 * self.n_heldin

    @property
    def fac_size(self) -> int:
        return self.fac_dim if self.fac_dim is not None else self.n_heldin


@dataclass(frozen=True)
class SessionConfig:
    """One recording session of a stitched model (docs/MODEL.md, "Several sessions"): how
    many of each region's neurons it recorded. Each region's neurons are the union of all
    sessions' in session order (held-in: session 0's, then 1's, ...; held-out likewise), so
    these counts say which columns are this session's. 0 held-in: the session did not
    record the region."""

    name: str
    heldin: tuple[int, ...]  # per region, in the model's region order
    heldout: tuple[int, ...] = ()  # per region; empty: none held out

    def __post_init__(self) -> None:
        object.__setattr__(self, "heldin", tuple(self.heldin))
        object.__setattr__(self, "heldout", tuple(self.heldout))
        _check(type_problems(self), f"session {self.name!r}")
        errors = []
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 0
               for n in self.heldin + self.heldout):
            errors.append(f"heldin={list(self.heldin)}, heldout={list(self.heldout)}: counts "
                          "must be integers >= 0")
        elif not any(self.heldin):
            errors.append("records no region (every heldin count is 0)")
        _check(errors, f"session {self.name!r}")


@dataclass(frozen=True)
class ModelConfig:
    """The whole MR-LFADS model; saved in every checkpoint so it can be rebuilt alone."""

    regions: tuple[RegionConfig, ...]
    obs_model: str
    ic_enc_seq_len: int = 10
    ic_enc_dim: int = 64
    ci_enc_dim: int = 64
    con_dim: int = 128
    co_dim: int = 6
    ic_dim: int = 64
    com_dim: int = 12
    dropout: float = 0.3
    cell_clip: float = 5.0
    message_source: str = "rates"
    # what each region's controller-input encoder reads: "own" (its region's neurons only)
    # or "all" (every region's); docs/MODEL.md, "Ablations"
    controller_sees: str = "own"
    # how many bins past t the controller-input encoding of bin t has read (0: up to t,
    # causal; -1: up to t - 1, a lag); the last bins read the encoder's last state, the
    # first bins of a lag its zero initial state; docs/MODEL.md, "Ablations"
    controller_lookahead: int = 0
    # in training, the chance that a pathway's message is zero for a whole trial (each
    # pathway and trial drawn alone); 0: never; docs/MODEL.md, "Ablations"
    pathway_dropout: float = 0.0
    # True: a message's gradient trains its map but stops at its source, so the target's
    # likelihood never shapes the source's states, inputs or readout; docs/MODEL.md,
    # "Ablations"
    detach_message_source: bool = False
    inferred_inputs: bool = True
    prior_var: float = 0.1
    # the inferred inputs' prior: "white" (independent in every bin, the default) or "ar1"
    # (an autoregressive process, LFADS's prior: a slowly varying input costs only its
    # changes), with a learnt time constant per dimension starting at input_prior_tau bins;
    # docs/MODEL.md, "Ablations"
    input_prior: str = "white"
    input_prior_tau: float = 10.0
    # False: every message prior keeps variance prior_var (a fixed price per unit of message
    # information) instead of being learnt per pathway; docs/MODEL.md, "Ablations"
    learn_message_prior: bool = True
    # several sessions with their own neurons, stitched onto shared dynamics; empty: one
    # session that recorded every neuron
    sessions: tuple[SessionConfig, ...] = ()
    # the pathways that may carry a message, as "src->dst"; every other one is closed: its
    # message is zero and costs no KL. Empty: every ordered pair of regions is open.
    # docs/MODEL.md, "Closed pathways"
    pathways: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "regions", tuple(self.regions))
        object.__setattr__(self, "sessions", tuple(self.sessions))
        object.__setattr__(self, "pathways", tuple(self.pathways))
        _check(type_problems(self), "model config")  # before any comparison
        errors = []
        if len(self.regions) < 1:
            errors.append("regions: need at least one region")
        names = [r.name for r in self.regions]
        if len(set(names)) != len(names):
            errors.append(f"regions: names must be unique, got {names}")
        if self.obs_model not in OBS_MODELS:
            errors.append(f"obs_model={self.obs_model!r} must be one of {OBS_MODELS}")
        if self.message_source not in MESSAGE_SOURCES:
            errors.append(f"message_source={self.message_source!r} must be one of {MESSAGE_SOURCES}")
        if self.controller_sees not in CONTROLLER_SEES:
            errors.append(f"controller_sees={self.controller_sees!r} must be one of "
                          f"{CONTROLLER_SEES}")
        for key in ("ic_enc_seq_len", "ic_enc_dim", "ci_enc_dim", "con_dim", "co_dim", "ic_dim",
                    "com_dim"):
            if getattr(self, key) < 1:
                errors.append(f"{key}={getattr(self, key)} must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            errors.append(f"dropout={self.dropout} must be in [0, 1)")
        if not 0.0 <= self.pathway_dropout < 1.0:
            errors.append(f"pathway_dropout={self.pathway_dropout} must be in [0, 1)")
        if self.cell_clip <= 0:
            errors.append(f"cell_clip={self.cell_clip} must be > 0")
        if self.prior_var <= 0:
            errors.append(f"prior_var={self.prior_var} must be > 0")
        if self.input_prior not in INPUT_PRIORS:
            errors.append(f"input_prior={self.input_prior!r} must be one of {INPUT_PRIORS}")
        if not self.input_prior_tau > 0:
            errors.append(f"input_prior_tau={self.input_prior_tau} must be > 0 (bins)")
        errors += self._session_problems()
        errors += self._pathway_problems(names)
        _check(errors, "model config")

    def _pathway_problems(self, names: list[str]) -> list[str]:
        """Each entry of ``pathways`` names an ordered pair of two different regions, once."""
        if not all(isinstance(e, str) for e in self.pathways):
            return [f"pathways: {list(self.pathways)} must be strings 'SRC->DST'"]
        errors = []
        pairs = [pathway_pair(entry) for entry in self.pathways]
        for entry, (src, dst) in zip(self.pathways, pairs):
            if "->" not in entry or src not in names or dst not in names or src == dst:
                errors.append(f"pathways: {entry!r} is not 'SRC->DST' for two different regions "
                              f"of {names}; write e.g. '{names[0]}->{names[-1]}'")
        if len(set(pairs)) != len(pairs):
            errors.append(f"pathways: {list(self.pathways)} names a pathway twice")
        return errors

    def _session_problems(self) -> list[str]:
        """Sessions must partition every region's neurons (see SessionConfig)."""
        if not self.sessions:
            return []
        errors = []
        names = [s.name for s in self.sessions]
        if len(set(names)) != len(names):
            errors.append(f"sessions: names must be unique, got {names}")
        R = len(self.regions)
        for s in self.sessions:
            if len(s.heldin) != R or len(s.heldout) not in (0, R):
                errors.append(f"sessions: {s.name!r} gives {len(s.heldin)} heldin / "
                              f"{len(s.heldout)} heldout counts; need one per region ({R})")
        if errors:
            return errors
        for r, reg in enumerate(self.regions):
            n_in = sum(s.heldin[r] for s in self.sessions)
            n_out = sum(s.heldout[r] if s.heldout else 0 for s in self.sessions)
            if (n_in, n_out) != (reg.n_heldin, reg.n_heldout):
                errors.append(f"sessions: region {reg.name!r} has {reg.n_heldin} held-in and "
                              f"{reg.n_heldout} held-out neurons but the sessions' counts sum "
                              f"to {n_in} and {n_out}")
        return errors

    @property
    def n_sessions(self) -> int:
        return max(1, len(self.sessions))

    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regions)

    @property
    def pairs(self) -> tuple[tuple[int, int], ...]:
        """Ordered (src, dst) pairs, grouped by destination then source: the message order."""
        n = len(self.regions)
        return tuple((s, r) for r in range(n) for s in range(n) if s != r)

    @property
    def open_pathways(self) -> tuple[bool, ...]:
        """Per pair of ``pairs``: whether it may carry a message (all, when ``pathways`` is
        empty)."""
        if not self.pathways:
            return (True,) * len(self.pairs)
        names = self.region_names
        wanted = {pathway_pair(entry) for entry in self.pathways}
        return tuple((names[s], names[r]) in wanted for s, r in self.pairs)


@dataclass(frozen=True)
class RampConfig:
    """KL/L2 warm-up: rho(e) = clip((e + 1 - start) / (length + 1), 0, 1)."""

    start: int
    length: int

    def __post_init__(self) -> None:
        _check(type_problems(self), "ramp")  # before any comparison
        errors = []
        if self.start < 0:
            errors.append(f"start={self.start} must be >= 0")
        if self.length < 0:
            errors.append(f"length={self.length} must be >= 0")
        _check(errors, "ramp")

    def __call__(self, epoch: int) -> float:
        from mrlfads.ramps import ramp

        return ramp(epoch, self.start, self.length)


@dataclass(frozen=True)
class LossConfig:
    """Loss weights (the PBT-searched scales) and their ramps.

    b_m = kl_co_scale / kl_com_ratio: the ratio >= 1 keeps communication cheaper than
    unexplained inputs (the structured bottleneck, docs/MODEL.md, "Loss").
    ``pathway_sparsity`` prices each pathway's drive norm (nats per unit), on the messages'
    ramp; 0 turns it off (docs/MODEL.md, "Pathway sparsity").
    """

    kl_ic_scale: float = 1.0
    kl_co_scale: float = 1.0
    kl_com_ratio: float = 10.0
    l2_scale: float = 1e4
    pathway_sparsity: float = 0.0
    ic_ramp: RampConfig = field(default_factory=lambda: RampConfig(20, 200))
    co_ramp: RampConfig = field(default_factory=lambda: RampConfig(20, 200))
    com_ramp: RampConfig = field(default_factory=lambda: RampConfig(150, 100))
    l2_ramp: RampConfig = field(default_factory=lambda: RampConfig(100, 80))

    def __post_init__(self) -> None:
        _check(type_problems(self), "loss config")  # before any comparison
        errors = []
        for key in ("kl_ic_scale", "kl_co_scale", "l2_scale", "pathway_sparsity"):
            if getattr(self, key) < 0:
                errors.append(f"{key}={getattr(self, key)} must be >= 0")
        if not self.kl_com_ratio >= 1.0:
            errors.append(f"kl_com_ratio={self.kl_com_ratio} must be >= 1 (messages must be "
                          "cheaper than inferred inputs)")
        _check(errors, "loss config")

    @property
    def kl_com_scale(self) -> float:
        return self.kl_co_scale / self.kl_com_ratio

    @property
    def ramps(self) -> dict[str, RampConfig]:
        return {"ic_ramp": self.ic_ramp, "co_ramp": self.co_ramp, "com_ramp": self.com_ramp,
                "l2_ramp": self.l2_ramp}

    @property
    def ramps_end(self) -> int:
        """The first (0-based) epoch at which every KL/L2 ramp has reached 1: before it the
        objective is not the one the model is meant to minimise, so no model selection
        (best.pt, PBT exploits, the best trial) may pick an earlier epoch."""
        return max(r.start + r.length for r in self.ramps.values())
