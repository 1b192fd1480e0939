"""Arrow dataset -> torch: a typed Batch, a map-style in-memory dataset, a sharded stream.

TrialDataset keeps the split as zero-copy (read-only, memory-mapped) numpy views and copies
only the rows of each batch. ShardStream reads one shard at a time and gives each
DataLoader worker on each distributed rank a disjoint set of shards. For multi-session
datasets both can draw every batch from one session (SessionBatchSampler, ShardStream's
by_session), sessions mixed across batches.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, get_worker_info

from mrlfads.data_loaders import schema
from mrlfads.data_loaders.checks import check_observations, check_sessions
from mrlfads.data_loaders.errors import DatasetError
from mrlfads.data_loaders.manifest import DatasetManifest, ShardInfo
from mrlfads.data_loaders.reader import ArrowDataset


@dataclass(frozen=True)
class Batch:
    """B trials. heldin[r]: (B, T, n_heldin), heldout[r]: (B, T, n_heldout), ext[r]:
    (B, T, D) for regions with inputs, truth[column]: (B, T, d) when asked for. session:
    (B,) int64 index into manifest.session_names (zeros for a single-session dataset).
    silenced[r]: (B, T) recorded interventions, 1 where region r's messages were silenced,
    for the manifest's ``silenced`` regions."""

    heldin: dict[str, torch.Tensor]
    heldout: dict[str, torch.Tensor]
    ext: dict[str, torch.Tensor]
    truth: dict[str, torch.Tensor]
    trial_id: torch.Tensor
    condition: list[str]
    session: torch.Tensor | None = None
    silenced: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.session is None:
            object.__setattr__(self, "session", torch.zeros(len(self.trial_id), dtype=torch.int64,
                                                            device=self.trial_id.device))

    def __len__(self) -> int:
        return int(self.trial_id.shape[0])

    def _map(self, fn) -> Batch:
        return dataclasses.replace(
            self, **{f: {k: fn(v) for k, v in getattr(self, f).items()}
                     for f in ("heldin", "heldout", "ext", "truth", "silenced")},
            trial_id=fn(self.trial_id), session=fn(self.session))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True) for fast host -> GPU copies."""
        return self._map(lambda t: t.pin_memory())


def _columns(m: DatasetManifest, with_truth: bool) -> list[str]:
    cols = [schema.TRIAL_ID, schema.CONDITION] + ([schema.SESSION] if m.sessions else [])
    cols += [schema.x_col(r) for r in m.region_names]
    cols += [schema.ext_col(r) for r in m.region_names if m.ext_dims.get(r, 0) > 0]
    cols += [schema.silenced_col(r) for r in m.silenced]
    return cols + (list(m.truth) if with_truth else [])


def _make_batch(m: DatasetManifest, rows: dict[str, np.ndarray],
                x_parts: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> Batch:
    """Batch from writable per-batch numpy arrays (the tensors share their memory).
    x_parts[region] = (held-in, held-out) when the caller already split `x/<region>`."""
    heldin, heldout = {}, {}
    for r in m.regions:
        if x_parts is not None:
            hin, hout = x_parts[r.name]
        else:
            x = rows[schema.x_col(r.name)]  # (B, T, n_heldin + n_heldout), held-in first
            hin, hout = np.ascontiguousarray(x[..., :r.n_heldin]), np.ascontiguousarray(x[..., r.n_heldin:])
        heldin[r.name], heldout[r.name] = torch.from_numpy(hin), torch.from_numpy(hout)
    ext = {c[4:]: torch.from_numpy(a) for c, a in rows.items() if c.startswith("ext/")}
    truth = {c: torch.from_numpy(a) for c, a in rows.items() if schema.is_truth_col(c)}
    silenced = {c[len("silenced/"):]: torch.from_numpy(a) for c, a in rows.items()
                if c.startswith("silenced/")}
    session = rows.get(schema.SESSION)
    return Batch(heldin, heldout, ext, truth, torch.from_numpy(rows[schema.TRIAL_ID].astype(np.int64)),
                 [str(c) for c in rows[schema.CONDITION]],
                 None if session is None else torch.from_numpy(session.astype(np.int64)),
                 silenced)


def _check_chunk(ds: ArrowDataset, shard: ShardInfo, arrays: dict[str, np.ndarray]) -> None:
    for r in ds.manifest.region_names:
        check_observations(arrays[schema.x_col(r)], ds.manifest.obs_model, schema.x_col(r),
                           ds.shard_uri(shard), arrays[schema.TRIAL_ID])
    check_sessions(ds.manifest, arrays, ds.shard_uri(shard))


class TrialDataset(Dataset):
    """Map-style: all trials of `split` in memory (zero-copy views), batches gathered by
    `__getitems__` so a DataLoader with a batch_size yields Batch objects directly."""

    def __init__(self, ds: ArrowDataset, split: str, with_truth: bool = False):
        self.ds, self.split, self.with_truth = ds, split, with_truth
        self.manifest = ds.manifest
        self.columns = _columns(ds.manifest, with_truth)
        shards = ds.manifest.shards_for(split)
        self.chunks = ds.chunks(split, self.columns)
        for shard, chunk in zip(shards, self.chunks):
            _check_chunk(ds, shard, chunk)
        sizes = [len(c[schema.TRIAL_ID]) for c in self.chunks]
        self._chunk = np.repeat(np.arange(len(sizes)), sizes)  # (n,) chunk of each trial
        self._row = np.concatenate([np.arange(s) for s in sizes]) if sizes else np.empty(0, int)
        if len(self._row) == 0:
            raise DatasetError(f"{ds.uri}: split {split!r} has no trials (splits: "
                               f"{ds.manifest.splits}); pick another split or re-create the dataset")

    def __len__(self) -> int:
        return len(self._row)

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        idx = np.asarray(indices, dtype=np.int64)  # (B,)
        chunk_of = self._chunk[idx]
        groups = [(c, chunk_of == c) for c in np.unique(chunk_of)]

        def gather(col: str, last: slice | None = None) -> np.ndarray:
            """Rows `idx` of `col` (last axis sliced): one copy, since mapped views are read-only."""
            first = self.chunks[0][col]
            if last is not None:
                first = first[:, :, last]
            out = np.empty((len(idx), *first.shape[1:]), dtype=first.dtype)
            for c, sel in groups:
                rows = self._row[idx[sel]]
                out[sel] = self.chunks[c][col][rows] if last is None else self.chunks[c][col][rows, :, last]
            return out

        x_parts = {r.name: (gather(schema.x_col(r.name), slice(None, r.n_heldin)),
                            gather(schema.x_col(r.name), slice(r.n_heldin, None)))
                   for r in self.manifest.regions}
        rows = {c: gather(c) for c in self.columns if not c.startswith("x/")}
        return _make_batch(self.manifest, rows, x_parts)

    def __getitem__(self, i: int) -> Batch:
        return self.__getitems__([i])

    @property
    def session(self) -> np.ndarray:
        """(n,) int64 session index of each trial, in dataset order (zeros: one session)."""
        if not self.manifest.sessions:
            return np.zeros(len(self), dtype=np.int64)
        return np.concatenate([c[schema.SESSION] for c in self.chunks]).astype(np.int64)

    def all(self) -> Batch:
        """The whole split as one Batch (e.g. for posterior-mean validation)."""
        return self.__getitems__(range(len(self)))


class SessionBatchSampler(Sampler):
    """Batches of trial indices, each from one session: a session's trials (shuffled) are cut
    into batches of `batch_size` (its last one smaller unless drop_last), then all sessions'
    batches are shuffled together. Every trial appears once per epoch. The order depends on
    (seed, epoch) only; the epoch advances by one per iteration, or set it with set_epoch."""

    def __init__(self, session: np.ndarray, batch_size: int, *, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False):
        if batch_size < 1:
            raise DatasetError(f"batch_size: must be >= 1, got {batch_size}")
        self.session = np.asarray(session, dtype=np.int64)  # (n,)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        out = []
        for s in np.unique(self.session):
            rows = np.flatnonzero(self.session == s)
            if self.shuffle:
                rows = rows[rng.permutation(len(rows))]
            for start in range(0, len(rows), self.batch_size):
                if not self.drop_last or start + self.batch_size <= len(rows):
                    out.append(rows[start:start + self.batch_size])
        return [out[i] for i in rng.permutation(len(out))] if self.shuffle else out

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.batches(self.epoch)
        self.epoch += 1
        return iter([b.tolist() for b in batches])

    def __len__(self) -> int:
        counts = np.bincount(self.session) if len(self.session) else np.zeros(0, int)
        per = counts // self.batch_size if self.drop_last else -(-counts // self.batch_size)
        return int(per.sum())


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None or world_size is not None:
        rank, world_size = rank or 0, world_size or 1
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank, world_size = 0, 1
    if not 0 <= rank < world_size:
        raise DatasetError(f"rank: {rank} must be in [0, world_size={world_size})")
    return rank, world_size


class ShardStream(IterableDataset):
    """Streams Batches; consumer g = rank * num_workers + worker_id reads shards g, g + G, ...
    (G = world_size * num_workers) of the split, so every trial is seen exactly once per epoch
    across all ranks and workers. Shard order and rows within a shard are shuffled with
    (seed, epoch, g); call set_epoch(e) each epoch. Fewer shards than consumers leaves some idle.
    by_session: each batch holds trials of one session (a batch per session fills on its
    own; each session's remainder comes at the end of the consumer's pass).
    mix_trials: with shuffle, full batches wait in a pool of up to this many trials (the
    default: two shards' worth) and leave it in random order, so that consecutive batches
    come from different shards, and so from different sessions where a shard holds one
    session's trials (below batch_size: each batch leaves as it fills)."""

    def __init__(self, ds: ArrowDataset, split: str, batch_size: int = 16, *, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, with_truth: bool = False,
                 rank: int | None = None, world_size: int | None = None,
                 by_session: bool = False, mix_trials: int = 1024):
        if batch_size < 1:
            raise DatasetError(f"batch_size: must be >= 1, got {batch_size}")
        if mix_trials < 0:
            raise DatasetError(f"mix_trials: must be >= 0, got {mix_trials}")
        self.mix_batches = mix_trials // batch_size if shuffle else 0  # the pool's size
        self.ds, self.split, self.batch_size = ds, split, batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.columns = _columns(ds.manifest, with_truth)
        self.rank, self.world_size = _rank_world(rank, world_size)
        self.shards = ds.manifest.shards_for(split)
        self.by_session = bool(by_session) and bool(ds.manifest.sessions)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def my_shards(self, worker_id: int = 0, num_workers: int = 1) -> tuple[ShardInfo, ...]:
        g = self.rank * num_workers + worker_id
        return self.shards[g::self.world_size * num_workers]

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        shards = list(self.my_shards(wid, nw))
        rng = np.random.default_rng([self.seed, self.epoch, self.rank * nw + wid])
        if self.shuffle:
            shards = [shards[i] for i in rng.permutation(len(shards))]
        # session -> (rows waiting for a batch, their count); one key without by_session
        pending: dict[int, tuple[list[dict[str, np.ndarray]], int]] = {}
        pool: list[dict[str, np.ndarray]] = []  # full batches waiting to leave (mix_trials)
        for shard in shards:
            arrays = self.ds.shard_arrays(shard, self.split, self.columns)
            _check_chunk(self.ds, shard, arrays)
            n = len(arrays[schema.TRIAL_ID])
            order = rng.permutation(n) if self.shuffle else np.arange(n)
            rows = {c: a[order] for c, a in arrays.items()}  # copy: writable rows
            if self.by_session:
                parts = [(int(s), rows[schema.SESSION] == s) for s in np.unique(rows[schema.SESSION])]
            else:
                parts = [(0, None)]
            for key, keep in parts:
                part = rows if keep is None else {c: a[keep] for c, a in rows.items()}
                waiting, n_waiting = pending.get(key, ([], 0))
                waiting.append(part)
                n_waiting += len(part[schema.TRIAL_ID])
                while n_waiting >= self.batch_size:
                    head, waiting, n_waiting = _take(waiting, self.batch_size)
                    pool.append(head)
                    if len(pool) > self.mix_batches:
                        at = int(rng.integers(len(pool))) if self.mix_batches else 0
                        yield _make_batch(self.ds.manifest, pool.pop(at))
                pending[key] = (waiting, n_waiting)
        if self.mix_batches:
            pool = [pool[i] for i in rng.permutation(len(pool))]
        for head in pool:
            yield _make_batch(self.ds.manifest, head)
        for waiting, n_waiting in pending.values():
            if n_waiting and not self.drop_last:
                head, _, _ = _take(waiting, n_waiting)
                yield _make_batch(self.ds.manifest, head)


def _take(parts: list[dict[str, np.ndarray]], k: int):
    """First k rows of the concatenated parts, and what is left."""
    joined = {c: np.concatenate([p[c] for p in parts]) if len(parts) > 1 else parts[0][c]
              for c in parts[0]}
    n = len(joined[schema.TRIAL_ID])
    head = {c: a[:k] for c, a in joined.items()}
    rest = [{c: a[k:] for c, a in joined.items()}] if n > k else []
    return head, rest, n - k


def _identity(batch: Batch) -> Batch:
    return batch


def make_loader(ds: ArrowDataset, split: str, batch_size: int, shuffle: bool = True,
                seed: int = 0, streaming: bool = False, num_workers: int = 0,
                drop_last: bool = False, *, with_truth: bool = False, pin_memory: bool = False,
                rank: int | None = None, world_size: int | None = None,
                by_session: bool | None = None, mix_trials: int = 1024) -> DataLoader:
    """DataLoader yielding Batch. Map-style (default) shuffles all trials of the split with a
    torch.Generator seeded by `seed`; streaming uses ShardStream (call
    loader.dataset.set_epoch(e) per epoch to reshuffle; mix_trials: ShardStream's).

    by_session (default: True when the dataset has more than one session): every batch holds
    trials of one session, sessions mixed across batches. Map-style uses a
    SessionBatchSampler (loader.batch_sampler; its order depends on (seed, epoch), the epoch
    advancing per pass or set with loader.batch_sampler.set_epoch(e))."""
    if by_session is None:
        by_session = len(ds.manifest.sessions) > 1
    if streaming:
        stream = ShardStream(ds, split, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                             with_truth=with_truth, rank=rank, world_size=world_size,
                             by_session=by_session, mix_trials=mix_trials)
        return DataLoader(stream, batch_size=None, num_workers=num_workers,
                          pin_memory=pin_memory, collate_fn=_identity)
    data = TrialDataset(ds, split, with_truth=with_truth)
    if by_session:
        sampler = SessionBatchSampler(data.session, batch_size, shuffle=shuffle, seed=seed,
                                      drop_last=drop_last)
        return DataLoader(data, batch_sampler=sampler, num_workers=num_workers,
                          pin_memory=pin_memory, collate_fn=_identity)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=gen,
                      drop_last=drop_last, num_workers=num_workers, pin_memory=pin_memory,
                      collate_fn=_identity)
