"""Validation: posterior-mean outputs over a split, the loss terms and every metric.

Used each epoch by the Trainer and by `mrlfads infer`; the metric keys are the ones in
docs/DESIGN.md, which tracking logs unchanged.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from data_loaders import schema
from mrlfads import metrics as M
from mrlfads.loss import compute_loss
from mrlfads.model import MRLFADS
from training.data import SplitTensors

EVAL_BATCH = 256


@torch.no_grad()
def collect_outputs(model: MRLFADS, data: SplitTensors, run_cfg: Any, epoch: int,
                    batch_size: int = EVAL_BATCH) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Posterior-mean outputs of every trial as numpy, plus trial-weighted mean loss terms.

    Output keys: ``readout/<r>``, ``rates/<r>``, ``heldout/<r>``, ``factors/<r>``,
    ``inputs/<r>`` (when the model has inferred inputs), ``messages/<src>-><dst>``; all
    (trials, T - tau, dim).
    """
    was_training = model.training
    model.eval()
    names = model.cfg.region_names
    parts: dict[str, list[np.ndarray]] = {}
    totals: dict[str, float] = {}

    def keep(key: str, value: torch.Tensor) -> None:
        parts.setdefault(key, []).append(value.detach().float().cpu().numpy())

    for start in range(0, data.n_trials, batch_size):
        idx = torch.arange(start, min(start + batch_size, data.n_trials), device=data.heldin[0].device)
        heldin, heldout, ext = data.batch(idx)
        out = model(heldin, ext, sample=False)
        terms = compute_loss(out, heldin, heldout, run_cfg.loss, epoch)
        for key, value in terms.scalars().items():
            totals[key] = totals.get(key, 0.0) + value * len(idx)
        for r, name in enumerate(names):
            keep(f"readout/{name}", out.readout[r])
            keep(f"rates/{name}", out.rates[r])
            keep(f"heldout/{name}", out.heldout_readout[r])
            keep(f"factors/{name}", out.factors[r])
            if out.co_mean is not None:
                keep(f"inputs/{name}", out.co_mean[r])
        if out.msg_mean is not None:
            for p, (s, d) in enumerate(out.pairs):
                keep(f"messages/{names[s]}->{names[d]}", out.msg_mean[:, :, p])
    model.train(was_training)
    outputs = {k: np.concatenate(v) for k, v in parts.items()}
    return outputs, {k: v / data.n_trials for k, v in totals.items()}


def score(outputs: dict[str, np.ndarray], data: SplitTensors, model_cfg: Any,
          comm_matrix: Any = None, null_source: SplitTensors | None = None) -> dict[str, float]:
    """Reconstruction, held-out, effectome and (with ground truth) recovery metrics."""
    tau = model_cfg.ic_enc_seq_len
    names = list(model_cfg.region_names)
    out: dict[str, float] = {}
    for r, name in enumerate(names):
        x = data.heldin[r][:, tau:].cpu().numpy()  # (trials, T', N)
        y = data.heldout[r][:, tau:].cpu().numpy()  # (trials, T', H)
        if model_cfg.obs_model == "gaussian":
            out[f"valid/r2/{name}"] = float(M.r2(x, outputs[f"readout/{name}"]))
            if y.shape[-1]:
                out[f"valid/heldout_r2/{name}"] = float(M.r2(y, outputs[f"heldout/{name}"]))
        else:
            src = null_source if null_source is not None else data
            null_in = src.heldin[r][:, tau:].mean(dim=(0, 1)).cpu().numpy()
            out[f"valid/bps/{name}"] = float(M.bits_per_spike(x, outputs[f"readout/{name}"], null_in))
            if y.shape[-1]:
                null_out = src.heldout[r][:, tau:].mean(dim=(0, 1)).cpu().numpy()
                out[f"valid/co_bps/{name}"] = float(M.co_bps(y, outputs[f"heldout/{name}"], null_out))
    if len(names) > 1 and any(k.startswith("messages/") for k in outputs):
        messages = {tuple(k.split("/", 1)[1].split("->")): v
                    for k, v in outputs.items() if k.startswith("messages/")}
        E = M.effectome(messages, names)
        out.update(M.effectome_metrics(E, names))
        out.update(_truth_scores(E, messages, outputs, data, names, tau, comm_matrix))
    return out


def _truth_scores(E, messages, outputs, data, names, tau, comm_matrix) -> dict[str, float]:
    """Effectome cosine, message R^2 and inferred-input R^2 where the data has ground truth."""
    out: dict[str, float] = {}
    if comm_matrix is not None and np.any(np.asarray(comm_matrix)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out["valid/effectome_cosine"] = float(M.effectome_cosine(E, np.asarray(comm_matrix)))
    true_msgs = {}
    for col, arr in data.truth.items():
        pair = schema.parse_message_col(col)
        if pair is not None and pair in messages and arr.shape[-1] > 0:
            true_msgs[pair] = arr[:, tau:]
    if true_msgs and data.n_trials >= 4:
        inferred = {p: messages[p] for p in true_msgs}
        scores = M.message_r2(inferred, true_msgs)
        out["valid/message_r2"] = float(scores["mean"])
        for (s, d), value in ((k, v) for k, v in scores.items() if k != "mean"):
            out[f"valid/message_r2/{s}_to_{d}"] = float(value)
    true_inputs = {name: data.truth[schema.truth_inputs_col(name)][:, tau:]
                   for name in names if schema.truth_inputs_col(name) in data.truth}
    if true_inputs and all(f"inputs/{n}" in outputs for n in true_inputs) and data.n_trials >= 4:
        scores = M.inferred_input_r2({n: outputs[f"inputs/{n}"] for n in true_inputs}, true_inputs)
        out["valid/input_r2"] = float(scores["mean"])
    return out


def evaluate_split(model: MRLFADS, data: SplitTensors, run_cfg: Any, epoch: int,
                   null_source: SplitTensors | None = None,
                   comm_matrix: Any = None) -> dict[str, float]:
    """The per-epoch validation metrics (keys of docs/DESIGN.md)."""
    outputs, terms = collect_outputs(model, data, run_cfg, epoch)
    metrics = {f"valid/{k}": v for k, v in terms.items()}
    metrics.update(score(outputs, data, run_cfg.model, comm_matrix, null_source))
    return metrics
