"""Promotion: best finished trial -> registered pyfunc/PyTorch model with an alias; twice is once."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from mrlfads.config import ModelConfig, RegionConfig
from mrlfads.config_utils import to_dict
from mrlfads.model import MRLFADS
from mrlfads.tracking.errors import TrackingError
from mrlfads.tracking.mlflow_tracker import MlflowTracker
from mrlfads.tracking.registry import (
    SHA_TAG,
    download_checkpoint,
    find_best_trial,
    load_registered,
    promote,
    resolve_model_uri,
    sha256_file,
)
from mrlfads.training import checkpoint as ckpt

T, TAU = 8, 3


def tiny_checkpoint(path):
    cfg = ModelConfig(regions=(RegionConfig("A", 3, 1), RegionConfig("B", 2)), obs_model="gaussian",
                      ic_enc_seq_len=TAU, ic_enc_dim=4, ci_enc_dim=4, con_dim=4, co_dim=2,
                      ic_dim=4, com_dim=2, dropout=0.0)
    torch.manual_seed(0)
    model = MRLFADS(cfg)
    manifest = {"name": "toy", "n_bins": T, "regions": [{"name": "A"}, {"name": "B"}]}
    ckpt.save({"model": model.state_dict(), "run_config": {"model": to_dict(cfg)},
               "manifest": manifest}, path)
    return ckpt.load_model(path)


def fake_sweep(uri, sweep, trials):
    """A parent run and trial runs as the Tune callback leaves them: (status, objective)."""
    t = MlflowTracker(uri)
    parent = t.start_run(sweep, experiment=sweep, tags={"mrlfads.role": "sweep",
                                                        "mrlfads.metric": "objective",
                                                        "mrlfads.mode": "min"})
    t.end_run()
    ids = []
    for i, (status, obj) in enumerate(trials):
        ids.append(t.start_run(f"trial_{i}", experiment=sweep, parent_run_id=parent,
                               tags={"mrlfads.role": "trial", "mrlfads.trial_id": f"t{i}"}))
        t.log_metrics({"objective": obj + 1.0, "valid/loss": obj}, step=1)
        t.log_metrics({"objective": obj, "valid/loss": obj}, step=2)
        if status != "RUNNING":
            t.end_run(status)
        else:
            t._run_id = None  # left running (a sweep still in progress)
    return ids


def test_promote_registers_once_and_the_alias_loads_the_same_model(tmp_path, mlflow_sqlite_uri, experiment_name):
    sweep = experiment_name
    ids = fake_sweep(mlflow_sqlite_uri, sweep,
                     [("FINISHED", 0.5), ("FAILED", 0.1), ("FINISHED", 0.3), ("RUNNING", 0.05)])
    best = find_best_trial(sweep, tracking_uri=mlflow_sqlite_uri)
    assert (best.run_id, best.trial_id, best.value) == (ids[2], "t2", 0.3)  # finished only
    assert find_best_trial(sweep, metric="objective", mode="max", tracking_uri=mlflow_sqlite_uri).run_id == ids[0]

    path = tmp_path / "checkpoint.pt"
    model, run_cfg, manifest = tiny_checkpoint(path)
    p1 = promote(sweep, best, model=model, run_cfg=run_cfg, manifest=manifest,
                 checkpoint_file=path, tracking_uri=mlflow_sqlite_uri)
    p2 = promote(sweep, best, model=model, run_cfg=run_cfg, manifest=manifest,
                 checkpoint_file=path, alias="prod", tracking_uri=mlflow_sqlite_uri)
    assert p1.created and not p2.created and p1.version == p2.version == "1"
    client = MlflowClient(mlflow_sqlite_uri, registry_uri=mlflow_sqlite_uri)
    assert len(client.search_model_versions(f"name = '{p1.name}'")) == 1
    v = client.get_model_version_by_alias(p1.name, "champion")
    assert str(v.version) == "1" and v.run_id == ids[2]
    assert str(client.get_model_version_by_alias(p1.name, "prod").version) == "1"
    assert v.tags["metric.objective"] == "0.3" and v.tags[SHA_TAG] == sha256_file(path)

    # the alias resolves to a pyfunc that gives the checkpoint's posterior means
    x = [torch.randn(2, T, 3), torch.randn(2, T, 2)]
    with torch.no_grad():
        out = model(x, sample=False)
    pyf = resolve_model_uri(p1.uri, tracking_uri=mlflow_sqlite_uri, load=True)
    got = pyf.predict({"A": x[0].numpy(), "B": x[1].numpy()})
    assert got["rates/A"].shape == (2, T - TAU, 3) and got["heldout_rates/A"].shape == (2, T - TAU, 1)
    np.testing.assert_allclose(got["rates/B"], out.rates[1].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(got["heldout_rates/A"], out.heldout_readout[0].numpy(), rtol=0, atol=1e-6)
    sig = pyf.metadata.signature
    assert [(i["name"], i["tensor-spec"]["shape"]) for i in sig.inputs.to_dict()] == [
        ("A", (-1, -1, 3)), ("B", (-1, -1, 2))]
    assert {o["name"] for o in sig.outputs.to_dict()} == set(got)
    # infer/perturb path: the model part of the checkpoint, and the loader's triple
    shared = ckpt.load(download_checkpoint(p1.uri, tracking_uri=mlflow_sqlite_uri))
    assert set(shared) == {"format", "model", "run_config", "manifest"}
    torch.testing.assert_close(shared["model"], model.state_dict())
    m2, cfg2, man2 = load_registered(p1.uri, tracking_uri=mlflow_sqlite_uri)
    assert cfg2 == run_cfg and man2 == manifest
    torch.testing.assert_close(torch.cat(m2(x, sample=False).rates, dim=-1),
                               torch.cat(out.rates, dim=-1))


def test_no_finished_trial_and_unknown_sweep_are_clear_errors(mlflow_sqlite_uri, experiment_name):
    fake_sweep(mlflow_sqlite_uri, experiment_name, [("FAILED", 0.1), ("RUNNING", 0.2)])
    with pytest.raises(TrackingError, match="no finished trial"):
        find_best_trial(experiment_name, tracking_uri=mlflow_sqlite_uri)
    with pytest.raises(TrackingError, match="no sweep named 'nope"):
        find_best_trial("nope-" + experiment_name, tracking_uri=mlflow_sqlite_uri)
    with pytest.raises(TrackingError, match="cannot resolve"):
        resolve_model_uri("models:/mrlfads-nope@champion", tracking_uri=mlflow_sqlite_uri)
    with pytest.raises(TrackingError, match="models:/"):
        resolve_model_uri("/some/path.pt")


def test_resolving_a_model_does_not_leak_a_tracking_uri_into_the_environment(monkeypatch):
    """Regression: restoring MLflow's *default* URI pinned sqlite:///mlflow.db (relative to
    the cwd) in os.environ, so the next command in the same process used the wrong store."""
    import os

    from mrlfads.tracking.registry import _global_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    with _global_uri("sqlite:////tmp/elsewhere.db"):
        assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:////tmp/elsewhere.db"
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert "MLFLOW_REGISTRY_URI" not in os.environ
