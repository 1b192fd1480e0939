"""No absolute local path in what leaves the machine: dataset.json, MLflow params and tags,
the run's artifacts and the registered model's files name the data by folder name and
manifest digest (tracking/shareable.py)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from mlflow.tracking import MlflowClient

from mrlfads.data_loaders.nwb import IngestOptions, ingest
from mrlfads.data_loaders.nwb.testing import synthetic_session
from mrlfads.tracking.memory import InMemoryTracker, MemoryStore
from mrlfads.tracking.registry import BestTrial, download_checkpoint, promote, resolve_model_uri
from mrlfads.tracking.shareable import (
    DIGEST_PARAM,
    DIGEST_TAG,
    contract_home,
    home_relative,
    shared_manifest,
    shared_run_config,
    shared_uri,
)
from mrlfads.tracking.tune_callback import _params
from mrlfads.training import checkpoint as ckpt
from mrlfads.training.cli import main


def _leaks(data: bytes | str, *prefixes: str) -> list[str]:
    """The prefixes found in ``data`` (bytes are searched as bytes: checkpoints are zips of
    uncompressed pickles, so a path inside one is found)."""
    raw = data.encode() if isinstance(data, str) else data
    return [p for p in prefixes if p.encode() in raw]


@pytest.fixture
def dataset(tmp_path):
    """A real NWB session ingested with a region map given by absolute path."""
    (tmp_path / "raw").mkdir()
    nwb = synthetic_session(tmp_path / "raw" / "mouse1.nwb", n_units=8, n_trials=20,
                            trial_s=0.5, gap_s=0.1)
    region_map = tmp_path / "raw" / "regions.yaml"
    region_map.write_text("A: A\nB: B\n")
    ds = tmp_path / "session-ds"
    ingest([nwb], ds, IngestOptions(ic_enc_seq_len=4, heldout=1, region_map=str(region_map)))
    return nwb, ds


def test_manifest_names_sources_by_file_name_size_and_checksum(dataset, tmp_path):
    nwb, ds = dataset
    text = (ds / "dataset.json").read_text()
    assert _leaks(text, str(tmp_path), os.path.expanduser("~") + "/") == []
    prov = json.loads(text)["provenance"]
    raw = Path(nwb).read_bytes()
    assert prov["sources"][0]["name"] == "mouse1.nwb" and "path" not in prov["sources"][0]
    assert prov["sources"][0]["size"] == len(raw)
    assert prov["sources"][0]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert prov["options"]["region_map"] == "regions.yaml"
    assert prov["region_map"] == {"A": "A", "B": "B"}  # the contents, for a repeat


def test_train_and_promote_share_no_local_path(dataset, tmp_path, mlflow_sqlite_uri,
                                               experiment_name):
    nwb, ds = dataset
    run_dir = tmp_path / "runs" / "r1"
    assert main(["train", "--data", str(ds), "--smoke-test", "--epochs", "2", "--out",
                 str(run_dir), "--tracking-uri", mlflow_sqlite_uri, "--experiment",
                 experiment_name, "--quiet"]) == 0
    secret = (str(tmp_path), os.path.expanduser("~") + "/")
    digest = hashlib.sha256((ds / "dataset.json").read_bytes()).hexdigest()
    client = MlflowClient(mlflow_sqlite_uri, registry_uri=mlflow_sqlite_uri)
    exp = client.get_experiment_by_name(experiment_name)
    (run,) = client.search_runs([exp.experiment_id])
    # params and tags: the data by name and digest
    assert run.data.params["data.uri"] == "session-ds"
    assert run.data.params[DIGEST_PARAM] == run.data.tags[DIGEST_TAG] == digest
    for key, value in {**run.data.params, **run.data.tags}.items():
        assert _leaks(value, *secret) == [], key
    # the run's MLflow input: the manifest's name, the folder's name and the digest
    (inp,) = run.inputs.dataset_inputs
    logged = inp.dataset
    name = json.loads((ds / "dataset.json").read_text())["name"]
    assert (logged.name, logged.source_type, logged.source) == (name, "local",
                                                               '{"uri": "session-ds"}')
    assert logged.digest == digest[:36] and json.loads(logged.profile)["sha256"] == digest
    for field in (logged.name, logged.digest, logged.source, logged.schema, logged.profile):
        assert _leaks(field or "", *secret) == [], field
    # every artifact the run logged (run_config.json, dataset.json, figures, best.pt)
    arts = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "dl-run")))
    files = [p for p in arts.rglob("*") if p.is_file()]
    assert {"run_config.json", "dataset.json", "best.pt"} <= {p.name for p in files}
    for p in files:
        assert _leaks(p.read_bytes(), *secret) == [], p.name
    # the run directory keeps the real path: --resume reads the data from it
    assert ckpt.load(run_dir / "last.pt")["run_config"]["data"]["uri"] == str(ds)

    # promote the run's checkpoint as a sweep's best trial would be
    best = BestTrial(run.info.run_id, "t0", "objective", 1.0, str(run_dir), {})
    model, run_cfg, manifest = ckpt.load_model(run_dir / "best.pt")
    done = promote(experiment_name, best, model=model, run_cfg=run_cfg, manifest=manifest,
                   checkpoint_file=run_dir / "best.pt", tracking_uri=mlflow_sqlite_uri)
    version = client.get_model_version(done.name, done.version)
    assert version.tags[DIGEST_TAG] == digest
    for key, value in version.tags.items():
        assert _leaks(value, *secret) == [], key
    local = resolve_model_uri(done.uri, tracking_uri=mlflow_sqlite_uri, dst=tmp_path / "dl-model")
    files = [p for p in Path(local).rglob("*") if p.is_file()]
    assert {"checkpoint.pt", "run_config.json", "dataset.json", "MLmodel"} <= {p.name for p in files}
    for p in files:
        assert _leaks(p.read_bytes(), *secret) == [], p.name
    shared = ckpt.load(download_checkpoint(done.uri, tracking_uri=mlflow_sqlite_uri))
    assert shared["run_config"]["data"]["uri"] == "session-ds"
    torch.testing.assert_close(shared["model"], ckpt.load(run_dir / "best.pt")["model"])

    # infer from the registered model reads the data from --data
    out = tmp_path / "infer"
    assert main(["infer", "--model", done.uri, "--data", str(ds), "--out", str(out),
                 "--tracking-uri", mlflow_sqlite_uri]) == 0
    assert (out / "metrics.json").is_file()


def test_sweep_parent_and_trial_params_name_the_data(dataset, tmp_path, monkeypatch,
                                                     mlflow_sqlite_uri):
    """What the sweep's MLflow callback logs (built without Ray), with the data and the
    sweep storage under the home directory."""
    from mrlfads.tracking.tune_callback import sweep_callbacks
    from mrlfads.training.sweep import plan_sweep

    _, ds = dataset
    monkeypatch.setenv("HOME", str(tmp_path))
    plan = plan_sweep(str(ds), storage=str(tmp_path / "sweeps"), name="s", smoke_test=True)
    (cb,) = sweep_callbacks(plan, tracking_uri=mlflow_sqlite_uri)
    info = json.dumps(cb.sweep_info, default=str)
    assert _leaks(info, str(tmp_path)) == []
    assert cb.sweep_info["config"]["data"]["uri"] == "session-ds"
    assert cb.sweep_info["sweep"]["storage"].startswith("~/sweeps")
    digest = hashlib.sha256((ds / "dataset.json").read_bytes()).hexdigest()
    assert cb.sweep_info["dataset"]["digest"] == digest
    # the MLflow input the parent and every trial run log
    assert _leaks(json.dumps(cb.dataset), str(tmp_path)) == []
    assert cb.dataset["source"] == '{"uri": "session-ds"}' and cb.dataset["digest"] == digest[:36]
    store = MemoryStore()  # the callback's hooks without Ray: parent and trial log the input
    cb.tracker_factory, cb.system_metrics = (lambda outbox: InMemoryTracker(store)), False
    cb.setup()
    cb.log_trial_start(SimpleNamespace(trial_id="t0", experiment_tag="0", local_path=None,
                                       config={"run": plan.run}))
    assert sorted(r.tags.get("mrlfads.role") for r in store.runs.values()) == ["sweep", "trial"]
    assert [r.inputs for r in store.runs.values()] == [[cb.dataset], [cb.dataset]]
    assert _params({"run.data.uri": str(ds)}) == {"run.data.uri": "session-ds"}


@pytest.mark.parametrize("uri, shared", [
    ("/home/alice/data/ring", "ring"), ("/home/alice/data/ring/", "ring"),
    ("file:///home/alice/ring", "ring"), ("ring", "ring"), ("../x/ring", "ring"),
    ("s3://bucket/ring", "s3://bucket/ring"), ("s3://AK:PW@bucket/ring", "s3://bucket/ring"),
    ("", ""),
])
def test_shared_uri_keeps_a_name_locally_and_remote_uris_without_credentials(uri, shared):
    assert shared_uri(uri) == shared


def test_old_manifests_and_home_paths_are_shared_without_the_home(monkeypatch):
    monkeypatch.setenv("HOME", "/home/alice")
    old = {"name": "x", "uri": "/home/alice/d/x",
           "provenance": {"sources": [{"path": "/home/alice/raw/s.nwb", "sha256": "ab"}],
                          "options": {"region_map": "/home/alice/raw/map.yaml"}}}
    got = shared_manifest(old)
    assert got["uri"] == "x" and got["provenance"]["sources"] == [{"name": "s.nwb", "sha256": "ab"}]
    assert got["provenance"]["options"]["region_map"] == "map.yaml"
    assert old["provenance"]["sources"][0]["path"] == "/home/alice/raw/s.nwb"  # a copy
    assert shared_run_config({"data": {"uri": "/home/alice/d/x"}}) == {"data": {"uri": "x"}}
    assert home_relative("/home/alice/sweeps/s/ckpt") == "~/sweeps/s/ckpt"
    assert home_relative("/home/alicexyz/a") == "/home/alicexyz/a"  # not under the home
    assert home_relative("s3://AK:PW@b/s/ckpt") == "s3://b/s/ckpt"
    assert contract_home('File "/home/alice/m/loop.py", line 3') == 'File "~/m/loop.py", line 3'
