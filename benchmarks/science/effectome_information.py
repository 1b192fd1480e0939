"""Two references for effectome cosines (docs/RESULTS.md, "What a cosine of 0.9 asks").

    .venv/bin/python benchmarks/science/effectome_information.py --data DATASET ... \
        [--fit BEST_PT DATASET ...]

``--data``: the cosine with each dataset's true matrix of two effectomes built from the
truth alone: "ranked" (present pathways 1, absent 0) and "sqrt" (present pathways the
square root of their message dimension).
``--fit``: a checkpoint and its dataset; the cut effectome and the message-information
effectome (each pathway's message KL from its prior per bin, summed over dimensions,
averaged over validation trials and bins), both scored against the truth.
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


def information_effectome(model, heldin, ext) -> np.ndarray:
    """(R, R), ``E[dst, src]`` = mean over trials and bins of the message's KL (nats),
    summed over its dimensions; posterior means and variances of a no-sampling pass."""
    import torch

    from mrlfads.inference import _run
    from mrlfads.loss import kl_diag_gaussian

    R = len(model.cfg.region_names)
    per_trial = []
    with torch.no_grad():
        for o in _run(model, heldin, ext, 256):
            kl = kl_diag_gaussian(o.msg_mean.double(), o.msg_var.double(),
                                  o.com_prior_logvar.double())  # (B, T', P, C)
            per_trial.append(kl.sum(3).mean(1))  # (B, P)
    kl_pair = torch.cat(per_trial).mean(0).numpy()
    E = np.full((R, R), np.nan)
    for p, (src, dst) in enumerate(o.pairs):
        E[dst, src] = kl_pair[p]
    return E


def score_fit(checkpoint: str, data: str) -> dict[str, float]:
    import torch

    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.effectome import cut_effectome
    from mrlfads.training.checkpoint import load_model
    from mrlfads.training.data import load_split
    from mrlfads.training.evaluate import effectome_truth_scores

    model, _, _ = load_model(checkpoint)
    ds = ArrowDataset.open(data)
    valid = load_split(ds, "valid", torch.device("cpu"))
    truth = ds.manifest.comm_matrix
    out = effectome_truth_scores(cut_effectome(model, valid.heldin, valid.ext), truth, "cut")
    out.update(effectome_truth_scores(information_effectome(model, valid.heldin, valid.ext),
                                      truth, "information"))
    return {k.removeprefix("valid/"): round(v, 3) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="*", default=[], help="datasets for the reference cosines")
    p.add_argument("--fit", nargs="*", default=[], metavar="BEST_PT DATASET",
                   help="pairs: a checkpoint, then the dataset it was fitted on")
    args = p.parse_args()
    if len(args.fit) % 2:
        p.error("--fit takes pairs: CHECKPOINT DATASET [CHECKPOINT DATASET ...]")
    from mrlfads.data_loaders.reader import ArrowDataset

    for data in args.data:
        truth = ArrowDataset.open(data).manifest.comm_matrix
        refs = {k: round(v, 3) for k, v in reference_cosines(truth).items()}
        print(json.dumps({"data": Path(data).name, **refs}))
    for checkpoint, data in zip(args.fit[::2], args.fit[1::2]):
        print(json.dumps({"fit": checkpoint, **score_fit(checkpoint, data)}))


if __name__ == "__main__":
    main()
