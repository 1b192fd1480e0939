"""Stop a real MLflow server mid-training, restart it, and count that no metric was lost."""
from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

import pytest

from mrlfads.tracking.mlflow_tracker import MlflowTracker
from mrlfads.tracking.server import start_server
from mrlfads.tracking.store import artifact_root_for, default_tracking_uri

pytestmark = pytest.mark.slow
EPOCHS, DOWN_AT, UP_AT = 12, 4, 8
KEYS = ("valid/loss", "valid/elbo", "lr", "hp/train.lr")


def _rest(url, path, **query):
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}",
                                timeout=10) as r:
        return json.loads(r.read())


def test_server_stopped_and_restarted_mid_run_loses_no_metric(tmp_path):
    uri = default_tracking_uri(tmp_path)
    server = start_server(uri, artifact_root_for(uri))
    port = server.port
    tracker = MlflowTracker(server.url, outbox_path=tmp_path / "trial" / "outbox.jsonl")
    run_id = tracker.start_run("trial_0", experiment="outage")
    slowest_while_down = 0.0
    try:
        for epoch in range(EPOCHS):
            if epoch == DOWN_AT:
                server.stop()
            if epoch == UP_AT:
                server = start_server(uri, artifact_root_for(uri), port=port)
            t0 = time.monotonic()
            tracker.log_metrics({k: epoch + i / 10 for i, k in enumerate(KEYS)}, step=epoch)
            if DOWN_AT <= epoch < UP_AT:
                slowest_while_down = max(slowest_while_down, time.monotonic() - t0)
                assert tracker.outbox.pending, "an outage must queue the write"
        tracker.end_run()
        tracker.close()
        assert not tracker.outbox.pending
        assert not (tmp_path / "trial" / "outbox.jsonl").exists()
        assert slowest_while_down < 15  # one failed request, not minutes of retries

        info = _rest(server.url, "runs/get", run_id=run_id)["run"]["info"]
        assert info["status"] == "FINISHED"
        for i, key in enumerate(KEYS):
            hist = _rest(server.url, "metrics/get-history", run_id=run_id, metric_key=key)["metrics"]
            assert sorted((int(m["step"]), m["value"]) for m in hist) == [
                (e, pytest.approx(e + i / 10)) for e in range(EPOCHS)]
    finally:
        server.stop()
