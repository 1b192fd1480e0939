"""The spike-smoothing baseline (mrlfads/baselines.py): its GLM against closed forms, its
choice of kernel on data whose answer is known, and its errors."""
import math

import numpy as np
import pytest

from mrlfads.baselines import SmoothingConfig, _fit_glm, fit_smoothing_baseline
from mrlfads.metrics import MetricsError, bits_per_spike


def test_the_glm_with_one_binary_input_fits_each_groups_mean_rate():
    """Unpenalised, log rate = b + w x with x in {0, 1} has the closed-form maximum: exp(b)
    is the mean count where x = 0, exp(b + w) where x = 1."""
    rng = np.random.default_rng(0)
    x = (rng.random(4000) < 0.3).astype(float)
    y = rng.poisson(np.where(x > 0, 0.4, 0.05))[:, None].astype(float)
    W = _fit_glm(np.column_stack([x, np.ones_like(x)]), y, alpha=0.0, W0=None)
    b, w = W[1, 0], W[0, 0]
    assert math.exp(b) == pytest.approx(y[x == 0].mean(), rel=1e-4)
    assert math.exp(b + w) == pytest.approx(y[x == 1].mean(), rel=1e-4)


def _shared_latent(n_trials=120, n_bins=80, n_in=30, n_out=6, seed=0, independent=False):
    """Spikes at 0.1-0.3 per bin driven by a slow sine of random phase per trial; with
    ``independent`` the held-out neurons follow their own phases."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_bins) / n_bins

    def rates(n, phase):
        gain = rng.uniform(0.5, 1.5, n)
        base = np.log(rng.uniform(0.1, 0.3, n))
        return np.exp(base + gain * np.sin(2 * np.pi * 2 * t[None, :, None] + phase[:, None, None]))

    phase = rng.uniform(0, 2 * np.pi, n_trials)
    other = rng.uniform(0, 2 * np.pi, n_trials) if independent else phase
    r_in, r_out = rates(n_in, phase), rates(n_out, other)
    return rng.poisson(r_in).astype(float), rng.poisson(r_out).astype(float), r_out


def test_smoothed_spikes_predict_neurons_that_share_their_latent():
    heldin, heldout, true_rates = _shared_latent()
    train, test = slice(0, 90), slice(90, None)
    b = fit_smoothing_baseline(heldin[train], heldout[train], bin_width_s=0.01)
    truth = bits_per_spike(heldout[test], np.log(true_rates[test]))
    got = b.co_bps(heldin[test], heldout[test])
    assert 0.6 * truth < got <= truth + 0.02
    # the sine's period is 40 bins: the sharpest kernel (2 bins) averages over too few spikes
    assert b.width_s > 0.02
    # every kernel at the first penalty, then every penalty at the best kernel
    cfg = SmoothingConfig()
    assert set(b.scores) == ({(w, cfg.first_alpha) for w in cfg.widths_s}
                             | {(b.width_s, a) for a in cfg.alphas})
    best_kernel = max(cfg.widths_s, key=lambda w: b.scores[(w, cfg.first_alpha)])
    assert b.width_s == best_kernel
    assert b.scores[(b.width_s, b.alpha)] == max(b.scores.values())


def test_neurons_with_their_own_latent_get_nothing_from_the_baseline():
    heldin, heldout, _ = _shared_latent(independent=True)
    b = fit_smoothing_baseline(heldin[:90], heldout[:90], bin_width_s=0.01)
    assert b.co_bps(heldin[90:], heldout[90:]) < 0.01


def test_an_overwhelming_penalty_leaves_each_neurons_training_mean():
    """With the weights held at 0 the prediction is every held-out neuron's mean count over
    the training trials, whose bits per spike on other trials can be computed by hand."""
    heldin, heldout, _ = _shared_latent()
    cfg = SmoothingConfig(widths_s=(0.04,), alphas=(1e9,), first_alpha=1e9)
    b = fit_smoothing_baseline(heldin[:90], heldout[:90], bin_width_s=0.01, cfg=cfg)
    mean = heldout[:90].reshape(-1, heldout.shape[-1]).mean(axis=0)
    assert np.allclose(np.exp(b.log_rates(heldin[90:])), mean, rtol=1e-4)
    k = heldout[90:].reshape(-1, heldout.shape[-1])
    null = k.mean(axis=0)
    by_hand = ((k * np.log(mean) - mean).sum() - (k * np.log(null) - null).sum()) / (
        k.sum() * math.log(2))
    assert b.co_bps(heldin[90:], heldout[90:]) == pytest.approx(by_hand, rel=1e-3)
    assert by_hand < 0  # the null is fitted on the scored trials themselves


def test_bad_inputs_name_what_is_wrong():
    heldin, heldout, _ = _shared_latent(n_trials=8)
    with pytest.raises(MetricsError, match="share their trials"):
        fit_smoothing_baseline(heldin, heldout[:4], bin_width_s=0.01)
    with pytest.raises(MetricsError, match="held-in and held-out neurons"):
        fit_smoothing_baseline(heldin, heldout[..., :0], bin_width_s=0.01)
    with pytest.raises(MetricsError, match="at least 4 training trials"):
        fit_smoothing_baseline(heldin[:3], heldout[:3], bin_width_s=0.01)
    with pytest.raises(MetricsError, match="trials, T, neurons"):
        fit_smoothing_baseline(heldin[0], heldout[0], bin_width_s=0.01)
    with pytest.raises(MetricsError, match="first_alpha 0.5 must be one of"):
        fit_smoothing_baseline(heldin, heldout, bin_width_s=0.01,
                               cfg=SmoothingConfig(first_alpha=0.5))
    with pytest.raises(MetricsError, match="no held-out spike"):
        fit_smoothing_baseline(heldin, np.zeros_like(heldout), bin_width_s=0.01)


def test_each_session_gets_its_own_baseline_and_the_pool_weighs_them_by_spikes(tmp_path):
    """A stitched dataset (s0 records A and B, s1 only A, s2 only B): each session's
    baseline maps its own held-in neurons to its own held-out ones, fitted on its own
    training trials; the pooled score is the sessions' mean weighted by held-out spikes."""
    from mrlfads.data_loaders import sessions as S
    from mrlfads.data_loaders.testing import make_tiny_sessions_dataset
    from mrlfads.training.smoothing import smoothing_scores

    ds = make_tiny_sessions_dataset(tmp_path / "d", trials=(40, 36, 32), n_bins=16)
    m, tau = ds.manifest, ds.manifest.ic_enc_seq_len
    baselines, scores = smoothing_scores(ds, ["valid"])
    assert set(baselines) == {"s0", "s1", "s2"}
    total = spikes = 0.0
    for i, session in enumerate(m.sessions):
        def own(split, i=i, session=session):  # its trials and columns, from the Arrow data
            a = ds.arrays(split, ["session"] + [f"x/{r.name}" for r in m.regions])
            rows = a["session"] == i
            hin, hout = [], []
            for r in m.regions:
                cols = S.columns(m.sessions, r.name, i)
                n_in = session.units[r.name][0]
                hin.append(a[f"x/{r.name}"][rows][..., cols[:n_in]])
                hout.append(a[f"x/{r.name}"][rows][..., cols[n_in:]])
            return np.concatenate(hin, -1), np.concatenate(hout, -1)

        b = fit_smoothing_baseline(*own("train"), bin_width_s=m.bin_width_s)
        vin, vout = own("valid")
        value = bits_per_spike(vout[:, tau:], b.log_rates(vin)[:, tau:])
        assert scores[f"valid/session/{session.name}/smoothing_co_bps"] == pytest.approx(value)
        total += value * vout[:, tau:].sum()
        spikes += vout[:, tau:].sum()
    assert scores["valid/smoothing_co_bps"] == pytest.approx(total / spikes)
    assert "valid/session/s1/smoothing_co_bps/A" in scores  # s1 recorded no B
    assert not any(k.startswith("valid/session/s1/smoothing_co_bps/B") for k in scores)
    # a session with too few training trials has no baseline, and then no pool is given:
    # it would leave that session's neurons out of a score the model's covers
    short = make_tiny_sessions_dataset(tmp_path / "e", trials=(40, 36, 8), n_bins=16)
    baselines, scores = smoothing_scores(short, ["valid"])
    assert set(baselines) == {"s0", "s1"}
    assert "valid/session/s0/smoothing_co_bps" in scores and "valid/smoothing_co_bps" not in scores


def test_principal_components_with_their_penalty_fit_the_same_ridge_glm():
    """Rotated onto principal components scaled to unit variance, with each component's
    penalty divided by its variance, the GLM is the ridge GLM on the standardised smoothed
    spikes themselves: the same predictions. With fewer components kept, the leading ones."""
    from scipy.ndimage import gaussian_filter1d

    from mrlfads.baselines import _design, _inputs

    heldin, heldout, _ = _shared_latent(n_trials=60, n_in=12)
    s = gaussian_filter1d(heldin, 4.0, axis=1, mode="reflect").reshape(-1, 12)
    z = (s - s.mean(0)) / s.std(0)
    X = np.column_stack([z, np.ones(len(z))])
    Y = heldout.reshape(-1, heldout.shape[-1])
    direct = X @ _fit_glm(X, Y, alpha=0.1, W0=None)
    inputs = _inputs(heldin, 4.0, max_inputs=12)
    D = _design(heldin, 4.0, inputs)
    rotated = D @ _fit_glm(D, Y, alpha=0.1, W0=None, penalty=inputs.penalty)
    assert np.allclose(rotated, direct, atol=1e-2)  # an equal penalty instead: 0.46 apart
    few = _inputs(heldin, 4.0, max_inputs=5)
    assert few.components.shape == (12, 5)
    variances = np.sort(np.linalg.eigvalsh(np.cov(z.T, bias=True)))[::-1]
    assert np.allclose(few.scale**2, variances[:5], rtol=1e-3)


def test_a_fitted_baseline_is_kept_and_read_back_instead_of_fitted_again(tmp_path, monkeypatch):
    """With a cache folder each session's fit is written once (keyed by the dataset's
    manifest digest, the session, the training split and the settings) and read back the
    next time with the same scores, without fitting or reading the training split again;
    another dataset gets its own files; an unreadable file is fitted again and replaced; a
    folder that cannot be written costs a warning, not the scores."""
    import mrlfads.baselines as B
    import mrlfads.training.data as D
    from mrlfads.baselines import SmoothingBaseline
    from mrlfads.data_loaders.testing import make_tiny_sessions_dataset
    from mrlfads.training.smoothing import smoothing_scores

    monkeypatch.setenv("MRLFADS_CACHE_DIR", str(tmp_path / "cache"))
    ds = make_tiny_sessions_dataset(tmp_path / "d", trials=(40, 36, 32), n_bins=16)
    fitted, first = smoothing_scores(ds, ["valid"])
    files = sorted((tmp_path / "cache" / "smoothing").glob("*.npz"))
    assert len(files) == 3 and len(first) > 3  # one file a session
    with np.load(files[0], allow_pickle=False) as saved:
        back = SmoothingBaseline.from_arrays(dict(saved))
    assert any(back.scores == b.scores and back.width_s == b.width_s for b in fitted.values())

    real_fit, real_load = B.fit_smoothing_baseline, D.load_split

    def no_fit(*a, **k):
        raise AssertionError("fitted again")

    def no_train(dataset, split, *a, **k):
        assert split != "train", "read the training split again"
        return real_load(dataset, split, *a, **k)

    monkeypatch.setattr(B, "fit_smoothing_baseline", no_fit)
    monkeypatch.setattr(D, "load_split", no_train)
    again, second = smoothing_scores(ds, ["valid"])
    assert second == first and set(again) == set(fitted)
    other = make_tiny_sessions_dataset(tmp_path / "e", trials=(40, 36, 32), n_bins=16, seed=1)
    with pytest.raises(AssertionError, match="fitted again|training split"):
        smoothing_scores(other, ["valid"])  # another manifest digest: nothing to read back
    monkeypatch.setattr(B, "fit_smoothing_baseline", real_fit)
    monkeypatch.setattr(D, "load_split", real_load)
    files[0].write_bytes(b"not a saved baseline")
    assert smoothing_scores(ds, ["valid"])[1] == first
    with np.load(files[0], allow_pickle=False) as saved:  # rewritten
        SmoothingBaseline.from_arrays(dict(saved))
    (tmp_path / "blocked").write_text("a file where the cache folder would be")
    monkeypatch.setenv("MRLFADS_CACHE_DIR", str(tmp_path / "blocked"))
    with pytest.warns(UserWarning, match="not cached"):
        assert smoothing_scores(ds, ["valid"])[1] == first
