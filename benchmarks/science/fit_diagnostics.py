"""Diagnostics of fits against the truth (docs/RESULTS.md, "What a cosine of 0.9 asks" and
"How far ahead the controller sees").

    .venv/bin/python benchmarks/science/fit_diagnostics.py --data DATASET ... \
        [--fit BEST_PT DATASET ...] [--lags -30 -20 -10 0]

``--data``: the cosine with each dataset's true matrix of two effectomes built from the
truth alone: "ranked" (present pathways 1, absent 0) and "sqrt" (present pathways the
square root of their message dimension).
``--fit``: a checkpoint and its dataset; the cut effectome and the message-information
effectome (each pathway's message KL from its prior per bin, summed over dimensions,
averaged over validation trials and bins), both scored against the truth; and the
message R^2 with the truth shifted: the inferred messages of bin t against the true ones
of bin t + lag, over the same bins for every lag.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def reference_cosines(comm_matrix) -> dict[str, float]:
    from mrlfads import metrics as M

    truth = np.asarray(comm_matrix, dtype=float)
    return {"ranked": M.effectome_cosine((truth > 0).astype(float), truth),
            "sqrt": M.effectome_cosine(np.sqrt(truth), truth)}


def information_effectome(outputs, n_regions: int) -> np.ndarray:
    """(R, R), ``E[dst, src]`` = mean over trials and bins of the message's KL (nats),
    summed over its dimensions, from the ``ModelOutput``s of a no-sampling pass."""
    import torch

    from mrlfads.loss import kl_diag_gaussian

    with torch.no_grad():  # the prior's log-variance is a parameter
        per_trial = [kl_diag_gaussian(o.msg_mean.double(), o.msg_var.double(),
                                      o.com_prior_logvar.double()).sum(3).mean(1)  # (B, P)
                     for o in outputs]
    kl_pair = torch.cat(per_trial).mean(0).numpy()
    E = np.full((n_regions, n_regions), np.nan)
    for p, (src, dst) in enumerate(outputs[0].pairs):
        E[dst, src] = kl_pair[p]
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


def score_fit(checkpoint: str, data: str, lags=()) -> dict:
    import torch

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
    out.update(effectome_truth_scores(information_effectome(outs, len(m.region_names)),
                                      m.comm_matrix, "information"))
    out = {k.removeprefix("valid/"): round(v, 3) for k, v in out.items()}
    out["cut_effectome"] = np.round(np.asarray(cut), 4).tolist()  # [target][source]
    if lags:
        messages = torch.cat([o.msg_mean for o in outs]).numpy()
        cols = [c for c in m.truth if c.startswith("truth/messages/")]
        order = torch.cat([rows for _, rows in valid.session_groups()]).numpy()  # outs' order
        true = {c: v[order, m.ic_enc_seq_len:] for c, v in ds.arrays("valid", cols).items()}
        out["lagged_message_r2"] = lagged_message_r2(messages, outs[0].pairs, true,
                                                     list(m.region_names), lags)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="*", default=[], help="datasets for the reference cosines")
    p.add_argument("--fit", nargs="*", default=[], metavar="BEST_PT DATASET",
                   help="pairs: a checkpoint, then the dataset it was fitted on")
    p.add_argument("--lags", type=int, nargs="*", default=[], metavar="BINS",
                   help="with --fit: message R^2 against the truth shifted by these bins")
    args = p.parse_args()
    if len(args.fit) % 2:
        p.error("--fit takes pairs: CHECKPOINT DATASET [CHECKPOINT DATASET ...]")
    from mrlfads.data_loaders.reader import ArrowDataset

    for data in args.data:
        truth = ArrowDataset.open(data).manifest.comm_matrix
        refs = {k: round(v, 3) for k, v in reference_cosines(truth).items()}
        print(json.dumps({"data": Path(data).name, **refs}))
    for checkpoint, data in zip(args.fit[::2], args.fit[1::2]):
        print(json.dumps({"fit": checkpoint, **score_fit(checkpoint, data, args.lags)}))


if __name__ == "__main__":
    main()
