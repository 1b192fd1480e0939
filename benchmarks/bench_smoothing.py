"""What the spike-smoothing baseline costs (mrlfads/baselines.py): fitting it on training
trials, which `mrlfads infer`, `train` and `sweep` do once per dataset (per session).

    .venv/bin/python benchmarks/bench_smoothing.py                          # the default grid
    .venv/bin/python benchmarks/bench_smoothing.py --trials 800 --heldin 270 --heldout 30

Synthetic Poisson counts at about 5 Hz in 10 ms bins from 8 shared random-walk latents, so
every held-out neuron is partly predictable from the held-in ones. Reports the wall time of
`fit_smoothing_baseline` (every kernel and penalty it tries, then the refit) and the kernel
and penalty it chose. One line per size.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from machine_info import describe

from mrlfads.baselines import SmoothingConfig, fit_smoothing_baseline

SIZES = [(384, 110, 129, 15), (800, 100, 270, 30), (2000, 100, 270, 30), (800, 100, 900, 100)]


def counts(trials: int, bins: int, heldin: int, heldout: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    latents = np.cumsum(rng.normal(size=(trials, bins, 8)), axis=1) * 0.1
    loadings = rng.normal(size=(8, heldin + heldout)) * 0.5
    rates = np.minimum(np.exp(np.log(0.05) + latents @ loadings), 5.0)
    x = rng.poisson(rates).astype(np.float32)
    return x[..., :heldin], x[..., heldin:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int)
    ap.add_argument("--bins", type=int, default=100)
    ap.add_argument("--heldin", type=int, default=270)
    ap.add_argument("--heldout", type=int, default=30)
    args = ap.parse_args()
    sizes = SIZES if args.trials is None else [(args.trials, args.bins, args.heldin, args.heldout)]
    print(describe(versions=True))
    cfg = SmoothingConfig()
    print(f"grid: widths {cfg.widths_s} s, penalties {cfg.alphas}, at most {cfg.max_fit_bins} "
          "trial-bins a fit")
    for trials, bins, heldin, heldout in sizes:
        x_in, x_out = counts(trials, bins, heldin, heldout)
        t0 = time.perf_counter()
        b = fit_smoothing_baseline(x_in, x_out, bin_width_s=0.01)
        seconds = time.perf_counter() - t0
        print(f"trials {trials}, bins {bins}, held-in {heldin}, held-out {heldout}: "
              f"{seconds:.3f} s, kernel {b.width_s} s, penalty {b.alpha}", flush=True)


if __name__ == "__main__":
    main()
