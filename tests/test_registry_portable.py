"""A registered model loads where the repository is not: `mrlfads train` -> `mrlfads promote
--run` -> `mlflow.pyfunc.load_model` in a fresh interpreter whose sys.path holds only the
standard library and site-packages (no .pth files, so not the editable install), with the
same rates as the checkpoint in this process. Real SQLite MLflow store, real CLI."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.tracking import MlflowClient
from mlflow.utils.file_utils import ArtifactProgressBar

from mrlfads import loop_ops
from mrlfads.data_loaders.testing import make_tiny_dataset
from mrlfads.inference import posterior_means
from mrlfads.tracking.inputs import CONTEXT_TAG
from mrlfads.tracking.registry import RUN_CHECKPOINT
from mrlfads.training import checkpoint as ckpt
from mrlfads.training.cli import main

REPO = Path(__file__).resolve().parents[1]

# runs in the child: site-packages appended by hand (its .pth files, the editable install's
# finder among them, are never read), then the checks, then the registered model
CHILD = textwrap.dedent("""
    import importlib.util, json, os, sys
    sys.path.append({site!r})
    repo = {repo!r}
    assert repo not in [os.path.realpath(p or ".") for p in sys.path], sys.path
    before = {{m: importlib.util.find_spec(m) is not None
              for m in ("mrlfads", "training", "tracking", "data_loaders")}}
    import numpy as np
    import mlflow.pyfunc
    model = mlflow.pyfunc.load_model({uri!r})
    x = dict(np.load("x.npz"))
    out = model.predict(x)
    np.savez("out.npz", **out)
    import mrlfads
    here = os.path.dirname(os.path.dirname(os.path.dirname(mrlfads.__file__)))
    json.dump({{"before": before, "mrlfads": mrlfads.__file__,
               "model_dir_has_MLmodel": os.path.isfile(os.path.join(here, "MLmodel")),
               "training": importlib.util.find_spec("mrlfads.training") is not None,
               "modules": sorted(m for m in sys.modules
                                 if m.split(".")[:2] in (["mrlfads", "training"],
                                                         ["mrlfads", "tracking"],
                                                         ["mrlfads", "data_loaders"]))}},
              open("child.json", "w"))
""")


@pytest.fixture
def trained(tmp_path, mlflow_sqlite_uri, experiment_name):
    """A finished `mrlfads train` run on a tiny dataset: (run id, run dir)."""
    data = tmp_path / "tiny-ds"
    make_tiny_dataset(data)
    run_dir = tmp_path / "runs" / "tiny-run"
    assert main(["train", "--data", str(data), "--smoke-test", "--epochs", "2", "--out",
                 str(run_dir), "--tracking-uri", mlflow_sqlite_uri, "--experiment",
                 experiment_name, "--quiet"]) == 0
    run_id = json.loads((run_dir / "tracking.json").read_text())["run_id"]
    return run_id, run_dir, data


@pytest.mark.slow  # ~20 s: a training run, then a fresh interpreter importing torch and MLflow
def test_promote_run_registers_a_model_that_loads_without_the_repository(
        trained, tmp_path, mlflow_sqlite_uri, monkeypatch, capsys):
    run_id, run_dir, data = trained
    capsys.readouterr()
    client = MlflowClient(mlflow_sqlite_uri, registry_uri=mlflow_sqlite_uri)
    run = client.get_run(run_id)
    # the dataset is the run's MLflow input: by name and digest, never by path
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "tiny" and inp.dataset.source == json.dumps({"uri": "tiny-ds"})
    assert inp.dataset.digest == hashlib.sha256((data / "dataset.json").read_bytes()).hexdigest()[:36]
    assert {t.key: t.value for t in inp.tags} == {CONTEXT_TAG: "training"}
    assert RUN_CHECKPOINT in {a.path for a in client.list_artifacts(run_id, "checkpoint")}

    # no MLflow noise: a warning asking for type hints, a progress bar per artifact that
    # logging downloads (the bars are MLflow's tqdm, which the suite's TQDM_DISABLE hides, so
    # what is read is whether MLflow was asked for them)
    bars, set_pbar = [], ArtifactProgressBar.set_pbar

    def asked(bar):
        bars.append(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get())
        set_pbar(bar)
    monkeypatch.setattr(ArtifactProgressBar, "set_pbar", asked)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["promote", "--run", run_id, "--tracking-uri", mlflow_sqlite_uri]) == 0
    assert "registered as new mrlfads-tiny-run version 1" in capsys.readouterr().out
    assert not [w for w in caught if "type hints" in str(w.message)]
    assert bars and not any(bars)
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ  # restored
    assert main(["promote", "--run", run_id, "--tracking-uri", mlflow_sqlite_uri]) == 0
    assert "already registered as mrlfads-tiny-run version 1" in capsys.readouterr().out
    version = client.get_model_version_by_alias("mrlfads-tiny-run", "champion")
    assert version.run_id == run_id
    saved = ckpt.load(run_dir / "best.pt")
    # the version carries the metrics of best.pt's epoch, not of the run's last epoch
    assert float(version.tags["metric.valid/loss"]) == pytest.approx(saved["history"][-1]["valid/loss"])

    # the in-repo answer: best.pt through the Python time loop (the child runs it too)
    monkeypatch.setattr(loop_ops, "USE_NATIVE", False)
    model, run_cfg, _ = ckpt.load_model(run_dir / "best.pt")
    rng = np.random.default_rng(1)
    T = 9  # not the data's 12 bins: the time axis is free
    x = {r["name"]: rng.poisson(2.0, (3, T, r["n_heldin"])).astype(np.float32)
         for r in run_cfg["model"]["regions"]}
    want = posterior_means(model, list(x.values()))

    child_dir = tmp_path / "elsewhere"
    child_dir.mkdir()
    np.savez(child_dir / "x.npz", **x)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(MLFLOW_TRACKING_URI=mlflow_sqlite_uri, MRLFADS_NATIVE="0")
    code = CHILD.format(site=sysconfig.get_paths()["purelib"], repo=str(REPO),
                        uri="models:/mrlfads-tiny-run@champion")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code], check=False, cwd=child_dir,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "type hints" not in proc.stderr  # loading the model warns of nothing of ours
    child = json.loads((child_dir / "child.json").read_text())
    # nothing of ours was importable before the model came; after, only its own mrlfads
    assert child["before"] == {"mrlfads": False, "training": False, "tracking": False,
                               "data_loaders": False}
    pkg = Path(child["mrlfads"]).parent
    assert not str(pkg.resolve()).startswith(str(REPO))
    assert pkg.parent.name == "code" and child["model_dir_has_MLmodel"]
    assert child["training"] is False and child["modules"] == []
    got = dict(np.load(child_dir / "out.npz"))
    assert set(got) == set(want)
    assert got["rates/A"].shape == (3, T - run_cfg["model"]["ic_enc_seq_len"], 3)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-6, err_msg=key)
