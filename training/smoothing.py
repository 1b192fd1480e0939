"""The spike-smoothing baseline on a dataset's splits (mrlfads/baselines.py; docs/MODEL.md,
"Metrics"): the held-out co-bps a model must beat, which `infer`, `train` and `sweep`
report beside the model's.

Fitted on the training split and scored on the others, only where it means something: one
session of spike counts with held-out neurons and at least MIN_TRAIN_TRIALS training trials.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mrlfads.baselines import SmoothingBaseline
    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.training.data import SplitTensors

# Training trials needed before the baseline is fitted: it holds a quarter back to choose
# its kernel, and a handful of trials would choose by noise.
MIN_TRAIN_TRIALS = 16
KEY = "smoothing_co_bps"


def applies(manifest: Any, train_split: str = "train") -> bool:
    """Whether the baseline is fitted for this dataset (see the module docstring; a stitched
    dataset's sessions record different neurons, which one GLM cannot map)."""
    return (manifest.obs_model == "poisson" and len(manifest.sessions) <= 1
            and manifest.splits.get(train_split, 0) >= MIN_TRAIN_TRIALS
            and any(r.n_heldout for r in manifest.regions))


def smoothing_scores(dataset: ArrowDataset, splits: Iterable[str],
                     loaded: Mapping[str, SplitTensors] | None = None,
                     train_split: str = "train",
                     ) -> tuple[SmoothingBaseline | None, dict[str, float]]:
    """The fitted baseline and ``<split>/smoothing_co_bps`` (every region's held-out neurons
    pooled, like ``co_bps``) and ``<split>/smoothing_co_bps/<r>`` for each of ``splits``
    but ``train_split`` (the one it is fitted on), scored over the bins a model's co-bps covers (from
    ``ic_enc_seq_len``). ``loaded`` may hold splits already read. ``(None, {})`` where the
    baseline does not apply."""
    import torch

    from mrlfads import metrics as M
    from mrlfads.baselines import fit_smoothing_baseline
    from mrlfads.metrics import MetricsError
    from mrlfads.training.data import load_split

    m = dataset.manifest
    scored = [s for s in splits if s != train_split]
    if not scored or not applies(m, train_split):
        return None, {}
    loaded = dict(loaded or {})

    def counts(split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in loaded:
            loaded[split] = load_split(dataset, split, torch.device("cpu"))
        data = loaded[split]
        return tuple(np.concatenate([t.cpu().numpy() for t in parts], axis=-1)
                     for parts in (data.heldin, data.heldout))

    try:
        baseline = fit_smoothing_baseline(*counts(train_split), m.bin_width_s)
    except MetricsError as exc:  # e.g. no held-out spike in the trials that choose the kernel
        warnings.warn(f"the smoothing baseline was not fitted: {exc}", stacklevel=2)
        return None, {}
    tau = m.ic_enc_seq_len
    bounds = np.cumsum([0] + [r.n_heldout for r in m.regions])
    out: dict[str, float] = {}
    for split in scored:
        heldin, heldout = counts(split)
        y, log_rates = heldout[:, tau:], baseline.log_rates(heldin)[:, tau:]
        out[f"{split}/{KEY}"] = M.bits_per_spike(y, log_rates)
        for r, lo, hi in zip(m.regions, bounds[:-1], bounds[1:]):
            if hi > lo:
                out[f"{split}/{KEY}/{r.name}"] = M.bits_per_spike(y[..., lo:hi],
                                                                  log_rates[..., lo:hi])
    return baseline, out


def report_after_training(dataset: ArrowDataset, run_cfg: Any, history: list[dict[str, float]],
                          loaded: Mapping[str, SplitTensors], tracker: Any = None) -> dict[str, float]:
    """After `mrlfads train`: the baseline on the validation split, logged beside the
    model's metrics as ``valid/smoothing_co_bps`` (and per region) at the last epoch, and a
    line comparing it with best.pt's held-out co-bps. ``{}`` where it does not apply."""
    from mrlfads.training.fit import epochs_since_best

    d = run_cfg.data
    scores = _validation_scores(dataset, d, loaded)
    if not scores:
        return {}
    best_epoch, _ = epochs_since_best(history)
    at_best = next((m for m in history if best_epoch is not None and m["epoch"] == best_epoch),
                   None)
    smoothed = scores[f"valid/{KEY}"]
    if at_best is not None and "valid/co_bps" in at_best:
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
    return _validation_scores(open_dataset(d.uri).arrow, d, None)


def _validation_scores(dataset: ArrowDataset, data_cfg: Any,
                       loaded: Mapping[str, SplitTensors] | None) -> dict[str, float]:
    """The baseline on the run's validation split, keyed ``valid/...`` as training logs its
    validation metrics whatever the split is called."""
    _, scores = smoothing_scores(dataset, [data_cfg.valid_split], loaded,
                                 train_split=data_cfg.train_split)
    return {"valid/" + k.split("/", 1)[1]: v for k, v in scores.items()}
