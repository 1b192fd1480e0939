"""Figures: effectome parsed from metric keys, and each PNG is a real image of sane size."""
from __future__ import annotations

import numpy as np
from matplotlib.image import imread

from mrlfads.tracking.figures import (
    effectome_from_metrics,
    effectome_heatmap,
    hparam_trajectories,
    lineage_graph,
    rates_vs_data,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_shape(path):
    assert path.read_bytes()[:8] == PNG_MAGIC
    return imread(path).shape


def test_effectome_from_metric_keys_with_underscored_region_names():
    regions = ["A_1", "B", "to"]
    metrics = {"effectome/A_1_to_B": 0.5, "effectome/B_to_A_1": 0.25, "effectome/to_to_B": 2.0,
               "valid/loss": 9.0}
    E = effectome_from_metrics(metrics, regions)
    # E[r, s] = message s -> r
    assert E[1, 0] == 0.5 and E[0, 1] == 0.25 and E[1, 2] == 2.0
    assert np.isnan(E[0, 0]) and np.isnan(E[2, 0])
    assert np.isnan(E).sum() == 6


def test_effectome_with_truth_is_twice_as_wide(tmp_path):
    E = np.array([[0, 1.0], [2.0, 0]])
    one = _png_shape(effectome_heatmap(E, ["A", "B"], tmp_path / "e.png"))
    two = _png_shape(effectome_heatmap(E, ["A", "B"], tmp_path / "e2.png", truth=np.array([[0, 3], [0, 0]])))
    assert one[0] == two[0] == 400 and one[1] == 450 and two[1] == 900


def test_rates_hparam_and_lineage_figures(tmp_path):
    rng = np.random.default_rng(0)
    rates = {"A": rng.random((12, 3)), "B": rng.random((12, 5))}
    p = rates_vs_data(rates, {k: v + 0.1 for k, v in rates.items()}, tmp_path / "r.png", n_neurons=4)
    assert _png_shape(p)[:2] == (2 * 220, 4 * 300)
    hist = {"t0": {"train.lr": [(0, 1e-3), (1, 1e-3), (1, 2e-3), (2, 2e-3)], "model.dropout": [(0, 0.1)]},
            "t1": {"train.lr": [(0, 5e-3), (1, 5e-3)]}}
    p = hparam_trajectories(hist, tmp_path / "h.png", exploits={"t0": [1]})
    assert _png_shape(p)[:2] == (2 * 260, 600)
    events = {"t1": [{"epoch": 1, "donor_trial": "t0", "donor_epoch": 1}]}
    p = lineage_graph({"t0": 2, "t1": 2}, events, tmp_path / "l.png", best="t1")
    assert _png_shape(p)[:2] == (int(100 * (0.45 * 2 + 1.6)), 800)
