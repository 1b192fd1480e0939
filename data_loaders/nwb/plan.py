"""Per-file metadata pass: which units belong to which region, and which trials, validated.

Everything here reads only small tables (units' labels, the trials table), so every file
can be checked before any spike is binned and long before anything is written.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import numpy as np

from mrlfads.data_loaders.errors import IngestError
from mrlfads.data_loaders.nwb.binning import TIME_TOL
from mrlfads.data_loaders.nwb.options import IngestOptions
from mrlfads.data_loaders.nwb.read import NWBSession, as_strings


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
    dropped: dict[str, list[int]] = field(default_factory=dict)  # why -> trial ids left out
    observed: dict[int, np.ndarray] | None = None  # kept unit row -> its obs_intervals (k, 2)

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(sorted(self.region_rows))

    def windows(self, window: tuple[float, float], span: float) -> tuple[np.ndarray, np.ndarray]:
        """Each trial's binned window [t0, t1) in session seconds: ``span`` (whole bins)
        from the alignment event + window start."""
        t0 = self.event + window[0]
        return t0, t0 + span

    def without(self, drop: np.ndarray, why: str) -> FilePlan:
        """This plan less the trials where ``drop`` (--unfit-trials drop), the reason and
        their ids recorded (a warning, and the manifest's source entry)."""
        if not drop.any():
            return self
        ids = self.trial_ids[drop]
        if drop.all():
            raise IngestError(f"{self.path}: every trial ({len(ids)}) would be dropped ({why}), "
                              "leaving nothing of this file: check --align, --window and the "
                              "units kept")
        keep = ~drop
        per_trial = {f: getattr(self, f)[keep] for f in
                     ("trial_ids", "start", "stop", "event", "condition")}
        for f in ("perturbed", "ext_value"):
            per_trial[f] = None if getattr(self, f) is None else getattr(self, f)[keep]
        silence = None if self.silence is None else tuple(a[keep] for a in self.silence)
        shown = ", ".join(str(int(i)) for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
        warning = (f"{os.path.basename(self.path)}: dropped {len(ids)} of {len(drop)} trials "
                   f"(--unfit-trials drop): {why} (ids {shown})")
        return dataclasses.replace(
            self, **per_trial, silence=silence, warnings=[*self.warnings, warning],
            dropped={**self.dropped, why: [int(i) for i in ids]})


def plan_file(s: NWBSession, o: IngestOptions, region_map: dict | None) -> FilePlan:
    unit_ids = s.unit_ids()
    labels = s.unit_labels(o.region_column)
    regions = _map_labels(s.path, labels, region_map, o.region_map)
    keep = regions != ""
    warnings = _label_warnings(s.path, labels, regions, region_map is not None, o.regions)
    if o.drop_quality:
        quality = as_strings(s.unit_column(o.quality_column, "--drop-quality"))
        bad = np.isin(quality, list(o.drop_quality))
        if bad.any():
            warnings.append(f"{os.path.basename(s.path)}: dropped {int(bad.sum())} units with "
                            f"{o.quality_column} in {list(o.drop_quality)}")
        keep &= ~bad
    if o.drop_units:
        named = np.isin(unit_ids, np.asarray(o.drop_units, dtype=np.int64))
        if named.any():
            warnings.append(f"{os.path.basename(s.path)}: dropped {int(named.sum())} units by id "
                            "(--drop-units)")
        keep &= ~named
    region_rows = {r: np.flatnonzero(keep & (regions == r)) for r in np.unique(regions[keep])}
    flags = None
    if o.heldout_column is not None:
        flags = s.unit_column(o.heldout_column, "--heldout-column")
        if flags.dtype.kind not in "biu":
            raise IngestError(f"{s.path}: Units column {o.heldout_column!r} (--heldout-column) must "
                              f"be boolean (True = held out), got dtype {flags.dtype}")
        flags = flags.astype(bool)
    labelled = tuple(sorted(str(r) for r in np.unique(regions[regions != ""])))
    kept_rows = np.flatnonzero(keep)
    plan = FilePlan(path=s.path, unit_ids=unit_ids, region_rows=region_rows, heldout_flags=flags,
                    warnings=warnings, labelled=labelled, observed=s.obs_intervals(kept_rows),
                    **_trials(s, o, region_map, warnings))
    if o.align is not None:  # in refuse mode _trials has refused a missing event already
        plan = plan.without(~np.isfinite(plan.event), f"no {o.align!r} event (NaN)")
    return plan


# electrode locations that say "not known" rather than name a region
PLACEHOLDER_LABELS = frozenset({"unknown", "none", "nan", "n/a", "na", "null", "undefined",
                                "unassigned", "void", "root", "?"})


def _label_warnings(path: str, labels: np.ndarray, regions: np.ndarray, mapped: bool,
                    chosen: tuple[str, ...] | None) -> list[str]:
    """Units left out for an empty label, and placeholder labels ('unknown', 'root', ...)
    about to become a region of their own: both usually mean a missing location."""
    name, out = os.path.basename(path), []
    blank = np.array([str(v).strip() == "" for v in labels], dtype=bool)
    if blank.any() and not mapped:
        out.append(f"{name}: left out {int(blank.sum())} units with an empty region label "
                   "(electrode location); give them one with --region-column or a region map")
    kept = {str(r) for r in regions[regions != ""]}
    if chosen is not None:
        kept &= set(chosen)
    for r in sorted(kept):
        if r.strip().lower() in PLACEHOLDER_LABELS:
            n = int(np.sum(regions == r))
            out.append(f"{name}: {n} units are labelled {r!r}, which becomes a region of its own; "
                       f"if that means 'no known region', leave it out with --regions or map "
                       f"it to null in --region-map")
    return out


def _map_labels(path: str, labels: np.ndarray, region_map: dict | None, map_path: str | None) -> np.ndarray:
    """Region name per unit ("" = dropped by a null entry of the region map)."""
    if region_map is None:
        return labels
    missing = sorted(set(labels.tolist()) - set(region_map))
    if missing:
        raise IngestError(f"{path}: unit labels {missing} are not in the region map {map_path}; "
                          "add them (map a label to null to drop its units)")
    return np.array([region_map[lab] or "" for lab in labels], dtype=object)


def _trials(s: NWBSession, o: IngestOptions, region_map: dict | None,
            warnings: list[str]) -> dict:
    ids = s.trial_ids()
    start = s.trial_column("start_time", "the trials table").astype(np.float64)
    stop = s.trial_column("stop_time", "the trials table").astype(np.float64)
    order = np.argsort(start, kind="stable")
    ids, start, stop = ids[order], start[order], stop[order]
    if np.any(~np.isfinite(start) | ~np.isfinite(stop) | (stop <= start)):
        bad = ids[~(stop > start)][:5].tolist()
        raise IngestError(f"{s.path}: trials {bad} have stop_time <= start_time (or NaN); fix "
                          "the trials table")
    if o.align is None:
        event = start
    else:
        event = _numeric(s, o.align, "--align", order)
        missing = ~np.isfinite(event)
        if missing.any() and o.unfit_trials == "refuse":
            raise IngestError(
                f"{s.path}: alignment event {o.align!r} (--align) is missing (NaN) for "
                f"{int(missing.sum())} trials, e.g. ids {ids[missing][:5].tolist()}; pass "
                "--unfit-trials drop to leave those trials out, or align to an event every "
                "trial has")
    perturbed = _perturbed(s, o, order, warnings)
    return {"trial_ids": ids, "start": start, "stop": stop, "event": event,
                "condition": _condition(s, o, order), "perturbed": perturbed,
                "ext_value": _ext_value(s, o, ids, order),
                "silence": _silence(s, o, region_map, ids, order, start, perturbed)}


# text that says "no value" in a numeric trials column (case and spaces ignored): NWB
# conversions often store times as text, "N/A" where an event never happened
MISSING_TEXT = frozenset({"", "n/a", "na", "nan", "none", "null"})


def _numeric(s: NWBSession, col: str, flag: str, order: np.ndarray) -> np.ndarray:
    """A trials column as float64 in ``order``. Text is read as numbers ("1.25"), the words
    of MISSING_TEXT as NaN, so an onset column written as text reads like one written as
    floats; any other word is refused, named."""
    values = s.trial_column(col, flag)[order]
    if values.dtype.kind in "biuf":
        return values.astype(np.float64)
    if values.dtype.kind not in "OSU":
        raise IngestError(f"{s.path}: trials column {col!r} ({flag}) must be numeric, got dtype "
                          f"{values.dtype}")
    text = [v.strip() for v in as_strings(values)]
    out = np.full(len(text), np.nan)
    words = []
    for k, t in enumerate(text):
        if t.lower() in MISSING_TEXT:
            continue
        try:
            out[k] = float(t)
        except ValueError:
            words.append(t)
    if words:
        shown = ", ".join(repr(w) for w in sorted(set(words))[:5])
        raise IngestError(f"{s.path}: trials column {col!r} ({flag}) must hold numbers (as "
                          f"numbers or text; {', '.join(sorted(MISSING_TEXT - {''}))} or empty "
                          f"for none), but {len(words)} trials hold other text: {shown}")
    return out


def _condition(s: NWBSession, o: IngestOptions, order: np.ndarray) -> np.ndarray:
    cols = o.condition_columns
    if cols is None:
        cols = ("condition",) if "condition" in s.trial_columns() else ()
    if not cols:
        return np.full(len(order), "", dtype=object)
    parts = [as_strings(s.trial_column(c, "--condition")[order]) for c in cols]
    return np.array(["|".join(p) for p in zip(*parts)], dtype=object)


# words in a text --perturb-column that mean "not perturbed" beyond MISSING_TEXT's (case
# and spaces ignored)
UNPERTURBED_TEXT = MISSING_TEXT | {"false", "no", "off"}


def _perturbed(s: NWBSession, o: IngestOptions, order: np.ndarray,
               warnings: list[str]) -> np.ndarray | None:
    """Which trials were perturbed, from --perturb-column: a boolean or number (nonzero;
    NaN, an onset that never happened, is not), or text (a number read as one, a word of
    UNPERTURBED_TEXT not, any other word, e.g. the stimulated site, is). Text and NaN are
    read by rule, so how they were read is a warning."""
    if o.perturb_column is None:
        return None
    col, name = o.perturb_column, os.path.basename(s.path)
    raw = s.trial_column(col, "--perturb-column")[order]
    if raw.dtype.kind in "biuf":
        values = raw.astype(np.float64)
        nan = np.isnan(values)
        if nan.any():
            warnings.append(f"{name}: --perturb-column {col!r} is NaN on {int(nan.sum())} trials, "
                            "read as not perturbed (no onset)")
        return ~nan & (values != 0)
    if raw.dtype.kind not in "OSU":
        raise IngestError(f"{s.path}: trials column {col!r} (--perturb-column) must be boolean, "
                          f"numeric or text, got dtype {raw.dtype}")
    text = np.array([v.strip() for v in as_strings(raw)], dtype=object)
    perturbed = np.array([_text_perturbed(t) for t in text], dtype=bool)
    read = {flag: sorted(set(text[perturbed == flag].tolist())) for flag in (False, True)}

    def shown(labels: list[str]) -> str:
        return ", ".join(repr(v) for v in labels[:5]) + (", ..." if len(labels) > 5 else "")
    warnings.append(f"{name}: --perturb-column {col!r} holds text; {int(perturbed.sum())} "
                    f"trials read as perturbed ({shown(read[True]) or 'none'}), "
                    f"{int((~perturbed).sum())} as not ({shown(read[False]) or 'none'})")
    return perturbed


def _text_perturbed(text: str) -> bool:
    if text.lower() in UNPERTURBED_TEXT:
        return False
    try:
        value = float(text)
    except ValueError:
        return True  # a label: the site or kind of stimulation
    return bool(np.isfinite(value) and value != 0)


def _silence(s: NWBSession, o: IngestOptions, region_map: dict | None, ids: np.ndarray,
             order: np.ndarray, start: np.ndarray, perturbed: np.ndarray | None,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(region or "", start, stop in session seconds) of each trial's recorded intervention,
    trials in time order (``start``: their start_time; ``perturbed``: --perturb-column's
    flags); None without --silence-region-column or --silence-region."""
    if o.silence_region is not None:
        labels = np.where(perturbed, o.silence_region, "").astype(object)
        flag = "--silence-region"
    elif o.silence_region_column is not None:
        raw = s.trial_column(o.silence_region_column, "--silence-region-column")[order]
        labels = as_strings(raw)
        labels[np.isin(labels, ("", "none", "None", "nan"))] = ""
        flag = f"--silence-region-column {o.silence_region_column!r}"
    else:
        return None
    if region_map is not None:
        unknown = sorted(set(labels[labels != ""].tolist()) - set(region_map))
        if unknown:
            raise IngestError(f"{s.path}: silenced regions {unknown} ({flag}) are not in the "
                              f"region map {o.region_map}; add them (as for unit labels)")
        labels = np.array([region_map[v] or "" if v else "" for v in labels], dtype=object)
    col0, col1 = o.silence_time_columns
    t0 = _numeric(s, col0, "--silence-time-columns", order)
    t1 = _numeric(s, col1, "--silence-time-columns", order)
    if o.silence_times == "onset-duration":
        t0 = start + t0
        t1 = t0 + t1
    on = labels != ""
    bad = on & ~(np.isfinite(t0) & np.isfinite(t1) & (t1 > t0))
    if bad.any():
        what = ("an onset (seconds from the trial's start_time) and a duration > 0"
                if o.silence_times == "onset-duration" else "START < STOP (session seconds)")
        raise IngestError(f"{s.path}: trials {ids[bad][:5].tolist()} silenced a region but "
                          f"their {col0!r}/{col1!r} (--silence-time-columns, --silence-times "
                          f"{o.silence_times}) are missing or not {what}; give every silenced "
                          "trial its times")
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


SHORT_TRIAL = 0.5  # the default window warns when the shortest trial is below this x median


def resolve_window(plans: list[FilePlan], o: IngestOptions,
                   warnings: list[str]) -> tuple[float, float]:
    """The window (seconds from the event): as given, or 0 to the shortest trial. A short
    trial sets that default for every trial, so a trial under half the median length (an
    aborted one, say) is named in a warning with the way to keep more of the others."""
    if o.window is not None:
        return float(o.window[0]), float(o.window[1])
    lengths = np.concatenate([p.stop - p.start for p in plans])
    i = int(np.argmin(lengths))
    shortest, median = float(lengths[i]), float(np.median(lengths))
    if shortest < SHORT_TRIAL * median:
        ids = np.concatenate([p.trial_ids for p in plans])
        files = np.repeat([os.path.basename(p.path) for p in plans], [len(p.trial_ids) for p in plans])
        n_short = int(np.sum(lengths < SHORT_TRIAL * median))
        warnings.append(
            f"every trial is cut to 0:{shortest:.3f} s, the length of the shortest (trial "
            f"{int(ids[i])} of {files[i]}; {n_short} trials are under half the median "
            f"length of {median:.3f} s): to keep more of the others, pass e.g. --window "
            f"0:{median:.3f} --unfit-trials drop")
    return 0.0, shortest


def fit_window(p: FilePlan, window: tuple[float, float], span: float, o: IngestOptions) -> FilePlan:
    """Every trial's window [t0, t1) lies inside the trial (spikes outside belong to nobody,
    or to a neighbouring trial), or with ``window_beyond_trial`` after the session's start;
    and in both cases clear of the earlier trials' windows, so a spike counts once (trials
    whose start_time..stop_time overlap are fine while their windows do not). Trials that
    break this are refused, or left out with ``unfit_trials == "drop"``."""
    w = f"{window[0]:g}:{window[1]:g}"
    if not o.window_beyond_trial:
        t0, t1 = p.windows(window, span)
        outside = (t0 < p.start - TIME_TOL) | (t1 > p.stop + TIME_TOL)
        p = _refuse_or_drop(
            p, outside, o, window, span,
            f"the window {w} s falls outside the trial's start_time..stop_time",
            "shrink --window, pick another --align event, or pass --window-beyond-trial (bins "
            "the spikes between trials: where units were recorded continuously)")
    t0, t1 = p.windows(window, span)
    # in time order, each window against the end of the last one kept: the later of an
    # overlapping pair is the one dropped, so the kept windows stay clear of each other
    clash = np.zeros(len(t0), dtype=bool)
    end = 0.0 if o.window_beyond_trial else -np.inf  # a trial's own bounds may start before 0
    for i in range(len(t0)):
        clash[i] = t0[i] < end - TIME_TOL
        if not clash[i]:
            end = t1[i]
    fix = ("shrink --window" if o.window_beyond_trial else
           "the trials overlap in time (start_time..stop_time): shrink --window or align to an "
           "event (--align) that leaves each window clear of the others")
    return _refuse_or_drop(
        p, clash, o, window, span,
        f"the window {w} s overlaps an earlier trial's or starts before the session", fix)


def _refuse_or_drop(p: FilePlan, bad: np.ndarray, o: IngestOptions, window: tuple[float, float],
                    span: float, what: str, fix: str) -> FilePlan:
    """``p`` less the ``bad`` trials with --unfit-trials drop; otherwise an error naming the
    first of them, what is wrong and ``fix``."""
    if not bad.any():
        return p
    if o.unfit_trials == "drop":
        return p.without(bad, what)
    t0, t1 = p.windows(window, span)
    i = int(np.flatnonzero(bad)[0])
    raise IngestError(
        f"{p.path}: in {int(bad.sum())} trials {what} (e.g. trial {int(p.trial_ids[i])}: window "
        f"{t0[i]:.3f}-{t1[i]:.3f} s, trial {p.start[i]:.3f}-{p.stop[i]:.3f} s); {fix}, or pass "
        "--unfit-trials drop to leave those trials out")


def _merged(intervals: np.ndarray) -> np.ndarray:
    """(k, 2) intervals with those that touch or overlap joined, in time order."""
    out: list[list[float]] = []
    for a, b in intervals[np.argsort(intervals[:, 0], kind="stable")]:
        if out and a <= out[-1][1] + TIME_TOL:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return np.asarray(out, dtype=np.float64)


def fit_observed(p: FilePlan, rows: np.ndarray, window: tuple[float, float], span: float,
                 o: IngestOptions) -> FilePlan:
    """Every unit in ``rows`` was recorded over every trial's window [t0, t1), where the
    file says when (Units ``obs_intervals``; a unit with none listed is taken as always
    recorded): outside those intervals its zero counts would read as silence. Trials where
    a unit was not recorded are refused, or left out with ``unfit_trials == "drop"``."""
    if p.observed is None:
        return p
    t0, t1 = p.windows(window, span)
    missed = np.zeros((len(rows), len(t0)), dtype=bool)  # (units, trials)
    for i, r in enumerate(rows):
        iv = p.observed.get(int(r))
        if iv is None or len(iv) == 0:
            continue
        iv = _merged(iv)
        inside = (iv[None, :, 0] <= t0[:, None] + TIME_TOL) & (iv[None, :, 1] >= t1[:, None] - TIME_TOL)
        missed[i] = ~inside.any(axis=1)
    out = missed.any(axis=0)
    if not out.any():
        return p
    what = "a unit was not recorded over the whole window (Units obs_intervals)"
    if o.unfit_trials == "drop":
        return p.without(out, what)
    worst = np.argsort(-missed.sum(axis=1), kind="stable")[:5]
    units = ", ".join(f"{int(p.unit_ids[rows[i]])} ({int(missed[i].sum())} trials)"
                      for i in worst if missed[i].any())
    raise IngestError(
        f"{p.path}: in {int(out.sum())} of {len(out)} trials {what}; its counts there would "
        f"read as silence. Units (by id) with the most such trials: {units}. Pass "
        "--unfit-trials drop to leave those trials out, or leave the units out (--drop-units "
        "with their ids; SESSION/ID, the file's stem and the id, for this file's alone)")
