"""Training, validation, inference and perturbation on a dataset of several sessions
(tiny: s0 records A and B, s1 only A, s2 only B; data_loaders.testing)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mrlfads.data_loaders.testing import make_tiny_sessions_dataset
from mrlfads.inference import Perturbation, perturbation_effects
from mrlfads.training.config import RunConfig
from mrlfads.training.evaluate import collect_outputs
from mrlfads.training.loop import Trainer, epoch_batches


@pytest.fixture(scope="module")
def sds(tmp_path_factory):
    return make_tiny_sessions_dataset(tmp_path_factory.mktemp("data") / "sessions")


@pytest.fixture(scope="module")
def trained(sds):
    cfg = RunConfig.for_dataset(sds.manifest, uri=sds.uri, smoke_test=True)
    trainer = Trainer(cfg, sds)
    history = [trainer.run_epoch() for _ in range(2)]
    return trainer, history


def test_the_config_carries_the_datasets_sessions(sds):
    cfg = RunConfig.for_dataset(sds.manifest, uri=sds.uri, smoke_test=True)
    assert [(s.name, s.heldin, s.heldout) for s in cfg.model.sessions] == [
        ("s0", (2, 2), (1, 0)), ("s1", (1, 0), (1, 0)), ("s2", (0, 3), (0, 1))]


def test_epoch_batches_hold_one_session_and_every_trial_once(trained):
    trainer, _ = trained
    data = trainer.train_data
    batches = epoch_batches(data, 4, torch.Generator().manual_seed(3))
    seen = torch.cat([idx for _, idx in batches]).sort().values
    assert torch.equal(seen, torch.arange(data.n_trials))
    for session, idx in batches:
        assert 1 <= idx.numel() <= 4
        assert set(data.session[idx].tolist()) == {session}
    assert len({s for s, _ in batches}) == 3  # sessions mix across the epoch
    # one session: exactly the permutation cut into batches (the order before sessions)
    plain = data.head(data.n_trials)
    plain.session = None
    got = epoch_batches(plain, 4, torch.Generator().manual_seed(3))
    order = torch.randperm(data.n_trials, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.cat([i for _, i in got]), order)


def test_each_neuron_starts_from_its_own_sessions_statistics(trained):
    trainer, _ = trained
    data, model = trainer.train_data, trainer.model
    (stats_in, _) = data.neuron_stats(
        counts=True, recorded=(model.session_recorded, model.session_recorded_heldout))
    x = data.heldin[0].double()  # region A: s0's 2 columns, then s1's 1
    for col, session in ((0, 0), (1, 0), (2, 1)):
        rows = data.session == session
        own = x[rows][:, :, col]
        expected = (own.sum() + 0.5) / own.numel()
        torch.testing.assert_close(stats_in[0][0][col].double(), expected, rtol=1e-6, atol=0)
    # readout biases follow: log of that mean (Poisson)
    torch.testing.assert_close(model.input_mean[0, :3], stats_in[0][0])


def test_training_reports_every_session_and_pools_them_by_spikes(trained, sds):
    trainer, history = trained
    last = history[-1]
    assert all(np.isfinite(h["train/loss"]) for h in history)
    for name in ("s0", "s1"):  # sessions that recorded A
        assert np.isfinite(last[f"valid/session/{name}/bps/A"])
    assert "valid/session/s2/bps/A" not in last and "valid/session/s1/bps/B" not in last
    # pooled = spike-weighted mean of the sessions' values, by hand from the data
    data = trainer.valid_data
    tau = trainer.cfg.model.ic_enc_seq_len
    spikes = {s: float(data.heldin[0][data.session == k][:, tau:, cols].sum())
              for k, s, cols in ((0, "s0", slice(0, 2)), (1, "s1", slice(2, 3)))}
    pooled = sum(last[f"valid/session/{s}/bps/A"] * w for s, w in spikes.items()) / sum(
        spikes.values())
    assert last["valid/bps/A"] == pytest.approx(pooled, rel=1e-9)


def test_outputs_come_back_in_trial_order_each_from_its_session(trained):
    trainer, _ = trained
    data, model = trainer.valid_data, trainer.model
    outputs, _ = collect_outputs(model, data, trainer.cfg, epoch=2)
    for i in (0, data.n_trials // 2, data.n_trials - 1):
        idx = torch.tensor([i])
        heldin, _, ext = data.batch(idx)
        with torch.no_grad():
            model.eval()
            one = model(heldin, ext, sample=False, session=int(data.session[i]))
        np.testing.assert_allclose(outputs["rates/A"][i], one.rates[0][0].numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_perturbation_effects_average_each_neuron_over_its_own_session(trained):
    trainer, _ = trained
    data, model = trainer.valid_data, trainer.model
    T = data.heldin[0].shape[1]
    pert = Perturbation("silence", "A", (trainer.cfg.model.ic_enc_seq_len, T))
    eff = perturbation_effects(model, data.heldin, data.ext, pert, sessions=data.session)
    # region B's held-in columns: s0's 2, then s2's 3; its base rate for column 2 (s2's
    # first) is the mean over s2's trials only
    rows = (data.session == 2).nonzero().flatten()
    with torch.no_grad():
        model.eval()
        heldin, _, ext = data.batch(rows)
        out = model(heldin, ext, sample=False, session=2)
    expected = out.rates[1][:, :, 2].double().mean(0).numpy()
    np.testing.assert_allclose(eff["base/B"][:, 2], expected, rtol=1e-5)
    assert np.all(np.isfinite(eff["effect/B"]))


def test_figures_come_per_session(trained, sds, tmp_path):
    from mrlfads.training.report_figures import fit_views, make_model_figures

    trainer, _ = trained
    views = fit_views(trainer.model, sds, trainer.cfg, max_trials=8)
    assert [label for label, _ in views] == ["s0", "s1", "s2"]
    s2 = dict(views)["s2"]  # s2 recorded B only: 3 held-in + 1 held-out neurons
    assert s2.data["A"].shape[-1] == 0 and s2.data["B"].shape[-1] == 4
    assert s2.rates["B"].shape == s2.data["B"].shape
    paths = make_model_figures(trainer.model, sds, trainer.cfg, tmp_path, n_trials=8)
    names = {p.name for p in paths}
    assert {n.rsplit("_", 1)[-1] for n in names} == {"s0.png", "s1.png", "s2.png"}
    assert all(p.stat().st_size > 1000 for p in paths)


def test_psth_neurons_are_dataset_columns_in_every_session(trained, sds):
    from mrlfads.training.report_figures import choose_neurons, figure_set, fit_views

    trainer, _ = trained
    views = dict(fit_views(trainer.model, sds, trainer.cfg, max_trials=8))
    # region A's dataset columns: held-in s0, s0, s1 (0-2), then held-out s0, s1 (3, 4)
    np.testing.assert_array_equal(views["s0"].column_ids("A"), [0, 1, 3])
    np.testing.assert_array_equal(views["s1"].column_ids("A"), [2, 4])
    assert choose_neurons(views["s1"], {"A": [4, 2, 0]})["A"] == [1, 0]  # 0: s0's only
    s0 = figure_set(views["s0"], {"A": [2, 3]})[0]
    assert s0.caption.endswith("A [3]; B [0, 1]; not recorded in this session: A [2]")
    s1 = figure_set(views["s1"], {"A": [4, 2]})[0]
    assert s1.caption.endswith("neurons: A [4, 2]")
    axes = s1.figure.axes
    assert [ax.get_title() for ax in axes] == ["A neuron 4", "A neuron 2"]
    view = views["s1"]
    _, rows = view.groups[0]
    np.testing.assert_allclose(axes[1].lines[0].get_ydata(),  # column 0 of s1's view
                               view.data["A"][rows, :, 0].mean(0) * view.scale)


def test_infer_names_each_trials_session(trained, tmp_path):
    from mrlfads.training.api.models import load

    trainer, _ = trained
    trainer.save_checkpoint(tmp_path / "c.pt")
    res = load(tmp_path / "c.pt").infer(trainer.dataset.uri, splits="valid")
    data = trainer.valid_data
    names = np.array(["s0", "s1", "s2"])
    assert list(res.coords["session"]) == list(names[data.session.numpy()])
    assert res.info["sessions"] == ["s0", "s1", "s2"]
    assert np.isfinite(res.metrics["valid/session/s2/bps/B"])
    # 14 training trials (8, 4 and 2 a session): too few for any smoothing baseline
    assert not any("smoothing" in k for k in res.metrics)


@pytest.mark.slow  # ~40 s: a smoke PBT sweep on the session Ray
@pytest.mark.timeout(600)
def test_a_sweep_trains_a_stitched_model(ray_session, sds, tmp_path):
    from mrlfads.training import sweep
    from mrlfads.training.checkpoint import load_model

    plan = sweep.plan_sweep(sds.uri, smoke_test=True, name="sessions", storage=str(tmp_path))
    summary = sweep.run_sweep(plan, verbose=0)
    assert np.isfinite(summary.best_metrics["valid/session/s2/bps/B"])
    model, run, _ = load_model(summary.checkpoint)
    assert model.cfg.n_sessions == 3
    assert [s["name"] for s in run["model"]["sessions"]] == ["s0", "s1", "s2"]
