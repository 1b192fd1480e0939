"""Memory ring (docs/MODEL.md, "The simulated benchmark"): A0 -> A1 -> A2 -> A0 pass white noise.

Region Ai gets a private white-noise stimulus u_i (rank 2, 3, 4) and must
  * send it one step delayed through its outgoing channel: m_{Ai->Aj}[t] ~ u_i[t-1]
    (so the message dimension of each pathway equals the sender's stimulus rank), and
  * remember the last 5 steps of all it receives: its readout z_i[t] must reproduce
    [m_in[t-k], u_i[t-k]] for k = 0..4 (m_in = the actual incoming message, noise included).
The three other ordered pairs are absent. Plain discrete-time tanh RNN (alpha = 1).
"""
from __future__ import annotations

import numpy as np
import torch

from mrlfads.data_loaders.simulate.config import SimConfig
from mrlfads.data_loaders.simulate.network import NetworkSpec, Pathway, slices
from mrlfads.data_loaders.simulate.train import Family, TaskBatch, masked_mse

RANKS = (2, 3, 4)
BUFFER = 5
NAMES = ("A0", "A1", "A2")


def make_spec(n_units: int) -> NetworkSpec:
    paths = tuple(Pathway(i, (i + 1) % 3, RANKS[i]) for i in range(3))
    outs = tuple(BUFFER * (RANKS[(i - 1) % 3] + RANKS[i]) for i in range(3))
    return NetworkSpec(NAMES, (n_units,) * 3, paths, RANKS, outs, alpha=1.0, gain=0.9)


def sample(rng: np.random.Generator, n: int, n_bins: int) -> TaskBatch:
    """White-noise stimuli; targets depend on the messages, so the loss builds them."""
    u = rng.standard_normal((n, n_bins, sum(RANKS))).astype(np.float32)
    empty = np.zeros((n, n_bins, 0), np.float32)
    return TaskBatch(u, empty, empty, ["ring"] * n, {})


def make_loss(spec: NetworkSpec):
    ins, ms, outs = slices(spec.input_dims), spec.msg_slices(), slices(spec.output_dims)
    in_path = {p.dst: k for k, p in enumerate(spec.pathways)}

    def loss(batch: TaskBatch, hidden, messages, readout) -> torch.Tensor:
        u = torch.as_tensor(batch.inputs, dtype=messages.dtype)
        terms = []
        for k, p in enumerate(spec.pathways):  # channel: own stimulus, one step delayed
            pred, target = messages[:, 1:, ms[k]], u[:, :-1, ins[p.src]]
            terms.append(masked_mse(pred, target, torch.ones_like(pred)))
        for i in range(3):  # buffer: last BUFFER steps of [incoming message, own stimulus]
            got = torch.cat([messages[:, :, ms[in_path[i]]].detach(), u[:, :, ins[i]]], -1)
            width, T = got.shape[-1], got.shape[1]
            z = readout[:, BUFFER - 1:, outs[i]].reshape(-1, T - BUFFER + 1, BUFFER, width)
            target = torch.stack([got[:, BUFFER - 1 - k:T - k] for k in range(BUFFER)], 2)
            terms.append(masked_mse(z, target, torch.ones_like(z)))
        return sum(terms) / len(terms)

    return loss


def build(cfg: SimConfig, rng: np.random.Generator) -> Family:
    spec = make_spec(cfg.n_units)
    desc = {"stimulus_ranks": dict(zip(NAMES, RANKS)), "buffer_steps": BUFFER,
            "task": "send own stimulus delayed by 1 step; remember last 5 steps received"}
    return Family(spec, sample, make_loss(spec), full_length_training=False, description=desc)
