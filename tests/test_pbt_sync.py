"""Synchronous PBT after a failed trial or a ``--resume``: Ray's scheduler stops moving,
search_spaces/tune_objects.GridSyncPBT finishes. Both are driven the way Tune's controller
drives a scheduler, in every order in which 4 members can report. Fast: no Ray cluster."""
from __future__ import annotations

import pytest

MAX_EPOCH, INTERVAL = 8, 2  # the smoke sweep: checkpoints every 2 epochs, burn-in 2


class _Controller:
    """What PBT asks of Tune's controller (no exploits here: quantile_fraction=0). Like
    Tune's, its live set drops a trial that ends, not one that fails."""

    search_alg = None

    def __init__(self, trials):
        self.trials = trials

    def get_trials(self):
        return list(self.trials)

    def get_live_trials(self):
        return [t for t in self.trials if t.status != "TERMINATED"]


def _simulate(scheduler_cls, order, restart=None, fail=None, budget=400):
    """Drive a synchronous PBT scheduler the way Tune's controller does, for 4 members:
    PENDING members start at once; each step Tune asks the scheduler for one paused member
    to run, then one running member reports its next epoch (the first running one in
    ``order``: every interleaving of the members' speeds is some order); a member resumes
    from its newest checkpoint (every INTERVAL epochs); the stopper ends it at MAX_EPOCH.
    ``restart``: member -> checkpoint epoch it resumes from (a ``--resume``), with the
    scheduler new. ``fail``: member -> (epoch, times): it dies as that epoch begins, and
    Tune retries it (re-adding it to the scheduler) or, past its retries, fails it.
    Returns each member's reported epochs, their final status (None for a population that
    stopped moving) and the scheduler."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    pbt = scheduler_cls(time_attr="epoch", metric="objective", mode="min",
                        perturbation_interval=INTERVAL, burn_in_period=INTERVAL,
                        quantile_fraction=0.0, synch=True, custom_explore_fn=lambda c: c)
    names = "ABCD"
    trials = {n: Trial("f", config={}, stub=True) for n in names}
    ctl = _Controller(list(trials.values()))
    ckpt = {n: (restart or {}).get(n, 0) for n in names}
    epoch, reported = dict(ckpt), {n: [] for n in names}
    failures = dict.fromkeys(names, 0)
    for t in trials.values():
        pbt.on_trial_add(ctl, t)
    for _ in range(budget):
        chosen = pbt.choose_trial_to_run(ctl)
        for n, t in trials.items():
            if t is chosen or t.status == Trial.PENDING:
                t.set_status(Trial.RUNNING)
                epoch[n] = ckpt[n]
        running = [n for n in order if trials[n].status == Trial.RUNNING]
        if not running:
            if all(t.is_finished() for t in trials.values()):
                return reported, {n: t.status for n, t in trials.items()}, pbt
            continue  # nothing runs: only the scheduler can move things now
        n, t = running[0], trials[running[0]]
        e = epoch[n] + 1
        dies_at, times = (fail or {}).get(n, (None, 0))
        if e == dies_at and failures[n] < times:
            failures[n] += 1
            pbt.on_trial_error(ctl, t)
            if failures[n] > 1:  # the smoke sweep retries a trial once
                t.set_status(Trial.ERROR)
            else:
                t.set_status(Trial.PENDING)
                pbt.on_trial_add(ctl, t)
            continue
        epoch[n] = e
        reported[n].append(e)
        if e % INTERVAL == 0 or e == MAX_EPOCH:
            ckpt[n] = e
        result = {"epoch": e, "objective": 1.0}
        if e == MAX_EPOCH:
            pbt.on_trial_complete(ctl, t, result)
            t.set_status(Trial.TERMINATED)
        elif pbt.on_trial_result(ctl, t, result) == TrialScheduler.PAUSE:
            t.set_status(Trial.PAUSED)
    return reported, None, pbt


def _orders():
    import itertools

    return ["".join(p) for p in itertools.permutations("ABCD")]


def test_rays_synchronous_pbt_stops_moving_after_a_resume_or_a_retried_trial():
    from ray.tune.schedulers import PopulationBasedTraining

    # the resumed smoke sweep that hung: A and B resume from epoch 4, C and D from epoch 2;
    # A and B run past the barrier of epoch 7 to the end, C and D wait there for ever
    reported, status, _ = _simulate(PopulationBasedTraining, "CDAB",
                                 restart={"A": 4, "B": 4, "C": 2, "D": 2})
    assert status is None
    assert reported["A"][-1] == reported["B"][-1] == MAX_EPOCH
    assert reported["C"][-1] == reported["D"][-1] == 7
    # a trial killed as epoch 4 begins: after Tune's retry every member pauses at epoch 5,
    # resumes from its checkpoint of epoch 4 and reports epoch 5 again, without end
    # (what a real smoke sweep did with MRLFADS_FAULT="signal-epoch:epoch=4,trial=00001")
    reported, status, _ = _simulate(PopulationBasedTraining, "ACDB", fail={"B": (4, 1)})
    assert status is None and reported["A"][:5] == [1, 2, 3, 4, 5]
    assert reported["A"][-3:] == [5, 5, 5]


@pytest.mark.parametrize("order", _orders())
def test_grid_sync_pbt_finishes_a_resumed_sweep_whatever_the_order(order):
    from mrlfads.search_spaces.tune_objects import GridSyncPBT

    restart = {"A": 4, "B": 4, "C": 2, "D": 2}
    reported, status, pbt = _simulate(GridSyncPBT, order, restart=restart)
    assert status == dict.fromkeys("ABCD", "TERMINATED")
    for n, start in restart.items():  # every epoch after its checkpoint once, none twice
        assert reported[n] == list(range(start + 1, MAX_EPOCH + 1))
    # C and D caught up with A and B before anyone was ranked: one perturbation, at 6
    assert pbt.perturbed_at == [6]


@pytest.mark.parametrize("order", _orders())
def test_grid_sync_pbt_goes_on_after_a_retried_and_a_failed_trial(order):
    from mrlfads.search_spaces.tune_objects import GridSyncPBT

    # B dies as epoch 4 begins and its retry goes on; D dies as epoch 3 begins, twice: ERROR
    reported, status, pbt = _simulate(GridSyncPBT, order, fail={"B": (4, 1), "D": (3, 2)})
    assert status == {"A": "TERMINATED", "B": "TERMINATED", "C": "TERMINATED", "D": "ERROR"}
    assert reported["A"] == reported["C"] == list(range(1, MAX_EPOCH + 1))
    assert reported["B"] == [1, 2, 3, 3, 4, 5, 6, 7, 8]  # back from its checkpoint of epoch 2
    assert reported["D"] == [1, 2]
    assert pbt.perturbed_at == [2, 4, 6]  # the synchronisations a clean sweep has
