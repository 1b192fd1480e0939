"""`mrlfads ingest https://... / s3://...` streams the NWB file: the same dataset as a local
ingest, a fraction of the file's bytes fetched, credentials in no output, bad URLs exit 2.

The HTTP server is data_loaders/nwb/range_server.py on 127.0.0.1 (honours Range, counts
the body bytes it sends); s3:// runs against moto's real S3 server on 127.0.0.1.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from mrlfads.data_loaders.nwb import IngestOptions, ingest
from mrlfads.data_loaders.nwb.range_server import RangeServer
from mrlfads.data_loaders.nwb.testing import build_nwb
from mrlfads.data_loaders.reader import ArrowDataset

N_UNITS, N_A, SPIKES = 200, 4, 2000  # 4 units in region A, 196 in B, 2000 spikes each


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(server, root, file size): one session with many units and an unread 4.8 MB
    acquisition TimeSeries, plus a text file that is not NWB."""
    root = tmp_path_factory.mktemp("www")
    rng = np.random.default_rng(0)
    spikes = [np.sort(rng.uniform(0, 60.0, SPIKES)) for _ in range(N_UNITS)]
    build_nwb(root / "s.nwb", spikes=spikes, locations=["A"] * N_A + ["B"] * (N_UNITS - N_A),
              trials=[(2.0 * i, 2.0 * i + 1.5) for i in range(30)],
              timeseries={"lfp": (np.arange(75_000) / 1000.0, rng.normal(size=(75_000, 8)))})
    (root / "notes.txt").write_text("not an NWB file\n" * 100)
    with RangeServer(root) as server:
        yield server, root, os.path.getsize(root / "s.nwb")


def same_arrays(a: ArrowDataset, b: ArrowDataset) -> None:
    assert a.manifest.splits == b.manifest.splits
    assert [(r.name, r.n_heldin, r.n_heldout, r.neuron_ids) for r in a.manifest.regions] == \
        [(r.name, r.n_heldin, r.n_heldout, r.neuron_ids) for r in b.manifest.regions]
    for split in a.manifest.splits:
        x, y = a.arrays(split), b.arrays(split)
        assert x.keys() == y.keys()
        for col in x:
            np.testing.assert_array_equal(x[col], y[col])


def test_https_ingest_equals_local_and_fetches_a_fraction(served, tmp_path):
    server, root, size = served
    o = IngestOptions(regions=("A",), heldout=1)
    local = ingest([root / "s.nwb"], tmp_path / "local", o)
    server.reset()
    m = ingest([f"{server.url}/s.nwb"], tmp_path / "remote", o)
    fetched = server.bytes_sent
    same_arrays(ArrowDataset.open(tmp_path / "local"), ArrowDataset.open(tmp_path / "remote"))
    assert ArrowDataset.open(tmp_path / "remote").arrays("train")["x/A"].sum() > 0
    # 4 of 200 units: 64 KB of spike times; the file is opened twice (plan, then bin)
    assert fetched < 0.2 * size, (fetched, size)
    src = m.provenance["sources"][0]
    assert src["uri"] == f"{server.url}/s.nwb" and src["size"] == size and src["sha256"] is None
    assert src["name"] == "s.nwb" and m.name == "s" == local.name
    assert src["unit_ids"] == local.provenance["sources"][0]["unit_ids"]


def test_credentials_are_used_but_recorded_nowhere(served, tmp_path, capsys):
    from mrlfads.training.cli import main

    server, _, _ = served
    host = server.url.split("://")[1]
    url = f"http://user:hunter2@{host}/s.nwb?X-Amz-Signature=s3cr3t&v=1"
    rc = main(["ingest", url, "--out", str(tmp_path / "ds"), "--regions", "A"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    text = (tmp_path / "ds" / "dataset.json").read_text()
    src = json.loads(text)["provenance"]["sources"][0]
    assert src["uri"] == f"http://{host}/s.nwb?v=1"
    for secret in ("hunter2", "s3cr3t", "user:"):
        assert secret not in text and secret not in out.out + out.err
    rc = main(["ingest", url.replace("s.nwb", "gone.nwb"), "--out", str(tmp_path / "ds2")])
    err = capsys.readouterr().err
    assert rc == 2 and "hunter2" not in err and "s3cr3t" not in err
    assert f"http://{host}/gone.nwb" in err


@pytest.mark.parametrize("name, says", [("missing.nwb", "no file at this URL"),
                                        ("notes.txt", "not an NWB file")])
def test_bad_url_exits_2_naming_it_and_the_fix(served, tmp_path, capsys, name, says):
    from mrlfads.training.cli import main

    server, _, _ = served
    rc = main(["ingest", f"{server.url}/{name}", "--out", str(tmp_path / "ds")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{server.url}/{name}" in err and says in err
    assert "download" in err or "NWB 2.x" in err
    assert not (tmp_path / "ds").exists()


@contextlib.contextmanager
def moto_process():
    """moto's S3 server in a process of its own (why: data_loaders/nwb/range_server.py);
    yields its endpoint."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("moto's S3 server did not start")
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)


def test_s3_ingest_equals_local(served, tmp_path, monkeypatch):
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("moto.server")
    _, root, size = served
    with moto_process() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="k", aws_secret_access_key="k")
        client.create_bucket(Bucket="nwb")
        client.upload_file(str(root / "s.nwb"), "nwb", "sub-1/s.nwb")
        monkeypatch.setenv("MRLFADS_S3_ENDPOINT", endpoint)
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
        o = IngestOptions(regions=("A",), heldout=1)
        ingest([root / "s.nwb"], tmp_path / "local", o)
        # keys in the URI: used for this file only, never recorded
        m = ingest(["s3://AKEY:SSECRET@nwb/sub-1/s.nwb"], tmp_path / "remote", o)
        same_arrays(ArrowDataset.open(tmp_path / "local"), ArrowDataset.open(tmp_path / "remote"))
        text = (tmp_path / "remote" / "dataset.json").read_text()
        assert "SSECRET" not in text and "AKEY" not in text
        assert m.provenance["sources"][0]["uri"] == "s3://nwb/sub-1/s.nwb"
        assert m.provenance["sources"][0]["size"] == size
        from mrlfads.data_loaders.errors import IngestError

        with pytest.raises(IngestError, match=r"s3://nwb/sub-1/none.nwb: no file at this URI"):
            ingest(["s3://AKEY:SSECRET@nwb/sub-1/none.nwb"], tmp_path / "x", o)
