"""A tracking outage never kills training, during a real sweep: a smoke PBT sweep logs over
HTTP to a real `mlflow server`. A Tune callback installed ahead of the MLflow one stops the
server as the first result of epoch DOWN_AT arrives and starts it again (same port, same
SQLite store and artifact root) as the first result of epoch UP_AT arrives: the same
results fall in the outage in every run, whatever the machine's speed.

Exact outcome: every result logged during the outage waited in its trial's outbox, and
afterwards MLflow holds one run per trial with exactly the (epoch, objective) pairs Tune
handed its callbacks, no more and no fewer.
"""
from __future__ import annotations

import uuid
from collections import Counter

import pytest
from ray import tune

from tests.mlflow_fixtures import rest

pytestmark = pytest.mark.slow
DOWN_AT, UP_AT = 3, 6  # epochs of the smoke sweep (8 epochs, synchronised every 2)


def trial_runs(url: str, sweep: str) -> list[dict]:
    exp = rest(url, "experiments/get-by-name", experiment_name=sweep)["experiment"]
    runs = rest(url, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1000})["runs"]
    for r in runs:
        r["tags"] = {t["key"]: t["value"] for t in r["data"].get("tags", [])}
    return runs


def _queued_objectives(tracker) -> list[int]:
    """The epochs whose objective waits in a trial tracker's outbox."""
    return sorted(int(step) for op in tracker.outbox.pending if op["op"] == "log_batch"
                  and "metrics" in op
                  for key, _, _, step in op["metrics"] if key == "objective")


class Outage(tune.Callback):
    """A Tune callback that takes the server down at DOWN_AT and
    back up at UP_AT; it runs before the MLflow callback, so the result that stops the
    server is logged during the outage and the one that restarts it after."""

    def __init__(self, server, mlflow_callback):
        self.server, self.mlflow_callback = server, mlflow_callback
        self.results: dict[str, list[tuple[int, float]]] = {}  # every (epoch, objective)
        self.during: dict[str, list[int]] = {}  # trial -> epochs logged while down
        self.queued: dict[str, list[int]] | None = None  # outboxes as the server returns
        self.down = self.back = False

    def __getstate__(self):  # Tune pickles its callbacks; a server process is not picklable
        return {"down": self.down, "back": self.back}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mrlfads.tracking.server import start_server

        epoch = int(result["epoch"])
        self.results.setdefault(trial.trial_id, []).append((epoch, round(result["objective"], 4)))
        if not self.down and epoch >= DOWN_AT:
            self.server.stop()
            self.down = True
        elif self.down and not self.back and epoch >= UP_AT:
            self.queued = {tid: _queued_objectives(t)
                           for tid, t in self.mlflow_callback.trackers.items()}
            s = self.server
            self.server = start_server(s.backend_store_uri, s.artifacts_destination,
                                       port=s.port, log_path=s.log_path)
            self.back = True
        if self.down and not self.back:
            self.during.setdefault(trial.trial_id, []).append(epoch)


@pytest.mark.timeout(600)
def test_server_outage_during_pbt_sweep_loses_no_metric(ray_session, tiny_dataset_dir, tmp_path):
    from mrlfads.tracking.server import start_server
    from mrlfads.tracking.store import artifact_root_for, default_tracking_uri
    from mrlfads.tracking.tune_callback import sweep_callbacks
    from mrlfads.training import sweep

    uri = default_tracking_uri(tmp_path / "store")
    server = start_server(uri, artifact_root_for(uri))
    plan = sweep.plan_sweep(tiny_dataset_dir, smoke_test=True, name=f"outage-{uuid.uuid4().hex[:6]}",
                            storage=str(tmp_path / "sweeps"))
    mlflow_cb = sweep_callbacks(plan, tracking_uri=server.url)[0]
    hook = Outage(server, mlflow_cb)
    try:
        summary = sweep.run_sweep(plan, callbacks=[hook, mlflow_cb], tracking=True, verbose=0)
        assert hook.down and hook.back
        server = hook.server
        assert summary.trials and set(summary.trials.values()) == {"TERMINATED"}
        assert sorted(hook.results) == sorted(summary.trials)

        # the outage: the results of epochs DOWN_AT..UP_AT-1, and each of them was queued
        assert {e for epochs in hook.during.values() for e in epochs} == set(range(DOWN_AT, UP_AT))
        assert hook.queued == {tid: sorted(hook.during.get(tid, [])) for tid in summary.trials}
        assert mlflow_cb.outbox_files == []  # the server was back before the sweep ended

        runs = trial_runs(server.url, plan.name)
        parents = [r for r in runs if r["tags"].get("mrlfads.role") == "sweep"]
        children = [r for r in runs if r["tags"].get("mrlfads.role") == "trial"]
        assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
        assert sorted(r["tags"]["mrlfads.trial_id"] for r in children) == sorted(summary.trials)
        for run in children:
            assert run["info"]["status"] == "FINISHED"
            assert run["tags"]["mlflow.parentRunId"] == parents[0]["info"]["run_id"]
            hist = rest(server.url, "metrics/get-history", run_id=run["info"]["run_id"],
                        metric_key="objective")["metrics"]
            logged = Counter((int(m["step"]), round(m["value"], 4)) for m in hist)
            # what Tune handed its callbacks (its result.json files can lose early lines)
            reported = Counter(hook.results[run["tags"]["mrlfads.trial_id"]])
            assert logged == reported  # every epoch once: none lost, none twice
            assert sorted(step for step, _ in logged) == list(range(1, plan.epochs + 1))
    finally:
        hook.server.stop()
        server.stop()
