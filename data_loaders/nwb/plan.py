"""Per-file metadata pass: which units belong to which region, and which trials, validated.

Everything here reads only small tables (units' labels, the trials table), so every file
can be checked before any spike is binned and long before anything is written.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from mrlfads.data_loaders.errors import IngestError
from mrlfads.data_loaders.nwb.options import IngestOptions
from mrlfads.data_loaders.nwb.read import NWBSession

TIME_TOL = 1e-9  # seconds: float slack when comparing windows with trial bounds


def load_region_map(path: str | None) -> dict[str, str | None] | None:
    """{fine label: region or None (drop)} from a YAML or JSON file."""
    if path is None:
        return None
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)  # YAML is a superset of JSON
    except OSError as e:
        raise IngestError(f"{path}: cannot read the region map ({e.strerror}); check --region-map") from None
    except yaml.YAMLError as e:
        raise IngestError(f"{path}: the region map is not valid YAML/JSON ({e}); write it as "
                          "'fine_label: region' lines") from None
    if not isinstance(data, dict) or not all(isinstance(v, (str, type(None))) for v in data.values()):
        raise IngestError(f"{path}: the region map must be a mapping {{label: region or null}}, "
                          f"e.g. 'VISp2/3: V1'; got {type(data).__name__}")
    return {str(k): v for k, v in data.items()}


@dataclass
class FilePlan:
    """What ingest will take from one file: unit rows per region and trials in time order."""

    path: str
    unit_ids: np.ndarray              # (n_units,) every unit's id, by row
    region_rows: dict[str, np.ndarray]  # region -> unit rows (ascending) kept there
    heldout_flags: np.ndarray | None  # (n_units,) bool, from --heldout-column
    trial_ids: np.ndarray             # (n_trials,) sorted by start time
    start: np.ndarray                 # (n_trials,) seconds
    stop: np.ndarray                  # (n_trials,) seconds
    event: np.ndarray                 # (n_trials,) alignment time (start_time if no --align)
    condition: np.ndarray             # (n_trials,) str
    perturbed: np.ndarray | None      # (n_trials,) bool
    ext_value: np.ndarray | None      # (n_trials,) float, from --ext-column
    # --silence-region-column/--silence-time-columns: (region or "", start s, stop s) per trial
    silence: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    warnings: list[str] = field(default_factory=list)
    labelled: tuple[str, ...] = ()    # regions with units before --drop-quality

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(sorted(self.region_rows))


def plan_file(s: NWBSession, o: IngestOptions, region_map: dict | None) -> FilePlan:
    unit_ids = s.unit_ids()
    labels = s.unit_labels(o.region_column)
    regions = _map_labels(s.path, labels, region_map, o.region_map)
    keep = regions != ""
    warnings = []
    if o.drop_quality:
        quality = np.array([str(q.decode() if isinstance(q, bytes) else q)
                            for q in s.unit_column(o.quality_column, "--drop-quality")], dtype=object)
        bad = np.isin(quality, list(o.drop_quality))
        if bad.any():
            warnings.append(f"{os.path.basename(s.path)}: dropped {int(bad.sum())} units with "
                            f"{o.quality_column} in {list(o.drop_quality)}")
        keep &= ~bad
    region_rows = {r: np.flatnonzero(keep & (regions == r)) for r in np.unique(regions[keep])}
    flags = None
    if o.heldout_column is not None:
        flags = s.unit_column(o.heldout_column, "--heldout-column")
        if flags.dtype.kind not in "biu":
            raise IngestError(f"{s.path}: Units column {o.heldout_column!r} (--heldout-column) must "
                              f"be boolean (True = held out), got dtype {flags.dtype}")
        flags = flags.astype(bool)
    labelled = tuple(sorted(str(r) for r in np.unique(regions[regions != ""])))
    return FilePlan(path=s.path, unit_ids=unit_ids, region_rows=region_rows, heldout_flags=flags,
                    warnings=warnings, labelled=labelled, **_trials(s, o, region_map))


def _map_labels(path: str, labels: np.ndarray, region_map: dict | None, map_path: str | None) -> np.ndarray:
    """Region name per unit ("" = dropped by a null entry of the region map)."""
    if region_map is None:
        return labels
    missing = sorted(set(labels.tolist()) - set(region_map))
    if missing:
        raise IngestError(f"{path}: unit labels {missing} are not in the region map {map_path}; "
                          "add them (map a label to null to drop its units)")
    return np.array([region_map[lab] or "" for lab in labels], dtype=object)


def _trials(s: NWBSession, o: IngestOptions, region_map: dict | None) -> dict:
    ids = s.trial_ids()
    start = s.trial_column("start_time", "the trials table").astype(np.float64)
    stop = s.trial_column("stop_time", "the trials table").astype(np.float64)
    order = np.argsort(start, kind="stable")
    ids, start, stop = ids[order], start[order], stop[order]
    if np.any(~np.isfinite(start) | ~np.isfinite(stop) | (stop <= start)):
        bad = ids[~(stop > start)][:5].tolist()
        raise IngestError(f"{s.path}: trials {bad} have stop_time <= start_time (or NaN); fix "
                          "the trials table")
    overlap = np.flatnonzero(start[1:] < stop[:-1] - TIME_TOL)
    if len(overlap):
        pairs = [(int(ids[i]), int(ids[i + 1])) for i in overlap[:5]]
        raise IngestError(f"{s.path}: trials overlap in time (trial id pairs {pairs}); each spike "
                          "must belong to one trial: fix start_time/stop_time in the trials table")
    if o.align is None:
        event = start
    else:
        event = _numeric(s, o.align, "--align", order)
        missing = ~np.isfinite(event)
        if missing.any():
            raise IngestError(
                f"{s.path}: alignment event {o.align!r} (--align) is missing (NaN) for "
                f"{int(missing.sum())} trials, e.g. ids {ids[missing][:5].tolist()}; drop those "
                "trials from the file or align to an event every trial has")
    return {"trial_ids": ids, "start": start, "stop": stop, "event": event,
                "condition": _condition(s, o, order),
                "perturbed": _perturbed(s, o, ids, order),
                "ext_value": _ext_value(s, o, ids, order),
                "silence": _silence(s, o, region_map, ids, order)}


def _numeric(s: NWBSession, col: str, flag: str, order: np.ndarray) -> np.ndarray:
    values = s.trial_column(col, flag)
    if values.dtype.kind not in "biuf":
        raise IngestError(f"{s.path}: trials column {col!r} ({flag}) must be numeric, got dtype "
                          f"{values.dtype}")
    return values.astype(np.float64)[order]


def _condition(s: NWBSession, o: IngestOptions, order: np.ndarray) -> np.ndarray:
    cols = o.condition_columns
    if cols is None:
        cols = ("condition",) if "condition" in s.trial_columns() else ()
    if not cols:
        return np.full(len(order), "", dtype=object)
    parts = [[v.decode() if isinstance(v, bytes) else str(v)
              for v in s.trial_column(c, "--condition")[order]] for c in cols]
    return np.array(["|".join(p) for p in zip(*parts)], dtype=object)


def _perturbed(s: NWBSession, o: IngestOptions, ids: np.ndarray, order: np.ndarray) -> np.ndarray | None:
    if o.perturb_column is None:
        return None
    values = _numeric(s, o.perturb_column, "--perturb-column", order)
    if not np.all(np.isfinite(values)):
        raise IngestError(f"{s.path}: trials column {o.perturb_column!r} (--perturb-column) is NaN "
                          f"for trials {ids[~np.isfinite(values)][:5].tolist()}; mark every trial "
                          "True/False")
    return values != 0


def _silence(s: NWBSession, o: IngestOptions, region_map: dict | None, ids: np.ndarray,
             order: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(region or "", start, stop) of each trial's recorded intervention, trials in time
    order; None without --silence-region-column."""
    if o.silence_region_column is None:
        return None
    raw = s.trial_column(o.silence_region_column, "--silence-region-column")[order]
    labels = np.array(["" if v is None else (v.decode() if isinstance(v, bytes) else str(v))
                       for v in raw], dtype=object)
    labels[np.isin(labels, ("", "none", "None", "nan"))] = ""
    if region_map is not None:
        unknown = sorted(set(labels[labels != ""].tolist()) - set(region_map))
        if unknown:
            raise IngestError(f"{s.path}: silenced regions {unknown} (--silence-region-column "
                              f"{o.silence_region_column!r}) are not in the region map "
                              f"{o.region_map}; add them (as for unit labels)")
        labels = np.array([region_map[v] or "" if v else "" for v in labels], dtype=object)
    col0, col1 = o.silence_time_columns
    t0 = _numeric(s, col0, "--silence-time-columns", order)
    t1 = _numeric(s, col1, "--silence-time-columns", order)
    on = labels != ""
    bad = on & ~(np.isfinite(t0) & np.isfinite(t1) & (t1 > t0))
    if bad.any():
        raise IngestError(f"{s.path}: trials {ids[bad][:5].tolist()} name a silenced region but "
                          f"their {col0!r}/{col1!r} (--silence-time-columns) are missing or not "
                          "START < STOP; give every silenced trial its times (session seconds)")
    return labels, np.where(on, t0, np.nan), np.where(on, t1, np.nan)


def _ext_value(s: NWBSession, o: IngestOptions, ids: np.ndarray, order: np.ndarray) -> np.ndarray | None:
    if o.ext_column is None:
        return None
    values = _numeric(s, o.ext_column, "--ext-column", order)
    if not np.all(np.isfinite(values)):
        raise IngestError(f"{s.path}: trials column {o.ext_column!r} (--ext-column) is NaN for "
                          f"trials {ids[~np.isfinite(values)][:5].tolist()}; fill it (e.g. 0 for "
                          "no input)")
    return values


def resolve_window(plans: list[FilePlan], o: IngestOptions) -> tuple[float, float]:
    """The window (seconds from the event): as given, or 0 to the shortest trial."""
    if o.window is not None:
        return float(o.window[0]), float(o.window[1])
    return 0.0, float(min(np.min(p.stop - p.start) for p in plans))


def check_window(p: FilePlan, t0: np.ndarray, t1: np.ndarray, window: tuple[float, float]) -> None:
    """Every trial's window [t0, t1) must lie inside the trial: spikes outside belong to
    nobody (or to a neighbouring trial)."""
    out = (t0 < p.start - TIME_TOL) | (t1 > p.stop + TIME_TOL)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise IngestError(
            f"{p.path}: the window {window[0]:g}:{window[1]:g} s falls outside {int(out.sum())} "
            f"trials (e.g. trial {int(p.trial_ids[i])}: window {t0[i]:.3f}-{t1[i]:.3f} s, trial "
            f"{p.start[i]:.3f}-{p.stop[i]:.3f} s); shrink --window or pick another --align event")


def describe_map(region_map: dict | None) -> str | None:
    return None if region_map is None else json.dumps(region_map, sort_keys=True)
