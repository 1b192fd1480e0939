"""No credential typed in a URI reaches a file, a param, the outbox or the terminal.

Real MLflow (a SQLite store, a real `mlflow server` on 127.0.0.1) and real S3 (moto's HTTP
server); each test greps every file written and everything printed for the secret.
"""
from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest

from mrlfads.tracking.redact import credentials_to_env, redact_text, redact_uri

SECRET = "Hunter2xSECRETx"  # unusual enough that a hit is ours


@pytest.mark.parametrize("uri, clean", [
    (f"http://alice:{SECRET}@127.0.0.1:5000", "http://127.0.0.1:5000"),
    (f"https://alice:{SECRET}@mlflow.example.org/", "https://mlflow.example.org/"),
    (f"postgresql://mlflow:{SECRET}@db:5432/mlflow", "postgresql://db:5432/mlflow"),
    (f"s3://AKIAXX:{SECRET}@bucket/data/ring", "s3://bucket/data/ring"),
    (f"s3://bucket/ds?access_key=AKIAXX&secret_key={SECRET}&region=eu-west-1",
     "s3://bucket/ds?region=eu-west-1"),
    (f"https://b.s3.amazonaws.com/k?X-Amz-Signature={SECRET}&X-Amz-Credential=AK%2F2026",
     "https://b.s3.amazonaws.com/k"),
    ("sqlite:////home/me/mlruns/mlflow.db", "sqlite:////home/me/mlruns/mlflow.db"),
    ("s3://bucket/ds?endpoint_override=127.0.0.1:9000", "s3://bucket/ds?endpoint_override=127.0.0.1:9000"),
    ("data/ring", "data/ring"),
])
def test_redact_uri_drops_userinfo_and_secret_options_only(uri, clean):
    assert redact_uri(uri) == clean
    assert SECRET not in redact_text(f"error: {uri!r} refused; also see {uri}.")


def test_credentials_move_to_the_variables_each_client_reads():
    env: dict[str, str] = {}
    assert credentials_to_env(f"http://alice:{SECRET}@h:5000", env) == "http://h:5000"
    assert env == {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": SECRET}
    env = {}
    assert credentials_to_env(f"s3://bucket/x?access_key=AK&secret_key={SECRET}", env) == "s3://bucket/x"
    assert env == {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": SECRET}
    env = {}  # a database URI keeps them: its driver reads them from the URI only
    db = f"postgresql://u:{SECRET}@db/m"
    assert credentials_to_env(db, env) == db and env == {}


def test_a_uri_inside_a_set_value_gives_its_credentials_to_the_environment(clean_env):
    """--set data.uri=s3://KEY:SECRET@... is cleaned like --data s3://KEY:SECRET@...; the
    other values, and URIs without credentials, are left as typed."""
    import argparse

    from mrlfads.training.cli import credentials_off_the_command_line

    args = argparse.Namespace(set=[f"data.uri=s3://AKIAXX:{SECRET}@bucket/ds", "train.lr=1e-3",
                                   "data.uri=s3://b/k=v"],
                              data=f"s3://bucket/ds?access_key=AKIAXX&secret_key={SECRET}",
                              config=None)
    credentials_off_the_command_line(args)
    assert args.set == ["data.uri=s3://bucket/ds", "train.lr=1e-3", "data.uri=s3://b/k=v"]
    assert args.data == "s3://bucket/ds"
    assert (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]) == ("AKIAXX",
                                                                                   SECRET)


def _leaks(root: Path, *texts: str) -> list[str]:
    hits = [str(p) for p in root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    return hits + [f"output #{i}" for i, t in enumerate(texts) if SECRET in t]


@pytest.fixture
def clean_env(monkeypatch):
    """The CLI exports credentials into os.environ: give them back after the test."""
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI",
                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_train_during_an_outage_keeps_the_password_out_of_outbox_and_stderr(
        tmp_path, clean_env, capsys, caplog, mlflow_sqlite_uri):
    from mrlfads.data_loaders.testing import make_tiny_dataset
    from mrlfads.tracking.server import free_port
    from mrlfads.training.cli import main

    make_tiny_dataset(tmp_path / "data")
    dead = f"http://alice:{SECRET}@127.0.0.1:{free_port()}"  # nobody listens: all ops queue
    caplog.set_level(logging.WARNING)
    code = main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
                 "--smoke-test", "--epochs", "2", "--quiet", "--tracking-uri", dead])
    out = capsys.readouterr()
    assert code == 0, out.err
    box = tmp_path / "run" / "outbox.jsonl"
    ops = [json.loads(line) for line in box.read_text().splitlines()]
    # create, params, 2 artifacts, 2 epochs of metrics, figures..., end: all queued
    assert len(ops) >= 6 and {op["op"] for op in ops} >= {"create_run", "log_batch", "end_run"}
    assert {op["tracking_uri"] for op in ops} == {redact_uri(dead)}
    assert stat.S_IMODE(box.stat().st_mode) == 0o600
    assert "unreachable" in caplog.text  # the warning was shown, without the password
    assert _leaks(tmp_path, out.out, out.err, caplog.text) == []
    # the queue is still deliverable (the URI it records has no credentials to lose)
    assert main(["import-metrics", str(box), "--tracking-uri", mlflow_sqlite_uri]) == 0


def test_train_against_a_server_with_a_password_in_the_uri(tmp_path, clean_env, capsys,
                                                           mlflow_server):
    from mlflow.tracking import MlflowClient

    from mrlfads.data_loaders.testing import make_tiny_dataset
    from mrlfads.training.cli import main

    make_tiny_dataset(tmp_path / "data")
    uri = mlflow_server.url.replace("http://", f"http://alice:{SECRET}@")
    code = main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
                 "--smoke-test", "--epochs", "2", "--quiet", "--tracking-uri", uri,
                 "--experiment", f"secret-{tmp_path.name}"])
    out = capsys.readouterr()
    assert code == 0, out.err
    client = MlflowClient(mlflow_server.url)
    exp = client.get_experiment_by_name(f"secret-{tmp_path.name}")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.data.metrics["epoch"] == 2
    assert not (tmp_path / "run" / "outbox.jsonl").exists()  # everything was delivered
    assert all(SECRET not in v for v in run.data.params.values())
    store = Path(mlflow_server.backend_store_uri.removeprefix("sqlite:///")).parent
    assert _leaks(tmp_path, out.out, out.err) == [] and _leaks(store) == []


moto_server = pytest.importorskip("moto.server")


@pytest.fixture
def s3_bucket(clean_env):
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    clean_env.setenv("MRLFADS_S3_ENDPOINT", f"http://{host}:{port}")
    clean_env.setenv("AWS_REGION", "us-east-1")
    import boto3

    boto3.client("s3", endpoint_url=f"http://{host}:{port}", aws_access_key_id="AKIAXX",
                 aws_secret_access_key=SECRET, region_name="us-east-1").create_bucket(Bucket="mrlfads-secret")
    yield "mrlfads-secret"
    server.stop()


def test_s3_keys_in_the_data_uri_reach_no_config_param_or_manifest(tmp_path, s3_bucket,
                                                                   capsys, mlflow_sqlite_uri):
    from mlflow.tracking import MlflowClient

    from mrlfads.data_loaders.testing import make_tiny_dataset
    from mrlfads.training.cli import main

    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = "AKIAXX", SECRET
    make_tiny_dataset(f"s3://{s3_bucket}/ring")
    del os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    data = f"s3://AKIAXX:{SECRET}@{s3_bucket}/ring"
    exp = f"s3secret-{tmp_path.name}"
    code = main(["train", "--data", data, "--out", str(tmp_path / "run"), "--smoke-test",
                 "--epochs", "2", "--quiet", "--tracking-uri", mlflow_sqlite_uri,
                 "--experiment", exp])
    out = capsys.readouterr()
    assert code == 0, out.err
    client = MlflowClient(mlflow_sqlite_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(exp).experiment_id])
    assert run.data.params["data.uri"] == f"s3://{s3_bucket}/ring"
    store = Path(mlflow_sqlite_uri.removeprefix("sqlite:///")).parent
    assert _leaks(tmp_path, out.out, out.err) == [] and _leaks(store) == []
    # the same URI inside --set (a sweep may take data.uri from --set): its keys too
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.pop(var, None)
    code = main(["train", "--data", f"s3://{s3_bucket}/ring", "--set", f"data.uri={data}",
                 "--out", str(tmp_path / "run3"), "--smoke-test", "--epochs", "2", "--quiet",
                 "--tracking-uri", mlflow_sqlite_uri, "--experiment", exp])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert _leaks(tmp_path, out.out, out.err) == [] and _leaks(store) == []
    # an error about that URI does not print the key either
    code = main(["train", "--data", f"s3://AKIAXX:{SECRET}@{s3_bucket}/nope", "--no-tracking",
                 "--out", str(tmp_path / "run2")])
    out = capsys.readouterr()
    assert code == 2 and "s3://" in out.err and SECRET not in out.out + out.err
