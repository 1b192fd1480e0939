"""The run configuration: model + loss + training + data, composed and checked against data.

A run config is built from the dataset's manifest (regions, neuron counts, tau, observation
model), then a user's YAML file and dotted-path overrides are set on top, both through
``mrlfads.config_utils.with_overrides`` (the path syntax of --set and search spaces).
Anything that disagrees with the data is rejected before a single epoch runs, naming both
sides.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from mrlfads.config import LossConfig, ModelConfig, RampConfig
from mrlfads.config_utils import ConfigError, from_dict, to_dict, with_overrides

OBJECTIVES = ("heldout", "sv", "recon")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and loop settings (defaults: docs/MODEL.md, "Defaults")."""

    epochs: int = 350
    batch_size: int = 16
    lr: float = 4e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 200.0
    # ReduceLROnPlateau runs only when no search controls the learning rate.
    lr_plateau: bool = True
    plateau_factor: float = 0.95
    plateau_patience: int = 6
    plateau_min_lr: float = 1e-5
    # The value PBT ranks (training/objective.py): heldout = held-out neurons' loss, else
    # the sample-validation reconstruction; sv = that one; recon = plain reconstruction.
    objective: str = "heldout"
    # Coordinated dropout and sample validation (training/masks.py): fractions of held-in
    # data elements hidden from the encoders. cd_rate only changes training steps (PBT may
    # change it); sv_rate fixes which elements are validation data (never mutable).
    cd_rate: float = 0.0
    sv_rate: float = 0.0
    smoothing: float = 0.7  # EMA weight on the previous smoothed value
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False  # bfloat16 autocast, CUDA only
    # Capture each training step as a CUDA graph and replay it (training/step.py): auto =
    # on CUDA, never on the CPU; true insists (an error without CUDA); false = eager.
    cuda_graph: bool | str = "auto"
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    # After the ramps, the per-epoch cut effectome (one forward pass per pathway, docs/
    # PERFORMANCE.md) is computed at every epoch that improves the smoothed objective (what
    # best.pt may hold), at the last epoch, at a sweep's checkpoints, and every N epochs
    # besides; 1 = every epoch. Other epochs report its keys as NaN.
    cut_effectome_every: int = 10
    # `mrlfads train` ends once this many epochs after the ramps bring no new best of the
    # smoothed objective (best.pt could no longer change unless one did); 0 trains every
    # epoch. Full default runs on spikes found their best 2-57 epochs after the ramps
    # ended and none later (docs/RESULTS.md). Sweeps stop by their population's plateau.
    patience: int = 50

    def __post_init__(self) -> None:
        errors = []
        for key in ("epochs", "batch_size", "cut_effectome_every"):
            if getattr(self, key) < 1:
                errors.append(f"train.{key}={getattr(self, key)} must be >= 1")
        if self.patience < 0:
            errors.append(f"train.patience={self.patience} must be >= 0 (0: no early stop)")
        if not self.lr > 0:
            errors.append(f"train.lr={self.lr} must be > 0")
        if self.objective not in OBJECTIVES:
            errors.append(f"train.objective={self.objective!r} must be one of {OBJECTIVES}")
        for key in ("cd_rate", "sv_rate"):
            if not 0.0 <= getattr(self, key) < 1.0:
                errors.append(f"train.{key}={getattr(self, key)} must be in [0, 1)")
        if self.objective == "sv" and not self.sv_rate > 0:
            errors.append("train.objective='sv' ranks on sample-validation elements: set "
                          "train.sv_rate > 0 (e.g. 0.1) too")
        if not 0.0 <= self.smoothing < 1.0:
            errors.append(f"train.smoothing={self.smoothing} must be in [0, 1)")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            errors.append(f"train.device={self.device!r} must be auto, cpu, cuda or cuda:N")
        if self.cuda_graph not in (True, False, "auto"):
            errors.append(f"train.cuda_graph={self.cuda_graph!r} must be auto, true or false")
        if self.grad_clip <= 0:
            errors.append(f"train.grad_clip={self.grad_clip} must be > 0")
        if errors:
            raise ConfigError("; ".join(errors))


@dataclass(frozen=True)
class DataConfig:
    """Where the Arrow dataset lives and which splits train and validate."""

    uri: str = ""
    train_split: str = "train"
    valid_split: str = "valid"


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs; what checkpoints and MLflow record."""

    model: ModelConfig
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunConfig":
        return from_dict(cls, data, where="run")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def with_overrides(self, overrides: Mapping[str, Any]) -> "RunConfig":
        """A copy with dotted paths set (``mrlfads.config_utils.with_overrides``)."""
        return with_overrides(self, overrides)

    @classmethod
    def for_dataset(
        cls,
        manifest: Any,
        *,
        uri: str = "",
        user: Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
        smoke_test: bool = False,
    ) -> "RunConfig":
        """The run config for ``manifest`` (a DatasetManifest), with a user's sections merged.

        ``user`` is a parsed YAML file with optional ``model``, ``loss``, ``train``, ``data``
        sections; its ``model.regions`` may override per-region sizes but must name the
        dataset's regions with the dataset's neuron counts. ``overrides`` are dotted paths
        (``--set``); both go through the one override function, overrides last.
        """
        cfg = from_dict(cls, _defaults_from_manifest(manifest, uri), where="run")
        if smoke_test:
            cfg = cfg.with_overrides(smoke_sizes())
        _check_region_names(user, manifest)
        # the file's sections and the dotted overrides in one step: validated together
        cfg = cfg.with_overrides({**dict(user or {}), **dict(overrides or {})})
        cfg = fit_ramps(cfg, explicit=smoke_test or sets_ramps(user, overrides))
        check_against_data(cfg, manifest)
        return cfg


DEFAULT_EPOCHS = TrainConfig.epochs  # the default ramps are laid out for a run this long


def sets_ramps(user: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None) -> bool:
    """Whether a user's config file or overrides set any KL/L2 ramp themselves."""
    loss = dict((user or {}).get("loss") or {})
    in_file = any(key.endswith("_ramp") for key in loss)
    in_overrides = any(path.startswith("loss.") and "_ramp" in path for path in overrides or {})
    return in_file or in_overrides


def fit_ramps(cfg: RunConfig, *, explicit: bool) -> RunConfig:
    """Lay the KL/L2 ramps out over ``train.epochs``, or refuse a run too short for them.

    The default ramps (docs/MODEL.md; spike counts have their own, ``default_ramps``) are
    written for a 350-epoch run; a run of N epochs without ramps of its own gets each
    default start and length times N / 350, so the
    bottlenecks act in every run. Ramps a user set are kept as they are. Either way every
    ramp must end before the last epoch: model selection (best.pt, PBT, the best trial) only
    looks at epochs after the ramps, and a run that never reaches one has nothing to pick.
    """
    epochs = cfg.train.epochs
    if not explicit and epochs != DEFAULT_EPOCHS:
        factor = epochs / DEFAULT_EPOCHS
        scaled = {name: RampConfig(round(r.start * factor), round(r.length * factor))
                  for name, r in default_ramps(cfg.model.obs_model).items()}
        cfg = replace(cfg, loss=replace(cfg.loss, **scaled))
    end = cfg.loss.ramps_end
    if end >= epochs:
        ramps = ", ".join(f"{k} {r.start}+{r.length}" for k, r in cfg.loss.ramps.items())
        how = ("set train.epochs (or --epochs) to more than that, or shorten the ramps you set"
               if explicit else f"use at least {_min_epochs(cfg.model.obs_model)} epochs")
        raise ConfigError(
            f"train.epochs={epochs} is too short for the KL/L2 ramps (start+length: {ramps}), "
            f"which end at epoch {end}: best.pt and every other model selection only consider "
            f"epochs after the ramps, so this run would have none. {how.capitalize()}.")
    return cfg


def _min_epochs(obs_model: str) -> int:
    """The shortest run whose scaled default ramps end before its last epoch."""
    epochs = 1
    while True:
        factor = epochs / DEFAULT_EPOCHS
        end = max(round(r.start * factor) + round(r.length * factor)
                  for r in default_ramps(obs_model).values())
        if end < epochs:
            return epochs
        epochs += 1


def smoke_sizes() -> dict[str, Any]:
    """A model and schedule small enough for tests and `--smoke-test` (seconds per epoch)."""
    return {
        "model": {"ic_enc_dim": 8, "ci_enc_dim": 8, "con_dim": 8, "co_dim": 2, "ic_dim": 4,
                  "com_dim": 2, "dropout": 0.05},
        "loss": {  # every ramp done after epoch 1, so a 2-epoch smoke run has a best epoch
            "ic_ramp": {"start": 0, "length": 1},
            "co_ramp": {"start": 0, "length": 1},
            "com_ramp": {"start": 0, "length": 1},
            "l2_ramp": {"start": 0, "length": 1},
        },
        "train": {"epochs": 6, "batch_size": 8, "lr": 1e-2},
    }


# The defaults for spike counts (docs/MODEL.md, "Defaults for spikes"): sparse counts carry
# far less information per bin than the Gaussian defaults' KL weights assume, so at those
# weights the bottlenecks starve the fit and absent pathways carry what present ones should.
# Values from the member that PBT's best trials descended from on three spiking networks,
# held fixed in `mrlfads train` on all five, two seeds each (docs/RESULTS.md, "Spikes").
# The ramps end at epoch 72 of 350, not 250: with a few hundred trials of sparse counts the
# long low-KL phase of the Gaussian layout overfits before any epoch may be selected. The
# pathway price (docs/MODEL.md, "Pathway sparsity") is left off here as on Gaussian data:
# it loses more present-above-absent orders than it wins (docs/RESULTS.md, "Pricing each
# pathway's drive").
POISSON_DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"dropout": 0.22},
    "loss": {"kl_ic_scale": 1.2e-3, "kl_co_scale": 1.5e-3, "kl_com_ratio": 44.0,
             "l2_scale": 5e4,
             "ic_ramp": {"start": 6, "length": 57}, "co_ramp": {"start": 6, "length": 57},
             "com_ramp": {"start": 43, "length": 29}, "l2_ramp": {"start": 29, "length": 23}},
    "train": {"lr": 5e-4, "cd_rate": 0.47},
}


def default_ramps(obs_model: str) -> dict[str, RampConfig]:
    """The KL/L2 ramps of a default ``DEFAULT_EPOCHS`` run on data of this observation
    model: spike counts' own (``POISSON_DEFAULTS``), else ``LossConfig``'s."""
    own = POISSON_DEFAULTS["loss"] if obs_model == "poisson" else {}
    return {name: RampConfig(**own[name]) if name in own else r
            for name, r in LossConfig().ramps.items()}


def sessions_from_manifest(manifest: Any) -> list[dict[str, Any]]:
    """The dataset's sessions as ``model.sessions`` entries (empty for one session)."""
    sessions = getattr(manifest, "sessions", ()) or ()
    if len(sessions) < 2:
        return []
    names = [r.name for r in manifest.regions]
    return [{"name": s.name, "heldin": [int(s.units[n][0]) for n in names],
             "heldout": [int(s.units[n][1]) for n in names]} for s in sessions]


def _defaults_from_manifest(manifest: Any, uri: str) -> dict[str, Any]:
    regions = [
        {"name": r.name, "n_heldin": r.n_heldin, "n_heldout": r.n_heldout,
         "ext_dim": int(manifest.ext_dims.get(r.name, 0))}
        for r in manifest.regions
    ]
    obs = POISSON_DEFAULTS if manifest.obs_model == "poisson" else {}
    return {
        "model": {**obs.get("model", {}), "regions": regions, "obs_model": manifest.obs_model,
                  "ic_enc_seq_len": manifest.ic_enc_seq_len,
                  "sessions": sessions_from_manifest(manifest)},
        "loss": dict(obs.get("loss", {})),
        "train": dict(obs.get("train", {})),
        "data": {"uri": uri},
    }


def _check_region_names(user: Mapping[str, Any] | None, manifest: Any) -> None:
    """A config file's ``model.regions`` entries set fields of the dataset's regions, named
    (never by position): an entry naming another region is refused with the data's names."""
    model = (user or {}).get("model")
    regions = model.get("regions") if isinstance(model, Mapping) else None
    if regions is None:
        return
    if not isinstance(regions, list):
        raise ConfigError("model.regions must be a list of {name: ..., ...} entries")
    data_names = [r.name for r in manifest.regions]
    for entry in regions:
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if name not in data_names:
            raise ConfigError(
                f"config model.regions names region {name!r}, but the dataset has regions "
                f"{data_names}: use the dataset's region names (see its dataset.json)")


def check_against_data(cfg: RunConfig, manifest: Any) -> None:
    """Reject a config that disagrees with the data, naming both sides."""
    errors = []
    cfg_names = [r.name for r in cfg.model.regions]
    data_names = [r.name for r in manifest.regions]
    if cfg_names != data_names:
        errors.append(f"config regions {cfg_names} != dataset regions {data_names}")
    else:
        for rc, rd in zip(cfg.model.regions, manifest.regions):
            if (rc.n_heldin, rc.n_heldout) != (rd.n_heldin, rd.n_heldout):
                errors.append(
                    f"region {rc.name}: config has {rc.n_heldin} held-in + {rc.n_heldout} held-out "
                    f"neurons, dataset has {rd.n_heldin} + {rd.n_heldout}"
                )
            data_ext = int(manifest.ext_dims.get(rd.name, 0))
            if rc.ext_dim != data_ext:
                errors.append(f"region {rc.name}: config ext_dim={rc.ext_dim}, dataset has {data_ext}")
    if cfg.model.obs_model != manifest.obs_model:
        errors.append(f"config obs_model={cfg.model.obs_model!r}, dataset is {manifest.obs_model!r}")
    data_sessions = sessions_from_manifest(manifest)
    cfg_sessions = [{"name": x.name, "heldin": list(x.heldin),
                     "heldout": list(x.heldout) or [0] * len(x.heldin)}
                    for x in cfg.model.sessions]
    if cfg_sessions != data_sessions:
        errors.append(f"config model.sessions {cfg_sessions} != the dataset's sessions "
                      f"{data_sessions} (they come from the data: drop model.sessions)")
    if manifest.n_bins < cfg.model.ic_enc_seq_len + 1:
        errors.append(
            f"dataset has T={manifest.n_bins} bins, fewer than the IC window "
            f"ic_enc_seq_len={cfg.model.ic_enc_seq_len} plus one"
        )
    for split in (cfg.data.train_split, cfg.data.valid_split):
        if manifest.splits.get(split, 0) < 1:
            errors.append(f"dataset has no trials in split {split!r} (splits: {dict(manifest.splits)})")
    if errors:
        raise ConfigError(
            "the run config does not match the dataset:\n  " + "\n  ".join(errors)
            + "\nFix the config file (or drop the conflicting keys so they come from the data)."
        )


def load_config_file(path: str | Path | None) -> dict[str, Any]:
    """Parse a YAML run-config file as YAML 1.2 (``lr: 1e-3`` is a number, as on the command
    line: training/yaml12.py); a missing or malformed file names the path."""
    from mrlfads.training.yaml12 import load

    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist: pass an existing YAML file to --config")
    try:
        data = load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping with model/loss/train/data sections")
    return data


__all__ = [
    "RunConfig", "TrainConfig", "DataConfig", "ModelConfig", "LossConfig", "RampConfig",
    "check_against_data", "load_config_file", "smoke_sizes",
]
