"""Turn a SearchSpace into Ray Tune objects: param_space, scheduler, searcher, resources.

The trial config layout (what ``training.trainable.trainable`` reads) is built here:
``{"run": the base RunConfig, "checkpoint_interval": int, "build": {path: value},
"hparams": {path: value}}``, paths set by ``mrlfads.config_utils.with_overrides``. PBT
spaces fill ``hparams`` (re-applied after every restore, perturbed by
:class:`search_spaces.explore.SpaceExplorer`); Optuna spaces fill ``build`` (structure
fixed for the life of a trial). The checkpoint interval is the PBT perturbation
interval, taken from the space in one place (:func:`checkpoint_interval`).
"""
from __future__ import annotations

import math
from typing import Any

from ray import tune

from mrlfads.config_utils import get_path
from search_spaces.errors import SearchSpaceError
from search_spaces.explore import SpaceExplorer
from search_spaces.space import Hyperparameter, SearchSpace

TIME_ATTR = "epoch"  # PBT/ASHA time: finished epochs, as the Trainer reports them


def checkpoint_interval(space: SearchSpace) -> int:
    """Epochs between checkpoints: the perturbation interval for PBT (so every exploit finds
    a checkpoint of the epoch it ranked), the ASHA grace period for Optuna."""
    if space.kind == "pbt":
        return int(space.scheduler.perturbation_interval)
    return int(space.scheduler.grace_period)


def resolve_burn_in(space: SearchSpace, loss: Any) -> int:
    """Burn-in epochs, rounded up to a whole number of perturbation intervals so that
    perturbations land on checkpoint epochs; 'ramps' covers every KL/L2 ramp."""
    burn = space.scheduler.burn_in
    burn = loss.ramps_end if burn == "ramps" else int(burn)
    interval = space.scheduler.perturbation_interval
    return int(math.ceil(burn / interval) * interval)


def domain(hp: Hyperparameter, *, initial: bool = False) -> Any:
    """Tune domain of a hyperparameter; with ``initial``, PBT's starting distribution."""
    if hp.type == "categorical":
        return tune.choice(list(hp.choices))
    low, high = hp.bounds
    if hp.type == "int":
        low, high = int(low), int(high)
        return tune.lograndint(low, high + 1) if hp.scale == "log" else tune.randint(low, high + 1)
    dist = hp.init_distribution if initial else ("loguniform" if hp.scale == "log" else "uniform")
    if dist is None:
        return float(hp.init)
    return tune.loguniform(low, high) if dist == "loguniform" else tune.uniform(low, high)


def param_space(space: SearchSpace, run: Any) -> dict[str, Any]:
    """The Tuner's param_space around the base run config (a RunConfig, passed as it is)."""
    searched = {hp.path: domain(hp, initial=space.kind == "pbt") for hp in space.hyperparameters}
    return {
        "run": run,
        "checkpoint_interval": checkpoint_interval(space),
        "build": {} if space.kind == "pbt" else searched,
        "hparams": searched if space.kind == "pbt" else {},
    }


def pbt_scheduler(space: SearchSpace, burn_in: int) -> tune.schedulers.PopulationBasedTraining:
    """PBT that owns its explore step (bounded, log-unbiased) instead of Ray's x0.8/x1.2."""
    _require(space, "pbt")
    s = space.scheduler
    return tune.schedulers.PopulationBasedTraining(
        time_attr=TIME_ATTR,
        metric=s.metric,
        mode=s.mode,
        perturbation_interval=s.perturbation_interval,
        burn_in_period=burn_in,
        quantile_fraction=s.quantile_fraction,
        custom_explore_fn=SpaceExplorer(space, key="hparams"),
        synch=s.synch,
    )


def optuna_search(space: SearchSpace):
    """TPE (Optuna) proposing trials, at most ``max_concurrent`` at a time, seeded."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    _require(space, "optuna")
    s = space.scheduler
    sampler = optuna.samplers.TPESampler(seed=space.seed)
    searcher = OptunaSearch(metric=s.metric, mode=s.mode, sampler=sampler)
    return ConcurrencyLimiter(searcher, max_concurrent=s.max_concurrent)


def asha_scheduler(space: SearchSpace, max_epochs: int):
    """ASHA stopping weak Optuna trials early, in epochs."""
    _require(space, "optuna")
    s = space.scheduler
    if max_epochs < s.grace_period:
        raise SearchSpaceError(f"`scheduler.grace_period`={s.grace_period} exceeds the run's "
                               f"train.epochs={max_epochs}; lower the grace period")
    return tune.schedulers.ASHAScheduler(
        time_attr=TIME_ATTR, metric=s.metric, mode=s.mode, max_t=max_epochs,
        grace_period=s.grace_period, reduction_factor=s.reduction_factor,
    )


def default_member(space: SearchSpace, run: Any) -> dict[str, float]:
    """The run config's own value of every searched hyperparameter, clipped to its bounds:
    the population member that starts where a user without a search would."""
    out = {}
    for hp in space.hyperparameters:
        low, high = hp.bounds
        out[hp.path] = min(max(float(get_path(run, hp.path)), low), high)
    return out


def tune_config(space: SearchSpace, *, max_epochs: int, burn_in: int | None = None,
                reuse_actors: bool = True, run: Any = None) -> tune.TuneConfig:
    """TuneConfig for either kind: PBT with a seeded initial population (with ``run`` and
    ``scheduler.seed_with_defaults``, its first member at the run's own values), or TPE +
    ASHA."""
    if space.kind == "pbt":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        if burn_in is None:
            raise SearchSpaceError("internal: PBT needs a resolved burn-in")
        points = ([{"hparams": default_member(space, run)}]
                  if run is not None and space.scheduler.seed_with_defaults else None)
        return tune.TuneConfig(
            scheduler=pbt_scheduler(space, burn_in),
            search_alg=BasicVariantGenerator(random_state=space.seed, points_to_evaluate=points),
            num_samples=space.scheduler.population,
            reuse_actors=reuse_actors,
        )
    return tune.TuneConfig(
        scheduler=asha_scheduler(space, max_epochs),
        search_alg=optuna_search(space),
        num_samples=space.scheduler.num_samples,
        reuse_actors=reuse_actors,
    )


def _require(space: SearchSpace, kind: str) -> None:
    if space.kind != kind:
        raise SearchSpaceError(f"this needs a `kind: {kind}` search space, got {space.kind!r}")
