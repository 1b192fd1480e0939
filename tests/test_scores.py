"""Scores the field can compare: co-bps with the Neural Latents Benchmark's definition, PSTH
R^2 by condition, posterior-sample averaging and held-out rates in `mrlfads infer`."""
import json
import math

import numpy as np
import pytest
import torch
from scipy.special import gammaln

from mrlfads import metrics as M
from mrlfads.data_loaders.testing import make_tiny_dataset
from mrlfads.training.cli import main
from mrlfads.training.config import RunConfig
from mrlfads.training.data import load_split
from mrlfads.training.evaluate import collect_outputs, score
from mrlfads.training.infer_io import read_outputs
from mrlfads.training.loop import Trainer
from mrlfads.training.sweep import SweepSummary, format_summary

LN2 = math.log(2.0)


def nlb_bits_per_spike(rates, spikes):
    """nlb_tools.evaluation.bits_per_spike as NLB writes it (rates, not log-rates): the null
    is each neuron's nanmean over every trial and bin of ``spikes``."""
    def nll(r, k):
        return np.sum(r - k * np.log(r + 1e-9) + gammaln(k + 1.0))

    null = np.tile(np.nanmean(spikes, axis=(0, 1), keepdims=True), spikes.shape[:-1] + (1,))
    return (nll(null, spikes) - nll(rates, spikes)) / np.nansum(spikes) / LN2


# ----------------------------------------------------------------------------- co-bps
def test_predicting_each_neurons_mean_over_the_evaluated_trials_scores_exactly_zero():
    rng = np.random.default_rng(0)
    counts = rng.poisson([0.1, 1.0, 3.0], size=(5, 7, 3)).astype(float)
    mean = counts.mean(axis=(0, 1))  # the evaluated trials' own means, not a training split's
    log_rates = np.broadcast_to(np.log(mean), counts.shape)
    assert M.bits_per_spike(counts, log_rates) == pytest.approx(0.0, abs=1e-12)


def test_co_bps_hand_value_two_neurons():
    # neuron 0: counts [[2, 0]] over 1 trial x 2 bins, neuron 1: [[1, 1]]; 4 spikes.
    counts = np.array([[[2.0, 1.0], [0.0, 1.0]]])
    rates = np.array([[[2.0, 1.0], [0.5, 1.0]]])
    # LL_model = (2 ln2 - 2) + (0 - 0.5) + (0 - 1) + (0 - 1) = 2 ln2 - 4.5
    # null: neuron 0 mean 1, neuron 1 mean 1 -> LL_null = -1 - 1 - 1 - 1 = -4
    expected = (2 * LN2 - 0.5) / (4 * LN2)
    assert M.bits_per_spike(counts, np.log(rates)) == pytest.approx(expected, rel=1e-12)
    assert nlb_bits_per_spike(rates, counts) == pytest.approx(expected, rel=1e-8)  # its 1e-9


def test_bits_per_spike_equals_the_nlb_formula_on_random_arrays():
    rng = np.random.default_rng(3)
    spikes = rng.poisson(0.3, size=(6, 9, 4)).astype(float)
    spikes[:, :, 3] = 0.0  # a silent neuron: null rate 0 contributes nothing
    rates = rng.uniform(0.05, 1.0, size=spikes.shape)
    assert M.bits_per_spike(spikes, np.log(rates)) == pytest.approx(
        nlb_bits_per_spike(rates, spikes), rel=1e-7)


def test_bits_per_spike_matches_nlb_tools_when_installed():
    nlb = pytest.importorskip("nlb_tools.evaluation")  # pins pandas<=1.3.4: rarely installed
    rng = np.random.default_rng(4)
    spikes = rng.poisson(0.5, size=(5, 8, 3)).astype(float)
    rates = rng.uniform(0.1, 1.5, size=spikes.shape)
    assert M.bits_per_spike(spikes, np.log(rates)) == pytest.approx(
        nlb.bits_per_spike(rates, spikes), rel=1e-7)


def test_pooled_co_bps_is_the_spike_weighted_mean_of_the_regions():
    rng = np.random.default_rng(5)
    a = rng.poisson(0.4, size=(4, 6, 2)).astype(float)
    b = rng.poisson(2.0, size=(4, 6, 3)).astype(float)
    la, lb = np.log(rng.uniform(0.2, 1.0, a.shape)), np.log(rng.uniform(1.0, 3.0, b.shape))
    pooled = M.bits_per_spike(np.concatenate([a, b], -1), np.concatenate([la, lb], -1))
    weighted = (M.bits_per_spike(a, la) * a.sum() + M.bits_per_spike(b, lb) * b.sum()) / (
        a.sum() + b.sum())
    assert pooled == pytest.approx(weighted, rel=1e-12)


# ----------------------------------------------------------------------------- PSTH R^2
def test_psth_r2_hand_case():
    # 2 conditions x 2 trials, T = 2, one neuron
    data = np.array([[[1.0], [3.0]], [[3.0], [1.0]],    # a: PSTH [2, 2]
                     [[0.0], [0.0]], [[2.0], [4.0]]])   # b: PSTH [1, 2]
    rates = np.array([[[2.0], [1.0]], [[2.0], [2.0]],   # a: predicted [2, 1.5]
                      [[1.0], [2.0]], [[1.0], [2.0]]])  # b: predicted [1, 2]
    cond = ["a", "a", "b", "b"]
    # D = [2, 2, 1, 2] (mean 1.75, SST 0.75), P = [2, 1.5, 1, 2] (SSE 0.25): R^2 = 2/3
    assert M.psth_r2(data, rates, cond, min_trials=2) == pytest.approx(2 / 3, rel=1e-12)
    # fewer than 2 conditions with enough trials, or no labels at all: no score
    assert math.isnan(M.psth_r2(data, rates, cond, min_trials=3))
    assert math.isnan(M.psth_r2(data, rates, ["", "", "", ""], min_trials=1))
    with pytest.raises(M.MetricsError, match="one condition per trial"):
        M.psth_r2(data, rates, ["a", "b"])


def test_psth_r2_variance_weighted_over_neurons():
    rng = np.random.default_rng(6)
    data = rng.normal(size=(6, 4, 2))
    cond = ["x", "y", "z"] * 2
    assert M.psth_r2(data, data, cond, min_trials=2) == pytest.approx(1.0)
    psth = np.stack([data[[i, i + 3]].mean(0) for i in range(3)])  # (C, T, N)
    noisy = data + 0.3 * rng.normal(size=data.shape)
    pred = np.stack([noisy[[i, i + 3]].mean(0) for i in range(3)])
    D, P = psth.reshape(-1, 2), pred.reshape(-1, 2)
    hand = 1 - ((D - P) ** 2).sum() / ((D - D.mean(0)) ** 2).sum()
    assert M.psth_r2(data, noisy, cond, min_trials=2) == pytest.approx(hand, rel=1e-12)


# ----------------------------------------------------------------------------- training / infer
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 2-epoch smoke model on make_tiny_dataset (conditions c0/c1, 1 held-out neuron each)."""
    root = tmp_path_factory.mktemp("scores")
    ds = make_tiny_dataset(root / "data")
    cfg = RunConfig.for_dataset(ds.manifest, uri=str(root / "data"), smoke_test=True,
                                overrides={"train.epochs": 2})
    trainer = Trainer(cfg, ds, device="cpu")
    trainer.run_epoch()
    trainer.run_epoch()
    trainer.save_checkpoint(root / "last.pt")
    return root, ds, trainer


def test_training_logs_co_bps_against_the_validation_trials_own_means(tiny):
    trainer = tiny[2]
    m = trainer.history[-1]
    valid = trainer.valid_data
    outputs, _ = collect_outputs(trainer.model, valid, trainer.cfg, trainer.epoch)
    tau = trainer.cfg.model.ic_enc_seq_len
    y = [valid.heldout[r][:, tau:].numpy() for r in range(2)]
    for r, name in enumerate(("A", "B")):
        rates = np.exp(outputs[f"heldout/{name}"].astype(np.float64))
        assert m[f"valid/co_bps/{name}"] == pytest.approx(nlb_bits_per_spike(rates, y[r]), abs=1e-7)
    both = np.concatenate([outputs["heldout/A"], outputs["heldout/B"]], -1).astype(np.float64)
    pooled = nlb_bits_per_spike(np.exp(both), np.concatenate(y, -1))
    assert m["valid/co_bps"] == pytest.approx(pooled, abs=1e-7)
    assert "valid/bps" in m
    # the tiny valid split holds condition c0 only: no PSTH R^2 without 2 conditions
    assert not any("psth" in k for k in m)


def test_score_adds_psth_r2_where_there_are_conditions(tiny):
    _, ds, trainer = tiny
    train = load_split(ds, "train", torch.device("cpu"))
    assert sorted(set(train.condition)) == ["c0", "c1"]
    outputs, _ = collect_outputs(trainer.model, train, trainer.cfg, trainer.epoch)
    s = score(outputs, train, trainer.cfg.model)
    tau = trainer.cfg.model.ic_enc_seq_len
    x = train.heldin[0][:, tau:].numpy()
    assert s["valid/psth_r2/A"] == pytest.approx(M.psth_r2(x, outputs["rates/A"], train.condition))
    assert {"valid/psth_r2", "valid/heldout_psth_r2", "valid/heldout_psth_r2/B"} <= set(s)


def test_score_adds_rate_r2_against_the_true_rates(tiny):
    _, ds, trainer = tiny
    train = load_split(ds, "train", torch.device("cpu"), with_truth=True)
    outputs, _ = collect_outputs(trainer.model, train, trainer.cfg, trainer.epoch)
    s = score(outputs, train, trainer.cfg.model)
    tau = trainer.cfg.model.ic_enc_seq_len
    true = {r: train.truth[f"truth/rates/{r}"][:, tau:].reshape(-1, 4) for r in ("A", "B")}
    pred = {r: np.concatenate([outputs[f"rates/{r}"], outputs[f"heldout_rates/{r}"]], -1)
            .reshape(-1, 4) for r in ("A", "B")}

    def hand(t, p):  # variance-weighted over neurons: one ratio of summed squares
        return 1 - ((t - p) ** 2).sum() / ((t - t.mean(0)) ** 2).sum()

    for r in ("A", "B"):
        assert s[f"valid/rate_r2/{r}"] == pytest.approx(hand(true[r], pred[r]), rel=1e-5)
    both = [np.concatenate([d["A"], d["B"]], 1) for d in (true, pred)]
    assert s["valid/rate_r2"] == pytest.approx(hand(*both), rel=1e-5)
    exact = {**outputs, **{f"rates/{r}": train.truth[f"truth/rates/{r}"][:, tau:, :3] for r in "AB"},
             **{f"heldout_rates/{r}": train.truth[f"truth/rates/{r}"][:, tau:, 3:] for r in "AB"}}
    assert score(exact, train, trainer.cfg.model)["valid/rate_r2"] == pytest.approx(1.0)
    no_truth = load_split(ds, "train", torch.device("cpu"))
    assert not any("rate_r2" in k for k in score(outputs, no_truth, trainer.cfg.model))


def test_posterior_sample_average_shapes_and_convergence(tiny):
    _, _, trainer = tiny
    valid, cfg = trainer.valid_data, trainer.cfg
    means, _ = collect_outputs(trainer.model, valid, cfg, 2)
    assert np.allclose(means["heldout_rates/A"], np.exp(means["heldout/A"]), rtol=1e-6)
    torch.manual_seed(0)
    one, _ = collect_outputs(trainer.model, valid, cfg, 2, samples=1)
    torch.manual_seed(0)
    many, _ = collect_outputs(trainer.model, valid, cfg, 2, samples=32)
    torch.manual_seed(0)
    again, _ = collect_outputs(trainer.model, valid, cfg, 2, samples=32)
    for key in means:
        assert many[key].shape == means[key].shape == one[key].shape
    assert np.array_equal(many["rates/A"], again["rates/A"])  # seeded: reproducible
    assert not np.allclose(one["rates/A"], means["rates/A"])  # a sample is not the mean

    def err(o):
        return float(np.abs(o["rates/B"] - means["rates/B"]).mean())

    assert err(many) < 0.5 * err(one)  # the average of 32 samples approaches the means
    assert np.allclose(many["readout/A"], np.log(many["rates/A"]))  # log of the mean rate
    with pytest.raises(ValueError, match="samples"):
        collect_outputs(trainer.model, valid, cfg, 2, samples=-1)


def test_infer_writes_heldout_rates_and_the_same_co_bps_as_training(tiny, tmp_path):
    root, _, trainer = tiny
    out = tmp_path / "infer"
    assert main(["infer", "--model", str(root / "last.pt"), "--data", str(root / "data"),
                 "--out", str(out), "--samples", "0"]) == 0
    cols = read_outputs(out)
    assert cols["heldout_rates/A"].shape == (24, 8, 1)  # 24 trials, T' = 12 - 4, 1 held-out
    assert np.all(cols["heldout_rates/B"] > 0)
    metrics = json.loads((out / "metrics.json").read_text())
    last = trainer.history[-1]
    # one definition: infer's valid co-bps is the training log's (posterior means both)
    for key in ("co_bps", "co_bps/A", "bps/B"):
        assert metrics[f"valid/{key}"] == pytest.approx(last[f"valid/{key}"], rel=1e-5)
    assert "train/psth_r2" in metrics and "train/heldout_psth_r2" in metrics
    info = json.loads((out / "outputs.json").read_text())
    assert info["samples"] == 0
    sampled = tmp_path / "sampled"  # the default: 20 posterior samples averaged
    assert main(["infer", "--model", str(root / "last.pt"), "--data", str(root / "data"),
                 "--out", str(sampled), "--splits", "valid"]) == 0
    assert json.loads((sampled / "outputs.json").read_text())["samples"] == 20
    s = read_outputs(sampled)
    assert s["heldout_rates/A"].shape == (6, 8, 1)
    assert not np.allclose(s["rates/A"], cols["rates/A"][cols["split"] == "valid"])
    with pytest.raises(SystemExit) as exc:  # argparse rejects it before anything runs
        main(["infer", "--model", str(root / "last.pt"), "--data", str(root / "data"),
              "--out", str(tmp_path / "bad"), "--samples", "-2"])
    assert exc.value.code == 2


def test_sweep_report_shows_pooled_scores_and_what_the_objective_is():
    summary = SweepSummary("/x", "t1", best_metrics={"epoch": 5.0, "objective": 1.0,
                                                     "valid/co_bps": 0.125,
                                                     "valid/co_bps/A": 0.5},
                           objective="smoothed valid/heldout_loss (held-out neurons)")
    text = format_summary(summary)
    assert "valid/co_bps: 0.125" in text and "valid/co_bps/A" not in text
    assert "objective: smoothed valid/heldout_loss (held-out neurons)" in text
    # the data's own baseline, pooled, beside the best trial's score
    summary.baseline = {"valid/smoothing_co_bps": 0.0625, "valid/smoothing_co_bps/A": 0.5}
    text = format_summary(summary)
    assert "valid/smoothing_co_bps: 0.0625 (smoothed held-in spikes: the held-out score to beat)" in text
    assert "smoothing_co_bps/A" not in text


def test_an_interrupted_sweep_says_so_and_calls_its_best_so_far():
    summary = SweepSummary("/x", "t1", best_metrics={"epoch": 4.0, "objective": 2.0},
                           trials={"t1": "TERMINATED", "t2": "TERMINATED"}, unfinished=2)
    text = format_summary(summary)
    assert "interrupted: 2 of 2 trials did not finish; their state is saved for --resume" in text
    assert "best trial so far: t1 (epoch 4, objective 2)" in text
    summary.unfinished = 0
    text = format_summary(summary)
    assert "interrupted" not in text and "best trial: t1 (epoch 4, objective 2)" in text
