"""The real thing, slow: a smoke PBT sweep logged over HTTP to a real `mlflow server`,
checked through MLflow's REST API, promoted with the CLI, and looked at in Chromium (the
MLflow UI, and the sweep's `mrlfads report` page from disk)."""
from __future__ import annotations

import json
import os
import shutil
import urllib.parse
import uuid
from pathlib import Path

import pytest
import torch

from tests.mlflow_fixtures import rest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _artifacts(url: str, run_id: str, folder: str) -> set[str]:
    """The paths of a run's artifacts in ``folder`` (``path`` is also rest()'s own name)."""
    query = urllib.parse.urlencode({"run_id": run_id, "path": folder})
    return {f["path"] for f in rest(url, f"artifacts/list?{query}").get("files", [])}


@pytest.fixture(scope="module")
def logged_sweep(mlflow_server, ray_session, tiny_dataset_dir, tmp_path_factory):
    from mrlfads.tracking.tune_callback import sweep_callbacks
    from mrlfads.training import sweep
    from mrlfads.training.report_figures import checkpoint_figures

    name = f"smoke-{uuid.uuid4().hex[:6]}"
    plan = sweep.plan_sweep(tiny_dataset_dir, smoke_test=True, name=name,
                            storage=str(tmp_path_factory.mktemp("sweeps")))
    callbacks = sweep_callbacks(plan, tracking_uri=mlflow_server.url,
                                trial_figures=checkpoint_figures)
    summary = sweep.run_sweep(plan, callbacks=callbacks, tracking=True, verbose=0)
    return plan, summary


def test_sweep_over_http_one_run_per_trial_no_metric_lost_exploits_and_promotion(
        logged_sweep, mlflow_server, capsys):
    from mrlfads.training.checkpoint import load_model
    from mrlfads.training.cli import main

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
            # the trial's model figures, drawn from its last checkpoint when it ended
            assert _artifacts(url, run["info"]["run_id"], "figures") >= {
                f"figures/{n}.png" for n in ("psth", "rates_heatmap", "latents", "messages",
                                             "inputs", "effectome")}
    if summary.exploits:
        assert n_exploit_events >= 1
    assert {"figures/pbt_hparams.png", "figures/pbt_lineage.png"} <= _artifacts(
        url, parents[0]["info"]["run_id"], "figures")

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

    from mrlfads.tracking.registry import download_checkpoint, resolve_model_uri

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
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.browser import chrome

    plan, summary = logged_sweep
    exp = rest(mlflow_server.url, "experiments/get-by-name", experiment_name=plan.name)["experiment"]
    driver = chrome(tmp_path, window="1600,1000")
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


def test_browser_opens_the_sweep_report_from_disk(logged_sweep, tmp_path):
    from mrlfads.training.cli import main
    from tests.browser import open_page

    plan, summary = logged_sweep
    page = tmp_path / "sweep.html"
    assert main(["report", plan.experiment_path, "--out", str(page)]) == 0
    shown = open_page(page, tmp_path)
    assert shown["titles"][:4] == ["Sweep", "Trials", "PBT hyperparameters", "Lineage"]
    assert {"Best trial: Condition-averaged PSTHs", "Best trial: Rate heatmap",
            "Best trial: Latent trajectories", "Best trial: Messages",
            "Best trial: Inferred inputs", "Best trial: Effectome"} <= set(shown["titles"])
    assert len(shown["images"]) >= 10
    assert all(complete and width > 0 for _, complete, width in shown["images"]), shown["images"]
    assert f"{summary.best_trial} (best)" in page.read_text()
