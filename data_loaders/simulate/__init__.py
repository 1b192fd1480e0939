"""Simulated multi-region benchmarks (SPEC section 7): task-trained RNNs with known messages.

`generate(kind, ...)` returns the arrays; `simulate(kind, out=..., ...)` also writes them as
an Arrow dataset with every truth column and the network itself (extras/network.npz).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from data_loaders.simulate.config import KINDS, OBS_MODELS, SimConfig, preset
from data_loaders.simulate.generate import SimulatedData, generate

if TYPE_CHECKING:
    from data_loaders.manifest import DatasetManifest

__all__ = ["KINDS", "OBS_MODELS", "SimConfig", "SimulatedData", "generate", "preset", "simulate"]


def simulate(kind: str, *, out: str | os.PathLike, trials: int | None = None, seed: int = 0,
             obs: str = "gaussian", smoke_test: bool = False, n_bins: int | None = None,
             overwrite: bool = False, progress=None) -> "DatasetManifest":
    """Generate the `kind` benchmark and write it to `out` (local path or s3:// URI)."""
    from data_loaders.writer import write_dataset

    data = generate(kind, trials=trials, seed=seed, obs=obs, smoke_test=smoke_test,
                    n_bins=n_bins, progress=progress)
    return write_dataset(out, **data.writer_kwargs(), overwrite=overwrite)
