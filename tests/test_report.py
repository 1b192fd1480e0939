"""`mrlfads report RUN|SWEEP`: one self-contained HTML page, bad input refused with exit 2,
and the page looked at in headless Chromium. A tiny model trained once on data with two
conditions, ground truth and a recorded perturbation."""
from __future__ import annotations

import base64
import json
import re
import shutil
import struct

import numpy as np
import pytest

from mrlfads.data_loaders import schema
from mrlfads.data_loaders.writer import write_dataset
from mrlfads.training.cli import main
from tests.browser import open_page

T, TAU = 12, 4
RUN_SECTIONS = ["Run", "Training", "Condition-averaged PSTHs", "Rate heatmap",
                "Latent trajectories", "Messages", "Inferred inputs", "Effectome",
                "Effectome (message RMS)", "Example trial"]


def _dataset(path):
    """2 regions x (3 held-in + 1 held-out), conditions c0/c1 in every split (rates differ
    by condition), true messages A->B and inputs, and 8 perturbed trials."""
    rng = np.random.default_rng(0)
    n = 40
    cond = np.array([f"c{(i // 2) % 2}" for i in range(n)])  # c0 c0 c1 c1 ...
    split = np.array(["train"] * 20 + ["valid"] * 12 + ["perturbed"] * 8)
    ramp = np.linspace(0.5, 3.0, T)[None, :, None]
    x, truth = {}, {}
    for r in ("A", "B"):
        rates = np.where((cond == "c0")[:, None, None], ramp, ramp[:, ::-1]) * np.ones((1, 1, 4))
        x[r] = rng.poisson(rates).astype(np.float32)
        truth[schema.truth_inputs_col(r)] = rng.normal(size=(n, T, 1)).astype(np.float32)
    x["B"][32:, 6:, :2] += 4.0  # the recorded perturbation
    truth[schema.truth_messages_col("A", "B")] = rng.normal(size=(n, T, 2)).astype(np.float32)
    write_dataset(path, name="conds", regions=[("A", 3, 1), ("B", 3, 1)], obs_model="poisson",
                  bin_width_s=0.01, ic_enc_seq_len=TAU, x=x, split=split, condition=cond,
                  truth=truth, comm_matrix=[[0, 0], [2, 0]])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    _dataset(root / "data")
    assert main(["train", "--data", str(root / "data"), "--smoke-test", "--epochs", "2",
                 "--out", str(root / "run"), "--no-tracking", "--quiet"]) == 0
    assert main(["perturb", "--model", str(root / "run" / "best.pt"), "--data",
                 str(root / "data"), "--cut", "A->B", "--window", "6:10",
                 "--out", str(root / "cut")]) == 0
    return root


@pytest.fixture(scope="module")
def run_page(trained):
    out = trained / "run.html"
    assert main(["report", str(trained / "run"), "--out", str(out),
                 "--perturb", str(trained / "cut")]) == 0
    return out


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_run_page_is_self_contained_with_every_section(run_page):
    page = run_page.read_text()
    titles = re.findall(r"<h2>(.*?)</h2>", page)
    assert titles == RUN_SECTIONS + ["Perturbation: cut A-&gt;B, bins 6:10"]
    # nothing outside the page: every src is an inlined PNG, every href an in-page anchor
    assert re.findall(r'\b(?:src|href)="(?!data:image/png;base64,|#)', page) == []
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(RUN_SECTIONS) - 1 + 1  # the Run table has none; + perturbation
    for data in images:
        w, h = _png_size(base64.b64decode(data))
        assert w > 100 and h > 100
    assert "2 condition(s)" in page  # the PSTHs average by the dataset's conditions
    assert "Predicted against measured effect per neuron" in page  # a perturbed split exists
    assert "Ranking the neurons by firing rate alone scores" in page
    # messages drawn through the fitted map onto the truth, A->B only (B->A has none)
    assert re.search(r"Cross-validated R\u00b2: A-&gt;B -?[0-9.]+\.", page)
    # the Run table: the data's smoothing baseline on the same validation trials (20 training)
    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.training.smoothing import smoothing_scores

    _, scores = smoothing_scores(ArrowDataset.open(run_page.parent / "data"), ["valid"])
    value = scores["valid/smoothing_co_bps"]
    assert f"{value:.4g} (smoothed held-in spikes: the held-out score to beat)" in page


def test_chosen_neurons_and_bad_input_exit_2(trained, tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(trained / "run"), "--out", str(out), "--neurons", "B:3,0",
                 "--trials", "8"]) == 0
    assert "B [3, 0]" in out.read_text() and "8 validation trials" in out.read_text()
    capsys.readouterr()
    cases = [
        (["report", str(tmp_path / "nope")], "does not exist"),
        (["report", str(tmp_path)], "neither a `mrlfads train` run directory"),
        (["report", str(trained / "run"), "--neurons", "B"], "expected REGION:I,J"),
        (["report", str(trained / "run"), "--neurons", "B:9"], "neurons 0..3"),
        (["report", str(trained / "run"), "--neurons", "V1:0"], "not a region"),
        (["report", str(trained / "run"), "--perturb", str(tmp_path)], "--perturb"),
        (["report", str(trained / "run"), "--data", str(tmp_path / "gone")], "gone"),
        (["report", str(trained / "run"), "--out", str(tmp_path)], "is a directory"),
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "report.html").exists()


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _toy_sweep(root, checkpoint):
    """The files a PBT sweep leaves (Tune's result.json per trial, PBT's pbt_global.txt),
    written by hand: trial 1 takes trial 0's weights at epoch 2 and ends best."""
    sweep = root / "toy"
    t0 = sweep / "trainable_abc12_00000_0_2026-01-01_00-00-00"
    t1 = sweep / "trainable_abc12_00001_1_train_lr=0.0100_2026-01-01_00-00-00"
    for d in (t0, t1):
        d.mkdir(parents=True)
    _write_rows(t0 / "result.json", [{"epoch": e, "objective": 5.0 - e, "hp/train.lr": 0.1}
                                     for e in (1, 2, 3, 4)])
    _write_rows(t1 / "result.json",
                [{"epoch": 1, "objective": 9.0, "hp/train.lr": 0.01},
                 {"epoch": 2, "objective": 8.0, "hp/train.lr": 0.01},
                 {"epoch": 3, "objective": 1.5, "hp/train.lr": 0.12},
                 {"epoch": 4, "objective": 0.5, "hp/train.lr": 0.12}])
    (sweep / "pbt_global.txt").write_text(json.dumps(["1_train_lr=0.0100", "0", 2, 2, {}, {}]) + "\n")
    (sweep / "mrlfads_sweep.json").write_text(json.dumps(
        {"name": "toy", "space": {"scheduler": {"metric": "objective", "mode": "min"}}}))
    (t1 / "checkpoint_000001").mkdir()
    shutil.copy(checkpoint, t1 / "checkpoint_000001" / "checkpoint.pt")
    return sweep


def test_sweep_files_read_by_hand_and_the_sweep_page(trained, tmp_path):
    from mrlfads.training.report import read_sweep

    sweep = _toy_sweep(tmp_path, trained / "run" / "best.pt")
    files = read_sweep(sweep)
    assert sorted(files.trials) == ["abc12_00000", "abc12_00001"]
    assert files.exploits == {"abc12_00001": [{"epoch": 2, "donor_trial": "abc12_00000",
                                               "donor_epoch": 2}]}
    assert files.history["abc12_00001"]["train.lr"] == [(1.0, 0.01), (2.0, 0.01), (3.0, 0.12),
                                                        (4.0, 0.12)]
    assert files.last["abc12_00000"]["objective"] == 1.0
    out = tmp_path / "sweep.html"
    assert main(["report", str(sweep), "--out", str(out)]) == 0
    page = out.read_text()
    titles = re.findall(r"<h2>(.*?)</h2>", page)
    assert titles[:4] == ["Sweep", "Trials", "PBT hyperparameters", "Lineage"]
    assert "Best trial: Condition-averaged PSTHs" in titles
    assert "abc12_00001 &lt;- abc12_00000" in page  # the best trial's lineage, newest first
    assert "no summary.json yet" in page
    # an interrupted sweep's summary: the page says so and names the way on
    from mrlfads.training.sweep import UNFINISHED

    (sweep / "summary.json").write_text(json.dumps({
        "best_trial": "abc12_00000", "unfinished": 1, "baseline": {"valid/smoothing_co_bps": 0.0625},
        "trials": {"abc12_00000": "TERMINATED", "abc12_00001": UNFINISHED}}))
    assert main(["report", str(sweep), "--out", str(tmp_path / "interrupted.html")]) == 0
    page = (tmp_path / "interrupted.html").read_text()
    assert "1 of 2 trials did not finish" in page and "mrlfads sweep --resume" in page
    assert UNFINISHED in page
    # the data's smoothing baseline, beside the best trial's scores
    assert "0.0625 (smoothed held-in spikes: the held-out score to beat)" in page


def test_browser_shows_every_figure_of_the_run_page(run_page, tmp_path):
    shown = open_page(run_page, tmp_path)
    assert shown["titles"] == RUN_SECTIONS + ["Perturbation: cut A->B, bins 6:10"]
    assert len(shown["images"]) == len(RUN_SECTIONS)
    assert all(complete and width > 0 for _, complete, width in shown["images"]), shown["images"]


def test_sweeps_log_each_trials_model_figures(trained, tmp_path):
    """`mrlfads sweep` hands its tracking callback the model figures, which it draws from a
    trial's checkpoint folder when the trial ends."""
    from mrlfads.training import sweep
    from mrlfads.training.api.search import _tracking_callbacks
    from mrlfads.training.report_figures import checkpoint_figures

    plan = sweep.plan_sweep(str(trained / "data"), smoke_test=True, name="figs",
                            storage=str(tmp_path / "sweeps"))
    (callback,) = _tracking_callbacks(plan, f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert callback.trial_figures is checkpoint_figures
    folder = tmp_path / "checkpoint_000001"  # what Tune hands the callback
    folder.mkdir()
    shutil.copy(trained / "run" / "best.pt", folder / "checkpoint.pt")
    drawn = checkpoint_figures(str(folder), tmp_path / "figures")
    assert [p.name for p in drawn] == [
        "psth.png", "rates_heatmap.png", "latents.png", "messages.png", "inputs.png",
        "effectome.png", "effectome_message_rms.png", "rates_vs_data.png"]
    assert all(_png_size(p.read_bytes())[0] > 100 for p in drawn)


def test_figures_of_an_aligned_session_count_time_from_its_event(trained, tmp_path):
    """A session binned over -0.5..+0.5 s around go_cue_time: bin k starts at -0.5 + k bins,
    and the first shown bin is the first after the IC window (TAU bins of 10 ms)."""
    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.training.checkpoint import load_model
    from mrlfads.training.config import RunConfig
    from mrlfads.training.report_figures import fit_view

    data = tmp_path / "aligned"
    shutil.copytree(trained / "data", data)
    meta = json.loads((data / "dataset.json").read_text())
    meta["provenance"] = {"generator": "mrlfads ingest", "window_s": [-0.5, 0.5],
                          "options": {"align": "go_cue_time"}}
    (data / "dataset.json").write_text(json.dumps(meta))
    model, cfg, _ = load_model(trained / "run" / "best.pt")
    view = fit_view(model, ArrowDataset.open(data), RunConfig.from_dict(cfg), max_trials=2)
    assert view.time_label == "time from go_cue_time (s)"
    np.testing.assert_allclose(view.t, -0.5 + np.arange(TAU, T) * 0.01)
