"""`Model.infer`: a fitted model's outputs on every trial of a dataset, held in memory with
named dimensions, plus the effectome and the metrics; `Inference.save` writes them as the
output directory of `mrlfads infer` (training/infer_io.py), which calls this module."""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from mrlfads.training.api.datasets import Dataset
    from mrlfads.training.api.models import Model

# Posterior samples averaged by default: on the four 5 Hz spiking networks 20 samples
# raised the rate R^2 against the true rates by 0.006-0.025 over the posterior means, and
# 50 no further (docs/RESULTS.md, "Posterior averaging"); lfads-torch averages samples too.
DEFAULT_SAMPLES = 20


# The last dimension of each output, by key prefix; trial and time come first.
LAST_DIM = {"rates/": "neuron", "heldout_rates/": "heldout_neuron", "factors/": "factor",
            "inputs/": "input", "messages/": "channel"}


@dataclass
class Effectome:
    """Who talks to whom, indexed ``[dst, src]`` like the dataset's ``comm_matrix``.

    ``cut``: RMS change of dst's readout when pathway src -> dst alone is silenced (the
    identifiable one, docs/MODEL.md); ``message_rms``: the RMS of the messages (the paper's,
    its scale not identified); ``inputs_cut`` / ``inputs_rms``: per region, the same for the
    inferred inputs it receives (None without inferred inputs). NaN on the diagonal."""

    regions: tuple[str, ...]
    cut: np.ndarray | None
    message_rms: np.ndarray | None
    inputs_cut: np.ndarray | None = None
    inputs_rms: np.ndarray | None = None

    def pathways(self, which: str = "cut") -> dict[str, float]:
        """``{"src->dst": value}`` for every pathway, from ``cut`` or ``message_rms``."""
        E = getattr(self, which)
        if E is None:
            return {}
        return {f"{s}->{d}": float(E[i, j]) for i, d in enumerate(self.regions)
                for j, s in enumerate(self.regions) if i != j}

    def __repr__(self) -> str:
        shown = ", ".join(f"{k} {v:.3g}" for k, v in self.pathways().items())
        return f"Effectome(cut: {shown or 'no pathways'})"


class Inference(Mapping):
    """Outputs per trial as a mapping ``key -> array (trial, time, dim)``; keys are
    ``rates/<r>``, ``heldout_rates/<r>``, ``factors/<r>``, ``inputs/<r>`` and
    ``messages/<src>-><dst>``, as in the written output.

    ``dims[key]`` names each array's dimensions (``("trial", "time", "<r>/neuron")``: a last
    dimension belongs to its own region or pathway); ``coords`` gives ``trial`` (trial ids),
    ``split`` (per trial), ``time`` (the trial bins covered, tau..T-1) and neuron ids where
    the dataset records them. ``effectome``, ``metrics`` (per split, ``<split>/<metric>``)
    and ``info`` (what outputs.json holds) complete it; ``to_xarray()`` converts it where
    xarray is installed."""

    def __init__(self, arrays: dict[str, np.ndarray], coords: dict[str, np.ndarray],
                 effectome: Effectome, metrics: dict[str, float], info: dict[str, Any],
                 source_manifest: dict[str, Any]) -> None:
        self.arrays, self.coords = arrays, coords
        self.effectome, self.metrics, self.info = effectome, metrics, info
        self.source_manifest = source_manifest
        self.dims = {k: ("trial", "time", _last_dim(k)) for k in arrays}

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)

    @property
    def trial_id(self) -> np.ndarray:
        return self.coords["trial"]

    @property
    def split(self) -> np.ndarray:
        return self.coords["split"]

    def save(self, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the `mrlfads infer` output directory (atomically; training/infer_io.py)."""
        from mrlfads.training.infer_io import write_outputs

        e = self.effectome
        inputs = None if e.inputs_cut is None else {"cut": e.inputs_cut, "rms": e.inputs_rms}
        return write_outputs(out, self.arrays, self.trial_id, self.split, self.info, e.cut,
                             self.metrics, overwrite, message_rms=e.message_rms,
                             inputs_effectome=inputs, source_manifest=self.source_manifest,
                             session=self.coords.get("session"))

    def to_xarray(self):
        """An ``xarray.Dataset`` with these dims and coords (needs xarray installed)."""
        try:
            import xarray as xr
        except ImportError:
            raise ImportError("to_xarray() needs xarray (pip install xarray); the arrays, "
                              "dims and coords are here without it") from None
        coords = {"trial": self.coords["trial"], "split": ("trial", self.coords["split"]),
                  "time": self.coords["time"]}
        coords.update({k: v for k, v in self.coords.items() if "/" in k})
        return xr.Dataset({k: (self.dims[k], v) for k, v in self.arrays.items()},
                          coords=coords, attrs={"info": repr(self.info)})

    def __repr__(self) -> str:
        n = len(self.coords["trial"])
        keys = ", ".join(f"{k} {tuple(v.shape)}" for k, v in self.arrays.items())
        return f"Inference({n} trials of {self.info.get('splits')}: {keys}; {self.effectome!r})"


def _last_dim(key: str) -> str:
    prefix, _, owner = key.partition("/")
    return f"{owner}/{LAST_DIM[prefix + '/']}"


def _splits(requested: str | Iterable[str], manifest) -> list[str]:
    if requested == "all":
        return [s for s in manifest.splits if manifest.splits[s] > 0]
    if isinstance(requested, str):
        return requested.split(",")
    return list(requested)


def infer(model: Model, dataset: Dataset | str | os.PathLike, *, samples: int = DEFAULT_SAMPLES,
          splits: str | Iterable[str] = "all", seed: int = 0, device: str = "auto",
          out: str | os.PathLike | None = None, overwrite: bool = False) -> Inference:
    """The average of ``samples`` posterior samples (default 20), or posterior means
    (``samples=0``), of every output on the trials of ``splits`` (``"all"``, ``"valid"``,
    ``"train,valid"`` or a list), scored per split; the cut effectome pooled over every
    trial. ``out``, if given, is checked before any work and written at the end
    (``overwrite`` to replace it)."""
    import numpy as np
    import torch

    from mrlfads import metrics as M
    from mrlfads.effectome import input_cut_effectome, input_rms
    from mrlfads.tracking.shareable import manifest_digest, shared_manifest
    from mrlfads.training.api.datasets import open_dataset
    from mrlfads.training.config import check_against_data
    from mrlfads.training.data import load_split
    from mrlfads.training.evaluate import collect_outputs, cut_effectome_metrics, score
    from mrlfads.training.infer_io import OUTPUT_PREFIXES, check_out
    from mrlfads.training.loop import resolve_device
    from mrlfads.training.smoothing import smoothing_scores

    if out is not None:
        check_out(out, overwrite)
    data_set = open_dataset(dataset)
    m = data_set.manifest
    splits = _splits(splits, m)
    cfg = model.config.with_overrides({
        "data.valid_split": splits[0] if "valid" not in splits else "valid",
        "data.train_split": "train" if "train" in m.splits else splits[0]})
    check_against_data(cfg, m)
    dev = resolve_device(device)
    net = model.module.to(dev)
    torch.manual_seed(seed)
    parts, metrics, input_cuts = [], {}, []
    for split in splits:
        data = load_split(data_set.arrow, split, dev, with_truth=True)
        outputs, terms = collect_outputs(net, data, cfg, epoch=cfg.train.epochs, samples=samples)
        parts.append((split, data, outputs))
        scores = score(outputs, data, cfg.model, m.comm_matrix)
        scores.update(cut_effectome_metrics(net, data, m.comm_matrix, max_trials=data.n_trials,
                                            cut_effects=m.cut_effects))
        if cfg.model.inferred_inputs:
            input_cuts.append(input_cut_effectome(net, data.heldin, data.ext,
                                                  sessions=data.session))
            scores.update({f"valid/effectome_inputs_cut/{r}": float(v)
                           for r, v in zip(cfg.model.region_names, input_cuts[-1])})
        # score() names keys valid/...; here each split gets its own prefix.
        for key, value in {**{f"valid/{t}": v for t, v in terms.items()}, **scores}.items():
            metrics[f"{split}/{key.removeprefix('valid/')}"] = value
    # beside the model's held-out score, smoothed held-in spikes' (training/smoothing.py)
    baselines, smoothing = smoothing_scores(data_set.arrow, splits, {p[0]: p[1] for p in parts})
    metrics.update(smoothing)
    outputs = {k: np.concatenate([p[2][k] for p in parts]) for k in parts[0][2]}
    trial_id = np.concatenate([p[1].trial_id for p in parts])
    split_col = np.concatenate([np.full(p[1].n_trials, p[0]) for p in parts])
    names = list(cfg.model.region_names)
    weights = [p[1].n_trials for p in parts]
    messages = {tuple(k.split("/", 1)[1].split("->")): v for k, v in outputs.items()
                if k.startswith("messages/")}
    E_rms = M.effectome(messages, names) if messages else None
    # the cut effectome over every trial written: per split it is an RMS, so pool squares
    E_cut = None
    if messages:
        squares = [np.array([[metrics.get(f"{p[0]}/effectome_cut/{s}_to_{d}", np.nan) ** 2
                              for s in names] for d in names]) for p in parts]
        E_cut = np.sqrt(sum(w * q for w, q in zip(weights, squares)) / sum(weights))
    inputs_cut = inputs_rms = None
    if input_cuts:  # pooled over splits like the cut effectome: mean of squares by trials
        inputs_cut = np.sqrt(sum(w * q**2 for w, q in zip(weights, input_cuts)) / sum(weights))
        inputs_rms = input_rms({r: outputs[f"inputs/{r}"] for r in names}, names)
    info = {"regions": names, "pairs": [f"{s}->{d}" for s, d in messages],
            "bins": [cfg.model.ic_enc_seq_len, m.n_bins], "obs_model": cfg.model.obs_model,
            "model": model.source, "data": data_set.uri, "splits": splits,
            "samples": samples, "seed": seed,
            "heldout": {r.name: r.n_heldout for r in m.regions},
            "dataset": m.name, "dataset_digest": manifest_digest(m.to_dict())}
    if baselines:  # per session ("all" for one): the kernel and penalty chosen
        info["smoothing_baseline"] = {name: {"width_s": b.width_s, "alpha": b.alpha,
                                             "fitted_on": "train"}
                                      for name, b in baselines.items()}
    closed = [f"{names[a]}->{names[b]}" for (a, b), is_open
              in zip(cfg.model.pairs, cfg.model.open_pathways) if not is_open]
    if closed:  # ModelConfig.pathways: these carry nothing by construction
        info["closed_pathways"] = closed
    # what the output directory holds: the outputs proper, without zero-width ones
    arrays = {k: outputs[k] for k in sorted(outputs)
              if k.startswith(OUTPUT_PREFIXES) and outputs[k].shape[-1] > 0}
    coords = {"trial": trial_id, "split": split_col,
              "time": np.arange(cfg.model.ic_enc_seq_len, m.n_bins)}
    if cfg.model.sessions:  # each trial's session; rates are predicted for every neuron
        session_names = np.asarray([x.name for x in cfg.model.sessions])
        coords["session"] = np.concatenate([session_names[p[1].session.cpu().numpy()]
                                            for p in parts])
        info["sessions"] = [x.name for x in cfg.model.sessions]
    for r in m.regions:
        if r.neuron_ids:
            coords[f"{r.name}/neuron"] = np.asarray(r.neuron_ids[: r.n_heldin])
            if r.n_heldout:
                coords[f"{r.name}/heldout_neuron"] = np.asarray(r.neuron_ids[r.n_heldin:])
    result = Inference(arrays, coords, Effectome(tuple(names), E_cut, E_rms, inputs_cut,
                                                 inputs_rms),
                       metrics, info, shared_manifest(m.to_dict()))
    if out is not None:
        result.save(out, overwrite=overwrite)
    return result


def compare_effectomes(fits: Iterable[str | os.PathLike | Effectome]) -> dict:
    """Several fits' cut effectomes of one dataset (`mrlfads infer` output folders, their
    effectome.json, or `Inference.effectome`), e.g. from other training seeds: each
    pathway's values, mean and range, the pathways whose order the fits disagree on, and
    the tiers every fit agrees on (training/effectome_compare.py)."""
    import numpy as np

    from mrlfads.training.effectome_compare import CutEffectome, compare, read_effectome

    read = []
    for k, f in enumerate(fits):
        if isinstance(f, Effectome):
            if f.cut is None:
                raise ValueError(f"fit {k}: its effectome has no cut matrix")
            read.append(CutEffectome(f"fit {k}", tuple(f.regions), np.asarray(f.cut, float)))
        else:
            read.append(read_effectome(f))
    return compare(read)

