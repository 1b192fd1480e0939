"""The tracking commands through the real CLI: import-metrics, promote's errors, ui."""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from mrlfads.tracking.mlflow_tracker import MlflowTracker
from mrlfads.tracking.server import free_port
from mrlfads.training.cli import main


def test_import_metrics_delivers_an_outbox_file(tmp_path, mlflow_sqlite_uri, experiment_name, capsys):
    box = tmp_path / "trial" / "tracking-outbox.jsonl"
    t = MlflowTracker(f"http://127.0.0.1:{free_port()}", outbox_path=box)  # server down
    t.start_run("trial_0", experiment=experiment_name)
    for epoch in range(1, 4):
        t.log_metrics({"objective": 1.0 / epoch}, step=epoch)
    t.end_run()
    assert main(["import-metrics", str(box), "--tracking-uri", mlflow_sqlite_uri]) == 0
    assert "delivered 5 tracking ops" in capsys.readouterr().out
    client = MlflowClient(mlflow_sqlite_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment_name).experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "objective")] == [1, 2, 3]
    assert main(["import-metrics", str(box)]) == 2  # delivered files are gone: a clear error
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("user_level", [None, logging.INFO])
def test_system_metrics_start_and_stop_quietly_unless_the_user_asked(
        mlflow_sqlite_uri, experiment_name, user_level):
    """The monitor's INFO lines (started, stopped, no GPU) wrapped every `mrlfads train`'s
    own output; its warnings still show, and a level the user set is kept."""
    logger, said = logging.getLogger("mlflow.system_metrics"), []
    before = logger.level
    logger.setLevel(user_level or logging.NOTSET)
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logger.addHandler(handler)
    try:
        t = MlflowTracker(mlflow_sqlite_uri, system_metrics=True)
        t.start_run("quiet", experiment=experiment_name)
        level = logger.level
        t.end_run()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)
    if user_level is None:
        assert level == logging.WARNING and said == []
    else:
        assert level == logging.INFO
        assert any("Started monitoring system metrics" in m for m in said), said


def test_promote_without_a_finished_trial_exits_2_with_the_reason(mlflow_sqlite_uri, experiment_name, capsys):
    t = MlflowTracker(mlflow_sqlite_uri)
    t.start_run("s", experiment=experiment_name, tags={"mrlfads.role": "sweep"})
    t.end_run()
    t.start_run("t", experiment=experiment_name, tags={"mrlfads.role": "trial"})
    t.log_metrics({"objective": 1.0}, step=1)
    t.end_run("FAILED")
    assert main(["promote", "--sweep", experiment_name, "--tracking-uri", mlflow_sqlite_uri]) == 2
    err = capsys.readouterr().err
    assert "no finished trial" in err and "FAILED" in err


def test_promote_run_refuses_unfinished_checkpointless_unknown_and_sweep_runs(
        mlflow_sqlite_uri, experiment_name, capsys):
    t = MlflowTracker(mlflow_sqlite_uri)
    parent = t.start_run("s", experiment=experiment_name,
                         tags={"mrlfads.role": "sweep", "mrlfads.sweep": experiment_name})
    t.end_run()
    running = t.start_run("r", experiment=experiment_name, tags={"mrlfads.kind": "train"})
    t._run_id = None  # left RUNNING, as a run still training is
    bare = t.start_run("b", experiment=experiment_name, tags={"mrlfads.kind": "train"})
    t.log_metrics({"objective": 1.0, "ramps_done": 1.0}, step=1)
    t.end_run()

    def promote(*extra):
        code = main(["promote", *extra, "--tracking-uri", mlflow_sqlite_uri])
        return code, capsys.readouterr().err

    code, err = promote("--run", running)
    assert code == 2 and f"run {running} is RUNNING, not FINISHED" in err
    code, err = promote("--run", bare)
    assert code == 2 and f"run {bare} has no checkpoint to promote" in err
    code, err = promote("--run", "0123456789abcdef0123456789abcdef")
    assert code == 2 and "no run '0123456789abcdef0123456789abcdef'" in err
    code, err = promote("--run", parent)
    assert code == 2 and "parent run of sweep" in err and "--sweep" in err
    code, err = promote("--run", bare, "--metric", "valid/loss")
    assert code == 2 and "--metric and --mode rank a sweep's trials" in err
    with pytest.raises(SystemExit):  # argparse: one of --sweep / --run, not both
        main(["promote", "--run", bare, "--sweep", experiment_name])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.slow
def test_ui_starts_on_localhost_prints_its_address_and_stops(tmp_path):
    env = dict(os.environ, MRLFADS_HOME=str(tmp_path), MLFLOW_DISABLE_TELEMETRY="true")
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, "-m", "mrlfads.training.cli", "ui"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        url, deadline = None, time.monotonic() + 240
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "mrlfads ui exited early"
            m = re.search(r"MLflow UI: (http://127\.0\.0\.1:\d+)", line)
            url = m.group(1) if m else None
        assert url, "no address printed"
        with urllib.request.urlopen(f"{url}/health", timeout=10) as r:
            assert r.status == 200
        assert (tmp_path / "mlruns" / "mlflow.db").is_file()  # the project's embedded store
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    with pytest.raises(OSError):  # ui stopped its server (until /health fails) before exiting
        urllib.request.urlopen(f"{url}/health", timeout=5)


def test_a_figure_that_fails_does_not_fail_the_finished_training_run(
        tmp_path, mlflow_sqlite_uri, experiment_name, capsys, monkeypatch):
    """The figures come after training is done and saved: one that fails is a warning, the
    run ends FINISHED and its best.pt is still logged for `mrlfads promote --run`."""
    import json

    from mrlfads.data_loaders.testing import make_tiny_dataset
    from mrlfads.tracking.registry import RUN_CHECKPOINT
    from mrlfads.training import report_figures

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(report_figures, "make_model_figures", no_space)
    make_tiny_dataset(tmp_path / "data")
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "data"), "--smoke-test", "--epochs", "2",
                 "--out", str(run_dir), "--tracking-uri", mlflow_sqlite_uri, "--experiment",
                 experiment_name, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning: the run's figures were not logged (OSError: [Errno 28] No space left" in err
    assert f"mrlfads report {run_dir}` draws them" in err
    run_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]
    client = MlflowClient(mlflow_sqlite_uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert RUN_CHECKPOINT in {a.path for a in client.list_artifacts(run_id, "checkpoint")}
    assert not client.list_artifacts(run_id, "figures")
