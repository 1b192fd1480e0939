"""Recorded perturbations of a simulated network (`mrlfads simulate --silence REGION`).

Extra trials, drawn like the others, in which every message REGION sends is zero over a
window of bins: the simulated counterpart of silencing a region's projections, and what
`mrlfads perturb --silence REGION` does to a fitted model (docs/MODEL.md, "Perturbations").
They form the dataset's ``perturbed`` split, which training never reads, so a fit's
predicted effects can be scored against measured ones as in a photoinhibition experiment.

Each perturbed trial is also run unperturbed with the same inputs and noise (its twin), so
the true effect on every neuron is known without trial-to-trial noise:
extras/perturbation.npz holds it in the keys, bins and rate units of `mrlfads perturb`'s
effects.npz, neurons in the dataset's column order (held-in then held-out).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mrlfads.data_loaders.simulate.network import NetworkSpec


@dataclass(frozen=True)
class SimPerturbation:
    """Silence every message ``region`` sends over trial bins [start, stop) of ``trials``
    extra trials."""

    region: str
    window: tuple[int, int]
    trials: int

    def __post_init__(self) -> None:
        start, stop = self.window
        if not 0 <= start < stop:
            raise ValueError(f"--window {start}:{stop}: need 0 <= START < STOP (trial bins)")
        if self.trials < 1:
            raise ValueError(f"--perturbed-trials: need at least 1, got {self.trials}")


def parse_window(text: str) -> tuple[int, int]:
    """``"START:STOP"`` in trial bins -> (start, stop), for `simulate` and `perturb`."""
    try:
        start, stop = (int(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--window {text!r}: expected START:STOP in trial bins, e.g. 40:60") from None
    return start, stop


def step_window(p: SimPerturbation, names: tuple[str, ...], n_bins: int,
                steps_per_bin: float, bin_ms: float) -> tuple[int, int]:
    """The window in network steps; a ValueError naming the flag when the region is unknown,
    the window runs past the trial, or it cuts a network step in two (finer bins than the
    network's 20 ms step: a step's message is either sent or not)."""
    if p.region not in names:
        raise ValueError(f"--silence {p.region!r}: not a region of this network; choose from "
                         f"{list(names)}")
    start, stop = p.window
    if stop > n_bins:
        raise ValueError(f"--window {start}:{stop}: the trial has {n_bins} bins; need "
                         f"STOP <= {n_bins}")
    a, b = start * steps_per_bin, stop * steps_per_bin
    if steps_per_bin < 1 and (a != math.floor(a) or b != math.floor(b)):
        k = round(1 / steps_per_bin)
        raise ValueError(f"--window {start}:{stop}: with {bin_ms:g} ms bins the network steps "
                         f"every {k} bins; START and STOP must be multiples of {k}")
    return math.floor(a), math.ceil(b)


def message_gate(spec: NetworkSpec, region: str, steps: tuple[int, int], n_steps: int
                 ) -> np.ndarray:
    """(n_steps, message dims) of 1, and 0 for the messages ``region`` sends within
    ``steps``; the network multiplies its messages by it."""
    src = spec.region_names.index(region)
    gate = np.ones((n_steps, sum(p.dim for p in spec.pathways)))
    for p, sl in zip(spec.pathways, spec.msg_slices()):
        if p.src == src:
            gate[steps[0]:steps[1], sl] = 0.0
    return gate


@dataclass(frozen=True)
class SimInterventions:
    """Training trials with recorded interventions: each silences every message of one
    region (drawn uniformly from all regions, as an experimenter who does not know the
    wiring would: silencing a region that sends nothing changes nothing, which is what
    refutes a pathway from it) over a window of a quarter of the bins after the
    initial-condition bins, at a random start. Unlike `SimPerturbation`'s
    trials they are trained on, the dataset's ``silenced/<region>`` columns saying which
    bins (docs/MODEL.md, "Recorded interventions"). ``control``: the same extra trials
    with nothing silenced, to tell what the interventions add from what more trials add
    (benchmarks/science/interventions.py)."""

    trials: int
    control: bool = False

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError(f"--intervention-trials: need at least 1, got {self.trials}")


def draw_interventions(spec: NetworkSpec, n: int, n_bins: int, tau: int, steps_per_bin: float,
                       n_steps: int, rng: np.random.Generator
                       ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(gate (n, n_steps, D_tot), silenced {region: (n, n_bins) 0/1})`` for ``n`` trials.

    Windows start and stop on network steps (with bins finer than a step, a step's message
    is either sent or not), so the bins marked silenced are exactly the steps gated off."""
    k = max(1, round(1 / steps_per_bin)) if steps_per_bin < 1 else 1  # bins per step
    length = max(k, (n_bins - tau) // 4 // k * k)
    first, last = -(-tau // k) * k, n_bins - length  # aligned starts in [first, last]
    if last < first:
        raise ValueError(f"--intervention-trials: trials of {n_bins} bins leave no room for a "
                         f"{length}-bin window after the {tau} initial-condition bins")
    starts = first + k * rng.integers(0, (last - first) // k + 1, size=n)
    regions = rng.choice(len(spec.region_names), size=n)
    gate = np.ones((n, n_steps, sum(p.dim for p in spec.pathways)))
    silenced = {spec.region_names[s]: np.zeros((n, n_bins), np.float32)
                for s in sorted(set(regions.tolist()))}
    for i, (src, start) in enumerate(zip(regions, starts)):
        name = spec.region_names[src]
        a, b = math.floor(start * steps_per_bin), math.ceil((start + length) * steps_per_bin)
        gate[i] = message_gate(spec, name, (a, b), n_steps)
        silenced[name][i, start:start + length] = 1.0
    return gate, silenced


def silenced_pathways(spec: NetworkSpec, region: str) -> list[str]:
    src = spec.region_names.index(region)
    return [spec.pathway_name(p) for p in spec.pathways if p.src == src]


def true_effects(perturbed: dict[str, np.ndarray], twin: dict[str, np.ndarray], start: int,
                 tau: int) -> dict[str, np.ndarray]:
    """Per region (arrays (trials, bins, neurons) of true rates, dataset column order): the
    keys of `mrlfads.inference.perturbation_effects`, over bins tau..T-1:
    ``delta`` (T', N) trial mean of perturbed - twin, ``abs_delta`` the trial mean of its
    magnitude, and ``effect`` (N,) the mean of ``abs_delta`` from bin ``start`` on."""
    out: dict[str, np.ndarray] = {}
    first = max(start - tau, 0)
    for name, rates in perturbed.items():
        diff = rates[:, tau:].astype(np.float64) - twin[name][:, tau:].astype(np.float64)
        delta, abs_delta = diff.mean(0), np.abs(diff).mean(0)
        out[f"delta/{name}"] = delta
        out[f"abs_delta/{name}"] = abs_delta
        out[f"effect/{name}"] = abs_delta[first:].mean(0)
    return out
