"""One contract, two trackers: the in-memory fake and real MLflow (SQLite) behave alike."""
from __future__ import annotations

import pytest

from mrlfads.tracking.errors import TrackingError
from mrlfads.tracking.memory import InMemoryTracker


class MemoryView:
    """Reads back what a tracker stored, the same way for both implementations."""

    def __init__(self, tracker):
        self.t = tracker

    def run(self, run_id):
        r = self.t.store.runs[run_id]
        return {"status": r.status, "params": r.params, "tags": r.tags, "name": r.name,
                "metrics": {k: list(v) for k, v in r.metrics.items()},
                "artifacts": sorted(r.artifacts)}

    def n_runs(self, experiment):
        return len(self.t.store.runs_in(experiment))

    def inputs(self, run_id):
        return [(d["name"], d["digest"], d["source_type"], d["source"], d["context"])
                for d in self.t.store.runs[run_id].inputs]


class MlflowView:
    def __init__(self, tracker):
        from mlflow.tracking import MlflowClient

        self.c = MlflowClient(tracker.tracking_uri)

    def run(self, run_id):
        r = self.c.get_run(run_id)
        metrics = {}
        for key in r.data.metrics:
            hist = sorted(self.c.get_metric_history(run_id, key), key=lambda m: m.timestamp)
            metrics[key] = [(m.step, m.value) for m in hist]
        arts = [a.path for a in self.c.list_artifacts(run_id)]
        arts += [b.path for a in self.c.list_artifacts(run_id) if a.is_dir
                 for b in self.c.list_artifacts(run_id, a.path)]
        return {"status": r.info.status, "params": r.data.params, "tags": r.data.tags,
                "name": r.info.run_name, "metrics": metrics,
                "artifacts": sorted(a for a in arts if "." in a)}

    def inputs(self, run_id):
        return [(i.dataset.name, i.dataset.digest, i.dataset.source_type, i.dataset.source,
                 {t.key: t.value for t in i.tags}.get("mlflow.data.context"))
                for i in self.c.get_run(run_id).inputs.dataset_inputs]

    def n_runs(self, experiment):
        exp = self.c.get_experiment_by_name(experiment)
        return len(self.c.search_runs([exp.experiment_id])) if exp else 0


@pytest.fixture(params=["memory", "mlflow"])
def tracker_and_view(request, mlflow_sqlite_uri):
    if request.param == "memory":
        t = InMemoryTracker()
        yield t, MemoryView(t)
    else:
        from mrlfads.tracking.mlflow_tracker import MlflowTracker

        t = MlflowTracker(mlflow_sqlite_uri)
        yield t, MlflowView(t)
    t.close()


def test_round_trip_with_repeated_and_rewound_steps(tracker_and_view, experiment_name, tmp_path):
    t, view = tracker_and_view
    run_id = t.start_run("trial_0", experiment=experiment_name, tags={"role": "trial"})
    assert t.active_run_id == run_id
    t.log_params({"train.lr": 0.001, "model.dropout": 0.3})
    t.log_params({"train.lr": 0.001})  # same value again: allowed
    # epochs 0,1,2 then a PBT restore rewinds to 1: MLflow keeps all six points
    for step, loss in [(0, 3.0), (1, 2.0), (2, 1.5), (1, 1.9), (2, 1.4), (3, 1.2)]:
        t.log_metrics({"valid/loss": loss, "hp/train.lr": 0.001 * (step + 1)}, step=step)
    (tmp_path / "fig.png").write_bytes(b"\x89PNG fake")
    t.log_artifact(str(tmp_path / "fig.png"), "figures")
    t.set_tags({"role": "trial", "best": 1})
    t.end_run("FAILED")
    assert t.active_run_id is None

    got = view.run(run_id)
    assert got["status"] == "FAILED"
    assert got["name"] == "trial_0"
    assert got["params"] == {"train.lr": "0.001", "model.dropout": "0.3"}
    assert got["tags"]["role"] == "trial" and got["tags"]["best"] == "1"
    assert got["metrics"]["valid/loss"] == [(0, 3.0), (1, 2.0), (2, 1.5), (1, 1.9), (2, 1.4), (3, 1.2)]
    assert len(got["metrics"]["hp/train.lr"]) == 6
    assert got["artifacts"] == ["figures/fig.png"]
    assert view.n_runs(experiment_name) == 1


def test_changing_a_param_is_refused_with_the_fix(tracker_and_view, experiment_name):
    t, _ = tracker_and_view
    t.start_run("trial_1", experiment=experiment_name)
    t.log_params({"train.lr": 0.001})
    with pytest.raises(TrackingError, match=r"hp/train\.lr"):
        t.log_params({"train.lr": 0.002})


def test_second_start_while_active_is_refused_and_reopen_keeps_the_run(
        tracker_and_view, experiment_name):
    t, view = tracker_and_view
    parent = t.start_run("sweep", experiment=experiment_name)
    with pytest.raises(TrackingError, match="still active"):
        t.start_run("again", experiment=experiment_name)
    t.end_run()
    child = t.start_run("trial_0", experiment=experiment_name, parent_run_id=parent)
    t.log_params({"a": 1})
    t.log_metrics({"x": 1.0}, step=0)
    t.end_run()
    # a restored trial re-opens its run: same id, params kept, steps continue
    assert t.start_run("trial_0", experiment=experiment_name, run_id=child) == child
    t.log_params({"a": 1})
    with pytest.raises(TrackingError):
        t.log_params({"a": 2})  # the re-opened run remembers its params
    t.log_metrics({"x": 2.0}, step=1)
    t.end_run()
    got = view.run(child)
    assert got["tags"]["mlflow.parentRunId"] == parent
    assert got["metrics"]["x"] == [(0, 1.0), (1, 2.0)]
    assert got["status"] == "FINISHED"
    assert view.n_runs(experiment_name) == 2


def test_a_fluent_mlflow_run_already_active_is_left_alone(
        tracker_and_view, experiment_name, mlflow_sqlite_uri):
    import mlflow

    t, view = tracker_and_view
    mlflow.set_tracking_uri(mlflow_sqlite_uri)
    mlflow.set_experiment(experiment_name + "-fluent")
    with mlflow.start_run() as outer:
        run_id = t.start_run("inner", experiment=experiment_name)
        assert run_id != outer.info.run_id
        t.log_metrics({"x": 1.0}, step=0)
        t.end_run()
        assert mlflow.active_run().info.run_id == outer.info.run_id
    assert view.run(run_id)["metrics"]["x"] == [(0, 1.0)]
    assert view.n_runs(experiment_name) == 1


def test_misuse_is_a_tracking_error(tracker_and_view, experiment_name):
    t, _ = tracker_and_view
    with pytest.raises(TrackingError, match="start_run"):
        t.log_metrics({"x": 1.0}, step=0)
    t.start_run("r", experiment=experiment_name)
    with pytest.raises(TrackingError, match="status"):
        t.end_run("DONE")
    with pytest.raises(TrackingError, match="not a file"):
        t.log_artifact("/nonexistent/file.png")
    assert issubclass(TrackingError, ValueError)


def test_log_input_records_the_dataset_by_name_and_digest_once(tracker_and_view, experiment_name):
    import hashlib
    import json

    from mrlfads.tracking.inputs import dataset_input
    from mrlfads.tracking.shareable import manifest_digest

    t, view = tracker_and_view
    manifest = {"name": "ring", "n_bins": 12, "regions": [{"name": "A", "n_heldin": 3,
                                                           "n_heldout": 1}]}
    local = dataset_input(manifest, "/home/alice/data/ring-v2")
    remote = dataset_input({"uri": "s3://KEY:SECRET@bucket/ring"}, None)
    run_id = t.start_run("r", experiment=experiment_name)
    for ds in (local, local, remote):  # the same dataset twice is one input
        t.log_input(ds)
    t.end_run()
    sha = manifest_digest(manifest)
    assert sha == hashlib.sha256((json.dumps(manifest, indent=2, sort_keys=True) + "\n")
                                 .encode()).hexdigest()
    url_sha = hashlib.sha256(b"s3://bucket/ring").hexdigest()
    assert sorted(view.inputs(run_id)) == sorted([
        ("ring", sha[:36], "local", '{"uri": "ring-v2"}', "training"),
        ("ring", url_sha[:36], "s3", '{"uri": "s3://bucket/ring"}', "training")])
    assert json.loads(local["schema"])["mlflow_tensorspec"]["features"] == json.dumps(
        [{"name": "x/A", "type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 12, 4]}}])
