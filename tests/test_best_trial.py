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


def test_a_trial_stopped_between_effectomes_reports_its_latest_one(tiny_dataset_dir, tmp_path):
    """The cut effectome is not computed every epoch: a trial whose last report has it NaN
    (a sweep stopped early) shows the latest it reported, in the summary and the callback."""
    import pandas as pd

    plan = sweep.plan_sweep(tiny_dataset_dir, smoke_test=True, storage=str(tmp_path))
    nan = float("nan")
    rows = [{"objective": 3.0, "epoch": 4, RAMPS_DONE: 1.0, "effectome_cut/A_to_B": 0.5,
             "effectome_cut/B_to_A": 0.1},
            {"objective": 2.5, "epoch": 5, RAMPS_DONE: 1.0, "effectome_cut/A_to_B": 0.4,
             "effectome_cut/B_to_A": 0.2},
            {"objective": 2.7, "epoch": 6, RAMPS_DONE: 1.0, "effectome_cut/A_to_B": nan,
             "effectome_cut/B_to_A": nan}]
    result = SimpleNamespace(path=str(tmp_path / "trainable_a0000_00000_x_2024-01-01"),
                             error=None, metrics=rows[-1], config={"hparams": {}},
                             checkpoint=None, metrics_dataframe=pd.DataFrame(rows))
    summary = sweep.summarize([result], plan)
    assert summary.effectome == {"A_to_B": 0.4, "B_to_A": 0.2}
    result.metrics = rows[1]  # a last report with one: that one
    assert sweep.summarize([result], plan).effectome == {"A_to_B": 0.4, "B_to_A": 0.2}
    result.metrics, result.metrics_dataframe = rows[-1], None  # nothing to fall back on
    assert sweep.summarize([result], plan).effectome == {}

    cb = MlflowTuneCallback("s", metric="objective", mode="min", system_metrics=False,
                            tracker_factory=lambda outbox: InMemoryTracker(MemoryStore()))
    cb.setup()
    trial = SimpleNamespace(trial_id="a0000_00000", experiment_tag="a", local_path=None,
                            config={"run": plan.run, "hparams": {}}, checkpoint=None)
    cb.log_trial_start(trial)
    for i, row in enumerate(rows):
        cb.log_trial_result(i, trial, {**row, "config": trial.config})
    assert cb.last_metrics["a0000_00000"]["effectome_cut/A_to_B"] == 0.4
    assert cb.last_metrics["a0000_00000"]["objective"] == 2.7


def test_after_an_interrupt_the_summary_marks_the_trials_cut_short(tiny_dataset_dir, tmp_path):
    """After an interrupt, a trial that neither failed nor reported Tune's `done` result (its
    last epoch) was cut short: marked unfinished and counted. Without one, nothing is."""
    plan = sweep.plan_sweep(tiny_dataset_dir, smoke_test=True, storage=str(tmp_path))
    done = {"a0000_00000": True, "b0000_00001": False, "c0000_00002": False,
            "d0000_00003": False}
    results = [SimpleNamespace(path=str(tmp_path / f"trainable_{tid}_x_2024-01-01"),
                               error=RuntimeError("boom") if failed else None,
                               metrics={**metrics, "done": done[tid]},
                               config={"hparams": {}}, checkpoint=None)
               for tid, (metrics, failed) in LAST.items()]
    summary = sweep.summarize(results, plan, interrupted=True)
    assert summary.unfinished == 2 and summary.best_trial == "a0000_00000"
    assert {t: s for t, s in summary.trials.items() if not s.startswith("ERROR")} == {
        "a0000_00000": "TERMINATED", "b0000_00001": sweep.UNFINISHED,
        "d0000_00003": sweep.UNFINISHED}
    ended = sweep.summarize(results, plan)
    assert ended.unfinished == 0 and sweep.UNFINISHED not in ended.trials.values()


def test_the_interrupt_watch_records_a_stop_signal_and_passes_it_to_tunes_handler(request):
    """InterruptWatch wraps the SIGINT handler it finds (Tune's, in a run) at setup: the
    signal is recorded, then handled as before; a new run's setup clears the record."""
    import signal

    from mrlfads.search_spaces.tune_state import STOP_REQUESTED, InterruptWatch

    seen = []
    previous = signal.signal(signal.SIGINT, lambda s, f: seen.append(s))  # stands in for Tune's
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    STOP_REQUESTED.set()
    InterruptWatch().setup()
    assert not STOP_REQUESTED.is_set()
    signal.raise_signal(signal.SIGINT)
    assert STOP_REQUESTED.is_set() and seen == [signal.SIGINT]
    STOP_REQUESTED.clear()
