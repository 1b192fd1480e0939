"""Serving training batches: Arrow shards (map-style, streaming) vs one HDF5 file (h5py).

    .venv/bin/python benchmarks/bench_loader.py            # 2048 trials x 200 bins x 3 x 64
    .venv/bin/python benchmarks/bench_loader.py --trials 256 --quick

Measures one full pass (trials/s and MB/s of spike data delivered as torch tensors) at
batch 16 and 64, cold page cache and warm. Cold: `echo 3 > /proc/sys/vm/drop_caches` when
permitted, else posix_fadvise(DONTNEED) on every data file (drops this file's pages from the
guest page cache; a VM host's cache may still help); the mode used is printed.
HDF5 layout: one dataset per region (trials, T, N), chunked per trial, uncompressed.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import h5py
import numpy as np
import torch
from machine_info import describe
from torch.utils.data import DataLoader, Dataset

from mrlfads.data_loaders.reader import ArrowDataset
from mrlfads.data_loaders.torch_data import make_loader
from mrlfads.data_loaders.writer import write_dataset


def drop_cache(files: list[str]) -> str:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return "drop_caches"
    except OSError:
        for path in files:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        return "fadvise"


class H5Trials(Dataset):
    """The usual h5py pattern: per batch, read the (sorted) trials of each region's dataset."""

    def __init__(self, path: str, regions: list[str]):
        self.path, self.regions, self._f = path, regions, None
        with h5py.File(path, "r") as f:
            self.n = f[regions[0]].shape[0]

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, idx):
        if self._f is None:
            self._f = h5py.File(self.path, "r")
        order = np.sort(np.asarray(idx))  # h5py fancy indexing needs increasing indices
        return {r: torch.from_numpy(self._f[r][order]) for r in self.regions}


def _identity(b):
    return b


def h5_loader(path, regions, batch_size, in_memory):
    if in_memory:  # lfads-torch style: load every array, then batch from RAM
        with h5py.File(path, "r") as f:
            arrays = {r: torch.from_numpy(f[r][:]) for r in regions}
        perm = torch.randperm(len(arrays[regions[0]]), generator=torch.Generator().manual_seed(0))
        return ({r: a[i] for r, a in arrays.items()} for i in perm.split(batch_size))
    data = H5Trials(path, regions)
    return DataLoader(data, batch_size=batch_size, shuffle=True, collate_fn=_identity,
                      generator=torch.Generator().manual_seed(0))


def one_pass(make_batches) -> tuple[float, int, int]:
    t0 = time.perf_counter()
    n, nbytes = 0, 0
    for b in make_batches():
        tensors = list(b.values()) if isinstance(b, dict) else list(b.heldin.values()) + list(b.heldout.values())
        n += len(tensors[0])
        nbytes += sum(t.numel() * t.element_size() for t in tensors)
    return time.perf_counter() - t0, n, nbytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=2048)
    p.add_argument("--bins", type=int, default=200)
    p.add_argument("--regions", type=int, default=3)
    p.add_argument("--neurons", type=int, default=64)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    p.add_argument("--rows-per-shard", type=int, default=256)
    p.add_argument("--workdir", default=None)
    a = p.parse_args()

    torch.set_num_threads(1)
    work = a.workdir or tempfile.mkdtemp(prefix="bench_loader_")
    rng = np.random.default_rng(0)
    names = [f"R{i}" for i in range(a.regions)]
    x = {r: rng.poisson(1.0, (a.trials, a.bins, a.neurons)).astype(np.float32) for r in names}
    ds_path, h5_path = os.path.join(work, "arrow"), os.path.join(work, "data.h5")
    t0 = time.perf_counter()
    write_dataset(ds_path, name="bench", regions=[(r, a.neurons - 8, 8) for r in names],
                  obs_model="poisson", bin_width_s=0.01, ic_enc_seq_len=10, x=x, split="train",
                  rows_per_shard=a.rows_per_shard, overwrite=True)
    t_arrow = time.perf_counter() - t0
    t0 = time.perf_counter()
    with h5py.File(h5_path, "w") as f:
        for r in names:
            f.create_dataset(r, data=x[r], chunks=(1, a.bins, a.neurons))
    t_h5 = time.perf_counter() - t0
    files = [h5_path] + [os.path.join(ds_path, s.path)
                         for s in ArrowDataset.open(ds_path).manifest.shards]
    mb = sum(v.nbytes for v in x.values()) / 1e6
    print(f"machine: {describe(versions=True)}")
    print(f"data: {a.trials} trials x {a.bins} bins x {a.regions} regions x {a.neurons} neurons "
          f"float32 = {mb:.0f} MB; write: arrow {t_arrow:.2f} s ({len(files) - 1} shards), "
          f"hdf5 {t_h5:.2f} s")

    def arrow(streaming, bs, verify=True):
        def run():
            ds = ArrowDataset.open(ds_path, verify_checksums=verify)
            return iter(make_loader(ds, "train", bs, shuffle=True, streaming=streaming))
        return run

    cases = []
    for bs in a.batch_sizes:
        cases += [
            (f"arrow map-style (TrialDataset), batch {bs}", arrow(False, bs)),
            (f"arrow map-style, no checksum, batch {bs}", arrow(False, bs, verify=False)),
            (f"arrow streaming (ShardStream), batch {bs}", arrow(True, bs)),
            (f"hdf5 per-batch reads (h5py), batch {bs}", lambda bs=bs: h5_loader(h5_path, names, bs, False)),
            (f"hdf5 load all then batch, batch {bs}", lambda bs=bs: h5_loader(h5_path, names, bs, True)),
        ]
    print("\n| loader | cache | s/epoch | trials/s | MB/s |\n|---|---|---|---|---|")
    mode = None
    for label, make in cases:
        for cache in ("cold", "warm"):
            if cache == "cold":
                mode = drop_cache(files)
            else:
                one_pass(make)  # warm the page cache (and h5py's chunk cache is per file object)
            secs, n, nbytes = one_pass(make)
            assert n == a.trials, (label, n)
            print(f"| {label} | {cache} | {secs:.3f} | {n / secs:,.0f} | {nbytes / 1e6 / secs:,.0f} |",
                  flush=True)
    print(f"\ncold cache via: {mode}; workdir {work}")


if __name__ == "__main__":
    main()
