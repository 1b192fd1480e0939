"""What the per-epoch cut effectome costs against the epoch it is computed in.

    .venv/bin/python benchmarks/bench_cut_effectome.py                   # 2, 3, 4, 6 and 8 regions
    .venv/bin/python benchmarks/bench_cut_effectome.py --regions 3 --threads 2
    .venv/bin/python benchmarks/bench_cut_effectome.py --data DIR        # a dataset of your own

The cut effectome (mrlfads.effectome.cut_effectome) runs one forward pass with every pathway
open and one per pathway with it silenced, R * (R - 1) pathways, on the validation split's
first 64 trials (training/evaluate.py, EFFECT_TRIALS). For each size this times, after one
untimed epoch: one training epoch (``Trainer.train_one_epoch``), the epoch's validation
without the cut effectome (``evaluate_split``), and the cut effectome
(``cut_effectome_metrics``); the best of ``--reps`` for the two validation parts. Data:
random Poisson counts (``make_tiny_dataset``; the time does not depend on the values) with
``--units`` units per region (10% held out), ``--trials`` trials (a quarter validation) of
``--bins`` bins; the model is the spike defaults (docs/MODEL.md) sized from that data.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

from machine_info import describe


def _best(f, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def measure(path: str, threads: int, reps: int) -> dict:
    import torch

    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.training.config import RunConfig
    from mrlfads.training.evaluate import cut_effectome_metrics, evaluate_split
    from mrlfads.training.loop import Trainer

    ds = ArrowDataset.open(path)
    cfg = RunConfig.for_dataset(ds.manifest, uri=path, overrides={"train.threads": threads})
    trainer = Trainer(cfg, ds)
    trainer.train_one_epoch()  # warm-up: allocations, the compiled loop
    t = time.perf_counter()
    trainer.train_one_epoch()
    epoch = time.perf_counter() - t
    valid, comm = trainer.valid_data, ds.manifest.comm_matrix
    validation = _best(lambda: evaluate_split(trainer.model, valid, cfg, 0, comm_matrix=comm),
                       reps)
    cut = _best(lambda: cut_effectome_metrics(trainer.model, valid, comm), reps)
    R = len(cfg.model.region_names)
    return {"regions": R, "pathways": R * (R - 1), "train_trials": trainer.train_data.n_trials,
            "threads": torch.get_num_threads(), "epoch_s": round(epoch, 4),
            "validation_s": round(validation, 4), "cut_s": round(cut, 4),
            "cut_share": round(cut / (epoch + validation), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--regions", type=int, nargs="+", default=[2, 3, 4, 6, 8])
    p.add_argument("--units", type=int, default=48, help="units per region (default 48)")
    p.add_argument("--trials", type=int, default=480)
    p.add_argument("--bins", type=int, default=120)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--data", help="time this Arrow dataset instead of random data")
    args = p.parse_args()
    print(f"# {describe()}, {args.threads} thread(s)")
    if args.data:
        print(json.dumps(measure(args.data, args.threads, args.reps)), flush=True)
        return
    from mrlfads.data_loaders.testing import make_tiny_dataset

    heldout = max(1, round(args.units * 0.1))
    for R in args.regions:
        with tempfile.TemporaryDirectory(prefix="bench-cut-") as tmp:
            make_tiny_dataset(tmp, regions=[(f"A{i}", args.units - heldout, heldout)
                                            for i in range(R)],
                              n_trials=args.trials, n_bins=args.bins, ic_enc_seq_len=10,
                              rows_per_shard=128, overwrite=True)
            print(json.dumps(measure(tmp, args.threads, args.reps)), flush=True)


if __name__ == "__main__":
    main()
