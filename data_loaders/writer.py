"""write_dataset: arrays in memory -> an Arrow dataset directory (local or object store).

Crash safety: shards are written under temporary names and renamed (object stores: a PUT
is atomic), the manifest is written last (also tmp + rename), and on overwrite the files
the old manifest lists, and the writer-named leftovers of an overwrite killed before its
manifest, are deleted after the new manifest is in place (never other files). A
directory without dataset.json is never read as a dataset, so an interrupted write is never
mistaken for a complete one, and the old dataset stays readable until the new one is.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mrlfads.atomic import write_atomic
from mrlfads.data_loaders import fs as dfs
from mrlfads.data_loaders import schema
from mrlfads.data_loaders import sessions as _sessions
from mrlfads.data_loaders.checks import check_observations, check_sessions, check_silenced
from mrlfads.data_loaders.errors import DatasetError
from mrlfads.data_loaders.manifest import DatasetManifest, ExtraFile, RegionSpec, ShardInfo


def make_split(n_trials: int, valid_frac: float = 0.2, seed: int = 0,
               session: Any = None) -> np.ndarray:
    """Deterministic train/valid labels: the same (n, frac, seed) always gives the same split.

    With `session` (per-trial session index), each session's trials are split on their own:
    round(n_s * valid_frac) of them valid, at least 1 of a session with >= 2 trials when
    valid_frac > 0 and at least 1 left for training."""
    if not 0 <= valid_frac < 1:
        raise DatasetError(f"valid_frac: must be in [0, 1), got {valid_frac}")
    labels = np.full(n_trials, "train", dtype=object)
    if session is None:
        n_valid = round(n_trials * valid_frac)
        labels[np.random.default_rng(seed).permutation(n_trials)[:n_valid]] = "valid"
        return labels
    session = _vector(session, "session", n_trials, "int")
    rng = np.random.default_rng(seed)
    for s in np.unique(session):
        rows = np.flatnonzero(session == s)
        n_valid = _sessions.n_valid(len(rows), valid_frac)
        labels[rows[rng.permutation(len(rows))[:n_valid]]] = "valid"
    return labels


def _region_specs(regions: Sequence[Any]) -> tuple[RegionSpec, ...]:
    out = []
    for i, r in enumerate(regions):
        if isinstance(r, RegionSpec):
            out.append(r)
        elif isinstance(r, Mapping):
            ids = r.get("neuron_ids")
            out.append(RegionSpec(r["name"], r["n_heldin"], r.get("n_heldout", 0),
                                  tuple(ids) if ids is not None else None))
        elif isinstance(r, (tuple, list)) and len(r) in (2, 3):
            out.append(RegionSpec(*r))
        else:
            raise DatasetError(f"regions[{i}]: expected RegionSpec, dict or (name, n_heldin, "
                               f"n_heldout), got {r!r}")
    for r in out:
        schema.check_region_name(r.name, where="regions")
    return tuple(out)


def _tensor(arr: Any, arg: str, n: int, shape: tuple[int | None, ...]) -> np.ndarray:
    """float32 (n, *shape) copy-free where possible; None in `shape` accepts any size."""
    a = np.asarray(arr)
    if a.dtype.kind not in "biuf":
        raise DatasetError(f"{arg}: dtype {a.dtype} is not numeric; pass a float or integer array")
    want = (n, *shape)
    ok = a.ndim == len(want) and all(w is None or w == g for w, g in zip(want, a.shape))
    if not ok:
        pretty = tuple("any" if w is None else w for w in want)
        raise DatasetError(f"{arg}: shape {a.shape}, expected {pretty} (trials, time bins, units)")
    return a.astype(np.float32, copy=False)


def _silenced(arr: Any, region: str, n: int, T: int, trial_ids: np.ndarray) -> np.ndarray:
    """float32 (n, T) of 0 and 1: the bins in which ``region``'s messages were silenced."""
    a = np.asarray(arr)
    if a.shape != (n, T):
        raise DatasetError(f"silenced[{region!r}]: shape {a.shape}, expected ({n}, {T}) (trials, "
                           "time bins): 1 where the region's messages were silenced, else 0")
    if a.dtype.kind not in "biuf":
        raise DatasetError(f"silenced[{region!r}]: values must be 0 or 1 (1 where the region's "
                           f"messages were silenced in that bin), got dtype {a.dtype}")
    check_silenced(a, schema.silenced_col(region), f"silenced[{region!r}]", trial_ids)
    return a.astype(np.float32)


def _vector(arr: Any, arg: str, n: int, kind: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.shape != (n,):
        raise DatasetError(f"{arg}: shape {a.shape}, expected ({n},) (one value per trial)")
    if kind == "int" and a.dtype.kind not in "iu":
        raise DatasetError(f"{arg}: dtype {a.dtype}, expected integers")
    if kind == "bool" and a.dtype.kind != "b":
        raise DatasetError(f"{arg}: dtype {a.dtype}, expected booleans")
    return a


def _comm_from_truth(names: tuple[str, ...], truth: Mapping[str, np.ndarray]) -> tuple:
    cm = [[0] * len(names) for _ in names]
    for col, arr in truth.items():
        pair = schema.parse_message_col(col)
        if pair:
            cm[names.index(pair[1])][names.index(pair[0])] = int(arr.shape[-1])
    return tuple(tuple(row) for row in cm)


def _columns(
    regions, n, T, x, split, trial_id, condition, perturbed, ext, truth, task, obs_model,
    sessions=(), session=None, silenced=None,
) -> dict[str, Any]:
    """Validate every input and return column name -> array (n rows each)."""
    names = tuple(r.name for r in regions)
    if set(x) != set(names):
        raise DatasetError(f"x: keys {sorted(x)} must be exactly the region names {list(names)}")
    cols: dict[str, Any] = {}
    tid = np.arange(n, dtype=np.int64) if trial_id is None else _vector(trial_id, "trial_id", n, "int")
    if len(np.unique(tid)) != n:
        raise DatasetError("trial_id: values must be unique (one id per trial)")
    cols[schema.TRIAL_ID] = tid.astype(np.int64)
    sp = np.asarray(split if not isinstance(split, str) else [split] * n, dtype=object)
    if sp.shape != (n,):
        raise DatasetError(f"split: {sp.shape[0] if sp.ndim else 'a scalar'} labels for {n} trials")
    unknown = sorted(set(sp.tolist()) - set(schema.SPLITS))
    if unknown:
        raise DatasetError(f"split: unknown labels {unknown}; use {list(schema.SPLITS)} "
                           "(make_split() gives a deterministic train/valid split)")
    cols[schema.SPLIT] = sp
    cond = np.full(n, "", dtype=object) if condition is None else np.asarray(condition).astype(str)
    cols[schema.CONDITION] = _vector(cond, "condition", n, "str").astype(object)
    if perturbed is not None:
        cols[schema.PERTURBED] = _vector(perturbed, "perturbed", n, "bool")
    if sessions:
        cols[schema.SESSION] = _session_column(session, n, len(sessions))
    for r in regions:
        a = _tensor(x[r.name], f"x[{r.name!r}]", n, (T, r.n_neurons))
        check_observations(a, obs_model, schema.x_col(r.name), f"x[{r.name!r}]", cols[schema.TRIAL_ID])
        cols[schema.x_col(r.name)] = a
    for reg, a in (ext or {}).items():
        if reg not in names:
            raise DatasetError(f"ext: key {reg!r} is not a region ({list(names)})")
        cols[schema.ext_col(reg)] = _tensor(a, f"ext[{reg!r}]", n, (T, None))
    for reg in names:  # region order, whatever the mapping's
        if reg in (silenced or {}):
            cols[schema.silenced_col(reg)] = _silenced(silenced[reg], reg, n, T,
                                                       cols[schema.TRIAL_ID])
    for reg in silenced or {}:
        if reg not in names:
            raise DatasetError(f"silenced: key {reg!r} is not a region ({list(names)})")
    for col, a in (truth or {}).items():
        if not schema.is_truth_col(col):
            raise DatasetError(f"truth: key {col!r} is not a truth column; use "
                               "'truth/rates/<r>', 'truth/messages/<src>-><dst>' or 'truth/inputs/<r>'")
        regs = [schema.truth_region(col)] if schema.truth_region(col) else list(schema.parse_message_col(col))
        for reg in regs:
            if reg not in names:
                raise DatasetError(f"truth: key {col!r} names unknown region {reg!r} ({list(names)})")
        n_units = {r.name: r.n_neurons for r in regions}
        width = n_units[regs[0]] if col.startswith("truth/rates/") else None
        cols[col] = _tensor(a, f"truth[{col!r}]", n, (T, width))
    for key, a in (task or {}).items():
        col = key if key.startswith("task/") else schema.task_col(key)
        arr = np.asarray(a, dtype=np.float32)
        if arr.shape[:1] != (n,):
            raise DatasetError(f"task[{key!r}]: shape {arr.shape}, expected ({n}, ...)")
        cols[col] = arr
    return cols


def _session_column(session: Any, n: int, n_sessions: int) -> np.ndarray:
    if session is None:
        raise DatasetError("session: sessions= was given without the per-trial session index; "
                           "pass session=array (trials,) of indices into sessions")
    a = _vector(session, "session", n, "int")
    bad = np.flatnonzero((a < 0) | (a >= n_sessions))
    if len(bad):
        raise DatasetError(f"session: value {int(a[bad[0]])} (trial index {int(bad[0])}) is not a "
                           f"session index; {n_sessions} sessions were given, so use 0.."
                           f"{n_sessions - 1} (an index into sessions=)")
    return a.astype(np.int32)


def _to_arrow(a: Any) -> pa.Array:
    if isinstance(a, np.ndarray) and a.ndim >= 2:
        # Textbook C strides: numpy calls arrays with odd strides on size-1 axes contiguous
        # (fancy indexing makes them), but Arrow's tensor conversion rejects or misreads them.
        canonical = tuple(int(np.prod(a.shape[i + 1:])) * a.itemsize for i in range(a.ndim))
        return pa.FixedShapeTensorArray.from_numpy_ndarray(
            a if a.strides == canonical else a.copy(order="C"))
    if isinstance(a, np.ndarray) and a.dtype == object:
        return pa.array(a.tolist(), type=pa.string())
    return pa.array(a)


def _serialize(table: pa.Table, fmt: str) -> pa.Buffer:
    sink = pa.BufferOutputStream()
    if fmt == "arrow":
        with pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table.combine_chunks())
    else:
        pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _put(fs: pafs.FileSystem, path: str, data: pa.Buffer | bytes) -> None:
    """Write `data` to `path` so that a reader sees all of it or nothing."""
    if dfs.is_local(fs):
        write_atomic(path, memoryview(data))
    else:
        with fs.open_output_stream(path) as f:  # an object PUT is atomic
            f.write(data)


def _listing(fs: pafs.FileSystem, root: str) -> list[pafs.FileInfo]:
    return fs.get_file_info(pafs.FileSelector(root, allow_not_found=True, recursive=True))


def check_target(uri: str | os.PathLike, overwrite: bool) -> None:
    """Fail at once, before any simulating or binning, where write_dataset would refuse."""
    uri = os.fspath(uri)
    _check_target(*dfs.resolve(uri), uri, overwrite)


def _check_target(fs: pafs.FileSystem, root: str, uri: str,
                  overwrite: bool) -> tuple[set[str], set[str]]:
    """(relative paths present, the old dataset's own files that an overwrite replaces).

    Only a complete dataset is replaced. Deleted are the files its manifest lists and the
    shards, extras and temporary files that an earlier overwrite killed before its manifest
    left beside it (names only the writer makes, schema.is_writer_file), never other files:
    a folder with other files, a write that never finished, or an unreadable dataset.json
    is refused, since mrlfads cannot tell which of those files are its own."""
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.File:
        raise DatasetError(f"{uri}: is a file; a dataset is a directory, choose another path")
    existing = {os.path.relpath(i.path, root) if dfs.is_local(fs) else i.path[len(root) + 1:]
                for i in _listing(fs, root) if i.type == pafs.FileType.File}
    if not existing:
        return existing, set()
    if schema.MANIFEST_NAME in existing:
        if not overwrite:
            raise DatasetError(f"{uri}: a dataset already exists here ({schema.MANIFEST_NAME}); "
                               "pass --overwrite to replace it, or choose another path")
        try:  # read only to refuse a manifest that is not ours: its paths are writer names
            with fs.open_input_stream(dfs.join(root, schema.MANIFEST_NAME)) as f:
                DatasetManifest.from_json(f.read(), source=schema.MANIFEST_NAME)
        except (DatasetError, OSError) as e:
            raise DatasetError(
                f"{uri}: --overwrite refused, {schema.MANIFEST_NAME} there is not a valid "
                f"mrlfads manifest ({e}), so which files are the dataset's is unknown; nothing "
                "was deleted: remove the folder yourself or choose another path") from None
        # the old manifest's shards and extras (a valid manifest lists only writer names) and
        # what a killed overwrite left: every writer-named file but the manifest itself
        return existing, {r for r in existing
                          if r != schema.MANIFEST_NAME and schema.is_writer_file(r)}
    partial = sorted(r for r in existing if schema.is_writer_file(r))
    if len(partial) == len(existing):
        raise DatasetError(
            f"{uri}: holds {len(partial)} file(s) of a dataset write that never finished (no "
            f"{schema.MANIFEST_NAME}, e.g. {partial[0]!r}): a killed or failed run left them; "
            "delete the folder or choose another path (--overwrite replaces only a complete "
            "dataset)")
    raise DatasetError(
        f"{uri}: directory is not empty ({len(existing)} files, e.g. {min(existing)!r}) and "
        f"holds no dataset ({schema.MANIFEST_NAME}); choose an empty path (--overwrite "
        "replaces only a complete mrlfads dataset, never other files)")


def _free_name(rel: str, taken: set[str], token: str) -> str:
    if rel not in taken:
        return rel
    stem, ext = os.path.splitext(rel)
    return f"{stem}-{token}{ext}"


def write_dataset(
    uri: str | os.PathLike, *, name: str, regions: Sequence[Any], obs_model: str,
    bin_width_s: float, ic_enc_seq_len: int, x: Mapping[str, Any], split: Any,
    trial_id: Any = None, condition: Any = None, perturbed: Any = None,
    ext: Mapping[str, Any] | None = None, truth: Mapping[str, Any] | None = None,
    task: Mapping[str, Any] | None = None, comm_matrix: Sequence[Sequence[int]] | None = None,
    provenance: Mapping[str, Any] | None = None, rows_per_shard: int = 512,
    overwrite: bool = False, extra_files: Mapping[str, bytes] | None = None,
    shard_format: Literal["arrow", "parquet"] | None = None,
    sessions: Sequence[Any] | None = None, session: Any = None,
    silenced: Mapping[str, Any] | None = None,
) -> DatasetManifest:
    """Write one trial per row, grouped by split so readers of one split skip other shards.

    x[region]: (trials, T, n_heldin + n_heldout), held-in neurons first. Rows are stored in
    split order (train, valid, test, perturbed), input order within a split.
    shard_format None: Arrow IPC locally (memory-mappable), Parquet on object stores.
    sessions (SessionSpec or dicts) and session (per-trial index into them): a multi-session
    dataset, x[region] holding the union of the sessions' neurons (data_loaders/sessions.py)
    and exactly 0 in the columns of sessions other than the trial's own.
    silenced[region]: (trials, T) 0/1, 1 in the bins where the experiment silenced every
    message the region sends (recorded interventions; training silences the model's
    messages the same way).
    """
    uri = os.fspath(uri)
    specs = _region_specs(regions)
    if not x:
        raise DatasetError("x: no regions given; pass {region: array (trials, T, N)}")
    first = np.asarray(x[next(iter(x))])
    if first.ndim != 3:
        raise DatasetError(f"x[{next(iter(x))!r}]: shape {first.shape}, expected (trials, T, N)")
    n, T = first.shape[:2]
    if not isinstance(rows_per_shard, int) or rows_per_shard < 1:
        raise DatasetError(f"rows_per_shard: must be an integer >= 1, got {rows_per_shard!r}")
    if obs_model not in schema.OBS_MODELS:
        raise DatasetError(f"obs_model: {obs_model!r} is not one of {list(schema.OBS_MODELS)}")
    session_specs = _sessions.coerce(sessions)
    if session is not None and not session_specs:
        raise DatasetError("session: per-trial session indices given without sessions=; pass "
                           "sessions=[SessionSpec(...), ...] (one per index) or drop session=")
    cols = _columns(specs, n, T, x, split, trial_id, condition, perturbed, ext, truth, task,
                    obs_model, session_specs, session, silenced)
    names = tuple(r.name for r in specs)
    truth_cols = tuple(c for c in cols if schema.is_truth_col(c))
    try:
        json.dumps(dict(provenance or {}))
    except TypeError as e:
        raise DatasetError(f"provenance: must be JSON-serialisable ({e})") from None
    try:
        json.dumps([s.to_dict() for s in session_specs])
    except TypeError as e:
        raise DatasetError(f"sessions: names, missing reasons and provenance must be "
                           f"JSON-serialisable ({e})") from None
    # Validate metadata before touching storage (n_heldin >= 1, n_bins > tau, ...).
    draft = DatasetManifest(
        name=name, regions=specs, bin_width_s=bin_width_s, n_bins=T, ic_enc_seq_len=ic_enc_seq_len,
        obs_model=obs_model, splits={}, shards=(), truth=truth_cols,
        ext_dims={reg: int(cols[schema.ext_col(reg)].shape[-1]) for reg in (ext or {})},
        comm_matrix=(tuple(tuple(r) for r in comm_matrix) if comm_matrix is not None
                     else _comm_from_truth(names, {c: cols[c] for c in truth_cols})),
        provenance=dict(provenance or {}), task=tuple(c for c in cols if schema.is_task_col(c)),
        sessions=session_specs,
        silenced=tuple(r for r in names if schema.silenced_col(r) in cols),
    )
    if session_specs:
        check_sessions(draft, cols, "write_dataset: x")
    fmt = shard_format or ("parquet" if dfs.is_remote(uri) else "arrow")
    if fmt not in ("arrow", "parquet"):
        raise DatasetError(f"shard_format: {fmt!r} is not 'arrow' or 'parquet'")
    for key in extra_files or {}:
        if not schema.EXTRA_NAME_RE.match(key):
            raise DatasetError(f"extra_files: {key!r} is not a plain file name (letters, digits, '_.-')")

    fs, root = dfs.resolve(uri)
    taken, replaced = _check_target(fs, root, uri, overwrite)
    token = secrets.token_hex(4)
    local = dfs.is_local(fs)  # object stores have no directories: skip the marker objects
    if local:
        fs.create_dir(dfs.join(root, schema.SHARDS_DIR), recursive=True)
    shards = []
    for sp in schema.SPLITS:
        rows = np.flatnonzero(cols[schema.SPLIT] == sp)
        for start in range(0, len(rows), rows_per_shard):
            idx = rows[start:start + rows_per_shard]
            table = pa.table({c: _to_arrow(a[idx]) for c, a in cols.items()})
            data = _serialize(table, fmt)
            rel = _free_name(f"{schema.SHARDS_DIR}/part-{len(shards):05d}.{fmt}", taken, token)
            _put(fs, dfs.join(root, rel), data)
            shards.append(ShardInfo(rel, len(idx), hashlib.sha256(data).hexdigest(), (sp,)))
    extras = []
    if extra_files and local:
        fs.create_dir(dfs.join(root, schema.EXTRAS_DIR), recursive=True)
    for key, blob in (extra_files or {}).items():
        rel = _free_name(f"{schema.EXTRAS_DIR}/{key}", taken, token)
        _put(fs, dfs.join(root, rel), bytes(blob))
        extras.append(ExtraFile(key, rel, hashlib.sha256(blob).hexdigest(), len(blob)))
    splits = {sp: int((cols[schema.SPLIT] == sp).sum()) for sp in schema.SPLITS
              if (cols[schema.SPLIT] == sp).any()}
    manifest = DatasetManifest(**{**draft.__dict__, "splits": splits, "shards": tuple(shards),
                                  "extras": tuple(extras)})
    _put(fs, dfs.join(root, schema.MANIFEST_NAME), manifest.to_json().encode())
    # Only now is the old dataset unreachable: remove the files its manifest listed and the
    # leftovers of killed overwrites (writer-made names: shards/part-*, extras/*, .NAME.tmp-*),
    # nothing else in the folder.
    keep = {s.path for s in shards} | {e.path for e in extras}
    for rel in sorted(replaced & taken - keep):
        path = dfs.join(root, rel)
        if dfs.inside(fs, root, path):
            fs.delete_file(path)
    return manifest
