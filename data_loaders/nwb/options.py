"""Every choice an ingest makes, in one frozen dataclass recorded in the manifest.

An ingest is repeatable exactly when the same files and these options give the same dataset,
so nothing that changes the output may live outside this class (the region-map file's
content is copied into the manifest by ingest(), not just its path).
"""
from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass

from mrlfads.data_loaders.errors import IngestError
from mrlfads.data_loaders.schema import REGION_RE

# Held-out neurons unless the user says otherwise: model selection ranks on them, a score a
# model cannot win by copying its input to its output (docs/DESIGN.md, "Model selection").
# 10%, less than the Neural Latents Benchmark's quarter: a region often has only 20-60
# units, the encoders need them, and a few held-out units per region suffice to rank models.
DEFAULT_HELDOUT = 0.1
MIN_UNITS_FOR_HELDOUT = 5  # a fraction holds out at least 1 unit of regions this large
SESSION_MODES = ("auto", "matched", "separate")  # --sessions
UNFIT_MODES = ("refuse", "drop")  # --unfit-trials
# --silence-times: what the two --silence-time-columns hold
SILENCE_TIMES = ("session", "onset-duration")


_SESSION_UNIT = re.compile(r"^(?P<session>[^/]+)/(?P<id>-?[0-9]+)$")


def unit_ref(u):
    """A --drop-units entry in its canonical form: an int, or "SESSION/ID" (as given)."""
    if isinstance(u, numbers.Integral) and not isinstance(u, bool):
        return int(u)
    if isinstance(u, str) and re.fullmatch(r"\s*-?[0-9]+\s*", u):
        return int(u)
    return u.strip() if isinstance(u, str) else u


def split_unit_ref(u) -> tuple[str | None, int] | None:
    """(session or None for every file, unit id) of a --drop-units entry; None if invalid."""
    if isinstance(u, int) and not isinstance(u, bool):
        return None, u
    m = _SESSION_UNIT.match(u) if isinstance(u, str) else None
    return (m["session"], int(m["id"])) if m else None


@dataclass(frozen=True)
class IngestOptions:
    """Options of `mrlfads ingest`; the CLI flag of each field is given in brackets.

    bin_ms [--bin-ms]: bin width in milliseconds.
    align [--align]: trials column holding the event the window is aligned to (e.g.
        "go_cue_time"); None aligns to each trial's start_time.
    window [--window START:STOP]: seconds relative to the alignment event. Needed with
        `align`; without `align`, None means "0 to the shortest trial's duration".
    regions [--regions A,B]: regions to keep (None: every region with enough neurons).
    min_neurons [--min-neurons]: regions with fewer units (after quality filtering) are
        dropped with a warning naming them.
    heldout [--heldout N|FRACTION]: held-out neurons per region: a value strictly between 0
        and 1 is a fraction of the region's units (rounded down, but at least 1 in a region
        of MIN_UNITS_FOR_HELDOUT units or more), otherwise an integer count (0: none).
        Chosen at random with `seed` (a unit silent in every trial's window is then swapped
        for a firing held-in one: nwb/heldout.py), unless `heldout_column` marks them. None (the
        default) means DEFAULT_HELDOUT (0.1), or 0 with `heldout_column`; the manifest
        records the resolved value.
    heldout_column [--heldout-column]: boolean Units column marking held-out units.
    region_column [--region-column]: Units column holding each unit's region label
        (default: the location of the unit's first electrode).
    region_map [--region-map]: YAML/JSON file {label: region or null}; null drops the label.
    drop_quality [--drop-quality]: units whose `quality_column` value is one of these are
        dropped (e.g. "noise").
    drop_units [--drop-units]: units to leave out (e.g. those an error or warning names): a
        Units id leaves that id out of every file given; ``SESSION/ID`` (a session name as
        the manifest gives it: the file's stem, e.g. ``sub-01_ses-2/12``) out of that file
        alone, since separately sorted sessions reuse ids. Each must name a unit of a file.
    perturb_column [--perturb-column]: trials column flagging perturbed trials, which go to
        the "perturbed" split and are never trained on (unless `silence_region_column` or
        `silence_region` says which region they silenced). Boolean or numeric: nonzero is perturbed, NaN (an onset
        that never happened) is not. Text, as NWB conversions store onset times ("1.2" or
        "N/A"): a number as above, a word of plan.UNPERTURBED_TEXT ("", "N/A", "none", ...)
        not perturbed, any other word (the stimulated site, say) perturbed; a warning says
        how the values were read.
    silence_region_column [--silence-region-column]: trials column naming, per trial, the
        region an intervention silenced (a unit label, mapped by `region_map`; "" for none).
        Those trials are trained on, as recorded interventions: the model's messages from
        that region are silenced over the same bins (docs/MODEL.md, "Recorded
        interventions"). Needs `silence_time_columns`.
    silence_region [--silence-region]: the region every trial `perturb_column` flags
        silenced (a unit label, mapped by `region_map`), for sessions that stimulated one
        site and say so outside the trials table; instead of `silence_region_column`.
    silence_time_columns [--silence-time-columns START,STOP]: trials columns holding the
        intervention's times; a bin is silenced when its centre falls in [start, stop).
    silence_times [--silence-times]: what those columns hold: "session" (default), start
        and stop in session seconds like start_time; "onset-duration", the onset in seconds
        from the trial's start_time and the duration, as DANDI conversions of
        photoinhibition sessions store them (photostim_onset, photostim_duration).
    condition_columns [--condition]: trials columns joined into the condition string
        (default: the "condition" column if the table has one).
    ext_column / ext_timeseries [--ext-column / --ext-timeseries]: an observed external input
        given to every kept region: a numeric trials column (constant over the window) or a
        TimeSeries in acquisition/stimulus (averaged per bin).
    valid_fraction [--valid-fraction]: fraction of the unperturbed trials in "valid".
    seed [--seed]: seeds the held-out choice and the train/valid split.
    sessions [--sessions]: how several files become one dataset. "matched": the same units
        in every file (same regions, same unit count per region, matched by position, e.g.
        chronic recordings), one session. "separate": a session per file (named after the
        file), each region holding the union of the files' own units, a file's absent
        regions recorded as missing (docs/DESIGN.md, "Multi-session datasets"). "auto"
        (default): matched when the files' regions and unit counts allow it, else separate.
    unfit_trials [--unfit-trials]: what to do with a trial that has no `align` event (NaN),
        whose window reaches outside its start_time..stop_time or into an earlier trial's
        window (trials may overlap, their windows may not), or over whose window a kept
        unit was not recorded (Units obs_intervals): "refuse" (default) stops the
        ingest naming them; "drop" leaves them out, with a warning and their ids in the
        manifest (``provenance.sources[k].dropped_trials``). Sessions with aborted or short
        trials need one of the two chosen knowingly.
    window_beyond_trial [--window-beyond-trial]: a window may reach outside its trial's
        start_time..stop_time, binning the spikes between trials: right where the units
        were recorded continuously, as in most ecephys sessions. Windows of different
        trials may still not overlap (a spike would count twice).
    """

    bin_ms: float = 20.0
    align: str | None = None
    window: tuple[float, float] | None = None
    regions: tuple[str, ...] | None = None
    min_neurons: int = 1
    heldout: float | None = None
    heldout_column: str | None = None
    region_column: str | None = None
    region_map: str | None = None
    drop_quality: tuple[str, ...] = ()
    drop_units: tuple[int | str, ...] = ()
    quality_column: str = "quality"
    perturb_column: str | None = None
    silence_region_column: str | None = None
    silence_region: str | None = None
    silence_time_columns: tuple[str, str] | None = None
    silence_times: str = "session"
    condition_columns: tuple[str, ...] | None = None
    ext_column: str | None = None
    ext_timeseries: str | None = None
    valid_fraction: float = 0.2
    seed: int = 0
    ic_enc_seq_len: int = 10
    name: str | None = None
    rows_per_shard: int = 512
    sessions: str = "auto"
    unfit_trials: str = "refuse"
    window_beyond_trial: bool = False

    def __post_init__(self) -> None:
        for name in ("window", "regions", "drop_quality", "drop_units", "condition_columns",
                     "silence_time_columns"):
            value = getattr(self, name)  # lists from JSON/YAML -> tuples (hashable, frozen)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "drop_units", tuple(unit_ref(u) for u in self.drop_units))
        if self.heldout is None:
            object.__setattr__(self, "heldout",
                               0.0 if self.heldout_column is not None else DEFAULT_HELDOUT)
        p = _problems(self)
        if p:
            raise IngestError("invalid ingest options:\n  " + "\n  ".join(p))

    @property
    def bin_width_s(self) -> float:
        return self.bin_ms / 1000.0

    def n_heldout(self, n_units: int) -> int:
        """Held-out count for a region of `n_units` units: a fraction rounds down, with at
        least 1 in a region of MIN_UNITS_FOR_HELDOUT units or more."""
        if 0.0 < self.heldout < 1.0:
            n = math.floor(self.heldout * n_units + 1e-9)
            return max(n, 1) if n_units >= MIN_UNITS_FOR_HELDOUT else n
        return int(self.heldout)


def _problems(o: IngestOptions) -> list[str]:
    p: list[str] = []
    if not (isinstance(o.bin_ms, (int, float)) and math.isfinite(o.bin_ms) and o.bin_ms > 0):
        p.append(f"--bin-ms: must be a positive number of milliseconds, got {o.bin_ms!r}")
    if o.window is not None and (len(o.window) != 2 or not o.window[0] < o.window[1]
                                 or not all(math.isfinite(float(v)) for v in o.window)):
        p.append(f"--window: must be START:STOP seconds with START < STOP, got {o.window!r}")
    if o.align is not None and o.window is None:
        p.append(f"--window: needed with --align {o.align}; give e.g. --window -1.0:1.0 "
                 "(seconds around the event)")
    if o.regions is not None:
        if not o.regions:
            p.append("--regions: empty list; leave it out to keep every region")
        for r in o.regions:
            if not REGION_RE.match(r):
                p.append(f"--regions: {r!r} is not a valid region name "
                         "(letters, digits, '_', starting with a letter)")
    bad = [u for u in o.drop_units if split_unit_ref(u) is None]
    if bad:
        p.append(f"--drop-units: give Units ids as integers (every file) or SESSION/ID (one "
                 f"file, e.g. sub-01_ses-2/12), got {bad}")
    if not isinstance(o.min_neurons, int) or o.min_neurons < 1:
        p.append(f"--min-neurons: must be an integer >= 1, got {o.min_neurons!r}")
    h = o.heldout
    if not isinstance(h, (int, float)) or h < 0 or (h >= 1 and float(h) != int(h)):
        p.append(f"--heldout: a fraction in (0, 1) or an integer count >= 0, got {h!r}")
    if o.heldout_column is not None and h:
        p.append("--heldout and --heldout-column: give one of them, not both")
    region_given = o.silence_region_column is not None or o.silence_region is not None
    if o.silence_region_column is not None and o.silence_region is not None:
        p.append("--silence-region-column and --silence-region: give one of them (a region "
                 "per trial, or one for every perturbed trial), not both")
    if region_given != (o.silence_time_columns is not None):
        p.append("--silence-region-column (or --silence-region) and --silence-time-columns: "
                 "give both (which region each trial silenced, and when) or neither")
    if o.silence_region is not None and o.perturb_column is None:
        p.append("--silence-region: needs --perturb-column, which says which trials silenced it")
    if o.silence_times not in SILENCE_TIMES:
        p.append(f"--silence-times: {o.silence_times!r} is not one of {list(SILENCE_TIMES)}")
    if o.silence_time_columns is not None and len(o.silence_time_columns) != 2:
        p.append(f"--silence-time-columns: two trials columns START,STOP, got "
                 f"{list(o.silence_time_columns)}")
    if o.ext_column is not None and o.ext_timeseries is not None:
        p.append("--ext-column and --ext-timeseries: give one of them, not both")
    if not 0.0 <= o.valid_fraction < 1.0:
        p.append(f"--valid-fraction: must be in [0, 1), got {o.valid_fraction!r}")
    if not isinstance(o.seed, int):
        p.append(f"--seed: must be an integer, got {o.seed!r}")
    if not isinstance(o.ic_enc_seq_len, int) or o.ic_enc_seq_len < 1:
        p.append(f"--ic-enc-seq-len: must be an integer >= 1 (the bins the initial-condition "
                 f"encoder reads before the first inferred bin), got {o.ic_enc_seq_len!r}")
    if o.unfit_trials not in UNFIT_MODES:
        p.append(f"--unfit-trials: {o.unfit_trials!r} is not one of {list(UNFIT_MODES)}")
    if not isinstance(o.window_beyond_trial, bool):
        p.append(f"--window-beyond-trial: must be true or false, got {o.window_beyond_trial!r}")
    if o.sessions not in SESSION_MODES:
        p.append(f"--sessions: {o.sessions!r} is not one of {list(SESSION_MODES)}")
    if not isinstance(o.rows_per_shard, int) or o.rows_per_shard < 1:
        p.append(f"rows_per_shard: must be an integer >= 1, got {o.rows_per_shard!r}")
    return p
