"""make_tiny_dataset: a small valid dataset for other packages' tests (seconds to write)."""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from mrlfads.data_loaders import schema
from mrlfads.data_loaders.reader import ArrowDataset
from mrlfads.data_loaders.sessions import SessionSpec, columns
from mrlfads.data_loaders.writer import make_split, write_dataset

MSG_DIM = 2  # true message dimension of the one pathway A -> B (first two regions)


def make_tiny_dataset(
    path: str | os.PathLike, *, regions: Sequence[tuple[str, int, int]] = (("A", 3, 1), ("B", 3, 1)),
    n_trials: int = 24, n_bins: int = 12, ic_enc_seq_len: int = 4, obs_model: str = "poisson",
    seed: int = 0, with_truth: bool = True, ext_dim: int = 0, rows_per_shard: int = 8,
    overwrite: bool = False, silenced: Mapping[str, np.ndarray] | None = None,
) -> ArrowDataset:
    """Random data: trials 0,4,8,... are 'valid' (25%), the rest 'train'; conditions c0/c1.
    With truth: rates per region, inputs (1 dim) per region, and messages for the first two
    regions' pathway only (regions[0] -> regions[1], MSG_DIM wide), comm_matrix to match."""
    rng = np.random.default_rng(seed)
    names = [r[0] for r in regions]
    x, truth = {}, {}
    for name, n_in, n_out in regions:
        n = n_in + n_out
        rates = rng.uniform(0.5, 3.0, size=(n_trials, n_bins, n)).astype(np.float32)
        if obs_model == "poisson":
            x[name] = rng.poisson(rates).astype(np.float32)
        else:
            x[name] = (rates + rng.normal(0, 0.5, size=rates.shape)).astype(np.float32)
        truth[schema.truth_rates_col(name)] = rates
        truth[schema.truth_inputs_col(name)] = rng.normal(size=(n_trials, n_bins, 1)).astype(np.float32)
    if len(names) >= 2:
        truth[schema.truth_messages_col(names[0], names[1])] = rng.normal(
            size=(n_trials, n_bins, MSG_DIM)).astype(np.float32)
    ext = ({n: rng.normal(size=(n_trials, n_bins, ext_dim)).astype(np.float32) for n in names}
           if ext_dim > 0 else None)
    split = np.where(np.arange(n_trials) % 4 == 0, "valid", "train")
    condition = np.array([f"c{i % 2}" for i in range(n_trials)])
    write_dataset(
        path, name="tiny", regions=list(regions), obs_model=obs_model, bin_width_s=0.01,
        ic_enc_seq_len=ic_enc_seq_len, x=x, split=split, condition=condition, ext=ext,
        truth=truth if with_truth else None, rows_per_shard=rows_per_shard, overwrite=overwrite,
        provenance={"generator": "mrlfads.data_loaders.testing.make_tiny_dataset", "seed": seed},
        silenced=silenced,
    )
    return ArrowDataset.open(path)


TINY_SESSIONS = {"s0": {"A": (2, 1), "B": (2, 0)}, "s1": {"A": (1, 1), "B": (0, 0)},
                 "s2": {"A": (0, 0), "B": (3, 1)}}


def make_tiny_sessions_dataset(
    path: str | os.PathLike, *, sessions: dict[str, dict[str, tuple[int, int]]] | None = None,
    trials: Sequence[int] = (10, 6, 3), n_bins: int = 12, ic_enc_seq_len: int = 4,
    seed: int = 0, rows_per_shard: int = 8, valid_frac: float = 0.25, overwrite: bool = False,
) -> ArrowDataset:
    """A multi-session dataset (docs/DESIGN.md): session k has trials[k] trials, recording
    sessions[name][region] = (n_heldin, n_heldout) neurons (default TINY_SESSIONS: s1 lacks
    B, s2 lacks A). Poisson counts in each trial's own columns, zeros elsewhere; true rates
    in every column; trials in session order, split per session."""
    sessions = TINY_SESSIONS if sessions is None else sessions
    regions = list(next(iter(sessions.values())))
    specs = [SessionSpec(name, dict(units),
                         {r: f"not recorded in {name}" for r, v in units.items() if tuple(v) == (0, 0)},
                         {"index": k}) for k, (name, units) in enumerate(sessions.items())]
    session = np.repeat(np.arange(len(specs)), trials).astype(np.int64)
    n = len(session)
    rng = np.random.default_rng(seed)
    region_specs, x, truth = [], {}, {}
    for r in regions:
        hin = sum(s.units[r][0] for s in specs)
        hout = sum(s.units[r][1] for s in specs)
        ids = [f"{s.name}/{r}{j}" for s in specs for j in range(s.units[r][0])]
        ids += [f"{s.name}/{r}{s.units[r][0] + j}" for s in specs for j in range(s.units[r][1])]
        region_specs.append({"name": r, "n_heldin": hin, "n_heldout": hout, "neuron_ids": ids})
        rates = rng.uniform(0.5, 3.0, size=(n, n_bins, hin + hout)).astype(np.float32)
        counts = np.zeros_like(rates)
        for k, s in enumerate(specs):
            cols = columns(specs, r, k)
            rows = np.flatnonzero(session == k)
            counts[np.ix_(rows, np.arange(n_bins), cols)] = rng.poisson(
                rates[np.ix_(rows, np.arange(n_bins), cols)])
        x[r], truth[schema.truth_rates_col(r)] = counts, rates
    write_dataset(
        path, name="tiny-sessions", regions=region_specs, obs_model="poisson", bin_width_s=0.01,
        ic_enc_seq_len=ic_enc_seq_len, x=x, split=make_split(n, valid_frac, seed, session=session),
        condition=np.array([f"c{i % 2}" for i in range(n)]), truth=truth,
        rows_per_shard=rows_per_shard, overwrite=overwrite, sessions=specs, session=session,
        provenance={"generator": "mrlfads.data_loaders.testing.make_tiny_sessions_dataset",
                    "seed": seed})
    return ArrowDataset.open(path)


def rewrite_shard(root: str | os.PathLike, index: int,
                  fn: Callable[[pa.Table], pa.Table]) -> str:
    """Replace shard ``index`` of the dataset at ``root`` with ``fn(table)`` and fix its
    checksum in dataset.json, so that only ``fn``'s change is wrong (for tests of what the
    reader and training check beyond the checksum). Returns the shard's path."""
    root = Path(root)
    data = json.loads((root / "dataset.json").read_text())
    shard = root / data["shards"][index]["path"]
    with pa.memory_map(str(shard)) as src:
        table = pa.ipc.open_file(src).read_all()
    table = fn(table)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    shard.write_bytes(sink.getvalue().to_pybytes())
    data["shards"][index]["sha256"] = hashlib.sha256(shard.read_bytes()).hexdigest()
    (root / "dataset.json").write_text(json.dumps(data))
    return str(shard)
