"""Posterior-mean inference and in-silico silencing, returned as numpy.

Keys follow the Arrow output columns (ARCHITECTURE.md): ``rates/<region>``,
``factors/<region>``, ``inputs/<region>``, ``heldout_rates/<region>`` and
``messages/<src>-><dst>``; every array is (trials, T', dim) over the reconstructed bins
tau..T-1 (T' = T - tau).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mrlfads.outputs import ModelOutput


def _as_tensors(model, xs, B=None):
    """numpy/tensor per region (or None) -> tensors on the model's device and dtype."""
    ref = next(model.parameters())
    if xs is None:
        return None
    return [None if x is None else torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
            .to(device=ref.device, dtype=ref.dtype) for x in xs]


def _run(model, heldin, ext, batch_size: int, **kw) -> list[ModelOutput]:
    """Posterior-mean forward passes in chunks of trials, eval mode, no autograd."""
    heldin, ext = _as_tensors(model, heldin), _as_tensors(model, ext)
    was_training = model.training
    model.eval()
    outs = []
    try:
        with torch.no_grad():
            for lo in range(0, heldin[0].shape[0], batch_size):
                sl = slice(lo, lo + batch_size)
                e = None if ext is None else [None if x is None else x[sl] for x in ext]
                outs.append(model([x[sl] for x in heldin], e, sample=False, **kw))
    finally:
        model.train(was_training)
    return outs


def _cat(outs: list[ModelOutput], get) -> np.ndarray:
    return torch.cat([get(o) for o in outs]).detach().cpu().numpy()


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
