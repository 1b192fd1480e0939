"""The spike-smoothing baseline on a dataset's splits (mrlfads/baselines.py; docs/MODEL.md,
"The smoothing baseline"): the held-out co-bps a model must beat, which `infer`, `train` and
`sweep` report beside the model's.

Fitted on the training split and scored on the others, for spike counts with held-out
neurons. A dataset of several sessions gets one baseline per session, on that session's
trials and neurons, since each session recorded other neurons; a session needs at least
MIN_TRAIN_TRIALS training trials.

A fit takes seconds to minutes and depends only on the data and the baseline's settings,
so each is kept in a cache folder (CACHE_ENV, default ``$XDG_CACHE_HOME/mrlfads`` or
``~/.cache/mrlfads``) under the digest of the dataset's manifest (which holds every shard's
sha256), the session, the training split and the settings; the next `infer` of the same
data reads it instead of fitting again, and does not read the training split.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mrlfads.atomic import open_atomic
from mrlfads.files import cache_root

if TYPE_CHECKING:
    from mrlfads.baselines import SmoothingBaseline
    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.training.data import SplitTensors

# Training trials needed before the baseline is fitted: it holds a quarter back to choose
# its kernel, and a handful of trials would choose by noise.
MIN_TRAIN_TRIALS = 16
KEY = "smoothing_co_bps"
# where fitted baselines are kept; set to an empty string for no cache
CACHE_ENV = "MRLFADS_CACHE_DIR"
MEANING = "smoothed held-in spikes: the held-out score to beat"  # beside the value, for people


def applies(manifest: Any, train_split: str = "train") -> bool:
    """Whether a baseline may be fitted for this dataset: spike counts, held-out neurons
    and enough training trials (per session, smoothing_scores checks again)."""
    return (manifest.obs_model == "poisson"
            and manifest.splits.get(train_split, 0) >= MIN_TRAIN_TRIALS
            and any(r.n_heldout for r in manifest.regions))


def cache_dir() -> Path | None:
    """The folder fitted baselines are kept in (CACHE_ENV, else the user's cache folder);
    None when CACHE_ENV is set empty."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return Path(value).expanduser() if value.strip() else None
    return cache_root()


def _cache_file(manifest: Any, session: str, train_split: str, settings: Any) -> Path | None:
    from mrlfads.tracking.shareable import manifest_digest

    root = cache_dir()
    if root is None:
        return None
    # "format": raise it whenever mrlfads/baselines.py would fit the same data differently,
    # so that no fit made the old way is read back
    key = json.dumps({"format": 1, "dataset": manifest_digest(manifest.to_dict()),
                      "session": session, "train_split": train_split,
                      "settings": dataclasses.asdict(settings)}, sort_keys=True)
    return root / "smoothing" / f"{hashlib.sha256(key.encode()).hexdigest()}.npz"


def _cached(path: Path | None) -> SmoothingBaseline | None:
    """The baseline saved at ``path``; None where there is none or it cannot be read (it is
    then fitted again and rewritten)."""
    from mrlfads.baselines import SmoothingBaseline
    from mrlfads.metrics import MetricsError

    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            return SmoothingBaseline.from_arrays({k: saved[k] for k in saved.files})
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, MetricsError):
        return None


def _keep(path: Path | None, baseline: SmoothingBaseline) -> None:
    """Write the fit to ``path`` atomically; a folder that cannot be written costs a warning,
    never the scores."""
    if path is None:
        return
    try:
        with open_atomic(path, "wb") as f:
            np.savez(f, **baseline.to_arrays())
    except OSError as exc:
        warnings.warn(f"the smoothing baseline was not cached in {path.parent} ({exc}); set "
                      f"{CACHE_ENV} to a folder you can write, or to '' for no cache",
                      stacklevel=3)


def smoothing_scores(dataset: ArrowDataset, splits: Iterable[str],
                     loaded: Mapping[str, SplitTensors] | None = None,
                     train_split: str = "train",
                     ) -> tuple[dict[str, SmoothingBaseline], dict[str, float]]:
    """The fitted baselines and their scores on each of ``splits`` but ``train_split`` (the
    one they are fitted on), over the bins a model's co-bps covers (from
    ``ic_enc_seq_len``): ``<split>/smoothing_co_bps`` (every region's held-out neurons
    pooled, like ``co_bps``) and ``<split>/smoothing_co_bps/<r>``. With several sessions
    these keys are ``<split>/session/<name>/smoothing_co_bps[/<r>]``, like the model's
    per-session scores, and ``<split>/smoothing_co_bps`` pools them weighted by their
    held-out spikes, given only when every session with such spikes has a baseline.
    Baselines are keyed by session name ("all" for one session). ``loaded`` may hold splits
    already read. A baseline fitted before on the same data and settings is read from the
    cache (``cache_dir``). ``({}, {})`` where the baseline does not apply."""
    import torch

    from mrlfads import metrics as M
    from mrlfads.baselines import SmoothingConfig, fit_smoothing_baseline
    from mrlfads.data_loaders import sessions as S
    from mrlfads.metrics import MetricsError
    from mrlfads.training.data import load_split

    m = dataset.manifest
    scored = [s for s in splits if s != train_split]
    if not scored or not applies(m, train_split):
        return {}, {}
    loaded = loaded or {}
    names = [r.name for r in m.regions]
    if m.sessions:  # each session: its own neurons' columns, region by region
        groups = [(i, x.name, f"session/{x.name}/", [b[i] for b in
                                                     (S.blocks(m.sessions, r) for r in names)])
                  for i, x in enumerate(m.sessions)]
    else:
        groups = [(None, S.SINGLE_SESSION, "",
                   [S.SessionBlock(slice(0, r.n_heldin), slice(0, r.n_heldout))
                    for r in m.regions])]

    host: dict[str, tuple] = {}  # split -> its held-in, held-out and sessions, on the host once

    def counts(split: str, session: int | None, blocks) -> tuple[np.ndarray, np.ndarray]:
        if split not in host:
            data = (loaded[split] if split in loaded
                    else load_split(dataset, split, torch.device("cpu")))
            host[split] = ([t.cpu().numpy() for t in data.heldin],
                           [t.cpu().numpy() for t in data.heldout],
                           None if data.session is None else data.session.cpu().numpy())
        heldin, heldout, sessions = host[split]
        rows = slice(None) if session is None else sessions == session
        return tuple(np.concatenate([a[rows][..., getattr(b, which)]
                                     for a, b in zip(parts, blocks)], axis=-1)
                     for parts, which in ((heldin, "heldin"), (heldout, "heldout")))

    tau = m.ic_enc_seq_len
    baselines: dict[str, SmoothingBaseline] = {}
    out: dict[str, float] = {}
    pooled = {split: [0.0, 0.0] for split in scored}  # spike-weighted sum, spikes
    missing: set[str] = set()  # splits with held-out spikes in a session without a baseline
    settings = SmoothingConfig()
    for session, name, prefix, blocks in groups:
        path = _cache_file(m, name, train_split, settings)
        baseline = _cached(path)
        if baseline is None:
            train_in, train_out = counts(train_split, session, blocks)
            if (train_in.shape[0] >= MIN_TRAIN_TRIALS and train_in.shape[-1]
                    and train_out.shape[-1]):
                try:
                    baseline = fit_smoothing_baseline(train_in, train_out, m.bin_width_s,
                                                      settings)
                    _keep(path, baseline)
                except MetricsError as exc:  # e.g. no held-out spike in the held-back trials
                    warnings.warn(f"the smoothing baseline of {name!r} was not fitted: {exc}",
                                  stacklevel=2)
        if baseline is not None:
            baselines[name] = baseline
        bounds = np.cumsum([0] + [b.heldout.stop - b.heldout.start for b in blocks])
        for split in scored:
            heldin, heldout = counts(split, session, blocks)
            y = heldout[:, tau:]
            if baseline is None:
                if y.sum() > 0:
                    missing.add(split)
                continue
            log_rates = baseline.log_rates(heldin)[:, tau:]
            value = M.bits_per_spike(y, log_rates)
            out[f"{split}/{prefix}{KEY}"] = value
            for r, lo, hi in zip(names, bounds[:-1], bounds[1:]):
                if hi > lo:
                    out[f"{split}/{prefix}{KEY}/{r}"] = M.bits_per_spike(y[..., lo:hi],
                                                                         log_rates[..., lo:hi])
            if np.isfinite(value):
                pooled[split][0] += value * y.sum()
                pooled[split][1] += y.sum()
    if m.sessions:
        for split, (total, spikes) in pooled.items():
            if spikes > 0 and split not in missing:
                out[f"{split}/{KEY}"] = float(total / spikes)
    return baselines, out


def report_after_training(dataset: ArrowDataset, run_cfg: Any, history: list[dict[str, float]],
                          loaded: Mapping[str, SplitTensors], tracker: Any = None) -> dict[str, float]:
    """After `mrlfads train`: the baseline on the validation split, logged beside the
    model's metrics as ``valid/smoothing_co_bps`` (per region and session too) at the last
    epoch, and a line comparing it with best.pt's held-out co-bps. ``{}`` where it does not
    apply."""
    from mrlfads.training.fit import epochs_since_best

    d = run_cfg.data
    scores = _validation_scores(dataset, d, loaded)
    if not scores:
        return {}
    best_epoch, _ = epochs_since_best(history)
    at_best = next((m for m in history if best_epoch is not None and m["epoch"] == best_epoch),
                   None)
    smoothed = scores.get(f"valid/{KEY}")  # absent: a session without a baseline
    if at_best is not None and "valid/co_bps" in at_best and smoothed is not None:
        model = at_best["valid/co_bps"]
        verdict = "" if model > smoothed else ": best.pt does not beat it"
        print(f"held-out co-bps on {d.valid_split}: best.pt (epoch {best_epoch}) {model:.4f}, "
              f"smoothed held-in spikes {smoothed:.4f}{verdict}", flush=True)
    if tracker is not None and history:
        tracker.log_metrics({k: v for k, v in scores.items() if np.isfinite(v)},
                            step=int(history[-1]["epoch"]))
    return scores


def for_sweep(plan: Any) -> dict[str, float]:
    """``valid/smoothing_co_bps`` (and per region) on a sweep's dataset, which the sweep's
    summary and its MLflow parent run show beside the trials' held-out co-bps; ``{}`` where
    the baseline does not apply."""
    from mrlfads.training.api.datasets import open_dataset

    d = plan.run.data
    data = open_dataset(d.uri).arrow
    if applies(data.manifest, d.train_split):  # up to a minute or two on a large dataset
        print(f"fitting the smoothing baseline on the {d.train_split} split", flush=True)
    return _validation_scores(data, d, None)


def _validation_scores(dataset: ArrowDataset, data_cfg: Any,
                       loaded: Mapping[str, SplitTensors] | None) -> dict[str, float]:
    """The baseline on the run's validation split, keyed ``valid/...`` as training logs its
    validation metrics whatever the split is called."""
    _, scores = smoothing_scores(dataset, [data_cfg.valid_split], loaded,
                                 train_split=data_cfg.train_split)
    return {"valid/" + k.split("/", 1)[1]: v for k, v in scores.items()}
