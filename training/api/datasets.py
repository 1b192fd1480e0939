"""Datasets for the Python API: `simulate`, `ingest` and `open_dataset` return a `Dataset`,
the Arrow dataset on disk plus what made it. `mrlfads simulate` and `mrlfads ingest` call
the same functions, so the CLI and a notebook write byte-identical datasets."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any


class Dataset:
    """An Arrow dataset (a local folder or an ``s3://`` URI with ``dataset.json``).

    ``manifest`` is its validated ``dataset.json``; ``arrays(split, columns)`` reads columns
    as numpy, tensors as (trials, bins, neurons) with held-in neurons first; ``summary`` says
    how it was made (simulate: the network's training, the spike rates; ingest: warnings)."""

    def __init__(self, arrow: Any, summary: dict[str, Any] | None = None) -> None:
        self.arrow = arrow  # mrlfads.data_loaders.reader.ArrowDataset
        self.summary: dict[str, Any] = dict(summary or {})

    @property
    def uri(self) -> str:
        return self.arrow.uri

    @property
    def manifest(self):
        return self.arrow.manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(self.manifest.region_names)

    @property
    def splits(self) -> dict[str, int]:
        """Trials per split (train, valid, and test or perturbed where present)."""
        return dict(self.manifest.splits)

    def arrays(self, split: str | None = None, columns: Sequence[str] | None = None
               ) -> dict[str, Any]:
        """Column -> numpy array over the trials of ``split`` (all trials by default)."""
        return self.arrow.arrays(split, columns)

    def __repr__(self) -> str:
        m = self.manifest
        regions = ", ".join(f"{r.name} {r.n_heldin}+{r.n_heldout}" for r in m.regions)
        return (f"Dataset({self.uri!r}: {m.obs_model}, {m.n_bins} bins of "
                f"{m.bin_width_s * 1000:g} ms; regions {regions} (held-in+held-out neurons); "
                f"trials {self.splits})")


def open_dataset(source: Dataset | str | os.PathLike) -> Dataset:
    """The dataset at ``source`` (reads and validates ``dataset.json`` only: cheap)."""
    if isinstance(source, Dataset):
        return source
    from mrlfads.data_loaders.reader import ArrowDataset

    return Dataset(ArrowDataset.open(source))


def simulate(kind: str, out: str | os.PathLike, *, trials: int | None = None, seed: int = 0,
             obs: str = "gaussian", rate_hz: float | None = None, bin_ms: float | None = None,
             bins: int | None = None, units: int | None = None, smoke_test: bool = False,
             overwrite: bool = False,
             progress: Callable[[int, int, float], None] | None = None, sessions: int = 1,
             session_frac: float | None = None, silence: str | None = None,
             window: str | tuple[int, int] | None = None,
             perturbed_trials: int | None = None,
             intervention_trials: int | None = None) -> Dataset:
    """Train a data-generating multi-region RNN (``memory-ring``, ``relay-decision`` or
    ``random``) and write its trials to ``out`` with the true rates, messages and inputs.

    ``sessions`` > 1: a multi-session dataset of the one network, ``trials`` trials per
    session, each session recording its own random ``session_frac`` (default 1 / sessions)
    of each region's units (docs/DESIGN.md, "Multi-session datasets").
    ``silence=REGION`` with ``window="START:STOP"`` (trial bins): ``perturbed_trials``
    extra trials (default a quarter of ``trials``) in which every message REGION sends is
    zero over the window, as the ``perturbed`` split, with their true effects in
    extras/perturbation.npz (docs/DESIGN.md, "Simulated perturbations").
    ``intervention_trials=N``: N extra training trials, each silencing every message of one
    random region over a random window, recorded in the dataset's ``silenced/<region>``
    columns so training silences the model's messages the same way (docs/MODEL.md,
    "Recorded interventions").
    ``progress(step, total, loss)`` is called while the network trains. The returned
    dataset's ``summary`` holds the network's task loss, its training steps, the wall time,
    and for Poisson spikes the mean rate per bin and the mean count drawn."""
    import numpy as np

    from mrlfads.data_loaders.simulate import SimInterventions
    from mrlfads.data_loaders.simulate import simulate as write_simulation

    perturbation = _sim_perturbation(kind, smoke_test, trials, silence, window, perturbed_trials)
    interventions = None if intervention_trials is None else SimInterventions(
        int(intervention_trials))
    summary: dict[str, Any] = {}

    def describe(data) -> None:
        fit = data.provenance["training"]
        summary.update(task_loss=fit["task_loss_generated"], train_steps=fit["train_steps"],
                       seconds=dict(data.seconds))
        if data.obs_model == "poisson":
            def mean(arrays) -> float:
                if not data.sessions:
                    return float(np.concatenate([a.reshape(-1, a.shape[-1]) for a in arrays],
                                                1).mean())
                from mrlfads.data_loaders.sessions import masks

                # over recorded entries only: a trial's columns of other sessions do not count
                total = count = 0.0
                for r, a in zip(data.regions, arrays):
                    m = masks(data.sessions, [r.name])[r.name][data.session]  # (trials, N)
                    total += float(a.sum(1, dtype=np.float64)[m].sum())
                    count += float(m.sum()) * a.shape[1]
                return total / count

            summary["rate_per_bin"] = mean([data.truth[f"truth/rates/{r.name}"]
                                            for r in data.regions])
            summary["spikes_per_bin"] = mean([data.x[r.name] for r in data.regions])

    write_simulation(kind, out=out, trials=trials, seed=seed, obs=obs, smoke_test=smoke_test,
                     n_bins=bins, n_units=units, rate_hz=rate_hz, bin_ms=bin_ms,
                     overwrite=overwrite, progress=progress, on_generated=describe,
                     sessions=sessions, session_frac=session_frac, perturbation=perturbation,
                     interventions=interventions)
    dataset = open_dataset(out)
    dataset.summary = summary
    return dataset


def _sim_perturbation(kind: str, smoke_test: bool, trials: int | None, silence: str | None,
                      window: str | tuple[int, int] | None, perturbed_trials: int | None):
    """The `SimPerturbation` that ``silence``/``window``/``perturbed_trials`` name, or None;
    a ValueError naming the flag when one is given without the others."""
    from mrlfads.data_loaders.simulate import SimPerturbation, preset
    from mrlfads.data_loaders.simulate.perturbation import parse_window

    if silence is None:
        extra = [f for f, v in (("--window", window), ("--perturbed-trials", perturbed_trials))
                 if v is not None]
        if extra:
            raise ValueError(f"{' and '.join(extra)} describe a perturbation; name the region "
                             "to silence with --silence REGION")
        return None
    if window is None:
        raise ValueError(f"--silence {silence!r}: give the bins to silence it over with "
                         "--window START:STOP (e.g. --window 40:60)")
    win = parse_window(window) if isinstance(window, str) else tuple(int(v) for v in window)
    if perturbed_trials is None:
        n = trials if trials is not None else preset(kind, smoke_test).n_trials
        perturbed_trials = max(1, n // 4)
    return SimPerturbation(silence, win, int(perturbed_trials))


def ingest(files: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike, *,
           overwrite: bool = False, **options: Any) -> Dataset:
    """Bin the spike times of one or more NWB sessions into trials and write one Arrow
    dataset at ``out``; every file is validated first and a failed ingest writes nothing.

    ``options`` are the fields of ``mrlfads.data_loaders.nwb.IngestOptions`` (``bin_ms``, ``align``,
    ``window=(start_s, stop_s)``, ``regions``, ``heldout``, ``perturb_column``, ...: the
    flags of ``mrlfads ingest`` with ``_`` for ``-``). The summary holds the warnings."""
    from mrlfads.data_loaders.errors import IngestError
    from mrlfads.data_loaders.nwb import IngestOptions
    from mrlfads.data_loaders.nwb import ingest as write_ingest

    known = [f.name for f in dataclasses.fields(IngestOptions)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise IngestError(f"ingest: unknown option(s) {unknown}; the options are {known}")
    for key in ("regions", "drop_quality", "condition_columns"):  # one name is a tuple of one
        if isinstance(options.get(key), str):
            options[key] = (options[key],)
    if isinstance(options.get("drop_units"), (int, str)):
        options["drop_units"] = (options["drop_units"],)
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    manifest = write_ingest(list(files), out, IngestOptions(**options), overwrite=overwrite)
    return Dataset(open_dataset(out).arrow,
                   {"warnings": list(manifest.provenance.get("warnings", []))})
