"""NWB files -> one Arrow dataset: validate every file, then bin, then write (manifest last).

Several files (sessions), --sessions matched: they must have the same regions, and each
region the same number of kept units in every session; units are matched by position
(sorted by unit id), as for chronic recordings of the same units; a mismatch is an
IngestError naming files and regions. --sessions separate: a session per file, each region
holding the union of the files' own units (nwb/sessions.py). --sessions auto (default):
matched when the files' regions and unit counts allow it, else separate.
Trial ids: one file keeps its NWB trial ids; with several, file k's ids are shifted by the
sum over earlier files of (their max id + 1), so ids stay unique and traceable
(provenance.sources lists each file's name, size, sha256 and original ids).
An https:// or s3:// file is streamed (remote.py): its source records the URI without
credentials and the size, and no sha256 (that would download the whole file).
"""
from __future__ import annotations

import dataclasses
import os
import posixpath
import shutil
from collections.abc import Sequence

import numpy as np

from mrlfads.data_loaders import fs as dfs
from mrlfads.data_loaders import schema
from mrlfads.data_loaders.errors import DatasetError, IngestError
from mrlfads.data_loaders.manifest import DatasetManifest, RegionSpec
from mrlfads.data_loaders.nwb import binning, remote
from mrlfads.data_loaders.nwb import heldout as nwb_heldout
from mrlfads.data_loaders.nwb import sessions as nwb_sessions
from mrlfads.data_loaders.nwb.options import IngestOptions, split_unit_ref
from mrlfads.data_loaders.nwb.plan import (
    FilePlan,
    fit_observed,
    fit_window,
    load_region_map,
    plan_file,
    resolve_window,
)
from mrlfads.data_loaders.nwb.read import NWBSession, open_nwb, sha256_file
from mrlfads.data_loaders.nwb.sessions import RegionLayout
from mrlfads.data_loaders.sessions import n_valid as session_n_valid


def ingest(files: Sequence[str | os.PathLike], out: str | os.PathLike,
           options: IngestOptions | None = None, *, overwrite: bool = False) -> DatasetManifest:
    """Ingest `files` into the dataset at `out`; nothing is written unless all files pass."""
    o = options or IngestOptions()
    files = [os.fspath(f) for f in files]
    if not files:
        raise IngestError("no NWB files given; pass one or more FILE.nwb")
    if len({f if remote.is_remote(f) else os.path.abspath(f) for f in files}) != len(files):
        raise IngestError(f"the same NWB file is given twice in {files}; pass each session once")
    _check_out(os.fspath(out), overwrite)
    region_map = load_region_map(o.region_map)
    plans, warnings, remote_sizes = [], [], []
    names = nwb_sessions.session_names(files)
    for path, drop in zip(files, _drop_units_by_file(names, o)):
        with open_nwb(path) as s:
            plans.append(plan_file(s, dataclasses.replace(o, drop_units=drop), region_map))
            warnings += plans[-1].warnings
            remote_sizes.append(s.remote_size)
    _check_drop_units(plans, names, o)
    separate = o.sessions == "separate" or (o.sessions == "auto" and len(plans) > 1
                                            and not nwb_sessions.matchable(plans, o))
    specs: list = []
    if separate:
        layouts, specs = nwb_sessions.separate_layouts(plans, o, warnings)
    else:
        layouts = _layouts(plans, o, warnings)
    window = resolve_window(plans, o, warnings)
    bw = o.bin_width_s
    n_bins = binning.n_bins_for(window[1] - window[0], bw)
    if n_bins <= o.ic_enc_seq_len:
        raise IngestError(f"window {window[0]:g}:{window[1]:g} s holds {n_bins} bins of {o.bin_ms:g} ms, "
                          f"but ic_enc_seq_len is {o.ic_enc_seq_len}; trials need more bins: widen "
                          "--window, shorten --bin-ms or lower --ic-enc-seq-len")
    for k, p in enumerate(plans):  # every window fits its trial, before any spike is read
        rows = np.concatenate([L.rows[k] for L in layouts])  # the units binned
        plans[k] = fit_observed(fit_window(p, window, n_bins * bw, o), rows, window, n_bins * bw, o)
        warnings += plans[k].warnings[len(p.warnings):]
    silenced, label = _interventions(plans, [L.name for L in layouts], window, n_bins, bw,
                                     warnings)
    cols = _trial_columns(plans, o, separate, label, tuple(silenced or ()))
    x, ext = _bin_all(files, plans, layouts, window, n_bins, o, warnings)
    if o.heldout_column is None:  # marked held-out units are the user's choice
        layouts = _heldout_that_fire(x, plans, layouts, specs if separate else None, o, warnings)
    sources = [_source(p, k, layouts, remote_sizes[k]) for k, p in enumerate(plans)]
    provenance = {
        "generator": "mrlfads ingest",
        "sources": sources,
        "options": _options_dict(o),
        "region_map": region_map,
        "window_s": list(window),
        "warnings": warnings,
        "versions": _versions(),
    }
    if separate:
        provenance["sessions"] = "separate: a session per file, each with its own units"
        regions = [RegionSpec(L.name, L.n_heldin, L.n_heldout,
                              nwb_sessions.neuron_ids(plans, L, specs)) for L in layouts]
        session = np.repeat(np.arange(len(plans)), [len(p.event) for p in plans])
        cols.update(sessions=specs, session=session)
    else:
        regions = [RegionSpec(L.name, L.n_heldin, L.n_heldout,
                              tuple(str(i) for i in plans[0].unit_ids[L.rows[0]])) for L in layouts]
    warnings += _silent_units(x, regions)
    name = o.name or (remote.default_name(files[0]) if remote.is_remote(files[0])
                      else os.path.splitext(os.path.basename(files[0]))[0])
    return _write(os.fspath(out), overwrite, name=name, regions=regions, obs_model="poisson",
                  bin_width_s=bw, ic_enc_seq_len=o.ic_enc_seq_len, x=x, ext=ext,
                  provenance=provenance, rows_per_shard=o.rows_per_shard, silenced=silenced,
                  **cols)


def _heldout_that_fire(x, plans, layouts, specs, o, warnings) -> list[RegionLayout]:
    """Layouts whose held-out units fire in some trial's window (nwb/heldout.py)."""
    ends = np.cumsum([len(p.event) for p in plans])
    trials = [slice(int(e - len(p.event)), int(e)) for p, e in zip(plans, ends)]
    region_groups = {L.name: nwb_heldout.groups(
        L, trials, None if specs is None else [(s.name, s.units[L.name]) for s in specs])
        for L in layouts}
    layouts, swapped = nwb_heldout.swap_silent(x, layouts, region_groups,
                                               [p.unit_ids for p in plans], o.seed)
    warnings += swapped
    return layouts


def _silent_units(x: dict[str, np.ndarray], regions: list[RegionSpec]) -> list[str]:
    """A warning naming the units without a spike in any trial's window: they tell the
    model nothing, and one held out scores nothing."""
    silent = [f"{r.name}:{r.neuron_ids[j]}" for r in regions
              for j in np.flatnonzero(x[r.name].sum(axis=(0, 1)) == 0)]
    if not silent:
        return []
    shown = ", ".join(silent[:10]) + (", ..." if len(silent) > 10 else "")
    return [(f"{len(silent)} units fire no spike in any trial's window (region:id {shown}); "
             "they carry no information: leave them out with --drop-units")]


def _drop_units_by_file(names: list[str], o: IngestOptions) -> list[tuple[int, ...]]:
    """The Units ids --drop-units leaves out of each file: plain ids from every file,
    SESSION/ID from the file of that session name (nwb/sessions.py's, the file's stem)."""
    refs = [split_unit_ref(u) for u in o.drop_units]
    unknown = sorted({s for s, _ in refs if s is not None and s not in names})
    if unknown:
        raise IngestError(f"--drop-units: sessions {unknown} are not among the files given, "
                          f"whose session names are {names} (each file's stem); write "
                          "SESSION/ID with one of those")
    return [tuple(sorted({i for s, i in refs if s in (None, name)})) for name in names]


def _check_drop_units(plans: list[FilePlan], names: list[str], o: IngestOptions) -> None:
    """Every --drop-units entry names a unit of some file (SESSION/ID: of that session's
    file): a mistyped id would otherwise keep the unit it meant without a word."""
    known = np.concatenate([p.unit_ids for p in plans])
    refs = [split_unit_ref(u) for u in o.drop_units]
    unknown = sorted({i for s, i in refs if s is None} - set(known.tolist()))
    if unknown:
        raise IngestError(f"--drop-units: unit ids {unknown} are in no file's Units table (its "
                          f"ids run {int(known.min())}..{int(known.max())}); check the ids")
    ids = dict(zip(names, (p.unit_ids for p in plans)))
    absent = [f"{s}/{i}" for s, i in refs if s is not None and i not in ids[s]]
    if absent:
        raise IngestError(f"--drop-units: {absent} name no unit of their session's Units table; "
                          "check the ids (a plain id leaves that id out of every file)")


# -- regions ----------------------------------------------------------------------------------
def _layouts(plans: list[FilePlan], o: IngestOptions, warnings: list[str]) -> list[RegionLayout]:
    names = _common_regions(plans, o)
    kept = []
    for r in names:
        counts = {p.path: len(p.region_rows[r]) for p in plans}
        if len(set(counts.values())) > 1:
            raise IngestError(
                f"region {r!r} has a different number of units per session {counts}; with "
                "--sessions matched units are matched by position across sessions, so counts "
                "must be equal: pass --sessions separate (a session per file, each with its own "
                "units), ingest the sessions separately, or drop units (--drop-quality, "
                "--region-map) to match")
        n = next(iter(counts.values()))
        if n < o.min_neurons:
            warnings.append(f"region {r!r} dropped: {n} units < --min-neurons {o.min_neurons}")
        else:
            kept.append(r)
    if not kept:
        raise IngestError(f"no region has at least {o.min_neurons} units (--min-neurons) in "
                          f"{[p.path for p in plans]}; lower --min-neurons or check the regions")
    for r in kept:
        if not schema.REGION_RE.match(r):
            raise IngestError(f"{plans[0].path}: region label {r!r} is not a valid region name "
                              "(letters, digits, '_', starting with a letter); map it with "
                              "--region-map FILE ({label: region}) or leave it out with --regions")
    rng = np.random.default_rng(o.seed)
    return [_layout(r, plans, o, rng) for r in kept]


def _common_regions(plans: list[FilePlan], o: IngestOptions) -> list[str]:
    if o.regions is not None:
        for p in plans:
            absent = [r for r in o.regions if r not in p.region_rows]
            if absent:
                raise IngestError(f"{p.path}: requested regions {absent} (--regions) are absent; "
                                  f"this file has regions {list(p.regions)}: fix --regions "
                                  "(or --region-map)")
        return list(o.regions)
    sets = {p.path: p.regions for p in plans}
    if len(set(sets.values())) > 1:
        raise IngestError(f"sessions have different regions: {sets}; with --sessions matched "
                          "sessions need the same regions: pass --regions with the shared ones, "
                          "or --sessions separate (a session per file)")
    return list(plans[0].regions)


def _layout(r: str, plans: list[FilePlan], o: IngestOptions, rng: np.random.Generator) -> RegionLayout:
    n = len(plans[0].region_rows[r])
    if o.heldout_column is None:
        n_out = o.n_heldout(n)
        out_pos = np.sort(rng.choice(n, size=min(n_out, n), replace=False))
        per_file = [out_pos] * len(plans)
    else:
        per_file = [np.flatnonzero(p.heldout_flags[p.region_rows[r]]) for p in plans]
        if len({len(h) for h in per_file}) > 1:
            raise IngestError(f"region {r!r}: --heldout-column {o.heldout_column!r} marks "
                              f"{[len(h) for h in per_file]} units in sessions "
                              f"{[p.path for p in plans]}; mark the same number in each")
        n_out = len(per_file[0])
    if n - n_out < 1:
        raise IngestError(f"region {r!r}: {n_out} of its {n} units would be held out, leaving none "
                          "for the encoders; lower --heldout")
    rows = []
    for p, out in zip(plans, per_file):
        held_in = np.setdiff1d(np.arange(n), out)
        rows.append(p.region_rows[r][np.concatenate([held_in, out])])
    return RegionLayout(r, n - len(per_file[0]), len(per_file[0]), tuple(rows),
                        tuple(np.arange(n) for _ in plans))


# -- binning ----------------------------------------------------------------------------------
def _bin_all(files, plans, layouts, window, n_bins, o, warnings) -> tuple[dict, dict | None]:
    """x[region]: (trials, T, N) counts over all files; ext[region]: (trials, T, D) or None.
    Output arrays are allocated once and filled file by file (no concatenation copies)."""
    n_total = sum(len(p.event) for p in plans)
    x = {L.name: np.zeros((n_total, n_bins, L.n_heldin + L.n_heldout), dtype=np.float32)
         for L in layouts}
    exts, first = [], 0
    for k, (path, p) in enumerate(zip(files, plans)):
        edges = binning.window_edges(p.windows(window, n_bins * o.bin_width_s)[0], n_bins,
                                     o.bin_width_s)
        trials = slice(first, first + len(p.event))
        first += len(p.event)
        with open_nwb(path) as s:
            extent: dict[int, tuple[int, float]] = {}
            warnings += _bin_units(s, p, {L.name: (L.rows[k], L.cols[k]) for L in layouts},
                                   edges, x, trials, extent)
            _check_time_base(p, extent)
            if o.ext_timeseries is not None:
                times, values = s.timeseries_samples(o.ext_timeseries, edges[0, 0], edges[-1, -1])
                exts.append(binning.bin_timeseries(times, values, edges))
        if o.ext_column is not None:
            exts.append(np.broadcast_to(p.ext_value[:, None, None], (len(p.event), n_bins, 1)))
    if not exts:
        return x, None
    e = np.concatenate(exts, axis=0).astype(np.float32)
    return x, {L.name: e for L in layouts}


def _bin_units(s: NWBSession, p: FilePlan, rows: dict[str, tuple[np.ndarray, np.ndarray]],
               edges: np.ndarray, x: dict[str, np.ndarray], trials: slice,
               extent: dict[int, tuple[int, float]]) -> list[str]:
    """Fill x[region][trials, :, cols[j]] with the counts of unit rows[j], for (rows, cols)
    = rows[region], and extent[row] with the unit's spike count and last spike time. All
    regions' units are read in one pass in file order, so consecutive units share HDF5
    reads. Spike times out of order (merged or concatenated sorter output) are counted as
    if sorted, which is what counts are; the warning returned names them, since NWB's best
    practice is ascending times."""
    where = {int(r): (name, int(c)) for name, (rr, cc) in rows.items() for r, c in zip(rr, cc)}
    unsorted: list[str] = []
    for r, spikes in s.iter_unit_spikes(np.array(sorted(where), dtype=np.int64)):
        if not np.isfinite(spikes).all():
            raise IngestError(f"{p.path}: unit {int(p.unit_ids[r])} has NaN or infinite spike "
                              "times; remove them from the file")
        bad = binning.first_unsorted(spikes)
        if bad is not None:
            unsorted.append(f"unit {int(p.unit_ids[r])}: spike {bad} at {spikes[bad]:.6f} s "
                            f"after {spikes[bad - 1]:.6f} s")
            spikes = np.sort(spikes)
        name, j = where[r]
        x[name][trials, :, j] = binning.bin_spikes(spikes, edges)
        extent[r] = (len(spikes), float(spikes[-1]) if len(spikes) else 0.0)
    if not unsorted:
        return []
    return [(f"{os.path.basename(p.path)}: the spike times of {len(unsorted)} units are not in "
             f"ascending order ({unsorted[0]}); they were binned as sorted. NWB files should "
             "hold them ascending (nwbinspector flags this)")]


# Spike times this many times past the last trial's end, at implied rates this low, are not
# seconds: milliseconds put a recording 1000x past its trials at a thousandth of its rates,
# sample indices 20000-30000x. A long recording after a short task (2 h after 1 min of
# trials: 120x) keeps its rates, so it is never taken for either.
TIME_BASE_FACTOR = 100.0
TIME_BASE_RATE_HZ = 0.05


def _check_time_base(p: FilePlan, extent: dict[int, tuple[int, float]]) -> None:
    """Refuse spike times that are plainly not in seconds (most units' spikes run over
    TIME_BASE_FACTOR times past the trials at a median under TIME_BASE_RATE_HZ): binned on
    the trials' clock they give a dataset of silence with no error."""
    end = float(np.max(p.stop)) if len(p.stop) else 0.0
    firing = {r: (n, last) for r, (n, last) in extent.items() if n > 0 and last > 0}
    if end <= 0 or not firing:
        return
    far = [r for r, (_, last) in firing.items() if last > TIME_BASE_FACTOR * end]
    rate = float(np.median([n / last for n, last in firing.values()]))
    if 2 * len(far) <= len(firing) or rate >= TIME_BASE_RATE_HZ:
        return
    latest = max(last for _, last in firing.values())
    raise IngestError(
        f"{p.path}: the spike times of {len(far)} of {len(firing)} units run to {latest:.6g}, "
        f"over {TIME_BASE_FACTOR:g} times past the end of the last trial ({end:.6g} s), at a "
        f"median of {rate:.2g} spikes per second: NWB spike times are in seconds, and these "
        "look like milliseconds or sample indices. Convert the Units spike_times to seconds "
        "(divide by 1000, or by the sampling rate) and ingest the file again")


# -- trials -----------------------------------------------------------------------------------
def _interventions(plans: list[FilePlan], regions: list[str], window: tuple[float, float],
                   n_bins: int, bw: float, warnings: list[str]
                   ) -> tuple[dict[str, np.ndarray] | None, np.ndarray | None]:
    """``silenced/<region>`` arrays (trials, T) of 0/1 (a bin is silenced when its centre
    falls in the trial's [start, stop)), and each trial's silenced region ("" for none);
    (None, None) without --silence-region-column or --silence-region. A trial silencing a
    region the dataset does not have cannot be modelled: it joins the "perturbed" split,
    with a warning."""
    if plans[0].silence is None:
        return None, None
    label = np.concatenate([p.silence[0] for p in plans])
    t0 = np.concatenate([p.silence[1] for p in plans])
    t1 = np.concatenate([p.silence[2] for p in plans])
    start = np.concatenate([p.windows(window, n_bins * bw)[0] for p in plans])
    outside = sorted(set(label[label != ""].tolist()) - set(regions))
    if outside:
        n = int(np.isin(label, outside).sum())
        warnings.append(f"{n} trials silence regions {outside}, which the dataset does not have "
                        f"(regions: {regions}); they go to the 'perturbed' split, not trained on")
    centres = start[:, None] + (np.arange(n_bins) + 0.5) * bw  # (trials, T)
    on = (centres >= t0[:, None]) & (centres < t1[:, None])  # NaN times: False
    silenced = {r: (on & (label == r)[:, None]).astype(np.float32) for r in regions
                if (label == r).any()}
    return silenced or None, label


def _trial_columns(plans: list[FilePlan], o: IngestOptions, per_session: bool = False,
                   silence_label: np.ndarray | None = None, silenced: tuple[str, ...] = ()
                   ) -> dict:
    """trial_id, condition, perturbed and split over all files, in file then time order.
    per_session: each file's unperturbed trials are split on their own (at least 1 valid
    of a file with 2+ when --valid-fraction > 0). Trials whose ``silence_label`` is one of
    the ``silenced`` regions (recorded interventions) are all training trials; validation
    stays observational; other labelled trials are "perturbed"."""
    ids, offset = [], 0
    for p in plans:  # several sessions: shift ids so they stay unique (documented)
        ids.append(p.trial_ids + offset)
        offset += int(p.trial_ids.max()) + 1 if len(plans) > 1 else 0
    trial_id = np.concatenate(ids)
    condition = np.concatenate([p.condition for p in plans])
    perturbed = None if o.perturb_column is None else np.concatenate([p.perturbed for p in plans])
    split = np.full(len(trial_id), "perturbed", dtype=object)
    normal = np.ones(len(trial_id), bool) if perturbed is None else ~perturbed
    if silence_label is not None:
        # a labelled trial is an intervention, whatever --perturb-column says
        normal &= silence_label == ""
        split[np.isin(silence_label, silenced)] = "train"
    n = int(normal.sum())
    n_valid = round(n * o.valid_fraction)
    if per_session:
        file_of = np.repeat(np.arange(len(plans)), [len(p.trial_ids) for p in plans])
        n_valid = sum(session_n_valid(int((normal & (file_of == k)).sum()), o.valid_fraction)
                      for k in range(len(plans)))
    if n - n_valid < 1:
        raise IngestError(f"only {n} unperturbed trials in {[p.path for p in plans]}, none left for "
                          "training; lower --valid-fraction or check --perturb-column")
    rng = np.random.default_rng(o.seed)
    if per_session:
        for k in range(len(plans)):
            rows = np.flatnonzero(normal & (file_of == k))
            split[rows] = "train"
            split[rows[rng.permutation(len(rows))[:session_n_valid(len(rows), o.valid_fraction)]]] = "valid"
        return {"trial_id": trial_id, "condition": condition, "perturbed": perturbed, "split": split}
    labels = np.full(n, "train", dtype=object)
    labels[rng.permutation(n)[:n_valid]] = "valid"
    split[normal] = labels
    return {"trial_id": trial_id, "condition": condition, "perturbed": perturbed, "split": split}


def _source(p: FilePlan, k: int, layouts: list[RegionLayout], remote_size: int | None) -> dict:
    """What file `k` contributed: checksum, trials, and the unit ids behind each column.
    A local file is named, not located: the manifest is shared, and an absolute path would
    show the user's directories; name, size and sha256 find the file wherever a copy lives.
    A streamed file is located by its URI (p.path: credentials already removed) and size;
    its sha256 is None, since computing it would download the whole file."""
    if remote_size is not None:
        where = {"name": posixpath.basename(p.path.split("?")[0].rstrip("/")) or p.path,
                 "uri": p.path, "sha256": None, "size": remote_size}
    else:
        where = {"name": os.path.basename(p.path), "sha256": sha256_file(p.path),
                 "size": os.path.getsize(p.path)}
    return {
        **where,
        "n_trials": len(p.trial_ids),
        "trial_ids": p.trial_ids.tolist(),
        **({"dropped_trials": p.dropped} if p.dropped else {}),
        "unit_ids": {L.name: p.unit_ids[L.rows[k]].tolist() for L in layouts},
    }


def _options_dict(o: IngestOptions) -> dict:
    """JSON-ready options (tuples as lists): IngestOptions(**d) repeats the ingest. The
    region map file is kept by name (its contents are in provenance.region_map)."""
    d = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(o).items()}
    if d.get("region_map") is not None:
        d["region_map"] = os.path.basename(d["region_map"])
    return d


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("mrlfads", "pynwb", "hdmf", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


# -- output -----------------------------------------------------------------------------------
def _check_out(out: str, overwrite: bool) -> None:
    """Refuse, before minutes of binning, any --out the writer would refuse after them."""
    from mrlfads.data_loaders.writer import check_target

    try:
        check_target(out, overwrite)
    except DatasetError as e:
        raise IngestError(str(e)) from None


def _write(out: str, overwrite: bool, **kwargs) -> DatasetManifest:
    """write_dataset, and if it fails, remove a directory this call created: a failed ingest
    leaves nothing behind (the writer's manifest-last rule keeps any old dataset readable)."""
    from mrlfads.data_loaders.writer import write_dataset

    fs, root = dfs.resolve(out)
    created = dfs.is_local(fs) and not os.path.exists(root)
    try:
        return write_dataset(out, overwrite=overwrite, **kwargs)
    except BaseException:
        if created and os.path.isdir(root):
            shutil.rmtree(root, ignore_errors=True)
        raise
