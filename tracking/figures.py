"""PNG figures for the things a person would rather look at than read as numbers.

Built with ``matplotlib.figure.Figure`` (the Agg canvas, no pyplot global state), so they
are safe in Ray workers and threads. Each function writes one PNG and returns its path.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

DPI = 100


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=DPI, format="png")
    return p


# The effectome figures and reports show by default: the cut effectome (a pathway's effect
# on its target; docs/MODEL.md, "Identifiable effectome"), else the message RMS.
EFFECTOME_PREFIXES = {"effectome_cut/": "effectome (cut: target readout change)",
                      "effectome/": "effectome (message RMS)"}


def effectome_from_metrics(metrics: Mapping[str, float], regions: Sequence[str],
                           prefix: str = "effectome/") -> np.ndarray:
    """E[r, s] from the ``<prefix><s>_to_<r>`` metric keys (NaN where absent or r == s).

    Looked up pair by pair, so region names with underscores stay unambiguous.
    """
    R = len(regions)
    E = np.full((R, R), np.nan)
    for r, dst in enumerate(regions):
        for s, src in enumerate(regions):
            key = f"{prefix}{src}_to_{dst}"
            if s != r and key in metrics:
                E[r, s] = float(metrics[key])
    return E


def default_effectome(metrics: Mapping[str, float],
                      regions: Sequence[str]) -> tuple[np.ndarray, str]:
    """The effectome a person should look at, and its title: the first of
    EFFECTOME_PREFIXES that the metrics hold."""
    for prefix, title in EFFECTOME_PREFIXES.items():
        E = effectome_from_metrics(metrics, regions, prefix)
        if np.isfinite(E).any():
            return E, title
    return E, title


def _heat(ax, M: np.ndarray, regions: Sequence[str], title: str) -> None:
    shown = np.where(np.eye(len(regions), dtype=bool), np.nan, M)
    im = ax.imshow(shown, cmap="viridis", vmin=0.0)  # magnitudes: the scale starts at 0
    ax.set_xticks(range(len(regions)), labels=list(regions), rotation=45, ha="right")
    ax.set_yticks(range(len(regions)), labels=list(regions))
    ax.set_xlabel("source region s")
    ax.set_ylabel("target region r")
    ax.set_title(title)
    for (r, s), v in np.ndenumerate(shown):
        if np.isfinite(v):
            ax.text(s, r, f"{v:.2g}", ha="center", va="center", color="w", fontsize=8)
    ax.figure.colorbar(im, ax=ax, shrink=0.8)


def effectome_heatmap(effectome: np.ndarray, regions: Sequence[str], path: str | os.PathLike,
                      truth: np.ndarray | None = None, title: str = "inferred effectome") -> Path:
    """Heatmap of E[r, s] (pathway s -> r); the true communication matrix beside it."""
    E = np.asarray(effectome, dtype=float)
    R = len(regions)
    assert E.shape == (R, R), f"effectome shape {E.shape} != ({R}, {R})"
    n = 1 if truth is None else 2
    fig = Figure(figsize=(4.5 * n, 4))
    axes = fig.subplots(1, n, squeeze=False)[0]
    _heat(axes[0], E, regions, title)
    if truth is not None:
        _heat(axes[1], np.asarray(truth, dtype=float), regions, "true communication (msg dim)")
    fig.tight_layout()
    return _save(fig, path)


def rates_vs_data(rates: Mapping[str, np.ndarray], data: Mapping[str, np.ndarray],
                  path: str | os.PathLike, n_neurons: int = 4, bin_width_s: float | None = None,
                  title: str = "example trial") -> Path:
    """One row per region, a few neurons each: observed data (grey) vs inferred rates."""
    regions = list(rates)
    fig = Figure(figsize=(3 * n_neurons, 2.2 * len(regions)))
    axes = fig.subplots(len(regions), n_neurons, squeeze=False)
    for i, region in enumerate(regions):
        pred, obs = np.asarray(rates[region]), np.asarray(data[region])  # (T, N)
        t = np.arange(pred.shape[0]) * (bin_width_s or 1.0)
        for j in range(n_neurons):
            ax = axes[i, j]
            if j >= pred.shape[1]:
                ax.axis("off")
                continue
            ax.plot(t[: obs.shape[0]], obs[:, j], color="0.6", lw=1, label="data")
            ax.plot(t, pred[:, j], color="C0", lw=1.5, label="inferred")
            ax.set_title(f"{region} neuron {j}", fontsize=9)
        axes[i, 0].set_ylabel(region)
    axes[0, 0].legend(fontsize=7)
    axes[-1, 0].set_xlabel("time (s)" if bin_width_s else "bin")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def messages_over_time(messages: Mapping[str, np.ndarray], path: str | os.PathLike,
                       truth: Mapping[str, np.ndarray] | None = None, max_dims: int = 3) -> Path:
    """One panel per pathway ``src->dst``: the first message dims over time (truth dashed)."""
    pathways = list(messages)
    cols = min(3, max(1, len(pathways)))
    rows = math.ceil(len(pathways) / cols)
    fig = Figure(figsize=(4 * cols, 2.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, pw in zip(axes, pathways):
        m = np.asarray(messages[pw])  # (T, com_dim)
        for d in range(min(max_dims, m.shape[1])):
            ax.plot(m[:, d], color=f"C{d}", lw=1.2, label=f"dim {d}")
        if truth is not None and pw in truth:
            tm = np.asarray(truth[pw])
            for d in range(min(max_dims, tm.shape[1])):
                ax.plot(tm[:, d], color=f"C{d}", lw=1, ls="--")
        ax.set_title(pw, fontsize=10)
        ax.set_xlabel("bin")
    for ax in axes[len(pathways):]:
        ax.axis("off")
    if pathways:
        axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def hparam_trajectories(history: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
                        path: str | os.PathLike,
                        exploits: Mapping[str, Sequence[int]] | None = None,
                        log_scale: bool = True) -> Path:
    """PBT: each searched hyperparameter over epochs, one line per trial (exploits marked).

    ``history[trial][hp] = [(step, value), ...]`` (steps may repeat after a restore; drawn
    in logging order). ``exploits[trial]`` lists the epochs at which that trial exploited.
    """
    hps = sorted({hp for per in history.values() for hp in per})
    fig = Figure(figsize=(6, 2.6 * max(1, len(hps))))
    axes = fig.subplots(max(1, len(hps)), 1, squeeze=False)[:, 0]
    for ax, hp in zip(axes, hps):
        positive = True
        for i, (trial, per) in enumerate(sorted(history.items())):
            pts = list(per.get(hp, []))
            if not pts:
                continue
            steps, values = zip(*pts)
            positive &= min(values) > 0
            ax.plot(steps, values, color=f"C{i % 10}", lw=1.2, label=trial, drawstyle="steps-post")
            for e in (exploits or {}).get(trial, []):
                vals = [v for s, v in pts if s == e] or [values[-1]]
                ax.plot([e], [vals[-1]], marker="o", color=f"C{i % 10}", ms=5)
        if log_scale and positive:
            ax.set_yscale("log")
        ax.set_ylabel(hp)
    axes[-1].set_xlabel("epoch")
    if history:
        axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle("PBT hyperparameters over the population (dots: exploits)")
    fig.tight_layout()
    return _save(fig, path)


def perturbation_scatter(predicted: Mapping[str, np.ndarray], measured: Mapping[str, np.ndarray],
                         path: str | os.PathLike, title: str = "perturbation effect per neuron",
                         rho: Mapping[str, float] | None = None) -> Path:
    """Predicted against measured effect, one dot per neuron, one colour per region.

    Axes start at 0 (effects are magnitudes); ``rho`` (per region, and "all") goes into the
    legend and title, since the two sides are on different scales and only ranks compare."""
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    for i, region in enumerate(predicted):
        p, m = np.asarray(predicted[region]), np.asarray(measured[region])
        label = region if rho is None or region not in rho else f"{region} (rho {rho[region]:.2f})"
        ax.scatter(p, m, s=14, color=f"C{i}", alpha=0.8, label=label)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("predicted mean |rate change|")
    ax.set_ylabel("measured mean |activity change|")
    if rho is not None and "all" in rho:
        title = f"{title}\nSpearman rho (all neurons) = {rho['all']:.3f}"
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
