"""Search spaces as data: YAML in, frozen dataclasses out, every problem reported at once.

A space names each hyperparameter by its dotted path into ``mrlfads.training.config.RunConfig``
(``train.lr``, ``loss.kl_ic_scale``; ``model.regions.*.gen_dim`` sets a field on every
region), never by list position, so a space reads like the config it changes and survives
reordering. ``SearchSpace.to_dict`` is plain JSON, so a space can be logged and reloaded.

Two kinds:
- ``pbt``: continuous hyperparameters PBT perturbs mid-run (bounds, log/linear scale, an
  initial distribution or fixed value, an exploration weight).
- ``optuna``: TPE over what cannot change mid-run (sizes, ablations): floats, ints or
  categorical choices, with ASHA stopping the weak trials early.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from mrlfads.search_spaces.errors import SearchSpaceError

KINDS = ("pbt", "optuna")
SCALES = ("log", "linear")
TYPES = ("float", "int", "categorical")
INIT_DISTRIBUTIONS = ("uniform", "loguniform")
AUTO = "auto"  # resources: auto / gpu: auto, settled against the cluster (training/resources.py)
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.([A-Za-z_][A-Za-z0-9_]*|\*))+$")

_SCHEDULER_KEYS = {
    "common": {"metric", "mode"},
    "pbt": {"population", "perturbation_interval", "burn_in", "quantile_fraction", "synch",
            "patience", "min_delta", "seed_with_defaults"},
    "optuna": {"num_samples", "max_concurrent", "grace_period", "reduction_factor"},
}


def _number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-5`` (no dot) as a string: accept numeric strings as floats."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Hyperparameter:
    """One searched config field: where it lives, its range and how it is sampled/perturbed."""

    path: str
    type: str = "float"
    bounds: tuple[float, float] | None = None
    scale: str = "linear"
    init: str | float = "uniform"  # distribution over bounds (in `scale` space) or a value
    explore_weight: float = 0.3  # PBT: factor range exp(+-log(1+w)) (log) or +-w*range
    choices: tuple[Any, ...] | None = None  # categorical only

    def problems(self, where: str) -> list[str]:
        """Every reason this hyperparameter is invalid, each naming its key."""
        out: list[str] = []
        if not isinstance(self.path, str) or not _PATH.match(self.path):
            out.append(f"`{where}`: the path must be a dotted config path such as 'train.lr' "
                       f"(got {self.path!r})")
        if self.type not in TYPES:
            return out + [f"`{where}.type`: must be one of {TYPES} (got {self.type!r})"]
        if self.type == "categorical":
            if not self.choices:
                out.append(f"`{where}.choices`: a categorical hyperparameter needs a non-empty "
                           "list of choices")
            if self.bounds is not None:
                out.append(f"`{where}.bounds`: a categorical hyperparameter takes `choices`, "
                           "not `bounds`")
            return out
        if self.choices is not None:
            out.append(f"`{where}.choices`: only categorical hyperparameters take choices; "
                       "use `bounds` or set type: categorical")
        if self.scale not in SCALES:
            out.append(f"`{where}.scale`: must be one of {SCALES} (got {self.scale!r})")
        if self.bounds is None or len(self.bounds) != 2 or not all(map(_is_real, self.bounds)):
            return out + [f"`{where}.bounds`: must be a list [low, high] of two finite numbers "
                          f"(got {self.bounds!r})"]
        low, high = self.bounds
        if not low < high:
            out.append(f"`{where}.bounds`: The `low` value must be smaller than the `high` "
                       f"value (low={low}, high={high}).")
        if self.scale == "log" and low <= 0:
            out.append(f"`{where}.bounds`: The `low` value must be larger than 0 for a log "
                       f"scale (low={low}, high={high}); use scale: linear or a positive low.")
        if self.type == "int" and not (float(low).is_integer() and float(high).is_integer()):
            out.append(f"`{where}.bounds`: an int hyperparameter needs integer bounds "
                       f"(got {list(self.bounds)})")
        if isinstance(self.init, str):
            if self.init not in INIT_DISTRIBUTIONS:
                out.append(f"`{where}.init`: must be a number within the bounds or one of "
                           f"{INIT_DISTRIBUTIONS} (got {self.init!r})")
            elif self.init == "loguniform" and low <= 0:
                out.append(f"`{where}.init`: loguniform needs bounds above 0 (low={low})")
        elif not _is_real(self.init) or not low <= self.init <= high:
            out.append(f"`{where}.init`: the fixed initial value {self.init!r} must lie within "
                       f"the bounds [{low}, {high}]")
        if not _is_real(self.explore_weight) or self.explore_weight <= 0:
            out.append(f"`{where}.explore_weight`: must be a number > 0 "
                       f"(got {self.explore_weight!r})")
        elif self.scale == "linear" and self.explore_weight > 1:
            out.append(f"`{where}.explore_weight`: a linear step of more than the whole range "
                       f"is meaningless; use a weight <= 1 (got {self.explore_weight})")
        return out

    @property
    def init_distribution(self) -> str | None:
        """'uniform' means uniform in the hyperparameter's own scale; None for a fixed value."""
        if not isinstance(self.init, str):
            return None
        if self.init == "uniform" and self.scale == "log":
            return "loguniform"
        return self.init


@dataclass(frozen=True)
class SchedulerSettings:
    """How trials are scheduled; the PBT fields are ignored by optuna spaces and vice versa."""

    metric: str = "objective"
    mode: str = "min"
    # PBT
    population: int = 8
    perturbation_interval: int = 25  # epochs; also the checkpoint interval (one place)
    burn_in: int | str = "ramps"  # epochs, or 'ramps': until every KL/L2 ramp has finished
    quantile_fraction: float = 0.25
    synch: bool = False
    patience: int = 4  # generations without a better population best before the sweep ends
    min_delta: float = 0.0
    # one member starts from the run config's own values (clipped to the bounds), so the
    # search starts from the hand-set configuration as well as from random draws
    seed_with_defaults: bool = True
    # Optuna + ASHA
    num_samples: int = 16
    max_concurrent: int = 4
    grace_period: int = 20
    reduction_factor: float = 3.0

    def problems(self, where: str, kind: str) -> list[str]:
        out: list[str] = []
        if not isinstance(self.metric, str) or not self.metric:
            out.append(f"`{where}.metric`: must be a metric name such as 'objective'")
        if self.mode not in ("min", "max"):
            out.append(f"`{where}.mode`: must be 'min' or 'max' (got {self.mode!r})")
        ints = {"pbt": {"population": 2, "perturbation_interval": 1, "patience": 1},
                "optuna": {"num_samples": 1, "max_concurrent": 1, "grace_period": 1}}[kind]
        for key, least in ints.items():
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                out.append(f"`{where}.{key}`: must be an integer >= {least} (got {value!r})")
        if kind == "pbt":
            burn = self.burn_in
            if burn != "ramps" and (not isinstance(burn, int) or isinstance(burn, bool) or burn < 0):
                out.append(f"`{where}.burn_in`: must be an integer number of epochs >= 0 or "
                           f"'ramps' (got {burn!r})")
            q = self.quantile_fraction
            if not _is_real(q) or not 0 < q <= 0.5:
                out.append(f"`{where}.quantile_fraction`: must be in (0, 0.5] (got {q!r})")
            for key in ("synch", "seed_with_defaults"):
                if not isinstance(getattr(self, key), bool):
                    out.append(f"`{where}.{key}`: must be true or false (got {getattr(self, key)!r})")
            if not _is_real(self.min_delta) or self.min_delta < 0:
                out.append(f"`{where}.min_delta`: must be a number >= 0 (got {self.min_delta!r})")
        elif not _is_real(self.reduction_factor) or self.reduction_factor <= 1:
            out.append(f"`{where}.reduction_factor`: must be a number > 1 "
                       f"(got {self.reduction_factor!r})")
        return out


@dataclass(frozen=True)
class Resources:
    """What one trial asks Ray for; fractional GPUs pack several small models on one card.

    ``gpu: auto`` (the default; ``resources: auto`` is ``{cpu: 1, gpu: auto}``) is settled
    when the sweep starts, from what the cluster has or can start (training/resources.py):
    a packed share of a GPU where there are GPUs, none otherwise."""

    cpu: float = 1.0
    gpu: float | str = AUTO

    @property
    def auto(self) -> bool:
        return isinstance(self.gpu, str) and self.gpu == AUTO

    def problems(self, where: str) -> list[str]:
        out = []
        if not _is_real(self.cpu) or self.cpu <= 0:
            out.append(f"`{where}.cpu`: must be a number > 0 (fractions allowed), got {self.cpu!r}")
        if self.auto:
            return out
        if not _is_real(self.gpu) or self.gpu < 0:
            out.append(f"`{where}.gpu`: must be {AUTO!r} or a number >= 0, got {self.gpu!r}")
        elif self.gpu > 1 and not float(self.gpu).is_integer():
            out.append(f"`{where}.gpu`: above 1 a trial must ask for whole GPUs (got {self.gpu}); "
                       "fractions are for packing several trials on one card")
        return out

    def as_tune(self) -> dict[str, float]:
        """Ray's per-trial request; ``gpu: auto`` must be settled against the cluster first
        (mrlfads.training.resources.trial_resources)."""
        if self.auto:
            raise ValueError("resources gpu: auto depends on the cluster: settle it with "
                             "mrlfads.training.resources.trial_resources")
        return {"cpu": float(self.cpu), "gpu": float(self.gpu)}


@dataclass(frozen=True)
class SearchSpace:
    """A whole search: its kind, scheduler, per-trial resources and hyperparameters."""

    kind: str
    hyperparameters: tuple[Hyperparameter, ...]
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    resources: Resources = field(default_factory=Resources)
    fixed: Mapping[str, Any] = field(default_factory=dict)  # path -> value for every trial
    seed: int = 0
    max_failures: int = 2  # retries of a failed trial, each from its last checkpoint

    def __post_init__(self) -> None:
        object.__setattr__(self, "hyperparameters", tuple(self.hyperparameters))
        object.__setattr__(self, "fixed", dict(self.fixed))
        errors = self.problems()
        if errors:
            raise SearchSpaceError("invalid search space:\n  " + "\n  ".join(errors))

    def problems(self) -> list[str]:
        if self.kind not in KINDS:
            return [f"`kind`: must be one of {KINDS} (got {self.kind!r})"]
        out: list[str] = []
        if not self.hyperparameters:
            out.append("`hyperparameters`: at least one hyperparameter is needed")
        seen: set[str] = set()
        for hp in self.hyperparameters:
            where = f"hyperparameters.{hp.path}"
            out += hp.problems(where)
            if hp.path in seen:
                out.append(f"`{where}`: listed twice")
            seen.add(hp.path)
            if self.kind == "pbt" and hp.type != "float":
                out.append(f"`{where}.type`: PBT perturbs continuous values only; search "
                           f"{hp.type} hyperparameters in an optuna space")
        for path in self.fixed:
            if not isinstance(path, str) or not _PATH.match(path):
                out.append(f"`fixed.{path}`: must be a dotted config path such as 'train.epochs'")
            elif path in seen:
                out.append(f"`fixed.{path}`: also searched under `hyperparameters`; keep one")
        out += self.scheduler.problems("scheduler", self.kind)
        out += self.resources.problems("resources")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            out.append(f"`seed`: must be an integer (got {self.seed!r})")
        if not isinstance(self.max_failures, int) or self.max_failures < 0:
            out.append(f"`max_failures`: must be an integer >= 0 (got {self.max_failures!r})")
        return out

    # -- views ------------------------------------------------------------------------
    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(hp.path for hp in self.hyperparameters)

    def __getitem__(self, path: str) -> Hyperparameter:
        for hp in self.hyperparameters:
            if hp.path == path:
                return hp
        raise KeyError(path)

    def with_scheduler(self, **changes: Any) -> "SearchSpace":
        """A copy with scheduler fields replaced (validated again)."""
        sched = {f.name: getattr(self.scheduler, f.name) for f in fields(self.scheduler)}
        sched.update(changes)
        return SearchSpace(self.kind, self.hyperparameters, SchedulerSettings(**sched),
                           self.resources, self.fixed, self.seed, self.max_failures)

    # -- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict in the YAML layout; ``from_dict(to_dict(s)) == s``."""
        hps = {}
        for hp in self.hyperparameters:
            entry: dict[str, Any] = {"type": hp.type}
            if hp.type == "categorical":
                entry["choices"] = list(hp.choices or ())
            else:
                entry.update(bounds=list(hp.bounds or ()), scale=hp.scale, init=hp.init,
                             explore_weight=hp.explore_weight)
            hps[hp.path] = entry
        sched_keys = _SCHEDULER_KEYS["common"] | _SCHEDULER_KEYS[self.kind]
        return {
            "kind": self.kind,
            "seed": self.seed,
            "max_failures": self.max_failures,
            "scheduler": {k: getattr(self.scheduler, k) for k in sorted(sched_keys)},
            "resources": {"cpu": self.resources.cpu, "gpu": self.resources.gpu},
            "fixed": dict(self.fixed),
            "hyperparameters": hps,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "SearchSpace":
        return cls.from_dict(json.loads(text), source="<json>")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SearchSpace":
        """Load and validate a YAML space; errors name the file and every bad key."""
        import yaml

        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise SearchSpaceError(f"{path}: cannot read the search space ({exc.strerror}); "
                                   "pass an existing file with --space") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SearchSpaceError(f"{path}: not valid YAML: {exc}") from exc
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> "SearchSpace":
        """Build from the YAML layout; raises SearchSpaceError listing every problem."""
        errors: list[str] = []
        space = _parse(data, errors)
        if errors or space is None:
            raise SearchSpaceError(f"{source}: invalid search space:\n  " + "\n  ".join(errors))
        return space


def _unknown(section: Mapping, known: set[str], where: str, errors: list[str]) -> None:
    for key in sorted(set(section) - known, key=str):
        errors.append(f"`{where}{key}`: unknown key; known keys: {sorted(known)}")


def _parse(data: Any, errors: list[str]) -> SearchSpace | None:
    """Structural parsing (types, unknown keys); value checks live in ``problems``."""
    if not isinstance(data, Mapping):
        errors.append(f"the file must be a mapping with `kind` and `hyperparameters` "
                      f"(got {type(data).__name__})")
        return None
    top = {"kind", "seed", "max_failures", "scheduler", "resources", "fixed", "hyperparameters"}
    _unknown(data, top, "", errors)
    kind = data.get("kind", "pbt")
    if kind not in KINDS:
        errors.append(f"`kind`: must be one of {KINDS} (got {kind!r})")
        return None
    sections = {}
    for key in ("scheduler", "resources", "fixed", "hyperparameters"):
        value = data.get(key, {})
        if value is None or (key == "resources" and value == AUTO):
            value = {}  # resources: auto is the default: 1 CPU, gpu: auto
        if not isinstance(value, Mapping):
            what = f"{AUTO!r} or a mapping with cpu and gpu" if key == "resources" else "a mapping"
            errors.append(f"`{key}`: must be {what} (got {type(value).__name__})")
            value = {}
        sections[key] = value
    sched_known = _SCHEDULER_KEYS["common"] | _SCHEDULER_KEYS[kind]
    _unknown(sections["scheduler"], sched_known, "scheduler.", errors)
    sched = {k: _number(v) if k in ("quantile_fraction", "min_delta", "reduction_factor") else v
             for k, v in sections["scheduler"].items() if k in sched_known}
    _unknown(sections["resources"], {"cpu", "gpu"}, "resources.", errors)
    res = {k: _number(v) for k, v in sections["resources"].items() if k in ("cpu", "gpu")}
    hps = []
    hp_known = {"type", "bounds", "scale", "init", "explore_weight", "choices"}
    for path, spec in sections["hyperparameters"].items():
        where = f"hyperparameters.{path}"
        if not isinstance(spec, Mapping):
            errors.append(f"`{where}`: must be a mapping with bounds/scale/init or choices")
            continue
        _unknown(spec, hp_known, where + ".", errors)
        kw = {k: v for k, v in spec.items() if k in hp_known}
        if "bounds" in kw:
            b = kw["bounds"]
            kw["bounds"] = tuple(_number(x) for x in b) if isinstance(b, (list, tuple)) else b
        if "choices" in kw:
            c = kw["choices"]
            kw["choices"] = tuple(map(_number, c)) if isinstance(c, (list, tuple)) else c
        for key in ("init", "explore_weight"):
            if key in kw:
                kw[key] = _number(kw[key])
        if isinstance(kw.get("init"), int) and not isinstance(kw["init"], bool):
            kw["init"] = float(kw["init"])
        hps.append(Hyperparameter(path=str(path), **kw))
    # unknown keys were dropped above, so value checks still run: all problems at once
    fixed = {k: _number(v) for k, v in sections["fixed"].items()}
    return _construct(kind, data, hps, sched, res, fixed, errors)


def _construct(kind, data, hps, sched, res, fixed, errors) -> SearchSpace | None:
    try:
        return SearchSpace(
            kind=kind, hyperparameters=tuple(hps), scheduler=SchedulerSettings(**sched),
            resources=Resources(**res), fixed=dict(fixed), seed=data.get("seed", 0),
            max_failures=data.get("max_failures", 2),
        )
    except SearchSpaceError as exc:
        errors.extend(str(exc).split("\n  ")[1:])
        return None
