"""What checking a dataset costs: `ArrowDataset.validate()` (what `mrlfads sweep` runs on
the driver before Ray starts) and its parts, on clean data.

    .venv/bin/python benchmarks/bench_validate.py                 # 2048 x 200 bins x 3 x 64
    .venv/bin/python benchmarks/bench_validate.py --trials 256    # quick

Parts, each timed over every shard and x/ column with the page cache warm (an untimed
pass first): reading the shards as arrays without checksums or value checks; the sha256 of
every shard; `check_observations` for Poisson counts (min, max and the whole-number test)
and for Gaussian values (min and max only); and the whole `validate()`. Best of --repeat
passes each. MB/s counts the observed data (float32 x/ columns).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time

import numpy as np
from machine_info import describe

from mrlfads.data_loaders.checks import check_observations
from mrlfads.data_loaders.reader import ArrowDataset
from mrlfads.data_loaders.writer import write_dataset


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=2048)
    ap.add_argument("--bins", type=int, default=200)
    ap.add_argument("--regions", type=int, default=3)
    ap.add_argument("--units", type=int, default=64)
    ap.add_argument("--rows-per-shard", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", help="where to write the dataset (default: a temp dir)")
    args = ap.parse_args()
    if args.workdir:
        run(args, args.workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-validate-") as tmp:
            run(args, tmp)


def run(args: argparse.Namespace, workdir: str) -> None:
    rng = np.random.default_rng(0)
    names = [f"R{k}" for k in range(args.regions)]
    x = {r: rng.poisson(0.1, (args.trials, args.bins, args.units)).astype(np.float32) for r in names}
    mb = sum(a.nbytes for a in x.values()) / 1e6
    root = os.path.join(workdir, "d")
    write_dataset(root, name="bench", regions=[(r, args.units, 0) for r in names],
                  obs_model="poisson", bin_width_s=0.01, ic_enc_seq_len=10, x=x, split="train",
                  rows_per_shard=args.rows_per_shard, overwrite=True)
    del x
    cols = [f"x/{r}" for r in names]
    ds = ArrowDataset.open(root, verify_checksums=False)
    arrays = [ds.shard_arrays(s, None, cols) for s in ds.manifest.shards]  # mapped, warm

    def read():
        d = ArrowDataset.open(root, verify_checksums=False)
        d._values_checked.update((s.path, c) for s in d.manifest.shards for c in cols)
        for s in d.manifest.shards:
            d.shard_arrays(s, None, cols)

    def sha():
        for s in ds.manifest.shards:
            with open(os.path.join(root, s.path), "rb") as f:
                hashlib.sha256(f.read()).hexdigest()

    def values(obs):
        return lambda: [check_observations(a[c], obs, c, "bench") for a in arrays for c in cols]

    def validate():
        ArrowDataset.open(root).validate()

    for fn in (read, sha, values("poisson"), validate):  # warm the page cache, untimed
        fn()
    rows = [("read shards (no checks)", _best(read, args.repeat)),
            ("sha256 of every shard", _best(sha, args.repeat)),
            ("value checks, Poisson counts", _best(values("poisson"), args.repeat)),
            ("value checks, Gaussian values", _best(values("gaussian"), args.repeat)),
            ("validate() in all", _best(validate, args.repeat))]
    print(f"{describe()}; {args.trials} trials x {args.bins} bins "
          f"x {args.regions} x {args.units} units, {mb:.0f} MB of float32 counts in "
          f"{len(ds.manifest.shards)} shards; best of {args.repeat}, warm cache")
    print("| part | s | MB/s |\n|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s:.3f} | {mb / s:,.0f} |")


if __name__ == "__main__":
    main()
