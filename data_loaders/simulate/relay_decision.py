"""Relay-decision (docs/MODEL.md, "The simulated benchmark"): computation must be found in the
right region.

`upstream` receives a noisy stimulus (coherence c + N(0, 0.5^2) per bin, inside a stimulus
window) and must only relay it: its 1-d channel to `downstream` must carry the stimulus
low-pass filtered with the network's own time constant, one step delayed. `downstream`
receives a fixation input (1 until the go cue, then 0) and must output 0 before the go cue
and, after it, the decision = sign of the summed stimulus. Leaky tanh units (alpha = 0.2).
Timings scale with trial length T (fractions below). The pathway downstream->upstream is absent.
"""
from __future__ import annotations

import numpy as np
import torch

from mrlfads.data_loaders.simulate.config import SimConfig
from mrlfads.data_loaders.simulate.network import NetworkSpec, Pathway
from mrlfads.data_loaders.simulate.train import Family, TaskBatch, masked_mse

NAMES = ("upstream", "downstream")
ALPHA = 0.2
COHERENCES = np.array([-0.4, -0.2, -0.1, -0.05, 0.05, 0.1, 0.2, 0.4])
STIM_NOISE = 0.5


def make_spec(n_units: int) -> NetworkSpec:
    return NetworkSpec(NAMES, (n_units, n_units), (Pathway(0, 1, 1),), input_dims=(1, 1),
                       output_dims=(0, 1), alpha=ALPHA, init_scale=0.5)


def timings(rng: np.random.Generator, n: int, n_bins: int) -> tuple[np.ndarray, ...]:
    """Stimulus on/off and go bins: on in [0.1, 0.2)T, 0.3-0.45 T long, then 0.05-0.15 T delay."""
    def frac(lo, hi):
        return np.maximum(1, np.round(rng.uniform(lo, hi, n) * n_bins)).astype(int)

    on = frac(0.1, 0.2)
    off = on + frac(0.3, 0.45)
    go = np.minimum(off + frac(0.05, 0.15), n_bins - 2)
    return on, np.minimum(off, go), go


def sample(rng: np.random.Generator, n: int, n_bins: int) -> TaskBatch:
    coh = rng.choice(COHERENCES, n)
    on, off, go = timings(rng, n, n_bins)
    t = np.arange(n_bins)[None, :]                                      # (1, T)
    window = (t >= on[:, None]) & (t < off[:, None])                   # (n, T)
    stim = np.where(window, coh[:, None] + STIM_NOISE * rng.standard_normal((n, n_bins)), 0.0)
    choice = np.where(stim.sum(1) >= 0, 1.0, -1.0)
    fixation = (t < go[:, None]).astype(float)
    target = np.where(t >= go[:, None], choice[:, None], 0.0)[..., None]  # (n, T, 1)
    inputs = np.stack([stim, fixation], -1).astype(np.float32)          # upstream, downstream
    variables = {"coherence": coh, "stim_on": on, "stim_off": off, "go_time": go,
                 "choice": choice, "target": target}
    conditions = [f"coh{c:+.2f}" for c in coh]
    return TaskBatch(inputs, target.astype(np.float32), np.ones_like(target, np.float32),
                     conditions, {k: np.asarray(v, np.float32) for k, v in variables.items()})


def relay_target(stim: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T): y[t] = (1 - a) y[t-1] + a stim[t-1], y[0] = 0 (what a leaky unit relays)."""
    ys, y = [], torch.zeros_like(stim[:, 0])
    for t in range(stim.shape[1]):
        ys.append(y)
        y = (1 - ALPHA) * y + ALPHA * stim[:, t]
    return torch.stack(ys, 1)


def loss(batch: TaskBatch, hidden, messages, readout) -> torch.Tensor:
    stim = torch.as_tensor(batch.inputs[..., 0], dtype=messages.dtype)
    relay = relay_target(stim)[..., None]                                # (B, T, 1)
    target = torch.as_tensor(batch.targets, dtype=readout.dtype)
    mask = torch.as_tensor(batch.mask)
    return 0.5 * (masked_mse(messages, relay, torch.ones_like(relay)) + masked_mse(readout, target, mask))


def build(cfg: SimConfig, rng: np.random.Generator) -> Family:
    desc = {"inputs": {"upstream": ["stimulus"], "downstream": ["fixation"]},
            "readout": "downstream: 0 before go, sign(sum of stimulus) after",
            "coherences": COHERENCES.tolist(), "stimulus_noise": STIM_NOISE}
    return Family(make_spec(cfg.n_units), sample, loss, full_length_training=True, description=desc)
