"""Figures of one fitted model on its validation trials: condition-averaged PSTHs, rate
heatmaps, latent trajectories, messages and inferred inputs over time.

Each function takes plain arrays already reduced to what is drawn (condition averages,
projections, aligned messages: training/figure_data.py computes them) and returns a
``matplotlib.figure.Figure`` (Agg canvas, no pyplot state: safe in Ray workers and threads);
``mrlfads.tracking.figures.save`` writes it as PNG.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D


def _colour(i: int) -> str:
    return f"C{i % 10}"


def _condition_legend(fig: Figure, labels: Sequence[str], extra: Sequence[Line2D] = ()) -> None:
    handles = [Line2D([], [], color=_colour(i), lw=2, label=c) for i, c in enumerate(labels)]
    handles += list(extra)
    fig.legend(handles=handles, loc="upper right", fontsize=7, ncol=1, frameon=False)


def psth_figure(data: Mapping[str, np.ndarray], model: Mapping[str, np.ndarray],
                neurons: Mapping[str, Sequence[int]], labels: Sequence[str], t: np.ndarray,
                unit: str, time_label: str = "time (s)") -> Figure:
    """One row per region, one panel per chosen neuron: the data's condition-averaged
    activity (thin) against the model's (thick), one colour per condition.

    ``data[r]`` and ``model[r]`` are (C, T, n) for the ``n`` neurons ``neurons[r]`` (their
    column in the dataset: held-in first, then held-out)."""
    regions = list(data)
    cols = max(1, max((len(neurons[r]) for r in regions), default=1))
    fig = Figure(figsize=(2.8 * cols + 1.2, 2.2 * max(1, len(regions)) + 0.6))
    axes = fig.subplots(max(1, len(regions)), cols, squeeze=False)
    for i, region in enumerate(regions):
        for j in range(cols):
            ax = axes[i, j]
            if j >= len(neurons[region]):
                ax.axis("off")
                continue
            for c in range(len(labels)):
                ax.plot(t, data[region][c, :, j], color=_colour(c), lw=0.8, alpha=0.6)
                ax.plot(t, model[region][c, :, j], color=_colour(c), lw=2.0)
            ax.set_title(f"{region} neuron {neurons[region][j]}", fontsize=9)
            ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
        axes[i, 0].set_ylabel(unit, fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel(time_label, fontsize=8)
    _condition_legend(fig, labels, [Line2D([], [], color="0.3", lw=0.8, label="data"),
                                    Line2D([], [], color="0.3", lw=2.0, label="model")])
    fig.suptitle("condition-averaged activity: data (thin) against model (thick)")
    fig.tight_layout(rect=(0, 0, 0.88, 0.97))
    return fig


def heatmap_order(model: np.ndarray) -> np.ndarray:
    """Neurons ordered by the time of their peak in ``model`` (C, T, N), conditions laid end
    to end (ties: lower index first)."""
    flat = np.concatenate(list(model), axis=0)  # (C*T, N)
    return np.argsort(flat.argmax(axis=0), kind="stable")


def rate_heatmap_figure(data: Mapping[str, np.ndarray], model: Mapping[str, np.ndarray],
                        labels: Sequence[str], unit: str) -> Figure:
    """Per region: every neuron's condition-averaged activity, data beside model, on one
    colour scale per region (from 0 for rates); conditions laid end to end in time,
    neurons ordered by the time of the model's peak (``heatmap_order``)."""
    regions = list(data)
    fig = Figure(figsize=(10, 2.4 * max(1, len(regions)) + 0.8), layout="constrained")
    axes = fig.subplots(max(1, len(regions)), 2, squeeze=False)
    for i, region in enumerate(regions):
        order = heatmap_order(model[region])
        d = np.concatenate(list(data[region]), axis=0)[:, order].T  # (N, C*T)
        m = np.concatenate(list(model[region]), axis=0)[:, order].T
        vmin = min(0.0, float(np.nanmin(d)), float(np.nanmin(m)))
        vmax = max(float(np.nanmax(d)), float(np.nanmax(m)), vmin + 1e-12)
        T = data[region].shape[1]
        for ax, arr, what in ((axes[i, 0], d, "data"), (axes[i, 1], m, "model")):
            im = ax.imshow(arr, aspect="auto", interpolation="nearest", cmap="magma",
                           vmin=vmin, vmax=vmax)
            for c in range(1, len(labels)):
                ax.axvline(c * T - 0.5, color="w", lw=1)
            ax.set_xticks([c * T + (T - 1) / 2 for c in range(len(labels))],
                          labels=list(labels), fontsize=7)
            if len(order) <= 40:
                ax.set_yticks(range(len(order)), labels=[str(int(n)) for n in order], fontsize=6)
            else:
                ax.set_yticks([])
            ax.set_title(f"{region}: {what}", fontsize=9)
            ax.set_ylabel("neuron (by model peak time)", fontsize=8)
        fig.colorbar(im, ax=list(axes[i]), shrink=0.9, label=unit)
    fig.suptitle("condition-averaged activity of every neuron (conditions end to end)")
    return fig


def latent_figure(projections: Mapping[str, np.ndarray], labels: Sequence[str],
                  explained: Mapping[str, np.ndarray]) -> Figure:
    """One panel per region: condition-averaged factors on their first two principal
    components (``projections[r]`` (C, T, k)), a dot at the first bin, one colour per
    condition; with one component, PC1 over bins."""
    regions = list(projections)
    cols = min(3, max(1, len(regions)))
    rows = math.ceil(max(1, len(regions)) / cols)
    fig = Figure(figsize=(3.8 * cols + 1.2, 3.4 * rows + 0.4))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, region in zip(axes, regions):
        p, ev = projections[region], explained[region]
        for c in range(len(labels)):
            if p.shape[-1] >= 2:
                ax.plot(p[c, :, 0], p[c, :, 1], color=_colour(c), lw=1.5)
                ax.plot(p[c, 0, 0], p[c, 0, 1], "o", color=_colour(c), ms=5)
            else:
                ax.plot(p[c, :, 0], color=_colour(c), lw=1.5)
        ax.set_xlabel(f"PC1 ({100 * ev[0]:.0f}% var)" if p.shape[-1] >= 2 else "bin", fontsize=8)
        ax.set_ylabel(f"PC2 ({100 * ev[1]:.0f}% var)" if p.shape[-1] >= 2
                      else f"PC1 ({100 * ev[0]:.0f}% var)", fontsize=8)
        ax.set_title(f"{region} factors", fontsize=10)
    for ax in axes[len(regions):]:
        ax.axis("off")
    _condition_legend(fig, labels)
    fig.suptitle("latent trajectories: PCA of factors, condition averages (dot: first bin)")
    fig.tight_layout(rect=(0, 0, 0.88, 0.95))
    return fig


def time_course_figure(inferred: Mapping[str, np.ndarray],
                       truth: Mapping[str, np.ndarray | None], labels: Sequence[str],
                       t: np.ndarray, titles: Mapping[str, str], what: str,
                       time_label: str = "time (s)", max_dims: int = 3) -> Figure:
    """One row per pathway (or region), one panel per dimension: condition averages of the
    inferred signal (solid) and, where ``truth[name]`` is given, of the truth (dashed).

    With a truth, ``inferred[name]`` must already be in its coordinates (the fitted linear
    map, training/figure_data.py ``align_to_truth``): raw inferred dimensions are an
    arbitrary basis and must not be laid over the true ones."""
    names = list(inferred)
    cols = max(1, min(max_dims, max((inferred[n].shape[-1] for n in names), default=1)))
    fig = Figure(figsize=(3.2 * cols + 1.2, 2.3 * max(1, len(names)) + 0.6))
    axes = fig.subplots(max(1, len(names)), cols, squeeze=False)
    for i, name in enumerate(names):
        x, y = inferred[name], truth.get(name)
        for j in range(cols):
            ax = axes[i, j]
            if j >= x.shape[-1]:
                ax.axis("off")
                continue
            for c in range(len(labels)):
                ax.plot(t, x[c, :, j], color=_colour(c), lw=1.6)
                if y is not None:
                    ax.plot(t, y[c, :, j], color=_colour(c), lw=1.2, ls="--")
            ax.axhline(0.0, color="0.8", lw=0.6, zorder=0)
            ax.set_title(f"{titles.get(name, name)}, dim {j}", fontsize=8)
        axes[i, 0].set_ylabel(name, fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel(time_label, fontsize=8)
    extra = [Line2D([], [], color="0.3", lw=1.6, label="inferred")]
    if any(v is not None for v in truth.values()):
        extra.append(Line2D([], [], color="0.3", lw=1.2, ls="--", label="truth"))
    _condition_legend(fig, labels, extra)
    fig.suptitle(f"{what} over time by condition")
    fig.tight_layout(rect=(0, 0, 0.86, 0.96))
    return fig


def training_curves_figure(rows: Sequence[Mapping[str, float]],
                           keys: Sequence[str]) -> Figure:
    """Per-epoch curves of ``keys`` (one panel each) from a run's metrics.jsonl rows."""
    keys = [k for k in keys if any(k in r for r in rows)] or list(keys)[:1]
    fig = Figure(figsize=(4 * len(keys), 3))
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys):
        pts = [(r["epoch"], r[key]) for r in rows
               if "epoch" in r and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if pts:
            ax.plot(*zip(*pts), lw=1.4)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
    fig.tight_layout()
    return fig


def effects_figure(predicted: Mapping[str, np.ndarray], title: str) -> Figure:
    """Predicted perturbation effect per neuron (bars), one colour per region."""
    fig = Figure(figsize=(max(4.0, 0.25 * sum(len(v) for v in predicted.values()) + 2), 3.2))
    ax = fig.subplots()
    x = 0
    for i, (region, v) in enumerate(predicted.items()):
        v = np.asarray(v)
        ax.bar(np.arange(x, x + len(v)), v, color=_colour(i), label=region)
        x += len(v) + 1
    ax.set_ylim(bottom=0)
    ax.set_xlabel("neuron (by region)")
    ax.set_ylabel("predicted mean |rate change|")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
