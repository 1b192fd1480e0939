"""`mrlfads infer`: a trained model's outputs on every trial of a dataset: the average of N
posterior samples (--samples N, default 20), or posterior means (--samples 0)."""
from __future__ import annotations

import argparse
import math

from mrlfads.training.cpu_threads import add_threads_argument

NAME = "infer"
HELP = "write rates, factors, inferred inputs, messages and the effectome of a trained model"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from mrlfads.training.api.infer import DEFAULT_SAMPLES

    p.add_argument("--model", required=True, help="checkpoint file (RUN/best.pt) or models:/NAME@ALIAS")
    p.add_argument("--data", required=True, help="dataset directory or URI")
    p.add_argument("--out", required=True, help="output directory (an Arrow dataset)")
    p.add_argument("--splits", default="all", help="comma-separated splits, or all (default)")
    p.add_argument("--samples", type=_samples, default=DEFAULT_SAMPLES, metavar="N",
                   help=f"average the outputs of N runs drawing posterior samples (default "
                   f"{DEFAULT_SAMPLES}, lfads-torch's posterior averaging: rates closer to the "
                   "truth than the means'), or 0 for the posterior means (what training's "
                   "logs score)")
    p.add_argument("--seed", type=int, default=0, help="seeds the posterior samples (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add_threads_argument(p)
    p.add_argument("--tracking-uri", help="MLflow tracking URI for models:/ URIs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def _samples(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of samples, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"--samples {value}: use 0 (posterior means) or N >= 1")
    return value


def run(args: argparse.Namespace) -> int:
    from mrlfads.training.api import load
    from mrlfads.training.cpu_threads import set_threads

    set_threads(args.threads)
    model = load(args.model, tracking_uri=args.tracking_uri)
    result = model.infer(args.data, samples=args.samples, splits=args.splits, seed=args.seed,
                         device=args.device, out=args.out, overwrite=args.overwrite)
    print(f"wrote {len(result.trial_id)} trials ({', '.join(result.info['splits'])}) to "
          f"{args.out}")
    shown = ("co_bps", "/bps", "psth_r2", "effectome_cosine", "effectome_cut_cosine",
             "effectome_cut_separation", "effectome_cut_effect_cosine", "message_r2",
             "input_r2")
    metrics = result.metrics
    for key in sorted(k for k in metrics if k.count("/") == 1 and k.endswith(shown)):
        print(f"  {key} = {metrics[key]:.4f}")
    for line in smoothing_notes(metrics, result.info["splits"]):
        print(line)
    return 0


def smoothing_notes(metrics: dict, splits) -> list[str]:
    """A note for each split where the model's held-out co-bps does not beat the smoothed
    held-in spikes'. Perturbed trials get another reading: the model runs them without
    their perturbation, which it never saw, while the smoothing reads the perturbed spikes."""
    from mrlfads.data_loaders.schema import PERTURBED

    notes = []
    for split in splits:
        model, smoothed = metrics.get(f"{split}/co_bps"), metrics.get(f"{split}/smoothing_co_bps")
        scored = model is not None and smoothed is not None
        if not (scored and math.isfinite(model) and math.isfinite(smoothed) and model <= smoothed):
            continue
        if split == PERTURBED:
            notes.append(f"note: on {split}, the model's held-out co-bps ({model:.4f}) is below "
                         f"smoothed held-in spikes' ({smoothed:.4f}), as expected: the model "
                         "runs these trials without their perturbation (predicting them "
                         "unperturbed), and the smoothing reads their perturbed spikes")
        else:
            notes.append(f"note: on {split}, the model's held-out co-bps ({model:.4f}) does not "
                         f"beat smoothed held-in spikes ({smoothed:.4f}): its rates say no more "
                         "about the held-out neurons than the spikes do (docs/MODEL.md, \"The "
                         "smoothing baseline\")")
    return notes
