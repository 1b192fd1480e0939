"""A tracking outage never kills training: writes are kept, then delivered."""
from __future__ import annotations

import json
import time

import pytest
from mlflow.tracking import MlflowClient

from mrlfads.tracking.errors import TrackingError
from mrlfads.tracking.mlflow_tracker import MlflowTracker
from mrlfads.tracking.outbox import Outbox, import_outbox, read_outbox
from mrlfads.tracking.server import free_port


def _history(uri, run_id, key):
    return [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key)]


def test_backoff_doubles_and_caps():
    now = [0.0]
    box = Outbox(None, base_delay_s=1.0, max_delay_s=5.0, clock=lambda: now[0])
    delays = []
    for _ in range(5):
        box.failed()
        delays.append(box.next_try - now[0])
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert not box.due()
    now[0] = 5.0
    assert box.due()


def test_unreachable_server_keeps_everything_in_the_outbox_then_import_delivers(
        tmp_path, mlflow_sqlite_uri, experiment_name):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    outbox = tmp_path / "trial_0" / "tracking-outbox.jsonl"
    (tmp_path / "fig.png").write_bytes(b"png")
    t = MlflowTracker(dead, outbox_path=outbox)
    t0 = time.monotonic()
    run = t.start_run("trial_0", experiment=experiment_name, tags={"role": "trial"})
    assert run.startswith("pending-")
    t.log_params({"train.lr": 0.01})
    for epoch in range(5):
        t.log_metrics({"valid/loss": 1.0 / (epoch + 1), "epoch": epoch}, step=epoch)
    t.log_artifact(str(tmp_path / "fig.png"), "figures")
    t.end_run()
    t.close()
    assert time.monotonic() - t0 < 30  # training was not held up for long
    ops = read_outbox(outbox)
    assert [op["op"] for op in ops] == ["create_run", "log_batch"] + ["log_batch"] * 5 + [
        "log_artifact", "end_run"]
    assert all(op["tracking_uri"] == dead for op in ops)

    # the server never came back: deliver the file to the real store, one command
    assert import_outbox(outbox, tracking_uri=mlflow_sqlite_uri) == 9
    assert not outbox.exists()  # delivered ops are removed
    client = MlflowClient(mlflow_sqlite_uri)
    exp = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED" and r.data.params == {"train.lr": "0.01"}
    assert _history(mlflow_sqlite_uri, r.info.run_id, "valid/loss") == [
        (e, 1.0 / (e + 1)) for e in range(5)]
    assert [a.path for a in client.list_artifacts(r.info.run_id, "figures")] == ["figures/fig.png"]


def test_reimporting_the_same_lines_makes_no_duplicates(tmp_path, mlflow_sqlite_uri, experiment_name):
    dead = f"http://127.0.0.1:{free_port()}"
    outbox = tmp_path / "box.jsonl"
    t = MlflowTracker(dead, outbox_path=outbox)
    t.start_run("trial_0", experiment=experiment_name)
    for epoch in range(3):
        t.log_metrics({"x": float(epoch)}, step=epoch)
    t.end_run()
    lines = outbox.read_text()
    import_outbox(outbox, tracking_uri=mlflow_sqlite_uri)
    outbox.write_text(lines)  # e.g. a copy imported a second time
    import_outbox(outbox, tracking_uri=mlflow_sqlite_uri)
    client = MlflowClient(mlflow_sqlite_uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment_name).experiment_id])
    assert len(runs) == 1
    assert _history(mlflow_sqlite_uri, runs[0].info.run_id, "x") == [(0, 0.0), (1, 1.0), (2, 2.0)]


def test_bad_outbox_file_names_the_line(tmp_path):
    p = tmp_path / "box.jsonl"
    p.write_text(json.dumps({"op": "end_run", "run": "x", "status": "FINISHED"}) + "\n{not json\n")
    with pytest.raises(TrackingError, match=r"box\.jsonl:2"):
        import_outbox(p, tracking_uri="sqlite:///unused.db")
    with pytest.raises(TrackingError, match="does not exist"):
        import_outbox(tmp_path / "missing.jsonl")
