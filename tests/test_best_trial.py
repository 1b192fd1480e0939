"""One rule names a sweep's best trial (mrlfads.ramps.best_trial): the sweep summary and the
MLflow callback's parent run agree, even where the best value belongs to a failed trial."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("ray")

from mrlfads.ramps import RAMPS_DONE, best_trial
from mrlfads.tracking.memory import InMemoryTracker, MemoryStore
from mrlfads.tracking.tune_callback import MlflowTuneCallback
from mrlfads.training import sweep

# trial -> (last metrics, failed): c has the lowest objective but ended in error; d's last
# epoch came before its ramps had finished; a and b tie, and a wins as the smaller id
LAST = {
    "a0000_00000": ({"objective": 2.0, "epoch": 8, RAMPS_DONE: 1.0}, False),
    "b0000_00001": ({"objective": 2.0, "epoch": 8, RAMPS_DONE: 1.0}, False),
    "c0000_00002": ({"objective": 0.5, "epoch": 5, RAMPS_DONE: 1.0}, True),
    "d0000_00003": ({"objective": 0.1, "epoch": 1, RAMPS_DONE: 0.0}, False),
}


def _callback_pick(plan) -> str:
    store = MemoryStore()
    cb = MlflowTuneCallback("s", metric="objective", mode="min", system_metrics=False,
                            hparams={"hparams.train.lr": "train.lr"},
                            tracker_factory=lambda outbox: InMemoryTracker(store))
    cb.setup()
    trials = []
    for tid, (metrics, failed) in LAST.items():
        trial = SimpleNamespace(trial_id=tid, experiment_tag=tid, local_path=None,
                                config={"run": plan.run, "hparams": {"train.lr": 1e-3}},
                                checkpoint=None, error_file=None, get_error=lambda: "boom")
        trials.append(trial)
        cb.log_trial_start(trial)
        cb.log_trial_result(1, trial, {**metrics, "config": trial.config})
        cb.log_trial_end(trial, failed=failed)
    cb.on_experiment_end(trials)
    (parent,) = [r for r in store.runs.values() if r.tags.get("mrlfads.role") == "sweep"]
    child = next(r for r in store.runs.values() if r.tags.get("mrlfads.trial_id") == "a0000_00000")
    # the typed base run config is logged as the same flat params as a plain dict would be
    assert child.params["run.train.lr"] == str(plan.run.train.lr)
    assert child.params["run.model.regions"].startswith('[{"name": "A"')
    return parent.tags["mrlfads.best_trial_id"]


def _summary_pick(plan, tmp_path) -> str:
    results = [SimpleNamespace(path=str(tmp_path / f"trainable_{tid}_x_2024-01-01"),
                               error=RuntimeError("boom") if failed else None,
                               metrics=metrics, config={"hparams": {"train.lr": 1e-3}},
                               checkpoint=None)
               for tid, (metrics, failed) in LAST.items()]
    summary = sweep.summarize(results, plan)
    assert summary.trials["c0000_00002"].startswith("ERROR")
    return summary.best_trial


def test_the_summary_and_the_callback_pick_the_same_trial(tiny_dataset_dir, tmp_path):
    plan = sweep.plan_sweep(tiny_dataset_dir, smoke_test=True, storage=str(tmp_path))
    expected = best_trial({t: m for t, (m, failed) in LAST.items() if not failed}, "objective")
    assert expected == "a0000_00000"
    assert _summary_pick(plan, tmp_path) == _callback_pick(plan) == expected
