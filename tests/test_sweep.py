"""The sweep: stopper, plan validation, Tune objects, checkpoint pruning. Real sweeps that
lose a trial process or their driver: tests/test_sweep_faults.py."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from mrlfads.search_spaces import tune_objects
from mrlfads.search_spaces.errors import SearchSpaceError
from mrlfads.search_spaces.space import SearchSpace
from mrlfads.training import sweep
from mrlfads.training.stopper import PopulationPlateauStopper

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------- stopper
def _feed(stopper, rows):
    return [stopper(t, {"epoch": e, "objective": v}) for t, e, v in rows]


def test_stopper_ends_the_sweep_after_patience_generations_without_improvement():
    s = PopulationPlateauStopper("objective", "min", generation=2, patience=2, burn_in=2)
    _feed(s, [("a", 1, 0.1)])  # before burn-in: ignored even though it is the lowest
    _feed(s, [("a", 2, 5.0), ("b", 2, 4.0), ("a", 4, 3.0), ("b", 4, 3.5)])
    assert (s.best, s.best_generation) == (3.0, 2) and not s.stop_all()
    _feed(s, [("a", 6, 3.0), ("b", 6, 3.2)])  # generation 3: no better
    assert not s.stop_all()
    _feed(s, [("a", 8, 3.1)])  # generation 4: two generations since the best
    assert s.stop_all()


def test_stopper_keeps_going_with_a_dead_trial_and_ignores_nan_and_rewinds():
    s = PopulationPlateauStopper("objective", "max", generation=1, patience=3)
    _feed(s, [("a", 1, 1.0), ("dead", 1, 2.0), ("a", 2, float("nan"))])
    # "dead" never reports again; "a" alone still moves the sweep along
    _feed(s, [("a", 2, 1.5), ("a", 1, 9.0)])  # a rewound (exploit) result can still be best
    assert s.best == -9.0 and s.best_generation == 1 and s.latest_generation == 2
    _feed(s, [("a", 3, 2.0)])
    assert not s.stop_all()
    _feed(s, [("a", 4, 2.0)])
    assert s.stop_all()


def test_stopper_stops_a_trial_at_max_epochs_before_pbt_can_exploit_it():
    s = PopulationPlateauStopper("objective", "min", generation=2, patience=None, max_epochs=6)
    assert _feed(s, [("a", 5, 1.0), ("a", 6, 2.0), ("b", 6, math.nan)]) == [False, True, True]
    _feed(s, [("a", 60, 9.0)])
    assert not s.stop_all()  # patience=None: never a plateau stop


# ------------------------------------------------------------------------------- plan
def test_smoke_plan_shrinks_the_population_and_burns_in_over_the_ramps(tiny_dataset_dir, tmp_path):
    plan = sweep.plan_sweep(tiny_dataset_dir, smoke_test=True, storage=str(tmp_path), name="p")
    s = plan.space.scheduler
    assert (s.population, s.perturbation_interval, s.synch) == (4, 2, True)
    assert plan.space.resources.cpu == 0.5 and plan.epochs == 8
    # smoke ramps: every ramp done at epoch 1, rounded up to the 2-epoch interval
    assert plan.burn_in == 2
    assert plan.experiment_path == f"{tmp_path}/p"
    assert sweep.SweepPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_a_relative_data_path_reaches_ray_workers_as_absolute(tiny_dataset_dir, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(Path(tiny_dataset_dir).parent)
    plan = sweep.plan_sweep(os.path.basename(tiny_dataset_dir), smoke_test=True)
    assert plan.run.data.uri == str(Path(tiny_dataset_dir).resolve())


def test_a_bad_value_in_a_shard_stops_the_sweep_before_ray_starts(tmp_path, capsys):
    """The driver reads every shard before Ray: a NaN in one trial is reported once, naming
    the shard, column, trial and fix, and no sweep directory is made."""
    import numpy as np
    import pyarrow as pa

    from mrlfads.data_loaders.testing import make_tiny_dataset, rewrite_shard
    from mrlfads.training.cli import main

    make_tiny_dataset(tmp_path / "d")

    def poison(t):
        x = t.column("x/A").chunks[0].to_numpy_ndarray().copy()
        x[1, 3, 0] = np.nan
        arr = pa.FixedShapeTensorArray.from_numpy_ndarray(x.astype(np.float32))
        return t.set_column(t.schema.get_field_index("x/A"), "x/A", arr)
    shard = rewrite_shard(tmp_path / "d", 2, poison)
    trial = int(pa.ipc.open_file(pa.memory_map(str(shard))).read_all().column("trial_id")[1].as_py())
    rc = main(["sweep", "--data", str(tmp_path / "d"), "--smoke-test", "--no-tracking",
               "--storage", str(tmp_path / "s"), "--name", "bad"])
    err = capsys.readouterr().err
    assert rc != 0
    assert f"{shard}: column 'x/A' has NaN" in err and f"trial_id {trial}, bin 3" in err
    assert not (tmp_path / "s").exists()


def test_a_range_the_run_config_rejects_is_named(tiny_dataset_dir):
    space = SearchSpace.from_dict({"kind": "pbt", "hyperparameters": {
        "model.dropout": {"bounds": [0.0, 1.0], "scale": "linear"}}})
    with pytest.raises(SearchSpaceError, match=r"`hyperparameters.model.dropout` value 1.0"):
        sweep.plan_sweep(tiny_dataset_dir, space=space, smoke_test=True)


def test_burn_in_longer_than_training_is_refused(tiny_dataset_dir):
    space = SearchSpace.from_yaml(ROOT / "search_spaces" / "pbt.yaml")
    with pytest.raises(SearchSpaceError, match="PBT would never exploit"):
        sweep.plan_sweep(tiny_dataset_dir, space=space, run_overrides={"train.epochs": 30})


def test_param_space_layout_and_pbt_owns_its_explore_step(tiny_dataset_dir):
    from mrlfads.search_spaces.explore import SpaceExplorer

    plan = sweep.plan_sweep(tiny_dataset_dir, smoke_test=True)
    ps = tune_objects.param_space(plan.space, plan.run)
    assert set(ps) == {"run", "checkpoint_interval", "build", "hparams"}
    assert ps["checkpoint_interval"] == plan.space.scheduler.perturbation_interval == 2
    assert set(ps["hparams"]) == set(plan.space.paths) and ps["build"] == {}
    pbt = tune_objects.pbt_scheduler(plan.space, plan.burn_in)
    assert isinstance(pbt._custom_explore_fn, SpaceExplorer) and pbt._hyperparam_mutations == {}
    assert pbt._burn_in_period == 2 and pbt._synch is True  # smoke ramps end at 1


def test_one_pbt_member_starts_at_the_run_configs_own_values_clipped_to_bounds(tiny_dataset_dir):
    plan = sweep.plan_sweep(tiny_dataset_dir, smoke_test=True)
    member = tune_objects.default_member(plan.space, plan.run)
    assert set(member) == set(plan.space.paths)
    assert plan.run.train.lr == 1e-2 and member["train.lr"] == 5e-3  # upper bound
    # the tiny data are spikes: their defaults (docs/MODEL.md), inside the KL bounds
    assert member["loss.kl_com_ratio"] == plan.run.loss.kl_com_ratio == 44.0
    assert member["loss.kl_ic_scale"] == plan.run.loss.kl_ic_scale == 1.2e-3
    assert member["model.dropout"] == plan.run.model.dropout
    cfg = tune_objects.tune_config(plan.space, max_epochs=plan.epochs, burn_in=plan.burn_in,
                                   run=plan.run)
    assert cfg.search_alg._points_to_evaluate == [{"hparams": member}]
    off = plan.space.with_scheduler(seed_with_defaults=False)
    cfg = tune_objects.tune_config(off, max_epochs=plan.epochs, burn_in=plan.burn_in, run=plan.run)
    assert cfg.search_alg._points_to_evaluate == []
    with pytest.raises(SearchSpaceError, match="seed_with_defaults"):
        plan.space.with_scheduler(seed_with_defaults="yes")


def test_optuna_space_builds_tpe_and_asha(tiny_dataset_dir):
    space = SearchSpace.from_yaml(ROOT / "search_spaces" / "optuna.yaml")
    plan = sweep.plan_sweep(tiny_dataset_dir, space=space, smoke_test=True)
    cfg = tune_objects.tune_config(plan.space, max_epochs=plan.epochs)
    assert type(cfg.scheduler).__name__ == "AsyncHyperBandScheduler"
    assert cfg.scheduler._max_t == plan.epochs and cfg.num_samples == 4
    ps = tune_objects.param_space(plan.space, plan.run)
    assert set(ps["build"]) == set(plan.space.paths) and ps["hparams"] == {}


def test_prune_keeps_each_trials_newest_checkpoints_and_nothing_else_is_touched(tmp_path):
    exp = tmp_path / "exp"
    for trial, n in (("trainable_a_00000_0", 5), ("trainable_a_00001_1", 1)):
        for i in range(n):
            (exp / trial / f"checkpoint_{i:06d}").mkdir(parents=True)
            (exp / trial / f"checkpoint_{i:06d}" / "checkpoint.pt").write_bytes(b"x")
        (exp / trial / "progress.csv").write_text("epoch\n1\n")
    (exp / "checkpoint_000000").mkdir()  # not inside a trial: not a trial's checkpoint
    (exp / "experiment_state.json").write_text("{}")

    assert sweep.prune_checkpoints(str(exp), keep=2) == 3
    assert sorted(p.name for p in (exp / "trainable_a_00000_0").iterdir()) == [
        "checkpoint_000003", "checkpoint_000004", "progress.csv"]
    assert (exp / "trainable_a_00000_0" / "checkpoint_000004" / "checkpoint.pt").is_file()
    assert [p.name for p in (exp / "trainable_a_00001_1").glob("checkpoint_*")] == ["checkpoint_000000"]
    assert (exp / "checkpoint_000000").is_dir() and (exp / "experiment_state.json").is_file()
    assert sweep.prune_checkpoints(str(tmp_path / "missing"), keep=2) == 0
