"""A tiny real Ray Tune PBT sweep of a toy trainable, logged by MlflowTuneCallback.

slow: Ray start alone takes 5-20 s on the shared 2-core machine."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.schedulers import PopulationBasedTraining

from mrlfads.tracking.tune_callback import MlflowTuneCallback

EPOCHS, TRIALS, INTERVAL = 4, 4, 2


def toy_trainable(config):
    """w grows by lr per epoch; loss = 1/(1+w): bigger lr wins, so PBT exploits."""
    state = {"epoch": 0, "w": 0.0}
    ckpt = tune.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d, open(os.path.join(d, "state.json")) as f:
            state = json.load(f)
    while state["epoch"] < EPOCHS:
        if config.get("fail_at") and state["epoch"] + 1 >= config["fail_at"]:
            raise RuntimeError("toy trainable failed on purpose")
        state["epoch"] += 1
        state["w"] += config["train.lr"]
        loss = 1.0 / (1.0 + state["w"])
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "state.json"), "w") as f:
                json.dump(state, f)
            tune.report({"epoch": state["epoch"], "objective": loss, "valid/loss": loss,
                         "lr": config["train.lr"], "effectome/A_to_B": state["w"],
                         "effectome/B_to_A": 0.5 * state["w"]},
                        checkpoint=tune.Checkpoint.from_directory(d))


def _sweep(tmp_path, uri, name, param_space, scheduler=None, samples=TRIALS):
    cb = MlflowTuneCallback(name, tracking_uri=uri, metric="objective", mode="min",
                            sweep_info={"search_space": {"train.lr": [0.01, 1.0]},
                                        "scheduler": {"name": "pbt", "interval": INTERVAL}},
                            hparams=["train.lr"], regions=["A", "B"], truth_comm=[[0, 2], [3, 0]],
                            system_metrics=False)
    tuner = tune.Tuner(
        tune.with_resources(toy_trainable, {"cpu": 0.5}),
        param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=samples, scheduler=scheduler,
                                    metric="objective", mode="min"),
        run_config=tune.RunConfig(name=name, storage_path=str(tmp_path), callbacks=[cb],
                                  verbose=0, failure_config=tune.FailureConfig(max_failures=0),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=4)),
    )
    return tuner.fit(), MlflowClient(uri)


def _runs(client, name):
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.data.tags.get("mrlfads.role") == "sweep"]
    trials = [r for r in runs if r.data.tags.get("mrlfads.role") == "trial"]
    return parent, trials


def _ray_epochs(results, trial_id: str) -> list[int]:
    """The epochs Ray delivered for a trial, in order.

    Seen about once in 10 runs: with synchronous PBT, Ray's own record of one
    trial (its progress) ends at epoch 3 of 4, MLflow's agreeing, and PBT's log shows the
    sync at iteration 4 cloning a donor at iteration 3. A likely cause, not confirmed in
    Ray's code: pausing a function trainable saves the worker's newest checkpoint, which can
    be one epoch ahead of the last result the driver processed; the restored trial then ends
    without reporting that epoch, so no callback ever sees it."""
    (trial,) = [t for t in results._experiment_analysis.trials if t.trial_id == trial_id]
    # Ray's JSON logger sees the same results as callbacks; a Result's own metrics are no
    # guide here: after an exploit they carry the donor's trial_id
    lines = Path(trial.local_path, "result.json").read_text().splitlines()
    return [int(json.loads(line)["epoch"]) for line in lines if line.strip()]


def _diagnosis(trial_id: str, steps: list[int], results, exp_dir: Path) -> str:
    """What Ray itself saw of a trial whose MLflow history disagrees with it."""
    logs = {p.name: p.read_text()[-2000:] for p in exp_dir.glob("pbt_*.txt")}
    return (f"trial {trial_id}: MLflow steps {steps}; Ray's epochs "
            f"{_ray_epochs(results, trial_id)}; PBT logs {logs}")


@pytest.mark.slow
def test_pbt_sweep_one_run_per_trial_with_exploits_and_lineage(tmp_path, ray_session, mlflow_sqlite_uri):
    name = "toy-pbt"
    pbt = PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=INTERVAL,
                                  hyperparam_mutations={"train.lr": tune.loguniform(0.01, 1.0)},
                                  quantile_fraction=0.25, synch=True)
    results, client = _sweep(tmp_path, mlflow_sqlite_uri, name,
                             {"train.lr": tune.grid_search([0.01, 0.03, 0.1, 0.3])},
                             scheduler=pbt, samples=1)
    assert not results.errors
    parent, trials = _runs(client, name)
    assert len(parent) == 1 and len(trials) == TRIALS  # no duplicates across PBT restarts
    p = parent[0]
    assert p.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {p.info.run_id}
    assert {r.data.tags["mrlfads.trial_id"] for r in trials} == {t.trial_id for t in results._experiment_analysis.trials}

    # PBT's own record of exploits, to compare with ours
    # (an exploit PBT records at a trial's last epoch is moot: the trial has finished)
    lines = Path(tmp_path, name, "pbt_global.txt").read_text().splitlines()
    global_log = [row for line in lines if (row := json.loads(line))[2] < EPOCHS]
    assert global_log, "the toy population should have exploited at least once"
    n_events = 0
    for r in trials:
        assert r.info.status == "FINISHED"
        # every epoch Ray delivered for the trial, once: no gaps, no duplicates across PBT
        # pauses and restarts. (Not always all EPOCHS: about once in 10 runs Ray's own
        # results for one trial end an epoch early; see _ray_epochs.)
        tid = r.data.tags["mrlfads.trial_id"]
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "objective"))
        assert steps == _ray_epochs(results, tid), _diagnosis(tid, steps, results,
                                                              Path(tmp_path, name))
        assert steps == list(range(1, len(steps) + 1)) and len(steps) >= INTERVAL + 1, \
            _diagnosis(tid, steps, results, Path(tmp_path, name))
        lr = sorted(client.get_metric_history(r.info.run_id, "hp/train.lr"), key=lambda m: m.timestamp)
        events = [json.loads(v) for k, v in r.data.tags.items() if k.startswith("pbt.exploit.")]
        n_events += len(events)
        for ev in events:
            assert ev["donor_trial"] in {t.data.tags["mrlfads.trial_id"] for t in trials}
            assert ev["donor_trial"] != r.data.tags["mrlfads.trial_id"]
            after = [m.value for m in lr if m.step == ev["resumed_at"]]
            assert after and after[0] == pytest.approx(ev["new"]["train.lr"])
        if events:
            exploit_steps = [m.step for m in client.get_metric_history(r.info.run_id, "pbt/exploit")]
            assert exploit_steps == sorted(ev["resumed_at"] for ev in events)
            arts = [a.path for a in client.list_artifacts(r.info.run_id, "pbt")]
            assert arts == ["pbt/exploits.json"]
        assert "figures/effectome.png" in [a.path for a in client.list_artifacts(r.info.run_id, "figures")]
        assert r.data.tags["mrlfads.checkpoint"]
    assert n_events == len(global_log)

    best = min(trials, key=lambda r: r.data.metrics["objective"])
    assert p.data.tags["mrlfads.best_trial_id"] == best.data.tags["mrlfads.trial_id"]
    assert p.data.tags["mrlfads.best_run_id"] == best.info.run_id
    assert p.data.params["search_space.train.lr"] == "[0.01, 1.0]"
    p_arts = {a.path for d in ("pbt", "figures", "sweep") for a in client.list_artifacts(p.info.run_id, d)}
    assert {"pbt/lineage.json", "figures/pbt_hparams.png", "sweep/search_space.json"} <= p_arts
    lineage = json.loads(Path(client.download_artifacts(p.info.run_id, "pbt/lineage.json", str(tmp_path))).read_text())
    assert lineage["best_trial"] == best.data.tags["mrlfads.trial_id"]


@pytest.mark.slow
def test_failed_trial_is_marked_failed_with_its_error(tmp_path, ray_session, mlflow_sqlite_uri):
    name = "toy-fail"
    results, client = _sweep(tmp_path, mlflow_sqlite_uri, name,
                             {"train.lr": 0.1, "fail_at": 3}, samples=1)
    assert len(results.errors) == 1
    parent, trials = _runs(client, name)
    (r,) = trials
    assert r.info.status == "FAILED"
    assert "failed on purpose" in r.data.tags["mrlfads.error"]
    assert len(client.get_metric_history(r.info.run_id, "objective")) == 2  # epochs 1, 2
    # a failed trial is never the best one (mrlfads.ramps.best_trial): none is left
    assert parent[0].data.tags["mrlfads.best_trial_id"] == "none"
