"""The same writer/reader code on s3:// against moto's real HTTP S3 server on 127.0.0.1.

pyarrow's S3FileSystem is built by mrlfads.data_loaders.fs from MRLFADS_S3_ENDPOINT plus
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_REGION (dummy values for moto).
"""
from __future__ import annotations

import numpy as np
import pytest

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

from mrlfads.data_loaders.errors import DatasetError
from mrlfads.data_loaders.reader import ArrowDataset
from mrlfads.data_loaders.testing import make_tiny_dataset
from mrlfads.data_loaders.torch_data import make_loader


@pytest.fixture(scope="module")
def s3_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint, monkeypatch):
    monkeypatch.setenv("MRLFADS_S3_ENDPOINT", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    name = f"bucket-{np.random.default_rng().integers(1 << 30)}"
    client.create_bucket(Bucket=name)
    return client, name


def test_s3_roundtrip_equals_local(bucket, tmp_path):
    client, name = bucket
    local = make_tiny_dataset(tmp_path / "local", ext_dim=1)
    make_tiny_dataset(f"s3://{name}/ds", ext_dim=1)
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=name)["Contents"])
    assert "ds/dataset.json" in keys
    assert all(k.endswith(".parquet") for k in keys if k.startswith("ds/shards/"))  # object store default
    assert len([k for k in keys if k.startswith("ds/shards/")]) == 3 + 1  # 18 train / 8 + 6 valid / 8

    again = ArrowDataset.open(f"s3://{name}/ds")
    again.validate()
    assert again.manifest.splits == local.manifest.splits == {"train": 18, "valid": 6}
    for split in ("train", "valid"):
        a, b = local.arrays(split), again.arrays(split)
        assert a.keys() == b.keys()
        for col in a:
            np.testing.assert_array_equal(a[col], b[col])
    only = again.arrays("valid", ["x/B"])
    assert list(only) == ["x/B"] and only["x/B"].shape == (6, 12, 4)
    batches = list(make_loader(again, "train", 4, shuffle=False, streaming=True))
    assert sorted(int(t) for b in batches for t in b.trial_id) == sorted(local.arrays("train")["trial_id"])


def test_s3_refuses_overwrite_and_names_missing_manifest(bucket):
    _, name = bucket
    make_tiny_dataset(f"s3://{name}/ds2", with_truth=False)
    with pytest.raises(DatasetError, match="already exists"):
        make_tiny_dataset(f"s3://{name}/ds2")
    with pytest.raises(DatasetError, match="not an mrlfads dataset"):
        ArrowDataset.open(f"s3://{name}/nothing-here")


def test_a_sweep_on_s3_data_names_it_by_its_manifest(bucket, tmp_path, mlflow_sqlite_uri):
    """The sweep's MLflow callback reads the remote manifest as it reads a local one: the
    parent's dataset digest is dataset.json's sha256 (not the URI's), and the true
    communication and regions reach the figures."""
    import hashlib
    import json

    from mrlfads.tracking.tune_callback import sweep_callbacks
    from mrlfads.training.sweep import plan_sweep

    client, name = bucket
    make_tiny_dataset(f"s3://{name}/ds")
    body = client.get_object(Bucket=name, Key="ds/dataset.json")["Body"].read()
    plan = plan_sweep(f"s3://{name}/ds", storage=str(tmp_path), name="s3sweep", smoke_test=True)
    (cb,) = sweep_callbacks(plan, tracking_uri=mlflow_sqlite_uri)
    digest = hashlib.sha256(body).hexdigest()
    assert cb.sweep_info["dataset"]["digest"] == digest
    assert cb.dataset["digest"] == digest[:36]
    assert json.loads(cb.dataset["profile"])["digest_of"] == "dataset.json"
    manifest = json.loads(body)
    assert cb.truth_comm == manifest["comm_matrix"] and cb.regions == ["A", "B"]
