"""The figures a person looks at after a fit: effectomes (cut, the default, and message RMS;
truth beside them), rates vs data,
messages over time. Drawn from posterior means on validation trials; tracking/figures.py
does the drawing, this module only gathers what to draw.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from data_loaders import schema
from mrlfads import metrics as M
from mrlfads.effectome import cut_effectome
from training.data import load_split
from training.evaluate import collect_outputs


def make_model_figures(model: Any, dataset: Any, run_cfg: Any, out_dir: str | Path,
                       n_trials: int = 32) -> list[Path]:
    """Write the PNGs for ``model`` on the first validation trials; returns their paths."""
    from tracking import figures

    out = Path(out_dir)
    m = dataset.manifest
    device = next(model.parameters()).device
    data = load_split(dataset, run_cfg.data.valid_split, device, with_truth=True).head(n_trials)
    outputs, _ = collect_outputs(model, data, run_cfg, epoch=run_cfg.train.epochs)
    names = list(run_cfg.model.region_names)
    tau = run_cfg.model.ic_enc_seq_len
    paths = []
    messages = {tuple(k.split("/", 1)[1].split("->")): v for k, v in outputs.items()
                if k.startswith("messages/")}
    if messages:
        truth = np.asarray(m.comm_matrix, dtype=float) if np.any(m.comm_matrix) else None
        cut = cut_effectome(model, data.heldin, data.ext)
        paths.append(figures.effectome_heatmap(cut, names, out / "effectome.png", truth=truth,
                                               title=figures.EFFECTOME_PREFIXES["effectome_cut/"]))
        paths.append(figures.effectome_heatmap(
            M.effectome(messages, names), names, out / "effectome_message_rms.png", truth=truth,
            title=figures.EFFECTOME_PREFIXES["effectome/"]))
        true_msgs = {f"{s}->{d}": data.truth[schema.truth_messages_col(s, d)][0, tau:]
                     for s, d in messages if schema.truth_messages_col(s, d) in data.truth}
        paths.append(figures.messages_over_time(
            {f"{s}->{d}": v[0] for (s, d), v in messages.items()}, out / "messages.png",
            truth=true_msgs or None))
    rates = {n: outputs[f"rates/{n}"][0] for n in names}
    observed = {n: data.heldin[r][0, tau:].cpu().numpy() for r, n in enumerate(names)}
    paths.append(figures.rates_vs_data(rates, observed, out / "rates_vs_data.png",
                                       bin_width_s=m.bin_width_s, title="validation trial 0"))
    return paths


def log_model_figures(log_artifact, model: Any, dataset: Any, run_cfg: Any) -> None:
    """Draw the figures into a temporary folder and hand each to ``log_artifact(path, dir)``."""
    with tempfile.TemporaryDirectory() as tmp:
        for path in make_model_figures(model, dataset, run_cfg, tmp):
            log_artifact(str(path), "figures")
