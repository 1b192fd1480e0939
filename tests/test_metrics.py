"""Metrics checked on arrays small enough to work out by hand (docs/MODEL.md, "Metrics")."""

import math
import subprocess
import sys

import numpy as np
import pytest

from mrlfads import metrics as M

LN2 = math.log(2.0)


# ----------------------------------------------------------------------------- R^2
def test_r2_perfect_and_mean_prediction():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(4, 5, 3))
    assert M.r2(y, y) == pytest.approx(1.0)
    mean_pred = np.broadcast_to(y.reshape(-1, 3).mean(axis=0), y.shape)
    assert M.r2(y, mean_pred) == pytest.approx(0.0, abs=1e-12)
    assert M.r2(y, mean_pred, "uniform_average") == pytest.approx(0.0, abs=1e-12)


def test_r2_variance_weighted_vs_per_neuron_by_hand():
    # neuron 0: values [0, 2] (SST 2), predicted [1, 1] -> SSE 2, R2 0
    # neuron 1: values [0, 20] (SST 200), predicted exactly -> SSE 0, R2 1
    y = np.array([[0.0, 0.0], [2.0, 20.0]])
    p = np.array([[1.0, 0.0], [1.0, 20.0]])
    np.testing.assert_allclose(M.r2(y, p, "raw_values"), [0.0, 1.0])
    assert M.r2(y, p, "uniform_average") == pytest.approx(0.5)
    assert M.r2(y, p) == pytest.approx(1 - 2 / 202)


def test_r2_constant_neuron_nan_per_neuron():
    y = np.array([[1.0, 0.0], [1.0, 2.0]])
    per = M.r2(y, y, "raw_values")
    assert np.isnan(per[0]) and per[1] == 1.0
    assert np.isnan(M.r2(np.ones((3, 2)), np.ones((3, 2))))


# ----------------------------------------------------------------------------- bits/spike
def _counts_2x2x1():
    return np.array([[[1.0], [0.0]], [[2.0], [1.0]]])  # 4 spikes in 4 bins: mean rate 1


def test_mean_rate_model_scores_zero_bps():
    rng = np.random.default_rng(1)
    counts = rng.poisson(lam=[0.5, 2.0, 0.1], size=(6, 10, 3)).astype(float)
    mean = counts.reshape(-1, 3).mean(axis=0)
    assert M.bits_per_spike(counts, np.broadcast_to(np.log(mean), counts.shape)) == \
        pytest.approx(0.0, abs=1e-12)


def test_bps_hand_value_2x2x1():
    counts = _counts_2x2x1()
    rates = np.array([[[2.0], [0.5]], [[2.0], [1.0]]])
    # LL_model = ln2 - 2 - 0.5 + 2 ln2 - 2 - 1 = 3 ln2 - 5.5 ; LL_null = sum(k ln1 - 1) = -4
    expected = (3 * LN2 - 1.5) / (4 * LN2)
    assert expected > 0
    assert M.bits_per_spike(counts, np.log(rates)) == pytest.approx(expected)
    with pytest.raises(M.MetricsError, match="counts.*log_rates"):
        M.bits_per_spike(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)))


def test_bps_null_is_the_evaluated_data_mean():
    counts = _counts_2x2x1()
    # a model at 2 spikes/bin is scored against the data's own mean (1/bin), never another
    # split's: LL_model = 4 ln2 - 8, LL_null = -4
    lr = np.full(counts.shape, LN2)
    assert M.bits_per_spike(counts, lr) == pytest.approx((4 * LN2 - 4) / (4 * LN2))
    with pytest.raises(TypeError):
        M.bits_per_spike(counts, lr, null_rates=[2.0])  # one definition: no other null


def test_bps_no_spikes_is_nan_and_torch_accepted():
    torch = pytest.importorskip("torch")
    assert math.isnan(M.bits_per_spike(np.zeros((2, 3, 1)), np.zeros((2, 3, 1))))
    counts = torch.tensor(_counts_2x2x1())
    assert M.bits_per_spike(counts, torch.zeros_like(counts)) == pytest.approx(0.0)


# ----------------------------------------------------------------------------- effectome
def test_effectome_rms_by_hand_and_nan_diagonal():
    msgs = {
        ("A", "B"): np.array([[[3.0, 4.0]]]),  # RMS sqrt((9+16)/2)
        "B->A": np.array([[[1.0], [-1.0]]]),  # RMS 1; string keys accepted
    }
    E = M.effectome(msgs, ["A", "B"])
    assert E[1, 0] == pytest.approx(math.sqrt(12.5))  # E[dst=B, src=A]
    assert E[0, 1] == pytest.approx(1.0)
    assert np.isnan(E[0, 0]) and np.isnan(E[1, 1])
    assert M.effectome_metrics(E, ["A", "B"]) == {
        "effectome/A_to_B": pytest.approx(math.sqrt(12.5)),
        "effectome/B_to_A": pytest.approx(1.0),
    }


def test_effectome_missing_pathway_and_unknown_region():
    with pytest.raises(M.MetricsError, match="B->A"):
        M.effectome({("A", "B"): np.ones((1, 1, 1))}, ["A", "B"])
    with pytest.raises(M.MetricsError, match="'C'"):
        M.effectome({("A", "C"): np.ones((1, 1, 1))}, ["A", "B"])


def test_effectome_cosine():
    truth = np.array([[0, 0, 3], [2, 0, 0], [0, 4, 0]], dtype=float)  # ring A0->A1->A2->A0
    E = np.where(np.eye(3, dtype=bool), np.nan, truth)
    assert M.effectome_cosine(E, truth) == pytest.approx(1.0)
    assert M.effectome_cosine(5 * E, truth) == pytest.approx(1.0)  # scale-free
    ortho = np.where((truth == 0) & ~np.eye(3, dtype=bool), 1.0, 0.0)  # only absent pathways
    assert M.effectome_cosine(ortho, truth) == pytest.approx(0.0)
    with pytest.raises(M.MetricsError, match="true_comm has shape"):
        M.effectome_cosine(E, np.zeros((2, 2)))
    with pytest.warns(RuntimeWarning, match="all zero"):
        assert math.isnan(M.effectome_cosine(E, np.zeros((3, 3))))


# ----------------------------------------------------------------------------- message / input R^2
def _latent(seed, trials=40, T=20, d=3):
    return np.random.default_rng(seed).normal(size=(trials, T, d))


def test_message_r2_identical_scaled_rotated_and_noise():
    true = {("A", "B"): _latent(0), ("B", "A"): _latent(1, d=2)}
    same = M.message_r2(dict(true), true)
    assert same[("A", "B")] == pytest.approx(1.0) and same["mean"] == pytest.approx(1.0)

    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(3, 3)))  # rotation
    transformed = {
        "A->B": 3.0 * true[("A", "B")] @ q + 1.0,  # rotated, scaled, shifted; string key
        ("B", "A"): np.concatenate([-true[("B", "A")], _latent(3, d=2)], axis=-1),  # + junk dims
    }
    out = M.message_r2(transformed, true)
    assert out[("A", "B")] == pytest.approx(1.0)
    assert out[("B", "A")] == pytest.approx(1.0)

    noise = M.message_r2({k: _latent(10 + i) for i, k in enumerate(true)}, true)
    for k in true:
        assert -0.1 < noise[k] < 0.05
    assert noise["mean"] == pytest.approx(np.mean([noise[k] for k in true]))


def test_message_r2_is_cross_validated():
    # 4 trials x 1 bin, 10 inferred dims: a fit on 2 trials is perfect in-sample, but the
    # held-out half is scored, so unrelated inferred messages cannot look good.
    true = {("A", "B"): _latent(0, trials=4, T=1, d=1)}
    inferred = {("A", "B"): _latent(1, trials=4, T=1, d=10)}
    assert M.message_r2(inferred, true)[("A", "B")] < 0.5
    assert M.message_r2(inferred, true, seed=3) == M.message_r2(inferred, true, seed=3)


def test_message_r2_errors_and_mean_skips_absent():
    true = {("A", "B"): _latent(0)}
    with pytest.raises(M.MetricsError, match="A', 'B'"):
        M.message_r2({("B", "A"): _latent(0)}, true)
    with pytest.raises(M.MetricsError, match="same trials"):
        M.message_r2({("A", "B"): _latent(0, trials=10)}, true)
    # a constant (absent) pathway in the truth is NaN and not part of the mean
    true2 = {("A", "B"): _latent(0), ("B", "A"): np.zeros((40, 20, 2))}
    out = M.message_r2({k: (_latent(0) if k == ("A", "B") else _latent(5)) for k in true2}, true2)
    assert math.isnan(out[("B", "A")]) and out["mean"] == pytest.approx(1.0)


def test_inferred_input_r2():
    true = {"A": _latent(0, d=2), "B": _latent(1, d=1)}
    inferred = {"A": true["A"] @ np.array([[1.0, 2.0, 0.0], [0.5, 0.0, 1.0]]),
                "B": _latent(7, d=4)}
    out = M.inferred_input_r2(inferred, true)
    assert out["A"] == pytest.approx(1.0)
    assert out["B"] < 0.05
    assert out["mean"] == pytest.approx((out["A"] + out["B"]) / 2)


# ----------------------------------------------------------------------------- perturbations, EMA
def test_rank_correlation():
    assert M.rank_correlation([1, 2, 3, 4], [10, 20, 30, 400]) == pytest.approx(1.0)
    assert M.rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert M.rank_correlation({"A": 0.1, "B": 0.5, "C": 0.3},
                              {"C": 2.0, "A": 1.0, "B": 3.0}) == pytest.approx(1.0)
    assert math.isnan(M.rank_correlation([1, 1, 1], [1, 2, 3]))
    with pytest.raises(M.MetricsError, match="keys differ"):
        M.rank_correlation({"A": 1.0, "B": 2.0}, {"A": 1.0, "C": 2.0})


def test_ema():
    half, none = M.EMA(0.5), M.EMA(1.0)
    assert [half.update(v) for v in (4.0, 2.0, 0.0)] == [4.0, 3.0, 1.5]
    assert [none.update(v) for v in (4.0, 2.0)] == [4.0, 2.0]
    ema = M.EMA(0.25)
    ema.update(8.0)
    resumed = M.EMA(0.25)
    resumed.load_state_dict(ema.state_dict())
    assert resumed.update(0.0) == ema.update(0.0) == pytest.approx(6.0)
    with pytest.raises(M.MetricsError, match="alpha"):
        M.EMA(0.0)


def test_import_stays_light():
    code = ("import sys, mrlfads.metrics; bad = [m for m in ('ray', 'mlflow', 'pyarrow', "
            "'pynwb', 'torch') if m in sys.modules]; print(bad); assert not bad")
    subprocess.run([sys.executable, "-c", code], check=True)
