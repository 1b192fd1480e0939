"""Task-trained multi-region RNNs with known messages (docs/MODEL.md, "The simulated benchmark").

`generate(kind, ...)` returns the arrays; `simulate(kind, out=..., ...)` also writes them as
an Arrow dataset with every truth column and the network itself (extras/network.npz).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mrlfads.data_loaders.simulate.config import KINDS, OBS_MODELS, SimConfig, preset
from mrlfads.data_loaders.simulate.generate import SimulatedData, generate
from mrlfads.data_loaders.simulate.perturbation import SimInterventions, SimPerturbation

if TYPE_CHECKING:
    from mrlfads.data_loaders.manifest import DatasetManifest

__all__ = ["KINDS", "OBS_MODELS", "SimConfig", "SimInterventions", "SimPerturbation",
           "SimulatedData", "check_out", "generate", "preset", "simulate"]


def simulate(kind: str, *, out: str | os.PathLike, trials: int | None = None, seed: int = 0,
             obs: str = "gaussian", smoke_test: bool = False, n_bins: int | None = None,
             n_units: int | None = None, rate_hz: float | None = None, bin_ms: float | None = None,
             overwrite: bool = False, progress=None, on_generated=None, sessions: int = 1,
             session_frac: float | None = None, perturbation=None,
             interventions=None) -> DatasetManifest:
    """Generate the `kind` benchmark and write it to `out` (local path or s3:// URI).

    ``progress(step, total, loss)`` follows the network's training; ``on_generated(data)``
    sees the `SimulatedData` before it is written (timings, the drawn spikes). ``sessions`` /
    ``session_frac``: several sessions of the one network; ``perturbation`` (a
    `SimPerturbation`): a ``perturbed`` split with known effects; ``interventions`` (a
    `SimInterventions`): training trials with recorded interventions (`generate`)."""
    from mrlfads.data_loaders.writer import write_dataset

    check_out(out, overwrite)
    data = generate(kind, trials=trials, seed=seed, obs=obs, smoke_test=smoke_test,
                    n_bins=n_bins, n_units=n_units, rate_hz=rate_hz, bin_ms=bin_ms,
                    progress=progress, sessions=sessions, session_frac=session_frac,
                    perturbation=perturbation, interventions=interventions)
    if on_generated is not None:
        on_generated(data)
    return write_dataset(out, **data.writer_kwargs(), overwrite=overwrite)


def check_out(out: str | os.PathLike, overwrite: bool) -> None:
    """Fail before minutes of training where the write would fail after them: a dataset
    already there without overwrite, a folder of other files, or a killed run's leftovers."""
    from mrlfads.data_loaders.writer import check_target

    check_target(out, overwrite)
