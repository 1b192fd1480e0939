"""PNG figures for the things a person would rather look at than read as numbers.

Built with ``matplotlib.figure.Figure`` (the Agg canvas, no pyplot global state), so they
are safe in Ray workers and threads. ``*_figure`` functions return the Figure; the others
write one PNG and return its path. ``save`` and ``png_bytes`` turn any Figure into a file or
into bytes (the HTML report inlines them).
"""
from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mrlfads.tracking.lineage import best_path

DPI = 100


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG at ``path`` (folders made as needed); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=DPI, format="png")
    return p



def png_bytes(fig: Figure) -> bytes:
    """``fig`` as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI, format="png")
    return buf.getvalue()


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
    finite = shown[np.isfinite(shown)]
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    im = ax.imshow(shown, cmap="viridis", vmin=0.0, vmax=vmax)  # magnitudes: the scale starts at 0
    ax.set_xticks(range(len(regions)), labels=list(regions), rotation=45, ha="right")
    ax.set_yticks(range(len(regions)), labels=list(regions))
    ax.set_xlabel("source region s")
    ax.set_ylabel("target region r")
    ax.set_title(title, fontsize=10)
    for (r, s), v in np.ndenumerate(shown):
        if np.isfinite(v):
            ax.text(s, r, f"{v:.2g}", ha="center", va="center", color="w", fontsize=8)
    ax.figure.colorbar(im, ax=ax, shrink=0.8)


def _input_bars(ax, inputs: Mapping[str, Sequence[float]], regions: Sequence[str]) -> None:
    """Inferred-input magnitude per region, one bar per measure (from 0)."""
    width = 0.8 / max(1, len(inputs))
    for i, (what, values) in enumerate(inputs.items()):
        v = np.array([np.nan if x is None else float(x) for x in values])
        ax.bar(np.arange(len(regions)) + (i - (len(inputs) - 1) / 2) * width, np.nan_to_num(v),
               width=width, color=f"C{i}", label=what)
    ax.set_xticks(range(len(regions)), labels=list(regions), rotation=45, ha="right")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("region")
    ax.set_title("inferred inputs (unobserved regions)", fontsize=10)
    ax.legend(fontsize=7)


def effectome_figure(effectome: np.ndarray, regions: Sequence[str],
                     truth: np.ndarray | None = None, title: str = "inferred effectome",
                     inputs: Mapping[str, Sequence[float]] | None = None) -> Figure:
    """Heatmap of E[r, s] (pathway s -> r) on a colour scale from 0; the true communication
    matrix beside it when known; ``inputs`` (measure -> one value per region, e.g. the
    readout change when a region's inferred inputs are silenced) as bars beside them."""
    E = np.asarray(effectome, dtype=float)
    R = len(regions)
    assert E.shape == (R, R), f"effectome shape {E.shape} != ({R}, {R})"
    n = 1 + (truth is not None) + (inputs is not None)
    fig = Figure(figsize=(4.5 * n, 4))
    axes = fig.subplots(1, n, squeeze=False)[0]
    _heat(axes[0], E, regions, title)
    if truth is not None:
        _heat(axes[1], np.asarray(truth, dtype=float), regions, "true communication (msg dim)")
    if inputs is not None:
        _input_bars(axes[-1], inputs, regions)
    fig.tight_layout()
    return fig


def effectome_heatmap(effectome: np.ndarray, regions: Sequence[str], path: str | os.PathLike,
                      truth: np.ndarray | None = None, title: str = "inferred effectome",
                      inputs: Mapping[str, Sequence[float]] | None = None) -> Path:
    """``effectome_figure`` written as a PNG at ``path``."""
    return save(effectome_figure(effectome, regions, truth, title, inputs), path)


def rates_vs_data(rates: Mapping[str, np.ndarray], data: Mapping[str, np.ndarray],
                  path: str | os.PathLike, n_neurons: int = 4, bin_width_s: float | None = None,
                  title: str = "example trial") -> Path:
    """``rates_vs_data_figure`` written as a PNG at ``path`` (time in s with a bin width)."""
    T = np.asarray(next(iter(rates.values()))).shape[0] if rates else 0
    t = np.arange(T) * (bin_width_s or 1.0)
    return save(rates_vs_data_figure(rates, data, n_neurons, t,
                                     "time (s)" if bin_width_s else "bin", title), path)


def rates_vs_data_figure(rates: Mapping[str, np.ndarray], data: Mapping[str, np.ndarray],
                         n_neurons: int = 4, t: np.ndarray | None = None,
                         time_label: str = "time (s)", title: str = "example trial") -> Figure:
    """One row per region, a few neurons each: observed data (grey) vs inferred rates
    (each (T, N); ``t`` the time of each bin)."""
    regions = list(rates)
    fig = Figure(figsize=(3 * n_neurons, 2.2 * len(regions)))
    axes = fig.subplots(len(regions), n_neurons, squeeze=False)
    for i, region in enumerate(regions):
        pred, obs = np.asarray(rates[region]), np.asarray(data[region])  # (T, N)
        tt = np.arange(pred.shape[0]) if t is None else np.asarray(t)
        for j in range(n_neurons):
            ax = axes[i, j]
            if j >= pred.shape[1]:
                ax.axis("off")
                continue
            ax.plot(tt[: obs.shape[0]], obs[:, j], color="0.6", lw=1, label="data")
            ax.plot(tt, pred[:, j], color="C0", lw=1.5, label="inferred")
            ax.set_title(f"{region} neuron {j}", fontsize=9)
        axes[i, 0].set_ylabel(region)
    axes[0, 0].legend(fontsize=7)
    axes[-1, 0].set_xlabel("bin" if t is None else time_label)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def hparam_trajectories(history: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
                        path: str | os.PathLike,
                        exploits: Mapping[str, Sequence[int]] | None = None,
                        log_scale: bool = True) -> Path:
    """``hparam_figure`` written as a PNG at ``path``."""
    return save(hparam_figure(history, exploits, log_scale), path)


def hparam_figure(history: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
                  exploits: Mapping[str, Sequence[int]] | None = None,
                  log_scale: bool = True) -> Figure:
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
    return fig


def perturbation_scatter(predicted: Mapping[str, np.ndarray], measured: Mapping[str, np.ndarray],
                         path: str | os.PathLike, title: str = "perturbation effect per neuron",
                         rho: Mapping[str, float] | None = None) -> Path:
    """``perturbation_figure`` written as a PNG at ``path``."""
    return save(perturbation_figure(predicted, measured, title, rho), path)


def perturbation_figure(predicted: Mapping[str, np.ndarray], measured: Mapping[str, np.ndarray],
                        title: str = "perturbation effect per neuron",
                        rho: Mapping[str, float] | None = None) -> Figure:
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
    return fig


def lineage_figure(epochs: Mapping[str, float],
                   exploits: Mapping[str, Sequence[Mapping]],
                   best: str | None = None) -> Figure:
    """The PBT population as a graph: one row per trial over its epochs, an arrow from the
    donor (at the epoch its weights were copied) to the trial that took them (at the
    epoch it exploited); the path the best trial's weights took (``best_path``) in red.

    ``epochs[trial]`` is the trial's last epoch; ``exploits[trial]`` its events
    (tracking/lineage.py: ``epoch``, ``donor_trial``, ``donor_epoch``)."""
    trials = sorted(set(epochs) | set(exploits))
    row = {t: i for i, t in enumerate(trials)}
    fig = Figure(figsize=(8, 0.45 * len(trials) + 1.6))
    ax = fig.subplots()
    for t in trials:
        ax.plot([0, epochs.get(t, 0)], [row[t], row[t]], color="0.75", lw=3, solid_capstyle="butt")
    for t, events in exploits.items():
        for e in events:
            donor = e.get("donor_trial")
            if donor not in row or t not in row:
                continue
            start = e.get("donor_epoch")
            start = e["epoch"] if start is None else start
            ax.annotate("", xy=(e["epoch"], row[t]), xytext=(start, row[donor]),
                        arrowprops={"arrowstyle": "->", "color": "C0", "lw": 1.0,
                                    "shrinkA": 2, "shrinkB": 2})
    if best in row:
        for trial, start, stop in best_path(exploits, best, epochs.get(best, 0)):
            if trial in row:
                ax.plot([start, stop], [row[trial], row[trial]], color="C3", lw=3,
                        solid_capstyle="butt")
    ax.set_yticks(range(len(trials)), labels=[f"{t} (best)" if t == best else t for t in trials],
                  fontsize=8)
    ax.set_ylim(-0.7, len(trials) - 0.3)
    ax.set_xlim(left=0)
    ax.set_xlabel("epoch")
    ax.set_title("PBT lineage: arrows copy weights donor -> trial; red: the best trial's path",
                 fontsize=10)
    fig.tight_layout()
    return fig


def lineage_graph(epochs: Mapping[str, float], exploits: Mapping[str, Sequence[Mapping]],
                  path: str | os.PathLike, best: str | None = None) -> Path:
    """``lineage_figure`` written as a PNG at ``path``."""
    return save(lineage_figure(epochs, exploits, best), path)
