"""Posterior-mean inference and in-silico silencing, returned as numpy.

Keys follow the Arrow output columns (docs/DESIGN.md, "As built"): ``rates/<region>``,
``factors/<region>``, ``inputs/<region>``, ``heldout_rates/<region>`` and
``messages/<src>-><dst>``; every array is (trials, T', dim) over the reconstructed bins
tau..T-1 (T' = T - tau).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mrlfads.outputs import ModelOutput
from mrlfads.sessions import own_session_mean, session_groups


def _as_tensors(model, xs, B=None):
    """numpy/tensor per region (or None) -> tensors on the model's device and dtype."""
    ref = next(model.parameters())
    if xs is None:
        return None
    return [None if x is None else torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
            .to(device=ref.device, dtype=ref.dtype) for x in xs]


def _run(model, heldin, ext, batch_size: int, sessions=None, **kw) -> list[ModelOutput]:
    """Posterior-mean forward passes in chunks of trials, eval mode, no autograd.

    ``sessions`` (trials,): each trial's session, for a stitched model; chunks then hold
    one session's trials each, in session order (the outputs are not in trial order; each
    says which neurons it counts in ``recorded``)."""
    heldin, ext = _as_tensors(model, heldin), _as_tensors(model, ext)
    groups = session_groups(sessions, heldin[0].shape[0])
    was_training = model.training
    model.eval()
    outs = []
    try:
        with torch.no_grad():
            for session, rows in groups:
                for lo in range(0, rows.numel(), batch_size):
                    idx = rows[lo:lo + batch_size].to(heldin[0].device)
                    e = None if ext is None else [None if x is None else x[idx] for x in ext]
                    extra = {} if session is None else {"session": session}
                    outs.append(model([x[idx] for x in heldin], e, sample=False, **extra, **kw))
    finally:
        model.train(was_training)
    return outs


def _cat(outs: list[ModelOutput], get) -> np.ndarray:
    return torch.cat([get(o) for o in outs]).detach().cpu().numpy()


def _all_rates(o: ModelOutput, r: int) -> torch.Tensor:
    """Region r's held-in then held-out rates (the dataset's column order), (B, T', N)."""
    held = torch.exp(o.heldout_readout[r]) if o.obs_model == "poisson" else o.heldout_readout[r]
    return torch.cat([o.rates[r], held], dim=-1)


def posterior_means(model, heldin: Sequence, ext: Sequence | None = None,
                    batch_size: int = 256) -> dict[str, np.ndarray]:
    """Rates, factors, inferred inputs and messages (posterior means) of every trial."""
    outs = _run(model, heldin, ext, batch_size)
    names, res = model.cfg.region_names, {}
    for r, name in enumerate(names):
        res[f"rates/{name}"] = _cat(outs, lambda o, r=r: o.rates[r])
        res[f"factors/{name}"] = _cat(outs, lambda o, r=r: o.factors[r])
        res[f"heldout_rates/{name}"] = _cat(
            outs, lambda o, r=r: torch.exp(o.heldout_readout[r]) if o.obs_model == "poisson"
            else o.heldout_readout[r])
        if model.cfg.inferred_inputs:
            res[f"inputs/{name}"] = _cat(outs, lambda o, r=r: o.co_mean[r])
    for p, (s, r) in enumerate(model.sizes.pairs):
        res[f"messages/{names[s]}->{names[r]}"] = _cat(outs, lambda o, p=p: o.msg_mean[:, :, p])
    return res


def silence_effect(model, heldin: Sequence, ext: Sequence | None, region: str | int,
                   window: tuple[int, int], batch_size: int = 256) -> dict[str, float]:
    """Mean absolute change of every region's rates when ``region`` is silenced.

    Silencing sets all messages the region sends to zero (no sampling) over trial bins
    [start, stop); the mean is over trials, reconstructed bins and neurons.
    """
    names = model.cfg.region_names
    if isinstance(region, str) and region not in names:
        raise ValueError(f"silence region {region!r} is not a model region; choose from {names}")
    start, stop = int(window[0]), int(window[1])
    if not start < stop:
        raise ValueError(f"silence window {window}: need start < stop (trial bins)")
    base = _run(model, heldin, ext, batch_size)
    cut = _run(model, heldin, ext, batch_size, silence={region: (start, stop)})
    return {name: float(np.mean(np.abs(_cat(cut, lambda o, r=r: o.rates[r])
                                       - _cat(base, lambda o, r=r: o.rates[r]))))
            for r, name in enumerate(names)}


KINDS = ("silence", "cut", "inputs")


@dataclass(frozen=True)
class Perturbation:
    """One in-silico perturbation over trial bins [start, stop).

    ``kind``: "silence" (every message region ``target`` sends), "cut" (the one pathway
    ``target`` = "SRC->DST") or "inputs" (the inferred inputs region ``target`` receives).
    ``channels``: only these message dimensions (silence, cut) or input dimensions
    (inputs); None for all of them."""

    kind: str
    target: str
    window: tuple[int, int]
    channels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"perturbation kind {self.kind!r}: use one of {KINDS}")
        if self.kind == "cut" and "->" not in self.target:
            raise ValueError(f"cut {self.target!r}: name one pathway as 'SRC->DST'")
        start, stop = (int(v) for v in self.window)
        if not start < stop:
            raise ValueError(f"perturbation window {self.window}: need start < stop (trial bins)")

    def forward_kwargs(self) -> dict:
        """The ``silence`` / ``silence_inputs`` arguments of ``MRLFADS.forward``."""
        value = (*self.window, list(self.channels)) if self.channels else tuple(self.window)
        key = "silence_inputs" if self.kind == "inputs" else "silence"
        return {key: {self.target: value}}


def perturbation_effects(model, heldin: Sequence, ext: Sequence | None,
                         perturbation: Perturbation,
                         batch_size: int = 256, sessions=None) -> dict[str, np.ndarray]:
    """Per region, what the perturbation does to every neuron's predicted rate.

    Neurons are held-in then held-out (the dataset's column order); bins are the
    reconstructed ones, tau..T-1. Keys, each per ``<region>``:
      ``base/<r>``      (T', N) trial-mean rate of the unperturbed model
      ``delta/<r>``     (T', N) trial mean of perturbed - unperturbed rate (signed)
      ``abs_delta/<r>`` (T', N) trial mean of |perturbed - unperturbed rate|
      ``effect/<r>``    (N,)   mean of ``abs_delta`` from the window's start to the trial's
                               end (a silenced pathway's effect outlasts the window)
    Posterior means throughout, so the only difference is the perturbation. ``sessions``
    (a stitched model's: each trial's session): each neuron's means are over the trials of
    the session that recorded it."""
    tau = model.cfg.ic_enc_seq_len
    start = max(int(perturbation.window[0]) - tau, 0)
    base = _run(model, heldin, ext, batch_size, sessions)
    cut = _run(model, heldin, ext, batch_size, sessions, **perturbation.forward_kwargs())
    res = {}
    for r, name in enumerate(model.cfg.region_names):
        b = _cat(base, lambda o, r=r: _all_rates(o, r)).astype(np.float64)
        c = _cat(cut, lambda o, r=r: _all_rates(o, r)).astype(np.float64)
        if base[0].recorded is None:
            mean = lambda v: v.mean(axis=0)
        else:  # the trials of each neuron's own session
            w = _cat(base, lambda o, r=r: torch.cat([o.recorded[r], o.recorded_heldout[r]])
                     .expand(o.readout[r].shape[0], -1))
            mean = lambda v, w=w: own_session_mean(v, w)
        res[f"base/{name}"] = mean(b)
        res[f"delta/{name}"] = mean(c - b)
        res[f"abs_delta/{name}"] = mean(np.abs(c - b))
        res[f"effect/{name}"] = res[f"abs_delta/{name}"][start:].mean(axis=0)
    return res
