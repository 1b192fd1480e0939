"""A tracking outage never kills training, during a real sweep: a smoke PBT sweep logs over
HTTP to a real `mlflow server`, which a background thread stops once the first results are in
MLflow and restarts (same port, same SQLite store and artifact root) several epochs later.
Afterwards MLflow must hold one run per trial and every (epoch, objective) Tune recorded."""
from __future__ import annotations

import json
import re
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.mlflow_fixtures import rest

pytestmark = pytest.mark.slow
DOWN_S = 8.0  # several epochs of the tiny smoke model (~1 result/s here while it is down)


def tune_results(experiment_path: str) -> dict[str, list[dict]]:
    """Trial id -> the results Tune recorded in its result.json."""
    out = {}
    for f in Path(experiment_path).glob("*/result.json"):
        tid = re.search(r"_([0-9a-f]+_\d{5})_", f.parent.name).group(1)  # trainable_<id>_<n>_...
        out[tid] = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


def trial_runs(url: str, sweep: str) -> list[dict]:
    exp = rest(url, "experiments/get-by-name", experiment_name=sweep)["experiment"]
    runs = rest(url, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1000})["runs"]
    for r in runs:
        r["tags"] = {t["key"]: t["value"] for t in r["data"].get("tags", [])}
    return runs


class Outage(threading.Thread):
    """Stop the server once a trial's objective is in MLflow; restart it DOWN_S later."""

    def __init__(self, server, plan):
        super().__init__(daemon=True)
        self.server, self.plan = server, plan
        self.error: BaseException | None = None
        self.results_at_stop = self.results_at_restart = -1
        self.restarted_at = None

    def _n_results(self) -> int:
        try:
            return sum(len(v) for v in tune_results(self.plan.experiment_path).values())
        except (OSError, ValueError, IndexError):
            return -1

    def run(self):
        from tracking.server import start_server

        try:
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline:
                try:
                    runs = trial_runs(self.server.url, self.plan.name)
                    if any(r["tags"].get("mrlfads.role") == "trial" and any(
                            m["key"] == "objective" for m in r["data"].get("metrics", [])) for r in runs):
                        break
                except (OSError, KeyError):  # experiment not created yet
                    pass
                time.sleep(0.2)
            else:
                raise AssertionError("no trial result reached MLflow in 150 s")
            port, s = self.server.port, self.server
            s.stop()
            self.results_at_stop = self._n_results()
            time.sleep(DOWN_S)
            self.results_at_restart = self._n_results()
            self.server = start_server(s.backend_store_uri, s.artifacts_destination, port=port,
                                       log_path=s.log_path)
            self.restarted_at = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            self.error = exc


def test_server_outage_during_pbt_sweep_loses_no_metric(ray_session, tiny_dataset_dir, tmp_path):
    from tracking.outbox import import_outbox
    from tracking.server import start_server
    from tracking.store import artifact_root_for, default_tracking_uri
    from tracking.tune_callback import OUTBOX_NAME, sweep_callbacks
    from training import sweep

    uri = default_tracking_uri(tmp_path / "store")
    server = start_server(uri, artifact_root_for(uri))
    plan = sweep.plan_sweep(tiny_dataset_dir, smoke_test=True, name=f"outage-{uuid.uuid4().hex[:6]}",
                            storage=str(tmp_path / "sweeps"))
    outage = Outage(server, plan)
    try:
        outage.start()
        t0 = time.monotonic()
        callbacks = sweep_callbacks(plan, tracking_uri=server.url)
        summary = sweep.run_sweep(plan, callbacks=callbacks, tracking=True, verbose=0)
        sweep_end = time.monotonic()
        outage.join(timeout=240)
        assert not outage.is_alive() and outage.error is None, outage.error
        server = outage.server
        print(f"sweep {sweep_end - t0:.0f} s; results at stop {outage.results_at_stop}, "
              f"at restart {outage.results_at_restart}; server back "
              f"{outage.restarted_at - sweep_end:+.0f} s after the sweep ended; "
              f"outbox files left: {callbacks[0].outbox_files}")

        # training went on while the server was down, and every trial finished
        assert outage.results_at_restart > outage.results_at_stop >= 0
        assert summary.trials and set(summary.trials.values()) == {"TERMINATED"}

        # trials that ended during the outage: if the server was back before the sweep
        # ended, the callback delivered their queue; otherwise their outbox files remain and
        # `mrlfads import-metrics` (import_outbox) delivers them now
        left = [Path(f) for f in callbacks[0].outbox_files]
        assert all(f.name == OUTBOX_NAME and f.is_file() for f in left)
        if outage.restarted_at < sweep_end:
            assert left == []
        else:  # down at the end: the parent's summary and end_run, at least, wait in a file
            assert Path(plan.experiment_path, OUTBOX_NAME) in left
        for f in left:
            assert import_outbox(f, tracking_uri=server.url) > 0
            assert not f.exists()

        runs = trial_runs(server.url, plan.name)
        parents = [r for r in runs if r["tags"].get("mrlfads.role") == "sweep"]
        children = [r for r in runs if r["tags"].get("mrlfads.role") == "trial"]
        assert len(parents) == 1 and parents[0]["info"]["status"] == "FINISHED"
        assert sorted(r["tags"]["mrlfads.trial_id"] for r in children) == sorted(summary.trials)
        recorded = tune_results(plan.experiment_path)
        assert sorted(recorded) == sorted(summary.trials)
        for run in children:
            assert run["info"]["status"] == "FINISHED"
            assert run["tags"]["mlflow.parentRunId"] == parents[0]["info"]["run_id"]
            hist = rest(server.url, "metrics/get-history", run_id=run["info"]["run_id"],
                        metric_key="objective")["metrics"]
            logged = {(int(m["step"]), round(m["value"], 4)) for m in hist}
            reported = {(int(r["epoch"]), round(r["objective"], 4))
                        for r in recorded[run["tags"]["mrlfads.trial_id"]]}
            assert reported and reported <= logged  # none lost; repeated/rewound steps allowed
    finally:
        outage.join(timeout=240)
        outage.server.stop()
        server.stop()
