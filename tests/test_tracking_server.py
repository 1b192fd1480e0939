"""The real thing, slow: a smoke PBT sweep logged over HTTP to a real `mlflow server`,
checked through MLflow's REST API, promoted with the CLI, and looked at in Chromium."""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from tests.mlflow_fixtures import rest
import torch

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def logged_sweep(mlflow_server, ray_session, tiny_dataset_dir, tmp_path_factory):
    from tracking.tune_callback import sweep_callbacks
    from training import sweep

    name = f"smoke-{uuid.uuid4().hex[:6]}"
    plan = sweep.plan_sweep(tiny_dataset_dir, smoke_test=True, name=name,
                            storage=str(tmp_path_factory.mktemp("sweeps")))
    summary = sweep.run_sweep(plan, callbacks=sweep_callbacks(plan, tracking_uri=mlflow_server.url),
                              tracking=True, verbose=0)
    return plan, summary


def test_sweep_over_http_one_run_per_trial_no_metric_lost_exploits_and_promotion(
        logged_sweep, mlflow_server, capsys):
    from training.checkpoint import load_model
    from training.cli import main

    plan, summary = logged_sweep
    url = mlflow_server.url
    exp = rest(url, "experiments/get-by-name", experiment_name=plan.name)["experiment"]
    runs = rest(url, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1000})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    parents = [r for r, t in zip(runs, tags) if t.get("mrlfads.role") == "sweep"]
    children = [(r, t) for r, t in zip(runs, tags) if t.get("mrlfads.role") == "trial"]
    assert len(parents) == 1
    assert sorted(t["mrlfads.trial_id"] for _, t in children) == sorted(summary.trials)  # one each
    n_exploit_events = 0
    for run, t in children:
        assert t["mlflow.parentRunId"] == parents[0]["info"]["run_id"]
        trial_dir = next(Path(plan.experiment_path).glob(f"*_{t['mrlfads.trial_id']}_*"))
        reported = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        hist = rest(url, "metrics/get-history", run_id=run["info"]["run_id"], metric_key="objective")["metrics"]
        # every (epoch, objective) Tune recorded is in MLflow: none lost. MLflow may hold more
        # (a trial restarted from a checkpoint reports some epochs again; Tune's result.json
        # is restored from storage on restart, MLflow keeps every report).
        logged = {(int(m["step"]), round(m["value"], 4)) for m in hist}
        assert {(int(r["epoch"]), round(r["objective"], 4)) for r in reported} <= logged
        steps = sorted({step for step, _ in logged})
        assert steps == list(range(1, len(steps) + 1))  # one point per epoch at least, no gaps
        n_exploit_events += sum(k.startswith("pbt.exploit.") for k in t)
        if run["info"]["status"] == "FINISHED":
            lr = rest(url, "metrics/get-history", run_id=run["info"]["run_id"], metric_key="hp/train.lr")
            assert len(lr["metrics"]) == len(hist)  # hp/ logged with every result
    if summary.exploits:
        assert n_exploit_events >= 1

    # promote twice: one version, alias set, model equals the checkpoint's
    assert main(["promote", "--sweep", plan.name, "--tracking-uri", url]) == 0
    assert main(["promote", "--sweep", plan.name, "--tracking-uri", url]) == 0
    out = capsys.readouterr().out
    assert "registered as new" in out and "already registered" in out
    name = f"mrlfads-{plan.name}"
    versions = rest(url, "model-versions/search", filter=f"name='{name}'")["model_versions"]
    assert len(versions) == 1
    alias = rest(url, "registered-models/alias", name=name, alias="champion")["model_version"]
    assert alias["version"] == versions[0]["version"]

    from tracking.registry import download_checkpoint, resolve_model_uri

    uri = f"models:/{name}@champion"
    pyfunc = resolve_model_uri(uri, tracking_uri=url, load=True)
    model, run_cfg, _ = load_model(download_checkpoint(uri, tracking_uri=url))
    T = int(json.loads((Path(plan.run.data.uri) / "dataset.json").read_text())["n_bins"])
    regions = run_cfg["model"]["regions"]
    x = [torch.rand(3, T, r["n_heldin"]) for r in regions]
    with torch.no_grad():
        want = model(x, sample=False).rates
    got = pyfunc.predict({r["name"]: xr.numpy() for r, xr in zip(regions, x)})
    for r, w in zip(regions, want):
        torch.testing.assert_close(torch.from_numpy(got[f"rates/{r['name']}"]), w)


def test_browser_finds_the_sweep_and_its_trials_in_the_mlflow_ui(logged_sweep, mlflow_server, tmp_path):
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    plan, summary = logged_sweep
    exp = rest(mlflow_server.url, "experiments/get-by-name", experiment_name=plan.name)["experiment"]
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1600,1000", f"--user-data-dir={tmp_path / 'chrome-profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        driver.get(f"{mlflow_server.url}/#/experiments/{exp['experiment_id']}/runs")
        trial_ids = list(summary.trials)
        # the runs table shows the sweep's parent run; its expander reveals the trial runs
        WebDriverWait(driver, 120).until(lambda d: f">{plan.name}<" in d.page_source)
        expand = 'button[data-component-id*="runnamecellrenderer"]'
        WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, expand))
        driver.find_elements(By.CSS_SELECTOR, expand)[0].click()
        WebDriverWait(driver, 60).until(lambda d: all(t in d.page_source for t in trial_ids))
        shot = tmp_path / "mlflow_ui.png"
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("MRLFADS_UPDATE_SCREENSHOT"):  # refresh the README's picture by hand
        (REPO / "docs" / "img").mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, REPO / "docs" / "img" / "mlflow_ui.png")
