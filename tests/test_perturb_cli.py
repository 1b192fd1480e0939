"""`mrlfads perturb`'s menu (--silence, --cut, --silence-inputs, --channels), its per-neuron
output and the comparison with a recorded perturbation; `mrlfads infer`'s inferred-input
effectome. A tiny model trained once (2 regions, com_dim = co_dim = 2, 12 bins, tau = 4)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from mrlfads.data_loaders.testing import make_tiny_dataset
from mrlfads.data_loaders.writer import write_dataset
from mrlfads.training.cli import main
from mrlfads.training.infer_io import read_outputs

T, TAU, WINDOW = 12, 4, "6:10"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("perturb")
    make_tiny_dataset(root / "data")
    assert main(["train", "--data", str(root / "data"), "--smoke-test", "--epochs", "2",
                 "--out", str(root / "run"), "--no-tracking", "--quiet"]) == 0
    # the same shape of data with a recorded perturbation: 10 trials kept out of training
    rng = np.random.default_rng(1)
    x = {r: rng.poisson(2.0, size=(30, T, 4)).astype(np.float32) for r in ("A", "B")}
    x["B"][20:, 6:, :2] += 5.0  # the perturbed trials: B's first two neurons fire more
    split = np.array(["train"] * 10 + ["valid"] * 10 + ["perturbed"] * 10)
    write_dataset(root / "pert", name="pert", regions=[("A", 3, 1), ("B", 3, 1)],
                  obs_model="poisson", bin_width_s=0.01, ic_enc_seq_len=TAU, x=x, split=split)
    return root


def _perturb(trained, out, *flags, data="pert"):
    # one thread: `--threads auto` follows the machine's load, and another thread count
    # sums in another order, so runs compared bit for bit would differ under load
    return main(["perturb", "--model", str(trained / "run" / "best.pt"), "--data",
                 str(trained / data), "--window", WINDOW, "--out", str(out), "--threads", "1",
                 *flags])


def _npz(path):
    with np.load(path / "effects.npz") as f:
        return {k: f[k] for k in f.files}


def test_cut_writes_per_neuron_effects_time_courses_and_the_comparison(trained, tmp_path):
    out = tmp_path / "cut"
    assert _perturb(trained, out, "--cut", "A->B") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["perturbation"] == {"kind": "cut", "target": "A->B", "window": [6, 10],
                                      "channels": None}
    eff = _npz(out)
    for r in ("A", "B"):  # 3 held-in + 1 held-out neurons; bins tau..T-1
        assert eff[f"effect/{r}"].shape == (4,)
        assert eff[f"delta/{r}"].shape == eff[f"base/{r}"].shape == (T - TAU, 4)
        assert eff[f"measured/{r}"].shape == (4,)
        # nothing moves before the window (bins 4, 5): the cut is causal
        assert np.all(eff[f"delta/{r}"][: 6 - TAU] == 0.0)
    assert np.all(eff["effect/B"] > 0)  # B listens to A
    # effect = the trial mean |delta| averaged over bins from the window's start (6 - tau)
    np.testing.assert_allclose(eff["effect/B"], eff["abs_delta/B"][2:].mean(axis=0), rtol=1e-6)
    # the report's region mean is over held-in neurons and all reconstructed bins
    assert report["mean_abs_rate_change"]["B"] == pytest.approx(
        float(eff["abs_delta/B"][:, :3].mean()), rel=1e-5)
    # measured: |trial mean perturbed - trial mean control| over bins 6.. (B's neurons 0, 1
    # got +5 from bin 6): those two are the largest measured effects
    assert report["perturbed_trials"] == 10
    assert set(np.argsort(eff["measured/B"])[-2:]) == {0, 1}
    from scipy.stats import spearmanr

    pred = np.concatenate([eff["effect/A"], eff["effect/B"]])
    meas = np.concatenate([eff["measured/A"], eff["measured/B"]])
    assert report["rank_correlation"] == pytest.approx(spearmanr(pred, meas).statistic, abs=1e-6)
    # the rate-only baseline: the control (valid) trials' mean count per bin from bin 6 on,
    # from the fixture's draws
    rng = np.random.default_rng(1)
    x = {r: rng.poisson(2.0, size=(30, T, 4)) for r in ("A", "B")}
    rates = []
    for r in ("A", "B"):
        np.testing.assert_allclose(eff[f"control_rate/{r}"], x[r][10:20, 6:].mean(axis=(0, 1)),
                                   rtol=1e-6)
        rates.append(eff[f"control_rate/{r}"])
    assert report["rank_correlation_rate_only"] == pytest.approx(
        spearmanr(np.concatenate(rates), meas).statistic, abs=1e-6)
    # signed: the trial-mean change from bin 6 (index 2 of bins 4..) on, predicted and measured
    signed = [np.concatenate([eff[f"{k}/{r}"][2:].mean(axis=0) for r in ("A", "B")])
              for k in ("delta", "measured_delta")]
    assert report["rank_correlation_signed"] == pytest.approx(
        spearmanr(*signed).statistic, abs=1e-6)
    for r in ("A", "B"):  # the same, one region's neurons at a time
        assert report["rank_correlation_signed_by_region"][r] == pytest.approx(spearmanr(
            eff[f"delta/{r}"][2:].mean(axis=0), eff[f"measured_delta/{r}"][2:].mean(axis=0)
        ).statistic, abs=1e-6)
    assert report["figure"] == "predicted_vs_measured.png"
    assert (out / "predicted_vs_measured.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rank_correlation_of_a_hand_computed_example():
    from mrlfads.training.api.perturb import compare as _compare

    # ranks 1 2 3 4 against 1 3 2 4: d^2 sums to 2, rho = 1 - 6 * 2 / (4 * 15) = 0.8
    effects = {"effect/A": np.array([1.0, 2.0]), "effect/B": np.array([3.0, 4.0])}
    measured = {"measured/A": np.array([10.0, 30.0]), "measured/B": np.array([20.0, 40.0]),
                "control_rate/A": np.array([4.0, 3.0]), "control_rate/B": np.array([2.0, 1.0])}
    # signed changes (2 bins; from bin 1 on): predicted -1 2 3 -4, measured 1 2 3 4 -> ranks
    # 2 3 4 1 against 1 2 3 4: d^2 = 1 + 1 + 1 + 9, rho = 1 - 6 * 12 / 60 = -0.2
    effects |= {"delta/A": np.array([[9.0, 9.0], [-1.0, 2.0]]),
                "delta/B": np.array([[9.0, 9.0], [3.0, -4.0]])}
    measured |= {"measured_delta/A": np.array([[0.0, 0.0], [1.0, 2.0]]),
                 "measured_delta/B": np.array([[0.0, 0.0], [3.0, 4.0]])}
    got = _compare(effects, measured, ["A", "B"], first=1)
    assert got["rank_correlation_signed"] == pytest.approx(-0.2)
    # rates rank 4 3 2 1 against 1 3 2 4: d^2 = 9 + 0 + 0 + 9, rho = 1 - 6 * 18 / 60 = -0.8
    assert got["rank_correlation_rate_only"] == pytest.approx(-0.8)
    assert got["rank_correlation"] == pytest.approx(0.8)
    assert got["rank_correlation_by_region"] == {"A": pytest.approx(1.0), "B": pytest.approx(1.0)}
    # per region, signed: A's -1 2 against 1 2 ranks alike (1); B's 3 -4 against 3 4 reverse (-1)
    assert got["rank_correlation_signed_by_region"] == {"A": pytest.approx(1.0),
                                                        "B": pytest.approx(-1.0)}


def test_two_regions_cut_equals_silence_and_all_channels_equal_the_cut(trained, tmp_path):
    assert _perturb(trained, tmp_path / "silence", "--silence", "A") == 0
    assert _perturb(trained, tmp_path / "cut", "--cut", "A->B") == 0
    assert _perturb(trained, tmp_path / "all", "--cut", "A->B", "--channels", "0,1") == 0
    assert _perturb(trained, tmp_path / "one", "--cut", "A->B", "--channels", "1") == 0
    silence, cut, every, one = (_npz(tmp_path / n) for n in ("silence", "cut", "all", "one"))
    for key in cut:  # A sends only to B: silencing A is cutting A -> B
        np.testing.assert_array_equal(silence[key], cut[key], err_msg=key)
        np.testing.assert_array_equal(every[key], cut[key], err_msg=key)
    assert 0 < one["effect/B"].sum() and not np.array_equal(one["effect/B"], cut["effect/B"])
    report = json.loads((tmp_path / "one" / "report.json").read_text())
    assert report["perturbation"]["channels"] == [1]


def test_the_printed_heading_is_one_line_above_the_table(trained, tmp_path, capsys):
    """A rich table's title wraps at the table's width, which split the heading over two
    lines; it is printed as a line of its own."""
    capsys.readouterr()
    assert _perturb(trained, tmp_path / "one", "--cut", "A->B", "--channels", "1") == 0
    trials = json.loads((tmp_path / "one" / "report.json").read_text())["trials"]
    lines = capsys.readouterr().out.splitlines()
    # bins 6:10 of 10 ms from the start of the (simulated) trial: 0.06 to 0.1 s
    heading = (f"cutting A->B (channels 1) over bins {WINDOW} (0.06 to 0.1 s from trial "
               f"start; {trials} trials)")
    assert heading in lines
    assert lines[lines.index(heading) + 1].startswith("┏")  # the table's top rule
    assert "signed rank" in "".join(lines[:lines.index(heading) + 6])
    assert not any("own neurons" in ln for ln in lines)  # a cut suppresses no region


def test_silencing_a_region_says_its_own_neurons_are_not_predicted(trained, tmp_path, capsys):
    """A recorded silencing suppresses the region's own neurons directly; cutting the model's
    messages does not, so the printout points the reader to the other regions' rows."""
    capsys.readouterr()
    assert _perturb(trained, tmp_path / "silence", "--silence", "A") == 0
    out = capsys.readouterr().out
    assert "A's own neurons: a recorded silencing also suppresses them directly" in out


def test_silence_inputs_moves_the_region_from_the_window_on(trained, tmp_path):
    out = tmp_path / "inputs"
    assert _perturb(trained, out, "--silence-inputs", "A", data="data") == 0
    eff = _npz(out)
    assert "measured/A" not in eff  # no perturbed split in this dataset
    assert np.all(eff["delta/A"][: 6 - TAU] == 0.0) and np.all(eff["delta/B"][: 6 - TAU] == 0.0)
    assert eff["effect/A"].min() > 0
    report = json.loads((out / "report.json").read_text())
    assert report["perturbation"]["kind"] == "inputs" and "rank_correlation" not in report


@pytest.mark.parametrize(("flags", "message"), [
    (["--cut", "A-B"], "name one pathway as SRC->DST"),
    (["--cut", "A->Z"], "'Z' is not a region of the model; regions are ['A', 'B']"),
    (["--cut", "A->A"], "a region sends no message to itself"),
    (["--silence", "Z"], "--silence 'Z': not a region of the model"),
    (["--silence-inputs", "Z"], "--silence-inputs 'Z': not a region of the model"),
    (["--cut", "A->B", "--channels", "0,2"], "dimensions 0..1 (the model's com_dim=2); [2]"),
    (["--silence-inputs", "A", "--channels", "x"], "expected comma-separated dimension numbers"),
])
def test_bad_perturbations_exit_2_naming_the_flag(trained, tmp_path, capsys, flags, message):
    assert _perturb(trained, tmp_path / "out", *flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_existing_out_is_kept_without_overwrite(trained, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert _perturb(trained, out, "--silence", "A") == 2
    assert "--overwrite" in capsys.readouterr().err and not any(out.iterdir())
    assert _perturb(trained, out, "--silence", "A", "--overwrite") == 0
    assert (out / "effects.npz").is_file()


def test_a_cut_parses_as_model_pathways_do_spaces_around_the_names_allowed():
    from mrlfads.config import ModelConfig, RegionConfig
    from mrlfads.training.api.perturb import make_perturbation

    cfg = ModelConfig(regions=(RegionConfig("A", 3), RegionConfig("B", 3)), obs_model="poisson")
    spaced = make_perturbation(cfg, (TAU, T), cut=" A -> B ")
    assert spaced == make_perturbation(cfg, (TAU, T), cut="A->B")
    assert spaced.target == "A->B"
    with pytest.raises(ValueError, match="name one pathway as SRC->DST"):
        make_perturbation(cfg, (TAU, T), cut="A -> ")


def test_silencing_inputs_of_a_model_without_inputs_is_refused():
    from mrlfads.config import ModelConfig, RegionConfig
    from mrlfads.training.api.perturb import make_perturbation

    cfg = ModelConfig(regions=(RegionConfig("A", 3), RegionConfig("B", 3)), obs_model="poisson",
                      inferred_inputs=False)
    with pytest.raises(ValueError, match="no inferred inputs"):
        make_perturbation(cfg, (TAU, T), silence_inputs="A")


def test_infer_writes_the_inferred_input_effectome(trained, tmp_path):
    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.effectome import input_cut_effectome
    from mrlfads.training.checkpoint import load_model
    from mrlfads.training.data import load_split

    out = tmp_path / "infer"
    assert main(["infer", "--model", str(trained / "run" / "best.pt"), "--data",
                 str(trained / "data"), "--out", str(out)]) == 0
    cols = read_outputs(out)
    eff = json.loads((out / "effectome.json").read_text())
    for r, name in enumerate(eff["regions"]):  # RMS of the written inputs, by hand
        rms = float(np.sqrt(np.mean(cols[f"inputs/{name}"].astype(np.float64) ** 2)))
        assert eff["inputs"]["rms"][r] == pytest.approx(rms, rel=1e-5)
    model, _, _ = load_model(trained / "run" / "best.pt")
    ds = ArrowDataset.open(trained / "data")
    splits = [load_split(ds, s, torch.device("cpu")) for s in ("train", "valid")]
    heldin = [torch.cat([sp.heldin[r] for sp in splits]) for r in range(2)]
    np.testing.assert_allclose(eff["inputs"]["cut"], input_cut_effectome(model, heldin), rtol=1e-4)
    assert min(eff["inputs"]["cut"]) > 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["valid/effectome_inputs_cut/A"] > 0
    # the dataset's manifest travels with the output, identified by its digest
    source = (out / "source_dataset.json").read_bytes()
    info = json.loads((out / "outputs.json").read_text())
    assert info["dataset"] == "tiny"
    assert info["dataset_digest"] == hashlib.sha256(source).hexdigest()
    assert info["dataset_digest"] == hashlib.sha256(
        (trained / "data" / "dataset.json").read_bytes()).hexdigest()


def test_compare_effectomes_reads_what_infer_writes(trained, tmp_path, capsys):
    """Two real `mrlfads infer` outputs of one model: `compare-effectomes` reads them, and
    the same effectome twice has one order, each pathway a tier of its own."""
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert main(["infer", "--model", str(trained / "run" / "best.pt"), "--data",
                     str(trained / "data"), "--out", str(out), "--samples", "0"]) == 0
    capsys.readouterr()
    assert main(["compare-effectomes", *map(str, outs), "--out", str(tmp_path / "c.json")]) == 0
    saved = json.loads((tmp_path / "c.json").read_text())
    eff = json.loads((outs[0] / "effectome.json").read_text())
    assert [p["pathway"] for p in saved["pathways"]] == sorted(
        ["B->A", "A->B"], key=lambda p: -eff["matrix"]["AB".index(p[-1])]["AB".index(p[0])])
    assert [p["tier"] for p in saved["pathways"]] == [1, 2]
    assert saved["pairs_in_differing_order"] == 0
