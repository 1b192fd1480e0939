"""Effectomes that measure a pathway by what it does to its target (docs/MODEL.md, "Metrics").

The paper's effectome (``metrics.effectome``) is the RMS of the message means. A message's
scale is not identified: the target's generator reads it through its own input weights W,
so a message a*m read through W/a fits the data exactly as well as m through W, and the
RMS of m can rank pathways in any order. Two measures that do not have this freedom:

- **drive**: the RMS of W m, the message's contribution to the target generator's gate
  pre-activations. Invariant to any invertible linear map of the message (m -> A m,
  W -> W A^-1). Computed from the posterior means and the weights, so it is free at every
  epoch.
- **cut**: the RMS change of the target's readout (log-rates, or means for gaussian data)
  when that one pathway is silenced for the whole trial; everything else runs as fitted.
  One extra forward pass per pathway, so it is computed at the end of training, by
  ``mrlfads infer`` and in the sweep's report, not every epoch.

The inferred inputs (what regions nobody recorded send) get the same two views per region:
their RMS (``input_rms``) and the cut (``input_cut_effectome``: the region's readout
change when its inputs are silenced).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from mrlfads.layers import block_columns

Pair = tuple[str, str]


def message_rows(model, src: int, dst: int) -> slice:
    """The rows of ``gen_w_iu[dst]`` (the target generator's input weights) that read the
    message src -> dst: after the inferred inputs, one com_dim block per other region."""
    C, U = model.cfg.com_dim, model.sizes.U
    slot = [a for a in range(model.sizes.R) if a != dst].index(src)  # the order of x's slots
    return slice(U + slot * C, U + (slot + 1) * C)


def message_input_weights(model) -> dict[Pair, np.ndarray]:
    """For every pathway (src, dst): the target generator's weights on that message, (C, 3G)
    over the live gate columns (r, z, n) of the target region."""
    s, names = model.sizes, model.cfg.region_names
    out: dict[Pair, np.ndarray] = {}
    with torch.no_grad():
        w = model.gen_w_iu * model.gen_w_iu_mask  # (R, U + (R-1) C, 3 Gm)
        for src, dst in s.pairs:
            rows = w[dst, message_rows(model, src, dst)]  # (C, 3 Gm)
            cols = block_columns(s.G[dst], s.Gm, 3)
            out[(names[src], names[dst])] = rows[:, cols].double().cpu().numpy()
    return out


def drive_effectome(messages: Mapping[Pair, np.ndarray], weights: Mapping[Pair, np.ndarray],
                    regions: Sequence[str]) -> np.ndarray:
    """(R, R) matrix, ``E[dst, src]`` = RMS over trials, bins and gate units of ``m W``.

    ``messages[(src, dst)]`` are posterior message means (trials, T, C), ``weights`` the
    matching ``message_input_weights``. The diagonal is NaN."""
    idx = {name: i for i, name in enumerate(regions)}
    E = np.full((len(regions), len(regions)), np.nan)
    for (src, dst), m in messages.items():
        W = weights[(src, dst)]  # (C, 3G)
        drive = np.asarray(m, np.float64).reshape(-1, W.shape[0]) @ W  # (trials*T, 3G)
        E[idx[dst], idx[src]] = math.sqrt(float(np.mean(drive**2)))
    return E


def _rms_change(base, cut, r: int) -> float:
    """RMS over trials, bins and held-in neurons of region r's readout change between two
    lists of outputs; a stitched model's outputs count only the neurons their session
    recorded (NaN where none did)."""
    sq = count = 0.0
    for b, c in zip(base, cut):
        d2 = (c.readout[r] - b.readout[r]).double() ** 2
        if b.recorded is None:
            sq, count = sq + float(d2.sum()), count + d2.numel()
        else:
            w = b.recorded[r].double()
            sq, count = sq + float((d2 * w).sum()), count + float(w.sum()) * d2.shape[0] * d2.shape[1]
    return math.sqrt(sq / count) if count else float("nan")


@torch.no_grad()
def cut_effectome(model, heldin: Sequence[torch.Tensor], ext=None,
                  batch_size: int = 256, sessions=None) -> np.ndarray:
    """(R, R) matrix, ``E[dst, src]`` = RMS change of dst's readout (log-rate or mean, over
    trials, reconstructed bins and held-in neurons) when pathway src -> dst is silenced over
    the whole trial. Posterior means throughout, so the only change is the cut.
    ``sessions`` (a stitched model's): each trial's session; each trial counts the neurons
    its session recorded."""
    from mrlfads.inference import _run  # inference imports this module's users, not us

    names, s = model.cfg.region_names, model.sizes
    T = heldin[0].shape[1]
    base = _run(model, heldin, ext, batch_size, sessions)
    E = np.full((s.R, s.R), np.nan)
    for src, dst in s.pairs:
        cut = _run(model, heldin, ext, batch_size, sessions,
                   silence={f"{names[src]}->{names[dst]}": (0, T)})
        E[dst, src] = _rms_change(base, cut, dst)
    return E


def input_rms(inputs: Mapping[str, np.ndarray], regions: Sequence[str]) -> np.ndarray:
    """(R,) RMS over trials, bins and dimensions of each region's inferred inputs (posterior
    means, ``inputs[region]`` (trials, T, co_dim)): the message RMS's counterpart for the
    unobserved regions, with the same unidentified scale. NaN for a region not given."""
    return np.array([math.sqrt(float(np.mean(np.asarray(inputs[r], np.float64) ** 2)))
                     if r in inputs else np.nan for r in regions])


@torch.no_grad()
def input_cut_effectome(model, heldin: Sequence[torch.Tensor], ext=None,
                        batch_size: int = 256, sessions=None) -> np.ndarray:
    """(R,) RMS change of each region's readout (as in ``cut_effectome``) when the inferred
    inputs it receives are silenced over the whole trial. All NaN without inferred inputs."""
    from mrlfads.inference import _run

    names, s = model.cfg.region_names, model.sizes
    E = np.full(s.R, np.nan)
    if not model.cfg.inferred_inputs:
        return E
    T = heldin[0].shape[1]
    base = _run(model, heldin, ext, batch_size, sessions)
    for r, name in enumerate(names):
        cut = _run(model, heldin, ext, batch_size, sessions, silence_inputs={name: (0, T)})
        E[r] = _rms_change(base, cut, r)
    return E
