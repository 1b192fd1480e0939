"""ArrowDataset: open an mrlfads dataset (local or remote) and read only what is asked for.

Local Arrow IPC shards are memory-mapped, so tensor columns come back as read-only numpy
views of the page cache (no copy). Checksums: each shard's sha256 is verified the first
time this object reads it (hashing a mapped file runs at ~1-2 GB/s and pulls in the pages
that are read next anyway; see docs/PERFORMANCE.md); `verify_checksums=False` skips that,
and `validate()` always checks everything.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mrlfads.data_loaders import fs as dfs
from mrlfads.data_loaders import schema
from mrlfads.data_loaders.checks import check_observations, check_sessions, check_silenced
from mrlfads.data_loaders.errors import DatasetError
from mrlfads.data_loaders.manifest import DatasetManifest, ShardInfo

_REMAKE = "re-create the dataset (`mrlfads simulate` / `mrlfads ingest` with --overwrite)"


class ArrowDataset:
    """A validated manifest plus lazy, column- and split-selective access to the shards."""

    def __init__(self, uri: str, fs: pafs.FileSystem, root: str, manifest: DatasetManifest,
                 verify_checksums: bool = True):
        self.uri, self.fs, self.root, self.manifest = uri, fs, root, manifest
        self.verify_checksums = verify_checksums
        self._verified: set[str] = set()
        self._values_checked: set[tuple[str, str]] = set()  # (shard path, column)

    @classmethod
    def open(cls, uri: str | os.PathLike, *, verify_checksums: bool = True) -> ArrowDataset:
        """Read and validate dataset.json only (cheap); shards are opened when read."""
        uri = os.fspath(uri)
        fs, root = dfs.resolve(uri)
        where = f"{uri.rstrip('/')}/{schema.MANIFEST_NAME}"
        try:
            with fs.open_input_stream(dfs.join(root, schema.MANIFEST_NAME)) as f:
                text = f.read()
        except FileNotFoundError:
            raise DatasetError(
                f"{where}: not found, so {uri} is not an mrlfads dataset (or its write never "
                "finished); create one with `mrlfads simulate` or `mrlfads ingest`") from None
        except OSError as e:
            raise DatasetError(f"{where}: cannot read ({e}); check the path and credentials") from None
        return cls(uri, fs, root, DatasetManifest.from_json(text, source=where), verify_checksums)

    def __repr__(self) -> str:
        m = self.manifest
        return f"ArrowDataset({self.uri!r}, regions={list(m.region_names)}, splits={m.splits})"

    # -- shards ------------------------------------------------------------------------------
    def shard_uri(self, shard: ShardInfo) -> str:
        return f"{self.uri.rstrip('/')}/{shard.path}"

    def _missing(self, shard: ShardInfo) -> DatasetError:
        return DatasetError(f"{self.shard_uri(shard)}: shard listed in {schema.MANIFEST_NAME} is "
                            f"missing, so the dataset is incomplete; restore the file or {_REMAKE}")

    def _inside(self, rel: str) -> str:
        """Full path of `rel`, refused unless it stays under the dataset root once resolved
        (symlinks locally, '.'/'..' everywhere): the manifest check's second line of defence."""
        path = dfs.join(self.root, rel)
        if not dfs.inside(self.fs, self.root, path):
            raise DatasetError(f"{self.uri.rstrip('/')}/{rel}: resolves to a file outside "
                               "the dataset directory (a link or '..'), which is never read; "
                               f"{_REMAKE}")
        return path

    def _check_sum(self, shard: ShardInfo, digest: str) -> None:
        if digest != shard.sha256:  # the file's own digest is never printed
            raise DatasetError(
                f"{self.shard_uri(shard)}: sha256 does not match {schema.MANIFEST_NAME}: the "
                f"file is corrupt or was changed after writing; restore it or {_REMAKE}")
        self._verified.add(shard.path)

    def _read_table(self, shard: ShardInfo, columns: list[str] | None, verify: bool) -> pa.Table:
        path = self._inside(shard.path)
        verify = verify and shard.path not in self._verified
        try:
            if shard.path.endswith(".parquet"):
                if verify:
                    with self.fs.open_input_file(path) as f:
                        buf = f.read_buffer()
                    self._check_sum(shard, hashlib.sha256(buf).hexdigest())
                    return pq.read_table(pa.BufferReader(buf), columns=columns)
                return pq.read_table(path, filesystem=self.fs, columns=columns)
            if dfs.is_local(self.fs):
                src = pa.memory_map(path, "r")  # zero-copy: buffers point into the mapping
            else:
                with self.fs.open_input_file(path) as f:
                    src = pa.BufferReader(f.read_buffer())
            if verify:
                self._check_sum(shard, hashlib.sha256(src.read_buffer()).hexdigest())
                src.seek(0)
            return pa.ipc.open_file(src).read_all()
        except FileNotFoundError:
            raise self._missing(shard) from None
        except (pa.ArrowInvalid, OSError) as e:
            raise DatasetError(f"{self.shard_uri(shard)}: cannot read shard ({e}); {_REMAKE}") from None

    def _check_schema(self, shard: ShardInfo, sch: pa.Schema, columns: Iterable[str]) -> None:
        where = self.shard_uri(shard)
        for col in columns:
            if col not in sch.names:
                raise DatasetError(f"{where}: column {col!r} is missing (the manifest says it "
                                   f"exists); the shard does not match {schema.MANIFEST_NAME}; {_REMAKE}")
            want = self.manifest.expected_shape(col)
            typ = sch.field(col).type
            if want is None or col.startswith("task/"):
                continue
            if not isinstance(typ, pa.FixedShapeTensorType) or typ.value_type != pa.float32():
                raise DatasetError(f"{where}: column {col!r} has type {typ}, expected a float32 "
                                   f"fixed_shape_tensor of shape {want}; {_REMAKE}")
            got = tuple(typ.shape)
            if len(got) != len(want) or any(w is not None and w != g for w, g in zip(want, got)):
                pretty = tuple("any" if w is None else w for w in want)
                raise DatasetError(f"{where}: column {col!r} has shape {got} per trial, but "
                                   f"{schema.MANIFEST_NAME} implies {pretty}; {_REMAKE}")

    def read_shard(self, shard: ShardInfo, columns: Sequence[str] | None = None,
                   verify: bool | None = None) -> pa.Table:
        """One shard as a table, checked against the manifest (rows, schema, checksum)."""
        cols = list(columns) if columns is not None else None
        verify = self.verify_checksums if verify is None else verify
        parquet = shard.path.endswith(".parquet")
        if cols is not None and parquet:  # footer only: fail on a bad schema before downloading
            self._check_schema(shard, self._schema(shard), cols)
        table = self._read_table(shard, cols if parquet else None, verify)
        if cols is not None:
            self._check_schema(shard, table.schema, cols)
            table = table.select(cols)
        if table.num_rows != shard.rows:
            raise DatasetError(f"{self.shard_uri(shard)}: has {table.num_rows} rows but "
                               f"{schema.MANIFEST_NAME} says {shard.rows}; {_REMAKE}")
        return table

    def _schema(self, shard: ShardInfo) -> pa.Schema:
        path = self._inside(shard.path)
        try:
            if shard.path.endswith(".parquet"):
                return pq.read_schema(path, filesystem=self.fs)
            with self.fs.open_input_file(path) as f:
                return pa.ipc.open_file(f).schema
        except FileNotFoundError:
            raise self._missing(shard) from None
        except (pa.ArrowInvalid, OSError) as e:
            raise DatasetError(f"{self.shard_uri(shard)}: cannot read shard ({e}); {_REMAKE}") from None

    # -- arrays ------------------------------------------------------------------------------
    def columns(self) -> tuple[str, ...]:
        """Columns read by default: ids, split, condition, session (multi-session datasets)
        and every tensor column in the manifest. The optional `perturbed` flag is read only
        when asked for by name."""
        session = (schema.SESSION,) if self.manifest.sessions else ()
        return (schema.TRIAL_ID, schema.SPLIT, schema.CONDITION) + session \
            + self.manifest.tensor_columns()

    def chunks(self, split: str | None = None,
               columns: Sequence[str] | None = None) -> list[dict[str, np.ndarray]]:
        """Per-shard numpy arrays (zero-copy views for local Arrow shards holding one split)."""
        if split is not None and split not in schema.SPLITS:
            raise DatasetError(f"split: {split!r} is not one of {list(schema.SPLITS)}")
        cols = list(columns) if columns is not None else list(self.columns())
        return [self.shard_arrays(shard, split, cols) for shard in self.manifest.shards_for(split)]

    def shard_arrays(self, shard: ShardInfo, split: str | None,
                     columns: Sequence[str]) -> dict[str, np.ndarray]:
        """The rows of `split` (all for None) in one shard; views unless rows are filtered."""
        cols = list(columns)
        mixed = split is not None and tuple(shard.splits) != (split,)
        read = cols + ([schema.SPLIT] if mixed and schema.SPLIT not in cols else [])
        observed = [c for c in cols if (c.startswith(("x/", "ext/", "silenced/")))
                    and (shard.path, c) not in self._values_checked]
        if observed and schema.TRIAL_ID not in read:
            read.append(schema.TRIAL_ID)
        table = self.read_shard(shard, read)
        self._check_values(shard, table, observed)
        keep = None
        if mixed:
            keep = table.column(schema.SPLIT).to_numpy(zero_copy_only=False) == split
        return {c: _to_numpy(table.column(c), keep) for c in cols}

    def _check_values(self, shard: ShardInfo, table: pa.Table, cols: list[str]) -> None:
        """NaN/inf anywhere, and negative or fractional Poisson counts, in the observed
        columns, and anything but 0/1 in the recorded interventions: a matching checksum
        proves the file is what was written, not that it is data a model can train on. Once
        per shard and column (two reductions if clean)."""
        tid = table.column(schema.TRIAL_ID).to_numpy() if cols else None
        for col in cols:
            values, where = _to_numpy(table.column(col)), self.shard_uri(shard)
            if col.startswith("silenced/"):
                check_silenced(values, col, where, tid)
            else:
                obs = self.manifest.obs_model if col.startswith("x/") else "gaussian"
                check_observations(values, obs, col, where, tid)
            self._values_checked.add((shard.path, col))

    def arrays(self, split: str | None = None,
               columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Column -> array over all rows of `split`; tensor columns are (trials, T, N).
        Zero-copy when one local Arrow shard holds the split, else one concatenation."""
        parts = self.chunks(split, columns)
        cols = list(columns) if columns is not None else list(self.columns())
        if not parts:
            return {c: np.empty((0,)) for c in cols}
        if len(parts) == 1:
            return parts[0]
        return {c: np.concatenate([p[c] for p in parts]) for c in cols}

    def read_extra(self, name: str) -> bytes:
        """A side file written with write_dataset(extra_files=...), checksum-verified."""
        for e in self.manifest.extras:
            if e.name == name:
                where = f"{self.uri.rstrip('/')}/{e.path}"
                try:
                    with self.fs.open_input_stream(self._inside(e.path)) as f:
                        blob = f.read()
                except FileNotFoundError:
                    raise DatasetError(f"{where}: extra file listed in {schema.MANIFEST_NAME} is "
                                       f"missing; {_REMAKE}") from None
                if hashlib.sha256(blob).hexdigest() != e.sha256:
                    raise DatasetError(f"{where}: sha256 does not match {schema.MANIFEST_NAME}; {_REMAKE}")
                return blob
        raise DatasetError(f"{self.uri}: no extra file {name!r}; present: "
                           f"{[e.name for e in self.manifest.extras]}")

    # -- full check --------------------------------------------------------------------------
    def validate(self) -> None:
        """Every shard: present, checksum, row count, schema, finite (and >= 0 counts) data,
        session indices in range with zeros outside each trial's session; split counts and unique trial ids across shards; extras' checksums."""
        m = self.manifest
        cols = list(self.columns())
        counts: dict[str, int] = {}
        ids = []
        for shard in m.shards:
            self._verified.discard(shard.path)
            table = self.read_shard(shard, cols, verify=True)
            sp = table.column(schema.SPLIT).to_numpy(zero_copy_only=False)
            for s in set(sp.tolist()):
                if s not in shard.splits:
                    raise DatasetError(f"{self.shard_uri(shard)}: holds split {s!r} but "
                                       f"{schema.MANIFEST_NAME} lists {list(shard.splits)}; {_REMAKE}")
                counts[s] = counts.get(s, 0) + int((sp == s).sum())
            tid = table.column(schema.TRIAL_ID).to_numpy()
            ids.append(tid)
            for r in m.region_names:
                col = schema.x_col(r)
                check_observations(_to_numpy(table.column(col)), m.obs_model, col,
                                   self.shard_uri(shard), tid)
            for col in cols:
                if col.startswith("ext/"):
                    check_observations(_to_numpy(table.column(col)), "gaussian", col,
                                       self.shard_uri(shard), tid)
            if m.sessions:
                check_sessions(m, {c: _to_numpy(table.column(c)) for c in cols
                                   if c in (schema.SESSION, schema.TRIAL_ID) or c.startswith("x/")},
                               self.shard_uri(shard))
        if counts != {k: v for k, v in m.splits.items() if v}:
            raise DatasetError(f"{self.uri}: shards hold split counts {counts} but "
                               f"{schema.MANIFEST_NAME} says {m.splits}; {_REMAKE}")
        all_ids = np.concatenate(ids) if ids else np.empty(0)
        if len(np.unique(all_ids)) != len(all_ids):
            raise DatasetError(f"{self.uri}: duplicate trial_id values across shards; {_REMAKE}")
        for e in m.extras:
            self.read_extra(e.name)


def _to_numpy(col: pa.ChunkedArray, keep: np.ndarray | None = None) -> np.ndarray:
    """numpy view of a column ((rows, *shape) for tensors); copies only to filter or join."""
    arrs = []
    for chunk in col.chunks:
        if isinstance(chunk.type, pa.FixedShapeTensorType):
            arrs.append(chunk.to_numpy_ndarray())
        else:
            arrs.append(chunk.to_numpy(zero_copy_only=False))
    if not arrs:
        typ = col.type
        shape = tuple(typ.shape) if isinstance(typ, pa.FixedShapeTensorType) else ()
        out = np.empty((0, *shape), dtype=np.float32 if shape else object)
    else:
        out = arrs[0] if len(arrs) == 1 else np.concatenate(arrs)
    return out if keep is None else out[keep]
