"""Copy a session's identity, trials, units and the electrodes they sit on into a new NWBFile.

Results go into a new file, not the recording: a raw session can be tens of GB, and a
results file should be small and open anywhere without it. What a reader of the results
needs from the session comes along: its start time, subject, trials (same ids and columns)
and units (same ids, spike times, columns, electrodes). Columns are copied when they hold
plain values (numbers, booleans, strings; ragged ones too); a column that references other
objects of the source (a TimeSeries reference, a table region other than the electrodes) is
left out and named in the returned list, since its target is not copied.
"""
from __future__ import annotations

import numpy as np

SUBJECT_FIELDS = ("subject_id", "species", "sex", "age", "description", "genotype", "strain",
                  "weight", "date_of_birth")
SESSION_FIELDS = ("session_id", "experimenter", "lab", "institution", "experiment_description",
                  "keywords", "related_publications", "protocol")
# Units columns pynwb's add_unit takes by keyword; the electrode ones are mapped, not copied
UNIT_ARGS = ("spike_times", "obs_intervals", "waveform_mean", "waveform_sd")


def new_file_from(src, *, identifier: str, session_description: str, notes: str,
                  generated_by: list[tuple[str, str]]):
    """An empty NWBFile with ``src``'s session start, reference time, metadata and subject."""
    import pynwb
    from pynwb.file import Subject

    kw = {k: getattr(src, k) for k in SESSION_FIELDS if getattr(src, k, None) is not None}
    for k in ("experimenter", "keywords", "related_publications"):  # stored as arrays
        if k in kw:
            kw[k] = [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(kw[k]).ravel()]
    nwb = pynwb.NWBFile(session_description=session_description, identifier=identifier,
                        session_start_time=src.session_start_time,
                        timestamps_reference_time=src.timestamps_reference_time, notes=notes,
                        was_generated_by=generated_by, **kw)
    if src.subject is not None:
        nwb.subject = Subject(**{k: getattr(src.subject, k) for k in SUBJECT_FIELDS
                                 if getattr(src.subject, k, None) is not None})
    return nwb


def copy_session_tables(src, dst) -> list[str]:
    """Electrodes (with their groups and devices), units and trials of ``src`` into ``dst``,
    row order and ids kept. Returns "table.column" for every column left out."""
    skipped: list[str] = []
    groups = _copy_electrodes(src, dst, skipped) if src.electrodes is not None else {}
    if src.units is not None and len(src.units):
        _copy_units(src.units, dst, groups, skipped)
    if src.trials is not None and len(src.trials):
        _copy_trials(src.trials, dst, skipped)
    return skipped


# -- columns ---------------------------------------------------------------------------------
def _plain(arr: np.ndarray) -> bool:
    if arr.dtype.kind in "biufUS":
        return True
    return arr.dtype.kind == "O" and all(isinstance(v, (str, bytes)) for v in arr.ravel())


def _values(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind in "SO":
        return np.array([v.decode() if isinstance(v, bytes) else v for v in arr.ravel()],
                        dtype=object).reshape(arr.shape)
    return arr


def _rows(table, name: str) -> tuple[bool, list] | None:
    """(ragged, one value per row) of a plain column, or None for a column of references."""
    from hdmf.common.table import DynamicTableRegion, VectorIndex

    col = table[name]
    if isinstance(col, VectorIndex):
        target = col.target
        if isinstance(target, (VectorIndex, DynamicTableRegion)):
            return None
        data = np.asarray(target.data[:])
        if not _plain(data):
            return None
        data = _values(data)
        ends = np.asarray(col.data[:], dtype=np.int64)
        starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
        return True, [data[s:e] for s, e in zip(starts, ends)]
    if isinstance(col, DynamicTableRegion) or type(col).__name__ == "TimeSeriesReferenceVectorData":
        return None
    data = np.asarray(col.data[:])
    if not _plain(data):
        return None
    values = _values(data)
    return False, [v.item() if isinstance(v, np.generic) else v for v in values]


def _region_rows(table, name: str) -> list[list[int]]:
    """Row indices per row of a (ragged) table-region column, e.g. units' electrodes."""
    col = table[name]
    if hasattr(col, "target"):
        ends = np.asarray(col.data[:], dtype=np.int64)
        starts = np.concatenate([[0], ends[:-1]])
        rows = np.asarray(col.target.data[:], dtype=np.int64)
        return [rows[s:e].tolist() for s, e in zip(starts, ends)]
    return [[int(r)] for r in np.asarray(col.data[:], dtype=np.int64)]


def _description(table, name: str) -> str:
    col = table[name]
    col = getattr(col, "target", col)
    return getattr(col, "description", None) or name


# -- tables ----------------------------------------------------------------------------------
def _copy_electrodes(src, dst, skipped: list[str]) -> dict:
    """Devices, electrode groups and the electrodes table; returns {group name: new group}."""
    devices = {}
    for name, dev in src.devices.items():
        devices[name] = dst.create_device(name=name, description=dev.description)
    groups = {}
    for name, g in src.electrode_groups.items():
        dev = devices.get(g.device.name) if g.device is not None else None
        if dev is None:
            dev = devices.setdefault("device", dst.create_device(name="device"))
        groups[name] = dst.create_electrode_group(name=name, description=g.description or name,
                                                  location=g.location or "unknown", device=dev)
    table = src.electrodes
    n = len(table)
    known = {"location", "group", "group_name", "x", "y", "z", "imp", "filtering", "rel_x",
             "rel_y", "rel_z", "reference"}
    cols = {}
    for name in table.colnames:
        if name in ("group", "group_name"):
            continue
        rows = _rows(table, name)
        if rows is None:
            skipped.append(f"electrodes.{name}")
            continue
        if name not in known:
            dst.add_electrode_column(name=name, description=_description(table, name),
                                     index=rows[0])
        cols[name] = rows[1]
    group_of = [g.name for g in table["group"].data[:]]
    ids = np.asarray(table.id.data[:], dtype=np.int64)
    for i in range(n):
        dst.add_electrode(group=groups[group_of[i]], id=int(ids[i]),
                          **{k: v[i] for k, v in cols.items()})
    return groups


def _copy_units(units, dst, groups: dict, skipped: list[str]) -> None:
    n = len(units)
    cols, extra = {}, []
    for name in units.colnames:
        if name in ("electrodes", "electrode_group"):
            continue
        rows = _rows(units, name)
        if rows is None:
            skipped.append(f"units.{name}")
            continue
        if name not in UNIT_ARGS:
            extra.append((name, rows[0]))
        cols[name] = rows[1]
    for name, ragged in extra:
        dst.add_unit_column(name=name, description=_description(units, name), index=ragged)
    electrodes = _region_rows(units, "electrodes") if "electrodes" in units.colnames else None
    group = ([groups[g.name] for g in units["electrode_group"].data[:]]
             if "electrode_group" in units.colnames else None)
    ids = np.asarray(units.id.data[:], dtype=np.int64)
    for i in range(n):
        kw = {k: v[i] for k, v in cols.items()}
        if electrodes is not None:
            kw["electrodes"] = electrodes[i]
        if group is not None:
            kw["electrode_group"] = group[i]
        dst.add_unit(id=int(ids[i]), **kw)


def _copy_trials(trials, dst, skipped: list[str]) -> None:
    cols = {}
    for name in trials.colnames:
        rows = _rows(trials, name)
        if rows is None:
            skipped.append(f"trials.{name}")
            continue
        if name not in ("start_time", "stop_time", "tags"):
            dst.add_trial_column(name=name, description=_description(trials, name), index=rows[0])
        cols[name] = rows[1]
    ids = np.asarray(trials.id.data[:], dtype=np.int64)
    for i in range(len(trials)):
        kw = {k: v[i] for k, v in cols.items()}
        if "tags" in kw:
            kw["tags"] = [str(t) for t in kw["tags"]]
        dst.add_trial(id=int(ids[i]), **kw)
