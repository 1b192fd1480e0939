"""The Python API (docs/API.md): the notebook tour (examples/notebook_tour.py) runs, and the
API and the CLI are one code path: `mrlfads infer` and `mrlfads perturb` on the tour's model
write exactly what the API returned."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import mrlfads
from mrlfads.training.cli import main
from mrlfads.training.infer_io import read_outputs

ROOT = Path(__file__).resolve().parents[1]


def _tour_module():
    spec = importlib.util.spec_from_file_location("notebook_tour",
                                                  ROOT / "examples" / "notebook_tour.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tour(tmp_path_factory):
    # one torch thread, here and in the CLI calls compared with it bit for bit: another
    # thread count sums in another order (the CLI's `--threads auto` follows the load)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("tour")
        return out, _tour_module().tour(out, epochs=3)
    finally:
        torch.set_num_threads(before)


def test_the_tour_returns_named_arrays_that_match_the_dataset(tour):
    _, t = tour
    data, result = t["data"], t["result"]
    m = data.manifest
    tau, n_trials = m.ic_enc_seq_len, sum(data.splits.values())
    assert len(result.trial_id) == n_trials == len(set(result.trial_id))
    assert sorted(set(result.split)) == sorted(s for s, n in data.splits.items() if n)
    np.testing.assert_array_equal(result.coords["time"], np.arange(tau, m.n_bins))
    for key, array in result.items():
        assert len(result.dims[key]) == array.ndim == 3
        assert result.dims[key][:2] == ("trial", "time")
        assert array.shape[:2] == (n_trials, m.n_bins - tau)
    for r in m.regions:  # held-in neurons in rates/, held-out ones in heldout_rates/
        assert result.dims[f"rates/{r.name}"][2] == f"{r.name}/neuron"
        assert result[f"rates/{r.name}"].shape[2] == r.n_heldin
        assert result[f"heldout_rates/{r.name}"].shape[2] == r.n_heldout
        assert len(result.coords[f"{r.name}/neuron"]) == r.n_heldin
    src, dst = data.regions
    # the effectome's message RMS is the RMS of the messages returned, by hand
    rms = np.sqrt(np.mean(result[f"messages/{src}->{dst}"].astype(np.float64) ** 2))
    assert result.effectome.message_rms[1, 0] == pytest.approx(rms, rel=1e-5)
    assert result.effectome.pathways()[f"{src}->{dst}"] == result.effectome.cut[1, 0] > 0
    assert np.isnan(result.effectome.cut[0, 0])


def test_fit_returns_the_best_checkpoint_and_load_gives_the_same_model(tour):
    out, t = tour
    model, again = t["model"], t["again"]
    assert Path(model.source) == out / "run" / "best.pt" and model.out == out / "run"
    assert [m["epoch"] for m in model.history] == [1.0, 2.0, 3.0]
    # best.pt holds the last epoch with the lowest objective among those after the ramps
    chosen = [m for m in model.history if m["ramps_done"]]
    best = min(m["objective"] for m in chosen)
    epoch = max(m["epoch"] for m in chosen if m["objective"] == best)
    from mrlfads.training.checkpoint import load

    assert load(out / "run" / "best.pt")["epoch"] == epoch
    assert again.source == str(out / "run") and again.regions == model.regions
    for (k, a), b in zip(model.module.state_dict().items(), again.module.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu()), k


def test_the_cli_writes_what_the_api_returns(tour, tmp_path):
    out, t = tour
    data, result, cut = t["data"], t["result"], t["cut"]
    src, dst = data.regions
    saved = read_outputs(out / "infer")  # Inference.save
    assert main(["infer", "--model", str(out / "run" / "best.pt"), "--data", str(out / "data"),
                 "--out", str(tmp_path / "infer"), "--threads", "1"]) == 0
    cli = read_outputs(tmp_path / "infer")
    assert set(cli) == set(saved) == set(result) | {"trial_id", "split"}
    for key in result:
        np.testing.assert_array_equal(saved[key], result[key].astype(np.float32), err_msg=key)
        np.testing.assert_array_equal(cli[key], saved[key], err_msg=key)
    effectome = json.loads((tmp_path / "infer" / "effectome.json").read_text())
    assert effectome["matrix"][1][0] == pytest.approx(result.effectome.cut[1, 0], rel=1e-12)
    metrics = json.loads((tmp_path / "infer" / "metrics.json").read_text())
    assert metrics["valid/co_bps"] == pytest.approx(result.metrics["valid/co_bps"], rel=1e-12)

    window = cut.report["window"]
    assert main(["perturb", "--model", str(out / "run" / "best.pt"), "--data", str(out / "data"),
                 "--cut", f"{src}->{dst}", "--window", f"{window[0]}:{window[1]}",
                 "--out", str(tmp_path / "cut"), "--threads", "1"]) == 0
    report = json.loads((tmp_path / "cut" / "report.json").read_text())
    assert report["mean_abs_rate_change"] == cut.report["mean_abs_rate_change"]
    with np.load(tmp_path / "cut" / "effects.npz") as f:
        for key, value in cut.effects.items():
            np.testing.assert_array_equal(f[key], np.asarray(value, np.float32), err_msg=key)
    # a cut into dst moves nothing upstream of it before the window, and dst after it
    assert np.all(cut.effects[f"delta/{dst}"][: window[0] - data.manifest.ic_enc_seq_len] == 0)
    assert cut.report["mean_abs_rate_change"][dst] > 0


def test_api_mistakes_are_one_line_naming_the_argument(tour, tmp_path):
    out, t = tour
    model, data = t["model"], t["data"]
    src, dst = data.regions
    with pytest.raises(ValueError, match="name one perturbation"):
        model.perturb(data, silence=src, cut=f"{src}->{dst}", window=(20, 30))
    with pytest.raises(ValueError, match="--window '2:30': bins 0-4 feed"):
        model.perturb(data, silence=src, window=(2, 30))
    with pytest.raises(FileExistsError, match="--overwrite"):
        model.infer(data, out=out / "infer")  # refused before any work
    with pytest.raises(ValueError, match="ingest: unknown option.*'bin_sz'"):
        mrlfads.ingest("x.nwb", tmp_path / "d", bin_sz=5)
    with pytest.raises(ValueError, match="lrr"):
        mrlfads.fit(data, out=tmp_path / "run", overrides=["train.lrr=1"], tracking=False)
    with pytest.raises(FileNotFoundError, match="without best.pt"):
        mrlfads.load(tmp_path)


def test_overrides_are_read_like_set_or_taken_as_given():
    from mrlfads.training.api.models import _overrides

    assert _overrides(["train.lr=1e-3", "model.regions.*.gen_dim=8"]) == {
        "train.lr": 0.001, "model.regions.*.gen_dim": 8}
    assert _overrides({"train.lr": "1e-3"}) == {"train.lr": "1e-3"}  # Python values as given
    assert _overrides("train.epochs=5") == {"train.epochs": 5} and _overrides(None) == {}


@pytest.mark.slow
def test_a_sweep_from_python_and_its_best_model(ray_session, tiny_dataset_dir, tmp_path):
    result = mrlfads.sweep(tiny_dataset_dir, smoke_test=True, storage=str(tmp_path),
                           name="api", tracking=False, verbose=0)
    assert result.best_trial is not None and result.plan.name == "api"
    assert result.best_trial in str(result)  # the summary the command prints
    best = result.best_model()
    from mrlfads.training.api.search import local_checkpoint
    from mrlfads.training.checkpoint import load

    with local_checkpoint(result.summary.checkpoint) as path:
        state = load(path)["model"]
    for key, value in best.module.state_dict().items():
        assert torch.equal(value, state[key]), key
