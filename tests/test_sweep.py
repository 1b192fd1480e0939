"""The sweep: stopper, plan validation, Tune objects; slow: real PBT sweeps on the session
Ray, a killed trial worker, a NaN trial and a killed driver resumed with --resume."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from search_spaces import tune_objects
from search_spaces.errors import SearchSpaceError
from search_spaces.space import SearchSpace
from training import sweep
from training.resources import trial_resources
from training.stopper import PopulationPlateauStopper
from training.trainable import trainable

from tests.ray_fixtures import RAY_CPUS

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
    import os
    from pathlib import Path

    monkeypatch.chdir(Path(tiny_dataset_dir).parent)
    plan = sweep.plan_sweep(os.path.basename(tiny_dataset_dir), smoke_test=True)
    assert plan.run.data.uri == str(Path(tiny_dataset_dir).resolve())


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
    from search_spaces.explore import SpaceExplorer

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
    assert member["loss.kl_com_ratio"] == plan.run.loss.kl_com_ratio == 10.0
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


# ------------------------------------------------------------------------------- slow: real Ray
def _rows(path: str) -> pd.DataFrame:
    return pd.read_csv(Path(path) / "progress.csv")


def _live_progress_files(experiment: Path) -> list[Path]:
    """Trials' progress.csv while the sweep runs: Tune writes them in the driver's session
    folder and copies them to the storage path only now and then (checkpoints go there at
    once), so look in both places."""
    import ray

    session = Path(ray._private.worker._global_node.get_session_dir_path())
    return (list(experiment.glob("*/progress.csv"))
            + list(session.glob(f"artifacts/*/{experiment.name}/driver_artifacts/*/progress.csv")))


def _trial_workers() -> list[psutil.Process]:
    """Our own Ray's trial processes: descendants of this pytest process only."""
    out = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "ImplicitFunc" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_killed_worker_restarts_from_checkpoint_and_nan_trial_fails_with_reason(
        ray_session, tiny_dataset_dir, tmp_path):
    from ray import tune

    # enough epochs that a trial is still running when the killer finds its first checkpoint,
    # however fast the machine (8 smoke epochs finished before it on an idle machine)
    plan = sweep.plan_sweep(tiny_dataset_dir, smoke_test=True, storage=str(tmp_path), name="faults",
                            run_overrides={"train.epochs": 30})
    # patience: the population-plateau stopper must not end this sweep before the last epoch
    plan = sweep.SweepPlan(plan.name, plan.storage,
                           plan.space.with_scheduler(synch=False, patience=1000),
                           plan.run, plan.burn_in, True)
    # three members with chosen learning rates; lr=1e6 overflows the loss at epoch 0
    param_space = tune_objects.param_space(plan.space, plan.run)
    param_space["hparams"]["train.lr"] = tune.grid_search([3e-3, 1e-2, 1e6])
    tuner = tune.Tuner(
        tune.with_resources(trainable, trial_resources(plan.space.resources)),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            scheduler=tune_objects.pbt_scheduler(plan.space, plan.burn_in), reuse_actors=False),
        run_config=sweep.make_run_config(plan, verbose=0))

    killed: list[int] = []

    def kill_one_after_its_first_checkpoint():
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            reported = set()
            for csv in _live_progress_files(tmp_path / "faults"):
                checkpointed = tmp_path / "faults" / csv.parent.name / "checkpoint_000000"
                if checkpointed.is_dir():
                    reported |= set(_rows(csv.parent)["pid"])
            victims = [p for p in _trial_workers() if p.pid in reported]
            if victims:
                time.sleep(1.0)  # mid-way through the next epoch
                try:  # a PBT exploit may have just replaced the process: then look again
                    victims[0].send_signal(signal.SIGKILL)
                    killed.append(victims[0].pid)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.3)

    killer = threading.Thread(target=kill_one_after_its_first_checkpoint, daemon=True)
    killer.start()
    results = tuner.fit()
    killer.join()
    summary = sweep.summarize(results, plan)

    assert killed, "no trial worker was found to kill"
    errors = {t: s for t, s in summary.trials.items() if s.startswith("ERROR")}
    assert len(summary.trials) == 3 and len(errors) == 1
    (reason,) = errors.values()
    assert "non-finite" in reason  # the NonFiniteLossError message, not a bare crash
    finished = [r for r in results if r.error is None]
    assert len(finished) == 2 and all(r.metrics["epoch"] == plan.epochs for r in finished)
    rows = pd.concat([_rows(r.path) for r in finished])
    assert (rows.groupby("trial_id")["epoch"].apply(lambda e: (e == 1).sum()) == 1).all()
    # the killed worker's trial carried on in a new process from its checkpoint
    victim = rows[rows["pid"] == killed[0]]["trial_id"].unique()
    assert len(victim) == 1
    victim_rows = rows[rows["trial_id"] == victim[0]]
    assert victim_rows["pid"].nunique() >= 2 and victim_rows["epoch"].max() == plan.epochs


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([sys.executable, "-m", "training.cli", "sweep", *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kw)


@pytest.mark.slow
@pytest.mark.timeout(540)
def test_smoke_sweep_killed_driver_resumes_without_restarting_any_trial_from_scratch(
        ray_session, tiny_dataset_dir, tmp_path):
    common = ["--name", "resume", "--storage", str(tmp_path), "--address", ray_session,
              "--no-tracking", "--quiet"]
    first = _cli("--data", tiny_dataset_dir, "--smoke-test", *common)
    exp = tmp_path / "resume"
    deadline = time.time() + 300
    # kill once every member has a checkpoint and Tune has saved its experiment state
    while time.time() < deadline:
        if first.poll() is not None:
            pytest.fail("the sweep finished before it could be killed:\n" + first.stdout.read())
        ckpts = list(exp.glob("*/checkpoint_000000"))
        states = list(exp.glob("experiment_state*.json"))
        if len(ckpts) >= 4 and states and (max(p.stat().st_mtime for p in states)
                                           > max(p.stat().st_mtime for p in ckpts) + 1.0):
            break
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    # Ray ends a dead driver's job: its trial actors must give back every CPU they held
    import ray

    freed = time.time() + 60
    while ray.available_resources().get("CPU", 0) < RAY_CPUS and time.time() < freed:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == RAY_CPUS, (
        f"the killed driver's trials still hold CPUs: {ray.available_resources()}")

    second = _cli("--resume", *common)
    try:
        out, _ = second.communicate(timeout=420)
    except subprocess.TimeoutExpired:
        second.kill()
        pytest.fail("the resumed sweep did not finish in 420 s:\n" + second.communicate()[0][-6000:])
    assert second.returncode == 0, out
    assert "best trial" in out and "checkpoint:" in out
    summary = json.loads((exp / "summary.json").read_text())
    assert len(summary["trials"]) == 4
    assert set(summary["trials"].values()) == {"TERMINATED"}
    rows = pd.concat([_rows(p) for p in exp.iterdir() if (p / "progress.csv").is_file()])
    # no trial restarted from scratch: epoch 1 reported once per trial (exploits rewind
    # only to the burn-in grid), and every trial reached the last epoch
    assert (rows.groupby("trial_id")["epoch"].apply(lambda e: (e == 1).sum()) == 1).all()
    assert rows.groupby("trial_id")["epoch"].max().eq(8).all()
    # the smoke sweep itself: exploits happened, and (the AutoLFADS bug, through real Ray)
    # the optimiser ran at each trial's own lr at every reported epoch, exploits included
    assert summary["exploits"] >= 1
    assert (rows["lr"] == rows["hp/train.lr"]).all()
    # one member started at the run config's own lr (the smoke 1e-2, clipped to 5e-3)
    first = rows[rows["epoch"] == 1]
    assert (first["hp/train.lr"] == 5e-3).sum() == 1
    assert Path(summary["checkpoint"]).is_file() and summary["checkpoint"].startswith(str(exp))
    assert set(summary["effectome"]) == {"A_to_B", "B_to_A"}
    assert summary["history"][-1]["epoch"] == 8
    # the finished sweep kept only each trial's newest checkpoints, the summary's among them
    for trial in (p for p in exp.iterdir() if (p / "progress.csv").is_file()):
        assert 1 <= len(list(trial.glob("checkpoint_*"))) <= sweep.CHECKPOINTS_TO_KEEP
