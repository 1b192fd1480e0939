"""Turn a SearchSpace into Ray Tune objects: param_space, scheduler, searcher, resources.

The trial config layout (what ``mrlfads.training.trainable.trainable`` reads) is built here:
``{"run": the base RunConfig, "checkpoint_interval": int, "build": {path: value},
"hparams": {path: value}}``, paths set by ``mrlfads.config_utils.with_overrides``. PBT
spaces fill ``hparams`` (re-applied after every restore, perturbed by
:class:`mrlfads.search_spaces.explore.SpaceExplorer`); Optuna spaces fill ``build`` (structure
fixed for the life of a trial). The checkpoint interval is the PBT perturbation
interval, taken from the space in one place (:func:`checkpoint_interval`).
"""
from __future__ import annotations

import math
from typing import Any

from ray import tune

from mrlfads.config_utils import get_path
from mrlfads.search_spaces.errors import SearchSpaceError
from mrlfads.search_spaces.explore import SpaceExplorer
from mrlfads.search_spaces.space import Hyperparameter, SearchSpace

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


class GridSyncPBT(tune.schedulers.PopulationBasedTraining):
    """Ray's PBT whose synchronous mode meets only on checkpoint epochs, and always moves on.

    Ray's synchronous PBT decides when a member has reached the next perturbation from the
    member's own "last perturbation" epoch, and Tune keeps no scheduler state across a
    failure or a ``--resume``: it starts a recovered member's record afresh, and a resumed
    sweep's whole scheduler, while the members restart from checkpoints of different
    epochs. The first result after that perturbs "at" an odd epoch; from then on members
    pause between checkpoints, restart from the checkpoint before, report the same epoch and
    pause again for ever (a smoke sweep with one trial killed once does this), or members
    wait at an epoch no member can still reach (about 1 resumed smoke sweep in 5 hangs so).
    A member that failed for good stays in Tune's live set, and Ray's barrier waits for it.

    Here a member waits when it reports an epoch on the checkpoint grid (a multiple of the
    perturbation interval) at or past the barrier. Once every live member waits: if they
    wait at different epochs (after a retry or a resume), the barrier moves to the furthest
    and the others catch up, so members are never ranked across epochs; if at one epoch,
    the population perturbs and the barrier moves one interval on. If the last member due
    at the barrier ends or fails instead of reporting, this happens when Tune next asks for
    a trial to run. The asynchronous mode is Ray's own.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.perturbed_at: list[int] = []  # the epochs at which the population perturbed

    def on_trial_result(self, tune_controller, trial, result):
        if not self._synch or self._time_attr not in result or self._metric not in result:
            return super().on_trial_result(tune_controller, trial, result)
        epoch = result[self._time_attr]
        if epoch < self._next_perturbation_sync or epoch % self._perturbation_interval:
            return tune.schedulers.TrialScheduler.CONTINUE
        self._save_trial_state(self._trial_state[trial], epoch, result, trial)
        self._synchronise(tune_controller, reporting=trial)
        return (tune.schedulers.TrialScheduler.NOOP if trial.status == "PAUSED"
                else tune.schedulers.TrialScheduler.PAUSE)

    @staticmethod
    def _live(tune_controller) -> list:
        """Members still in the sweep (Tune's "live" set keeps trials that failed)."""
        return [t for t in tune_controller.get_live_trials() if not t.is_finished()]

    def choose_trial_to_run(self, tune_controller):
        trial = super().choose_trial_to_run(tune_controller)
        if trial is None and self._synch:
            live = self._live(tune_controller)
            if live and all(t.status == "PAUSED" for t in live):
                # the member last due at the barrier ended or failed instead of reporting
                self._synchronise(tune_controller, reporting=None)
                trial = super().choose_trial_to_run(tune_controller)
        return trial

    def _synchronise(self, tune_controller, reporting) -> None:
        """Once every live member but ``reporting`` waits at or past the barrier: members
        at different epochs (after a retry or a resume) are not ranked against each other,
        the barrier moves to the furthest and the others catch up; members at one epoch
        perturb, and the barrier moves one interval on."""
        state = self._trial_state
        live = self._live(tune_controller)
        if any(state[t].last_train_time < self._next_perturbation_sync
               for t in live if t is not reporting):
            return
        epochs = {state[t].last_train_time for t in live}
        if len(epochs) > 1:
            self._next_perturbation_sync = max(epochs)
            return
        (epoch,) = epochs
        lower, upper = self._quantiles()
        rest = [t for t in tune_controller.get_trials() if t not in lower and t not in upper]
        for t in upper + rest + lower:  # donors save before their checkpoints are copied
            state[t].last_perturbation_time = epoch
            self._checkpoint_or_exploit(t, tune_controller, upper, lower)
        self.perturbed_at.append(epoch)
        self._next_perturbation_sync = epoch + self._perturbation_interval


def pbt_scheduler(space: SearchSpace, burn_in: int) -> GridSyncPBT:
    """PBT that owns its explore step (bounded, log-unbiased) instead of Ray's x0.8/x1.2,
    and whose synchronous mode survives failed trials and ``--resume`` (:class:`GridSyncPBT`)."""
    _require(space, "pbt")
    s = space.scheduler
    return GridSyncPBT(
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
