"""The simulated network's own cut effectome: what a perfect fit's cut effectome would be.

The benchmark's truth, ``comm_matrix``, holds each present pathway's message dimension; a
fitted model's cut effectome (docs/MODEL.md, "Identifiable effectome") measures effects,
which need not grow with dimension. Measuring the same thing on the network that made the
data gives the reference a perfect fit would reach: each pathway's messages held at their
mean from the first reconstructed bin to the end of the trial (the bins a model's cut
silences; before them the model's state is read from the data), same inputs and noise,
and the RMS change of the target region's log-rates (spike counts: the gain times the
hidden units' change) or of its units (Gaussian observations) over those bins and every
unit of the region. Held at the mean, not zeroed: a message's constant part cannot be told
from its target's bias, so a fit has no way to learn it (the model's messages read their
source relative to its baseline and are near zero-mean, docs/RESULTS.md, "Which
effectome"); zeroing it would count that offset as an effect. The manifest's provenance
keeps the matrix under ``network_cut_effects``.
"""
from __future__ import annotations

import math

import numpy as np

from mrlfads.data_loaders.simulate import observe
from mrlfads.data_loaders.simulate.network import MultiRegionRNN, run_trials

MAX_TRIALS = 512  # a population average: more trials change the numbers in the third digit
DEFINITION = ("[dst][src]: RMS change of dst's log-rates (gaussian data: its units) over "
              "every unit of dst and the bins from ic_enc_seq_len on, when the network's "
              "src -> dst messages are held at their mean over those bins; same inputs and "
              "noise; 0 where absent")


def network_cut_effects(net: MultiRegionRNN, inputs: np.ndarray, trial_ids: np.ndarray,
                        noise_seed: int, *, first_bin: int, steps_per_bin: float,
                        scale: float) -> dict:
    """The provenance entry ``{matrix, definition, trials}``: ``matrix[dst][src]``, the cut
    effects of ``net`` over its first ``MAX_TRIALS`` trials (inputs (n, steps, I_tot) and ids
    as simulated); ``scale`` turns a change of hidden units into one of what the data
    observe (the Poisson gain, or 1)."""
    spec = net.spec
    n = min(len(trial_ids), MAX_TRIALS)
    inputs, trial_ids = inputs[:n], trial_ids[:n]
    n_steps = inputs.shape[1]
    first_step = math.floor(first_bin * steps_per_bin)
    base, messages, _ = run_trials(net, inputs, trial_ids, noise_seed)
    R = len(spec.region_names)
    E = [[0.0] * R for _ in range(R)]
    units = spec.unit_slices()
    for p, sl in zip(spec.pathways, spec.msg_slices()):
        gate = np.ones((n_steps, messages.shape[-1]))
        gate[first_step:, sl] = 0.0
        hold = np.zeros_like(gate)
        hold[first_step:, sl] = messages[:, first_step:, sl].astype(np.float64).mean((0, 1))
        cut = run_trials(net, inputs, trial_ids, noise_seed, gate=gate, hold=hold)[0]
        change = (cut[..., units[p.dst]].astype(np.float64)
                  - base[..., units[p.dst]].astype(np.float64))
        change = observe.steps_to_bins(change, steps_per_bin)[:, first_bin:]
        E[p.dst][p.src] = float(scale * np.sqrt(np.mean(change ** 2)))
    return {"matrix": E, "definition": DEFINITION, "trials": n}
