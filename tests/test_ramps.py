"""Ramps rho(e) = clip((e + 1 - start) / (length + 1), 0, 1), checked at hand-picked epochs."""
from __future__ import annotations

import pytest

from mrlfads.config import LossConfig, RampConfig
from mrlfads.ramps import loss_weights, ramp


@pytest.mark.parametrize("epoch, expected", [
    (0, 0.0), (18, 0.0), (19, 0.0), (20, 1 / 201), (119, 100 / 201), (219, 200 / 201),
    (220, 1.0), (10_000, 1.0)])
def test_ic_ramp_values(epoch, expected):
    assert ramp(epoch, 20, 200) == pytest.approx(expected)


def test_zero_length_is_a_step_at_start():
    assert ramp(4, 5, 0) == 0.0 and ramp(5, 5, 0) == 1.0


def test_spec_default_ramps_and_weights():
    cfg = LossConfig()
    assert (cfg.ic_ramp, cfg.co_ramp) == (RampConfig(20, 200), RampConfig(20, 200))
    assert cfg.com_ramp == RampConfig(150, 100) and cfg.l2_ramp == RampConfig(100, 80)
    assert cfg.com_ramp(150) == pytest.approx(1 / 101) and cfg.com_ramp(249) == pytest.approx(100 / 101)
    assert cfg.l2_ramp(179) == pytest.approx(80 / 81) and cfg.l2_ramp(180) == 1.0
    w = loss_weights(cfg, 400)
    assert w == pytest.approx({"kl_ic": 1.0, "kl_co": 1.0, "kl_com": 0.1, "l2": 1e4, "sparsity": 0.0})
    w = loss_weights(LossConfig(kl_co_scale=2.0, kl_com_ratio=4.0), 199)
    assert w["kl_com"] == pytest.approx(0.5 * 50 / 101)
    assert w["kl_co"] == pytest.approx(2.0 * 180 / 201)
    assert loss_weights(cfg, 0) == {"kl_ic": 0.0, "kl_co": 0.0, "kl_com": 0.0, "l2": 0.0,
                                    "sparsity": 0.0}
