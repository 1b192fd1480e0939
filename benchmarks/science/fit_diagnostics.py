"""Diagnostics of fits against the truth (docs/RESULTS.md, "What a cosine of 0.9 asks" and
"How far ahead the controller sees").

    .venv/bin/python benchmarks/science/fit_diagnostics.py --data DATASET ... \
        [--fit BEST_PT DATASET ...] [--lags -30 -20 -10 0] [--contents [--past 24]]

``--data``: the cosine with each dataset's true matrix of two effectomes built from the
truth alone: "ranked" (present pathways 1, absent 0) and "sqrt" (present pathways the
square root of their message dimension).
``--fit``: a checkpoint and its dataset; the cut effectome and the message-information
effectome (each pathway's message KL from its prior per bin, summed over dimensions,
averaged over validation trials and bins) and the likelihood effectome (how many bits per
spike the target's held-in and held-out neurons lose on the validation trials when the
pathway is cut) and the mean-ablation cut effectome (each pathway's message held at its
mean over the validation trials and bins instead of zeroed; docs/RESULTS.md, "Which
effectome"), each printed ([target][source]) and scored against the truth (the
likelihood effectome with its negative entries, pathways the fit is better without, as
0); and the message R^2 with the truth shifted: the inferred messages of
bin t against the true ones of bin t + lag, over the same bins for every lag.
``--contents``: with ``--fit``, what each inferred message carries (``message_contents``):
the share of its variance a ridge map explains from the source's true log-rates, from the
source's true inputs, and from the target's own true log-rates ``--past`` bins earlier
(docs/RESULTS.md, "Random-2's reverse pathway").
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def reference_cosines(comm_matrix, cut_effects=None) -> dict[str, float]:
    """Cosines with the true matrix of effectomes built from the truth alone: every present
    pathway 1 (``ranked``), the square root of its dimension (``sqrt``) and, for a dataset
    simulated with it, the network's own cut effectome (``network_cut``)."""
    from mrlfads import metrics as M

    truth = np.asarray(comm_matrix, dtype=float)
    out = {"ranked": M.effectome_cosine((truth > 0).astype(float), truth),
           "sqrt": M.effectome_cosine(np.sqrt(truth), truth)}
    if cut_effects is not None:
        out["network_cut"] = M.effectome_cosine(cut_effects, truth)
    return out


def information_effectome(outputs, n_regions: int) -> np.ndarray:
    """(R, R), ``E[dst, src]`` = mean over trials and bins of the message's KL (nats),
    summed over its dimensions, from the ``ModelOutput``s of a no-sampling pass; 0 for a
    closed pathway (``ModelConfig.pathways``)."""
    import torch

    from mrlfads.loss import kl_diag_gaussian

    with torch.no_grad():  # the prior's log-variance is a parameter
        per_trial = [kl_diag_gaussian(o.msg_mean.double(), o.msg_var.double(),
                                      o.com_prior_logvar.double()).sum(3).mean(1)  # (B, P)
                     for o in outputs]
    kl_pair = torch.cat(per_trial).mean(0).numpy()
    open_ = outputs[0].open_pathways or (True,) * len(outputs[0].pairs)
    E = np.full((n_regions, n_regions), np.nan)
    for p, (src, dst) in enumerate(outputs[0].pairs):
        E[dst, src] = kl_pair[p] if open_[p] else 0.0  # a closed pathway has no message
    return E


def mean_cut_effectome(model, valid, outputs) -> np.ndarray:
    """(R, R), ``cut_effectome`` with each pathway's message held at its mean (over the
    validation trials and bins) instead of zeroed: the mean's drive is added to the target
    generator's input bias while the pathway is silenced, then the bias is put back.
    ``outputs``: ``_run``'s uncut pass over ``valid``."""
    import torch

    from mrlfads.effectome import _rms_change, message_rows
    from mrlfads.inference import _run

    names, s, C = model.cfg.region_names, model.sizes, model.cfg.com_dim
    T = valid.heldin[0].shape[1]
    msg = torch.cat([o.msg_mean for o in outputs])  # (trials, T', P, C)
    E = np.full((s.R, s.R), np.nan)
    bias = model.gen_b_ih.detach().clone()
    for p, (src, dst) in enumerate(s.pairs):
        with torch.no_grad():
            w = (model.gen_w_iu * model.gen_w_iu_mask)[dst, message_rows(model, src, dst)]
            model.gen_b_ih[dst, 0] += msg[:, :, p].reshape(-1, C).mean(0) @ w
        try:
            cut = _run(model, valid.heldin, valid.ext, 256, valid.session,
                       silence={f"{names[src]}->{names[dst]}": (0, T)})
        finally:
            with torch.no_grad():
                model.gen_b_ih.copy_(bias)
        E[dst, src] = _rms_change(outputs, cut, dst)
    return E


def likelihood_effectome(model, valid, outputs) -> np.ndarray:
    """(R, R), ``E[dst, src]`` = how much worse the target's neurons (held-in and held-out,
    validation trials, reconstructed bins) are explained when pathway src -> dst is cut for
    the whole trial: the NLL increase in bits per spike of the target for spike counts, in
    nats per observed element for gaussian data. Negative where the fit is better without
    the pathway. ``outputs``: ``_run``'s uncut pass over ``valid`` (session order)."""
    import math

    import torch

    from mrlfads.inference import _run
    from mrlfads.loss import _recorded, observation_nll

    names, s = model.cfg.region_names, model.sizes
    order = torch.cat([rows for _, rows in valid.session_groups()])  # outputs' trial order
    T = valid.heldin[0].shape[1]

    def nll(outs, r: int) -> tuple[float, float]:
        """Region r's NLL summed over trials, and its spike (or element) count."""
        total = count = 0.0
        at = 0
        for o in outs:
            rows = order[at: at + o.readout[r].shape[0]]
            at += len(rows)
            Tp = o.readout[r].shape[1]
            for read, logvar, x, rec in (
                    (o.readout[r], o.obs_logvar, valid.heldin[r], o.recorded),
                    (o.heldout_readout[r], o.heldout_logvar, valid.heldout[r],
                     o.recorded_heldout)):
                if read.shape[-1] == 0:
                    continue
                x = x[rows, -Tp:].double()
                w = _recorded(None, rec, r)
                w = torch.ones_like(x) if w is None else w.double().expand_as(x)
                lv = None if logvar is None else logvar[r].double()
                total += float(observation_nll(o.obs_model, read.double(), lv, x, w)) * len(rows)
                count += float((x * w).sum() if o.obs_model == "poisson" else w.sum())
        return total, count

    base = [nll(outputs, r) for r in range(s.R)]
    unit = math.log(2) if model.cfg.obs_model == "poisson" else 1.0
    E = np.full((s.R, s.R), np.nan)
    with torch.no_grad():
        for src, dst in s.pairs:
            cut = _run(model, valid.heldin, valid.ext, 256, valid.session,
                       silence={f"{names[src]}->{names[dst]}": (0, T)})
            total, count = base[dst]
            E[dst, src] = (nll(cut, dst)[0] - total) / (count * unit) if count else np.nan
    return E


def lagged_message_r2(messages: np.ndarray, pairs, truth: dict[str, np.ndarray],
                      regions, lags) -> dict[str, dict[int, float]]:
    """Per true pathway, message R^2 (``metrics.message_r2``) of the inferred messages at
    bins t against the true ones at t + lag, t over the bins where every lag stays inside
    the trial. ``messages`` (trials, T', P, C); ``truth[name]`` (trials, T', d)."""
    from mrlfads import metrics as M

    T = messages.shape[1]
    lo, hi = max(0, -min(lags)), T - max(0, max(lags))
    out = {}
    for col, y in truth.items():
        src, dst = col.rsplit("/", 1)[1].split("->")
        x = messages[:, lo:hi, pairs.index((regions.index(src), regions.index(dst)))]
        out[col] = {lag: round(M.message_r2({(src, dst): x},
                                            {(src, dst): y[:, lo + lag:hi + lag]})["mean"], 3)
                    for lag in lags}
    return out


def message_contents(messages: np.ndarray, pairs, truth: dict[str, np.ndarray], regions,
                     past: int) -> dict[str, dict[str, float]]:
    """Per pathway 'src->dst': cross-validated R^2 (spiking_grid's ridge: fitted on the
    first half of the trials, scored on the second) of the inferred message at bin t from
    ``source``: the source's true log-rates at t; ``source_inputs``: the source's true
    inputs at t (absent when it has none); ``target_past``: the target's true log-rates at
    t - past. ``messages`` (trials, T', P, C); ``truth`` keyed by the dataset's truth
    columns, each (trials, T', ...) over the same bins."""
    import sys

    here = str(Path(__file__).resolve().parent)
    if here not in sys.path:
        sys.path.insert(0, here)
    from spiking_grid import _ridge_r2

    log_rates = {r: np.log(truth[f"truth/rates/{r}"].astype(np.float64)) for r in regions}
    out = {}
    for p, (s, d) in enumerate(pairs):
        src, dst = regions[s], regions[d]
        y = messages[:, :, p].astype(np.float64)
        row = {"source": _ridge_r2(log_rates[src][:, past:], y[:, past:])}
        inputs = truth.get(f"truth/inputs/{src}")
        if inputs is not None:
            row["source_inputs"] = _ridge_r2(inputs[:, past:].astype(np.float64), y[:, past:])
        row["target_past"] = _ridge_r2(log_rates[dst][:, :y.shape[1] - past], y[:, past:])
        out[f"{src}->{dst}"] = {k: round(v, 3) for k, v in row.items()}
    return out


def score_fit(checkpoint: str, data: str, lags=(), past: int | None = None) -> dict:
    import torch

    from mrlfads import metrics as M
    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.effectome import cut_effectome
    from mrlfads.inference import _run
    from mrlfads.training.checkpoint import load_model
    from mrlfads.training.data import load_split
    from mrlfads.training.evaluate import effectome_truth_scores

    model, _, _ = load_model(checkpoint)
    ds = ArrowDataset.open(data)
    m = ds.manifest
    valid = load_split(ds, "valid", torch.device("cpu"))
    # posterior means, no autograd; a stitched model's outputs come session by session
    outs = _run(model, valid.heldin, valid.ext, 256, valid.session)
    cut = cut_effectome(model, valid.heldin, valid.ext, sessions=valid.session)
    out = effectome_truth_scores(cut, m.comm_matrix, "cut")
    if m.cut_effects is not None:  # against what a perfect fit's cut effectome would be
        out["valid/cut_network_cosine"] = M.effectome_cosine(cut, m.cut_effects)
    info = information_effectome(outs, len(m.region_names))
    out.update(effectome_truth_scores(info, m.comm_matrix, "information"))
    mean_cut = mean_cut_effectome(model, valid, outs)
    out.update(effectome_truth_scores(mean_cut, m.comm_matrix, "mean_cut"))
    like = likelihood_effectome(model, valid, outs)
    out.update(effectome_truth_scores(np.clip(like, 0, None), m.comm_matrix, "likelihood"))
    out = {k.removeprefix("valid/"): round(v, 3) for k, v in out.items()}
    out["cut_effectome"] = np.round(np.asarray(cut), 4).tolist()  # [target][source]
    out["mean_cut_effectome"] = np.round(mean_cut, 4).tolist()  # [target][source]
    out["information_effectome"] = np.round(info, 6).tolist()  # nats per bin, [target][source]
    out["likelihood_effectome"] = np.round(like, 5).tolist()  # bits per spike, [target][source]
    if lags or past is not None:
        messages = torch.cat([o.msg_mean for o in outs]).numpy()
        order = torch.cat([rows for _, rows in valid.session_groups()]).numpy()  # outs' order
        true = {c: v[order, m.ic_enc_seq_len:]
                for c, v in ds.arrays("valid", list(m.truth)).items()}
    if lags:
        msgs = {c: v for c, v in true.items() if c.startswith("truth/messages/")}
        out["lagged_message_r2"] = lagged_message_r2(messages, outs[0].pairs, msgs,
                                                     list(m.region_names), lags)
    if past is not None:
        out["message_contents"] = message_contents(messages, outs[0].pairs, true,
                                                   list(m.region_names), past)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="*", default=[], help="datasets for the reference cosines")
    p.add_argument("--fit", nargs="*", default=[], metavar="BEST_PT DATASET",
                   help="pairs: a checkpoint, then the dataset it was fitted on")
    p.add_argument("--lags", type=int, nargs="*", default=[], metavar="BINS",
                   help="with --fit: message R^2 against the truth shifted by these bins")
    p.add_argument("--contents", action="store_true",
                   help="with --fit: what each message carries (source, its inputs, the "
                        "target's own past)")
    p.add_argument("--past", type=int, default=24, metavar="BINS",
                   help="with --contents: how far back the target's past is read (24)")
    args = p.parse_args()
    if len(args.fit) % 2:
        p.error("--fit takes pairs: CHECKPOINT DATASET [CHECKPOINT DATASET ...]")
    from mrlfads.data_loaders.reader import ArrowDataset

    for data in args.data:
        m = ArrowDataset.open(data).manifest
        refs = {k: round(v, 3) for k, v in reference_cosines(m.comm_matrix, m.cut_effects).items()}
        print(json.dumps({"data": Path(data).name, **refs}))
    for checkpoint, data in zip(args.fit[::2], args.fit[1::2]):
        print(json.dumps({"fit": checkpoint, **score_fit(checkpoint, data, args.lags,
                                                           args.past if args.contents else None)}))


if __name__ == "__main__":
    main()
