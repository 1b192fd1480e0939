"""Part of a simulated dataset as a dataset of its own: some trials, some neurons per region,
with the same splits and truth (docs/RESULTS.md, "Which region is better recorded").

    .venv/bin/python benchmarks/science/subset.py DATASET OUT --region downstream \
        --heldin 11 --heldout 1

keeps that region's first ``--heldin`` held-in and first ``--heldout`` held-out neurons and
every other region whole: the same trials and the same network, seen through fewer neurons
in one region. ``stitching.py`` cuts its sessions out with the same ``write_subset``.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

import numpy as np


def write_subset(ds, path: Path, rows: np.ndarray, keep: Mapping[str, tuple], name: str,
                 provenance: Mapping, overwrite: bool = False) -> Path:
    """Write trials ``rows`` of the open dataset ``ds`` to ``path``; ``keep[region]`` =
    (columns of x/<region> to keep, held-in first; n_heldin; n_heldout). True rates keep
    the same columns; every other truth column and the splits keep the rows. A dataset
    already at ``path`` is replaced only with ``overwrite`` (the writer's refusal names it)."""
    from mrlfads.data_loaders import schema
    from mrlfads.data_loaders.writer import write_dataset

    m = ds.manifest
    a = ds.arrays(None, [schema.x_col(r) for r in m.region_names] + list(m.truth)
                  + [schema.SPLIT, schema.TRIAL_ID, schema.CONDITION])
    x, truth, regions = {}, {}, []
    for r in m.regions:
        cols, n_in, n_out = keep[r.name]
        x[r.name] = a[schema.x_col(r.name)][rows][:, :, cols]
        rate_col = schema.truth_rates_col(r.name)
        if rate_col in a:
            truth[rate_col] = a[rate_col][rows][:, :, cols]
        regions.append({"name": r.name, "n_heldin": n_in, "n_heldout": n_out})
    for col in m.truth:
        if col not in truth and not col.startswith("truth/rates/"):
            truth[col] = a[col][rows]
    write_dataset(path, name=name, regions=regions, obs_model=m.obs_model,
                  bin_width_s=m.bin_width_s, ic_enc_seq_len=m.ic_enc_seq_len, x=x,
                  split=a[schema.SPLIT][rows], trial_id=a[schema.TRIAL_ID][rows],
                  condition=a[schema.CONDITION][rows], truth=truth,
                  comm_matrix=m.comm_matrix, provenance=dict(provenance), overwrite=overwrite)
    return path


def fewer_neurons(src: Path, out: Path, region: str, n_in: int, n_out: int) -> Path:
    """Every trial of the one-session dataset ``src``, with ``region`` seen through its first
    ``n_in`` held-in and ``n_out`` held-out neurons; never over a dataset already at
    ``out``."""
    from mrlfads.data_loaders.reader import ArrowDataset

    ds = ArrowDataset.open(src)
    m = ds.manifest
    if region not in m.region_names:
        raise SystemExit(f"--region {region!r}: the dataset's regions are {m.region_names}")
    keep = {}
    for r in m.regions:
        n_i, n_o = (n_in, n_out) if r.name == region else (r.n_heldin, r.n_heldout)
        if not (1 <= n_i <= r.n_heldin and 0 <= n_o <= r.n_heldout):
            raise SystemExit(f"region {r.name} has {r.n_heldin} held-in and {r.n_heldout} "
                             f"held-out neurons; cannot keep {n_i} and {n_o}")
        keep[r.name] = (np.r_[np.arange(n_i), r.n_heldin + np.arange(n_o)], n_i, n_o)
    rows = np.arange(m.n_trials)
    return write_subset(ds, out, rows, keep, f"{m.name}-{region}{n_in}",
                        {"from": src.name, "region": region, "heldin": n_in, "heldout": n_out})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--region", required=True)
    p.add_argument("--heldin", type=int, required=True)
    p.add_argument("--heldout", type=int, required=True)
    args = p.parse_args()
    fewer_neurons(args.dataset, args.out, args.region, args.heldin, args.heldout)
    print(args.out)


if __name__ == "__main__":
    main()
