"""Spikes at the rates recordings have: the default configuration trains on them.

Each case simulates a random multi-region network (the smoke-sized one: an RNN barely
trained, so its rates still move with its task inputs) as Poisson spikes at a mean rate,
bin width and region size from the ranges recordings span, then trains the default
configuration for 20 epochs (ramps stretched to fit). Before the scales were fitted to the
data (docs/MODEL.md, "Initialisation from the data") such runs ended worse than the
mean-rate null or non-finite. Together the cases cover 1, 5 and 20 Hz, 5, 10 and 20 ms bins
and 10 to 300 units per region. The network seeds give held-out neurons that the true rates
predict at 0.07-0.21 bits per spike: on data whose held-out neurons carry little signal
(true-rate co-bps ~0.05, regions of 10-20 units at 5 ms) 20 epochs end at the null
(docs/RESULTS.md, "Spikes").
"""
from __future__ import annotations

import dataclasses
import math

import pytest

from mrlfads.data_loaders.reader import ArrowDataset
from mrlfads.data_loaders.simulate import simulate
from mrlfads.training.config import RunConfig
from mrlfads.training.loop import Trainer

STEPS = 25  # network steps of 20 ms: half-second trials
CASES = {  # name: (mean rate Hz, bin ms, units of the largest region, trials, network seed)
    "1Hz-20ms-150to300units": (1.0, 20, 300, 200, 1),
    "5Hz-5ms-50to100units": (5.0, 5, 100, 300, 1),
    "20Hz-10ms-10to20units": (20.0, 10, 20, 600, 7),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_default_configuration_trains_on_spikes(case, tmp_path):
    rate, bin_ms, units, trials, seed = CASES[case]
    simulate("random", out=tmp_path / "d", smoke_test=True, seed=seed, obs="poisson",
             rate_hz=rate, bin_ms=bin_ms, n_units=units, trials=trials,
             n_bins=round(STEPS * 20 / bin_ms))
    ds = ArrowDataset.open(tmp_path / "d")
    sizes = [r.n_heldin + r.n_heldout for r in ds.manifest.regions]
    assert max(sizes) == units and min(sizes) == int(case.split("to")[0].split("-")[-1])
    cfg = RunConfig.for_dataset(ds.manifest, overrides={"train.epochs": 20})
    trainer = Trainer(cfg, ds)
    history = [trainer.run_epoch() for _ in range(20)]
    for m in history:  # every loss term and score, every epoch (effectome scores are NaN
        # before the ramps end, by design; a separation can be inf)
        bad = sorted(k for k, v in m.items() if not math.isfinite(v)
                     and k.split("/")[0] in ("train", "valid") and "effectome" not in k)
        assert not bad, (int(m["epoch"]), bad)
    last = history[-1]
    assert last["valid/co_bps"] > 0.0, [round(h["valid/co_bps"], 4) for h in history]
    assert last["ramps_done"] == 1.0  # the stretched ramps ended inside the run


def test_spike_counts_start_from_the_spike_defaults_and_user_values_win(tmp_path):
    """docs/MODEL.md, "Defaults for spikes": a Poisson dataset gets POISSON_DEFAULTS, a
    Gaussian one the dataclass defaults; a config file or --set wins over both."""
    from mrlfads.data_loaders.testing import make_tiny_dataset
    from mrlfads.training.config import POISSON_DEFAULTS, LossConfig, TrainConfig

    spikes = make_tiny_dataset(tmp_path / "spikes", obs_model="poisson").manifest
    gauss = make_tiny_dataset(tmp_path / "gauss", obs_model="gaussian").manifest
    cfg = RunConfig.for_dataset(spikes)
    plain = lambda v: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v  # noqa: E731
    got = {"model": {"dropout": cfg.model.dropout},
           "loss": {k: plain(getattr(cfg.loss, k)) for k in POISSON_DEFAULTS["loss"]},
           "train": {k: getattr(cfg.train, k) for k in POISSON_DEFAULTS["train"]}}
    assert got == POISSON_DEFAULTS
    assert (cfg.loss.kl_ic_scale, cfg.loss.kl_com_ratio, cfg.train.lr) == (1.2e-3, 44.0, 5e-4)
    g = RunConfig.for_dataset(gauss)
    assert (g.loss.kl_ic_scale, g.loss.kl_co_scale, g.loss.kl_com_ratio, g.loss.l2_scale) == (
        LossConfig.kl_ic_scale, LossConfig.kl_co_scale, LossConfig.kl_com_ratio,
        LossConfig.l2_scale)
    assert (g.train.lr, g.train.cd_rate) == (TrainConfig.lr, TrainConfig.cd_rate) == (4e-3, 0.0)
    # the ramps: every one full by epoch 72 on spikes, 250 (the paper's) on Gaussian data
    assert (cfg.loss.ramps_end, g.loss.ramps_end) == (72, 250)
    assert g.loss.ramps == LossConfig().ramps
    mine = RunConfig.for_dataset(spikes, user={"loss": {"kl_ic_scale": 1.0}},
                                 overrides={"train.lr": 1e-3})
    assert (mine.loss.kl_ic_scale, mine.train.lr, mine.loss.kl_co_scale) == (1.0, 1e-3, 1.5e-3)
