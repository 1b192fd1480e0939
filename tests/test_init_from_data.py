"""The model's scales come from the data: readout biases, standardised encoder inputs and
message sources read against each neuron's baseline (docs/MODEL.md, "Initialisation from
the data"). Without them sparse spikes blew a 200-input message map up in one epoch."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrlfads.config import ModelConfig, RegionConfig
from mrlfads.data_loaders.writer import write_dataset
from mrlfads.model import MRLFADS
from mrlfads.training.config import RunConfig
from mrlfads.training.loop import Trainer


def _model(obs="poisson"):
    regions = (RegionConfig("A", 3, n_heldout=1), RegionConfig("B", 2))
    cfg = ModelConfig(regions=regions, obs_model=obs, ic_enc_seq_len=2, ic_enc_dim=3,
                      ci_enc_dim=3, con_dim=3, co_dim=2, ic_dim=2, com_dim=2)
    return MRLFADS(cfg)


def _stats():
    heldin = [(torch.tensor([0.5, 0.1, 0.02]), torch.tensor([0.6, 0.09, 0.0])),
              (torch.tensor([1.0, 2.0]), torch.tensor([4.0, 0.25]))]
    heldout = [(torch.tensor([0.3]), torch.tensor([0.2])), (torch.zeros(0), torch.zeros(0))]
    return heldin, heldout


@torch.no_grad()
def test_poisson_statistics_by_hand():
    model = _model()
    model.init_from_data(*_stats())
    np.testing.assert_allclose(model.ro_b[0, 0, :3], np.log([0.5, 0.1, 0.02]), rtol=1e-6)
    np.testing.assert_allclose(model.ro_b[1, 0, :2], np.log([1.0, 2.0]), rtol=1e-6)
    assert float(model.ro_b[1, 0, 2]) == 0.0  # padding stays zero
    np.testing.assert_allclose(model.ho_b[0, 0, :1], np.log([0.3]), rtol=1e-6)
    np.testing.assert_allclose(model.input_mean[0, :3], [0.5, 0.1, 0.02], rtol=1e-6)
    # scale: the std, floored at the Poisson scale sqrt(mean) (the third never varied)
    np.testing.assert_allclose(model.input_scale[0, :3],
                               [math.sqrt(0.6), math.sqrt(0.1), math.sqrt(0.02)], rtol=1e-6)
    np.testing.assert_allclose(model.input_scale[1, :2], [2.0, math.sqrt(2.0)], rtol=1e-6)
    torch.testing.assert_close(model.source_baseline[0, :3], model.ro_b[0, 0, :3])


@torch.no_grad()
def test_gaussian_statistics_by_hand():
    model = _model("gaussian")
    model.init_from_data(*_stats())
    Nm = model.sizes.Nm
    np.testing.assert_allclose(model.ro_b[1, 0, :2], [1.0, 2.0], rtol=1e-6)  # means
    np.testing.assert_allclose(model.ro_b[1, 0, Nm: Nm + 2], np.log([4.0, 0.25]), rtol=1e-6)
    np.testing.assert_allclose(model.input_scale[1, :2], [2.0, 0.5], rtol=1e-6)
    assert float(model.input_scale[0, 2]) > 0  # a constant channel gets a floor, not 0


def test_encoders_see_standardised_inputs_and_messages_centred_rates():
    model = _model().double()
    model.init_from_data(*_stats())
    x = torch.rand(4, 6, 3, dtype=torch.float64)
    mean, scale = model.input_mean[0, :3].double(), model.input_scale[0, :3].double()
    torch.testing.assert_close(model.read_in(0, x), model.readin[0]((x - mean) / scale))
    # messages at the start read log-rate - baseline = W f: the readout bias drops out
    xb = torch.rand(4, 6, 2, dtype=torch.float64)
    out = model.eval()([x, xb], sample=False)
    with torch.no_grad():
        model.ro_b[0, 0, :3] += 7.0
        model.source_baseline[0, :3] += 7.0
        again = model([x, xb], sample=False)
    torch.testing.assert_close(out.message_mean("A", "B"), again.message_mean("A", "B"))


def test_checkpoints_without_the_statistics_load_as_the_model_they_were():
    model = _model()
    state = {k: v for k, v in model.state_dict().items()
             if k not in ("input_mean", "input_scale", "source_baseline")}
    fresh = _model()
    fresh.init_from_data(*_stats())
    fresh.load_state_dict(state)  # strict: the missing statistics are filled in
    assert float(fresh.input_mean.abs().max()) == 0.0
    assert float(fresh.source_baseline.abs().max()) == 0.0
    assert torch.all(fresh.input_scale == 1.0)


@pytest.fixture
def sparse_wide(tmp_path):
    """Two regions of 200 neurons firing ~0.02 spikes per bin (2 Hz in 10 ms bins)."""
    rng = np.random.default_rng(0)
    n, T, N = 64, 20, 200
    latent = np.cumsum(rng.standard_normal((n, T, 2)) * 0.3, axis=1)  # (trials, T, 2)
    x = {}
    for name in ("A", "B"):
        load = rng.standard_normal((2, N))
        rate = 0.02 * np.exp(np.clip(latent @ load * 0.5, -3, 3))
        x[name] = rng.poisson(rate).astype(np.float32)
    split = np.where(np.arange(n) % 4 == 0, "valid", "train")
    write_dataset(tmp_path / "d", name="sparse", regions=[("A", 180, 20), ("B", 180, 20)],
                  obs_model="poisson", bin_width_s=0.01, ic_enc_seq_len=4, x=x, split=split)
    from mrlfads.data_loaders.reader import ArrowDataset

    return ArrowDataset.open(tmp_path / "d")


def test_sparse_spikes_on_wide_regions_keep_messages_in_range(sparse_wide):
    """One epoch at the default learning rate: uncentred log-rates (~ -4) into a 180-input
    message map sent message means to +-28 and message KL to ~1e6 in epoch 1."""
    cfg = RunConfig.for_dataset(sparse_wide.manifest, overrides={
        "train.epochs": 20, "model.ic_enc_dim": 8, "model.ci_enc_dim": 8, "model.con_dim": 8,
        "model.regions": [{"name": "A", "n_heldin": 180, "n_heldout": 20, "gen_dim": 16,
                           "fac_dim": 8}, {"name": "B", "n_heldin": 180, "n_heldout": 20,
                                           "gen_dim": 16, "fac_dim": 8}]})
    trainer = Trainer(cfg, sparse_wide)
    metrics = [trainer.run_epoch() for _ in range(2)][-1]
    valid = trainer.valid_data
    with torch.no_grad():
        out = trainer.model.eval()(valid.heldin, sample=False)
    assert float(out.msg_mean.abs().max()) < 5.0
    kl_com = sum(v for k, v in metrics.items() if k.startswith("valid/kl_com/"))
    assert math.isfinite(kl_com) and kl_com < 1e4
