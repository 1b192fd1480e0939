"""The numbers the fit figures show, against hand computations (no model, no files)."""
from __future__ import annotations

import numpy as np
import pytest

from mrlfads import metrics as M
from mrlfads.tracking.figures import effectome_figure, lineage_figure
from mrlfads.tracking.fit_figures import heatmap_order
from mrlfads.tracking.lineage import best_path
from mrlfads.training import figure_data as fd
from mrlfads.training.report_figures import FitView, aligned_series, choose_neurons, figure_set


def test_condition_means_are_the_trial_means_of_each_condition():
    x = np.array([[[1.0], [2.0]], [[10.0], [20.0]], [[3.0], [4.0]], [[30.0], [40.0]]])  # (4, 2, 1)
    groups = fd.condition_groups(["a", "b", "a", "b"], 4)
    assert [c for c, _ in groups] == ["a", "b"]
    means = fd.condition_means(x, groups)
    assert means.shape == (2, 2, 1)
    np.testing.assert_array_equal(means[0, :, 0], [2.0, 3.0])  # (1+3)/2, (2+4)/2
    np.testing.assert_array_equal(means[1, :, 0], [20.0, 30.0])


def test_condition_groups_without_labels_and_with_too_many():
    (label, idx), = fd.condition_groups(["", "", ""], 3)
    assert label == fd.ALL_TRIALS and idx.tolist() == [0, 1, 2]
    assert fd.condition_groups(None, 2)[0][1].tolist() == [0, 1]
    # 3 conditions, room for 2: the two with most trials, in label order
    kept = fd.condition_groups(["z", "z", "z", "a", "m", "m"], 6, max_conditions=2)
    assert [(c, i.tolist()) for c, i in kept] == [("m", [4, 5]), ("z", [0, 1, 2])]


def test_most_active_and_heatmap_order():
    x = np.zeros((2, 3, 4))
    x[..., 1], x[..., 3], x[..., 2] = 5.0, 2.0, 2.0
    assert fd.most_active(x, 3).tolist() == [1, 2, 3]  # tie 2/3: lower index first
    m = np.zeros((2, 3, 3))  # (C, T, N): peaks at C0 bin 2, C1 bin 0, C0 bin 0
    m[0, 2, 0], m[1, 0, 1], m[0, 0, 2] = 1.0, 1.0, 1.0
    assert heatmap_order(m).tolist() == [2, 0, 1]  # peak times 2, 3, 0 laid end to end


def test_pca_finds_the_direction_the_data_varies_along():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(50, 10, 1))
    x = s * np.array([3.0, 4.0, 0.0]) / 5.0 + np.array([1.0, 2.0, 3.0])  # along (0.6, 0.8, 0)
    comps, mean, explained = fd.pca(x, 2)
    np.testing.assert_allclose(comps[:, 0], [0.6, 0.8, 0.0], atol=1e-10)  # sign fixed positive
    np.testing.assert_allclose(mean, x.reshape(-1, 3).mean(0))
    assert explained[0] == pytest.approx(1.0) and explained[1] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(fd.project(x, comps, mean)[..., 0],
                               (s[..., 0] - s.mean()), atol=1e-10)


def test_aligned_messages_are_the_least_squares_map_applied():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(8, 6, 2))  # inferred (trials, T, d_inf)
    A, b = np.array([[1.0, -2.0, 0.5], [0.3, 1.0, 2.0]]), np.array([0.1, -1.0, 4.0])
    Y = X @ A + b  # the truth, an exact linear image of the inferred message
    aligned, W = fd.align_to_truth(X, Y)
    np.testing.assert_allclose(aligned, Y, atol=1e-10)
    np.testing.assert_allclose(W, np.vstack([A, b]), atol=1e-10)
    # with noise: the residual is orthogonal to every inferred dim and to the intercept
    Yn = Y + rng.normal(size=Y.shape)
    aligned, W = fd.align_to_truth(X, Yn)
    res = (Yn - aligned).reshape(-1, 3)
    design = np.hstack([X.reshape(-1, 2), np.ones((48, 1))])
    np.testing.assert_allclose(design.T @ res, 0.0, atol=1e-9)
    np.testing.assert_allclose(aligned, X @ W[:-1] + W[-1])


def test_message_r2_is_unchanged_by_the_shared_regression():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(10, 5, 2))
    Y = X @ np.array([[2.0], [-1.0]]) + 0.5
    assert M.message_r2({"a->b": X}, {"a->b": Y})["a->b"] == pytest.approx(1.0)


def test_aligned_series_shows_the_truth_exactly_when_it_is_a_linear_image():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(8, 4, 2))
    Y = X @ np.array([[1.0], [3.0]]) - 2.0
    groups = fd.condition_groups(["a", "b"] * 4, 8)
    shown, true, titles, scores = aligned_series({"A->B": X, "B->A": X}, {"A->B": Y}, groups)
    np.testing.assert_allclose(shown["A->B"], true["A->B"], atol=1e-10)
    np.testing.assert_allclose(true["A->B"], fd.condition_means(Y, groups))
    assert "CV R\u00b2 1.00" in titles["A->B"] and scores == {"A->B": pytest.approx(1.0)}
    assert true["B->A"] is None and "arbitrary basis" in titles["B->A"]
    np.testing.assert_allclose(shown["B->A"], fd.condition_means(X, groups))  # raw, unaligned


def test_effectome_colour_scale_starts_at_zero_even_when_every_entry_is_large():
    E = np.array([[np.nan, 7.0], [5.0, np.nan]])
    inputs = {"readout change when silenced": [0.5, 2.0], "RMS of the inputs": [1.0, 3.0]}
    fig = effectome_figure(E, ["A", "B"], truth=np.array([[0, 3], [2, 0]]), inputs=inputs)
    heat = [ax for ax in fig.axes if ax.images]
    assert len(heat) == 2  # inferred, truth
    for ax, top in zip(heat, (7.0, 3.0)):
        assert ax.images[0].norm.vmin == 0.0 and ax.images[0].norm.vmax == top
    bars = next(ax for ax in fig.axes if ax.patches)
    assert bars.get_ylim()[0] == 0.0
    assert sorted(p.get_height() for p in bars.patches) == [0.5, 1.0, 2.0, 3.0]


def test_best_path_walks_back_through_donors():
    events = {"c": [{"epoch": 4, "donor_trial": "b", "donor_epoch": 4}],
              "b": [{"epoch": 2, "donor_trial": "a", "donor_epoch": 2},
                    {"epoch": 6, "donor_trial": "a", "donor_epoch": 6}]}  # after c copied b
    assert best_path(events, "c", 8) == [("c", 4.0, 8.0), ("b", 2.0, 4.0), ("a", 0.0, 2.0)]
    assert best_path({}, "a", 5) == [("a", 0.0, 5.0)]
    fig = lineage_figure({"a": 8, "b": 8, "c": 8}, events, best="c")
    ax = fig.axes[0]
    red = sorted((tuple(line.get_xdata()), line.get_ydata()[0]) for line in ax.lines
                 if line.get_color() == "C3")
    assert red == [((0.0, 2.0), 0), ((2.0, 4.0), 1), ((4.0, 8.0), 2)]  # rows a, b, c
    assert len([c for c in ax.get_children() if type(c).__name__ == "Annotation"]) == 3


def _view(n_trials=6, T=3):
    """A hand-made FitView: region A with 3 neurons, 2 conditions, no messages."""
    rng = np.random.default_rng(4)
    data = rng.poisson(2.0, size=(n_trials, T, 3)).astype(float)
    rates = data + 0.5
    labels = ["x", "y"] * (n_trials // 2)
    return FitView(regions=["A"], t=np.arange(T) * 0.01, time_label="s", unit="spikes/s",
                   scale=100.0, groups=fd.condition_groups(labels, n_trials),
                   data={"A": data}, rates={"A": rates},
                   factors={"A": rng.normal(size=(n_trials, T, 2))})


def test_psth_figure_draws_the_hand_computed_condition_averages():
    view = _view()
    figs = {f.name: f for f in figure_set(view, n_neurons=2)}
    assert list(figs) == ["psth", "rates_heatmap", "latents", "rates_vs_data"]
    chosen = fd.most_active(view.data["A"], 2)
    ax = figs["psth"].figure.axes[0]  # region A, first chosen neuron
    n = chosen[0]
    x_trials = [0, 2, 4]  # condition "x"
    want_data = view.data["A"][x_trials, :, n].mean(0) * 100.0
    want_model = view.rates["A"][x_trials, :, n].mean(0) * 100.0
    np.testing.assert_allclose(ax.lines[0].get_ydata(), want_data)
    np.testing.assert_allclose(ax.lines[1].get_ydata(), want_model)
    assert f"neuron {n}" in ax.get_title()


def test_chosen_neurons_are_checked():
    view = _view()
    assert choose_neurons(view, {"A": [2, 0]}) == {"A": [2, 0]}
    with pytest.raises(ValueError, match="neurons 0..2"):
        choose_neurons(view, {"A": [3]})
    with pytest.raises(ValueError, match="not a region"):
        choose_neurons(view, {"V1": [0]})


def test_messages_figure_keeps_the_pathways_with_truth_then_the_strongest():
    from mrlfads.training.report_figures import pathways_shown

    view = _view()
    view.regions = ["A", "B", "C"]
    pairs = [f"{s}->{d}" for s in "ABC" for d in "ABC" if s != d]
    view.messages = {p: np.zeros((6, 3, 1)) for p in pairs}
    view.true_messages = {"C->A": np.zeros((6, 3, 1))}
    view.effectome = np.array([[np.nan, 5.0, 0.0], [1.0, np.nan, 2.0], [3.0, 4.0, np.nan]])
    # E[dst, src]: B->A 5, B->C 4, A->C 3, C->B 2, A->B 1; C->A (0) has a truth
    assert pathways_shown(view, limit=4) == ["C->A", "B->A", "B->C", "A->C"]
