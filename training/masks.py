"""Coordinated dropout and sample validation (AutoLFADS; Keshtkaran et al., Nature Methods
2022): which held-in data elements the encoders see, and which ones each loss scores.

An element is one (trial, bin, held-in neuron) count or value of a reconstructed bin
(tau..T-1; the IC window's bins are never reconstructed, so never masked). Both act on the
inputs the Trainer hands the model and on the reconstruction's per-element weights
(``mrlfads.loss.compute_loss(recon_weight=...)``); the model itself is unchanged.

- Coordinated dropout (``train.cd_rate``), training steps only: a fresh random subset of
  elements (rate cd_rate) is zeroed in the encoders' input and the rest scaled by
  1 / (1 - cd_rate); the reconstruction scores only the zeroed elements, scaled by
  1 / cd_rate so its expectation is the full reconstruction. A model gains nothing by
  copying what its encoders saw, so it cannot learn the identity.
- Sample validation (``train.sv_rate``): a fixed subset of elements (rate sv_rate; drawn
  per trial from the trial id, so the same in every epoch, every trial of a sweep and
  every restart) is hidden from the encoders in training and validation, never enters the
  training loss, and is what ``valid/sv_recon_loss`` scores: a reconstruction the model
  could not have copied.

With both, an element is shown with probability (1 - cd)(1 - sv) (visible ones scaled by
its inverse), and the training reconstruction scores CD-hidden, non-SV elements scaled by
1 / (cd (1 - sv)). Validation never applies coordinated dropout, and ``mrlfads infer``
shows every element: as with dropout at test time, the 1/keep scaling makes the expected
input what the model saw in training.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Tensor = torch.Tensor
SV_SEED = 20220707  # the sample-validation draw: fixed, so every run hides the same elements


def sample_validation_hidden(trial_id: np.ndarray, n_neurons: Sequence[int], n_bins: int,
                             rate: float, device: torch.device | str = "cpu") -> list[Tensor]:
    """Per region, a bool (trials, n_bins, N_r) tensor: True where sample validation hides
    the element. Each trial's draw depends only on (SV_SEED, region index, trial id), so a
    trial gets the same mask whichever split, batch or run it is loaded in."""
    hidden = [np.zeros((len(trial_id), n_bins, n), dtype=bool) for n in n_neurons]
    if rate > 0:
        for i, tid in enumerate(np.asarray(trial_id).reshape(-1)):
            for r, n in enumerate(n_neurons):
                rng = np.random.default_rng([SV_SEED, r, int(tid) % 2**63])
                hidden[r][i] = rng.random((n_bins, n)) < rate
    return [torch.from_numpy(h).to(device) for h in hidden]


def _show(x: Tensor, hidden: Tensor, keep: float) -> Tensor:
    """x (B, T, N) with the hidden elements of its last bins zeroed and the other elements
    of those bins scaled by 1 / keep; hidden is (B, T', N) over the last T' bins."""
    Tp = hidden.shape[1]
    tail = torch.where(hidden, torch.zeros((), dtype=x.dtype, device=x.device), x[:, -Tp:] / keep)
    return torch.cat([x[:, : x.shape[1] - Tp], tail], dim=1)


def training_inputs(heldin: Sequence[Tensor], n_bins: int, cd_rate: float | Tensor,
                    sv_rate: float,
                    sv_hidden: Sequence[Tensor] | None
                    ) -> tuple[list[Tensor], list[Tensor] | None]:
    """(encoder inputs, reconstruction weights) of one training batch.

    ``heldin`` is the batch's data (B, T, N_r), ``n_bins`` the reconstructed T', and
    ``sv_hidden`` the batch's sample-validation masks (B, T', N_r) or None. Without either
    rate this returns ``heldin`` itself and no weights (the plain loss). The coordinated-
    dropout draw uses torch's generator on the data's device (seeded and checkpointed with
    the Trainer's RNG state). ``cd_rate`` may be a 0-d tensor on the data's device, which a
    captured CUDA graph reads at every replay (training/step.py); a tensor counts as on.
    """
    cd_on = isinstance(cd_rate, Tensor) or cd_rate > 0
    if not cd_on and sv_rate <= 0:
        return list(heldin), None
    inputs, weights = [], []
    for r, x in enumerate(heldin):
        shape = (x.shape[0], n_bins, x.shape[2])
        sv = sv_hidden[r] if sv_rate > 0 and sv_hidden is not None else None
        if sv is None:
            sv = torch.zeros(shape, dtype=torch.bool, device=x.device)
        if cd_on:
            cd = torch.rand(shape, device=x.device) < cd_rate
            hidden = cd | sv
            weight = (cd & ~sv).to(x.dtype) / (cd_rate * (1.0 - sv_rate))
        else:
            hidden = sv
            weight = (~sv).to(x.dtype) / (1.0 - sv_rate)
        inputs.append(_show(x, hidden, (1.0 - cd_rate) * (1.0 - sv_rate)))
        weights.append(weight)
    return inputs, weights


def validation_inputs(heldin: Sequence[Tensor], sv_rate: float,
                      sv_hidden: Sequence[Tensor] | None
                      ) -> tuple[list[Tensor], list[Tensor] | None, list[Tensor] | None]:
    """(encoder inputs, weights of the elements shown, weights of the hidden ones) of one
    validation batch under sample validation; ``(heldin, None, None)`` without it.

    The shown elements' weights (1 / (1 - sv_rate)) give ``valid/recon`` the training
    loss's definition; the hidden ones' (1 / sv_rate) give ``valid/sv_recon``, scaled so
    both estimate the full reconstruction NLL.
    """
    if sv_rate <= 0 or sv_hidden is None:
        return list(heldin), None, None
    inputs = [_show(x, sv, 1.0 - sv_rate) for x, sv in zip(heldin, sv_hidden)]
    shown = [(~sv).to(x.dtype) / (1.0 - sv_rate) for x, sv in zip(heldin, sv_hidden)]
    hidden = [sv.to(x.dtype) / sv_rate for x, sv in zip(heldin, sv_hidden)]
    return inputs, shown, hidden
