"""Which neurons each session recorded, as masks over the model's padded neuron axes
(docs/MODEL.md, "Several sessions").

A stitched model's region r has the union of every session's neurons: held-in columns are
session 0's, then session 1's, ...; held-out columns likewise (``SessionConfig``). One
session per batch: its masks zero the other sessions' inputs and leave their neurons out
of the likelihood. Messages read every neuron's predicted rate in every session, so they
are the same function of the source's state whichever neurons a session recorded.
"""
from __future__ import annotations

import torch

from mrlfads.config import ModelConfig


def session_masks(cfg: ModelConfig, n_max: int, h_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(recorded, recorded_heldout)``: float tensors (S, R, n_max) and (S, R, h_max);
    ``recorded[s, r, i]`` is 1 where session s recorded held-in column i of region r. A
    model without sessions has one session recording every neuron."""
    R = len(cfg.regions)
    heldin = [s.heldin for s in cfg.sessions] or [tuple(r.n_heldin for r in cfg.regions)]
    heldout = [s.heldout or (0,) * R for s in cfg.sessions] or \
        [tuple(r.n_heldout for r in cfg.regions)]
    S = len(heldin)
    recorded, recorded_out = torch.zeros(S, R, n_max), torch.zeros(S, R, h_max)
    for mask, counts in ((recorded, heldin), (recorded_out, heldout)):
        for r in range(R):
            start = 0
            for s in range(S):
                mask[s, r, start: start + counts[s][r]] = 1.0
                start += counts[s][r]
    return recorded, recorded_out


def session_groups(session: torch.Tensor | None, n: int, device=None
                   ) -> list[tuple[int | None, torch.Tensor]]:
    """``(session, trial indices)`` for every session among ``n`` trials, in session order
    (the model runs one session per batch); ``[(None, all)]`` when ``session`` is None."""
    if session is None:
        return [(None, torch.arange(n, device=device))]
    session = torch.as_tensor(session)
    return [(int(s), torch.nonzero(session == s).flatten())
            for s in torch.unique(session).tolist()]


def own_session_mean(values, weights):
    """Per (bin, neuron), the mean over trials of ``values`` (trials, T, N) weighted by
    ``weights`` (trials, N): 1 where the trial's session recorded the neuron. NaN for a
    neuron no trial's session recorded. numpy in, numpy out."""
    import numpy as np

    w = np.asarray(weights, np.float64)[:, None, :]
    total = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (np.asarray(values, np.float64) * w).sum(axis=0) / total,
                        np.nan)
