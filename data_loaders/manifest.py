"""dataset.json: what a dataset holds, validated before any shard is touched.

The manifest is written last by the writer, so its presence means every shard it lists was
completely written; readers trust nothing else about the directory.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mrlfads.data_loaders import schema
from mrlfads.data_loaders import sessions as _sessions
from mrlfads.data_loaders.errors import DatasetError
from mrlfads.data_loaders.sessions import SessionBlock, SessionSpec

__all__ = ["DatasetManifest", "ExtraFile", "RegionSpec", "SessionBlock", "SessionSpec", "ShardInfo"]

_REMAKE = "re-create the dataset with `mrlfads simulate` or `mrlfads ingest`"


@dataclass(frozen=True)
class RegionSpec:
    """One recorded region: held-in neurons come first in `x/<name>`, then held-out."""

    name: str
    n_heldin: int
    n_heldout: int = 0
    neuron_ids: tuple[str, ...] | None = None

    @property
    def n_neurons(self) -> int:
        return self.n_heldin + self.n_heldout


@dataclass(frozen=True)
class ShardInfo:
    """One shard file (path relative to the dataset root) and what the manifest promises."""

    path: str
    rows: int
    sha256: str
    splits: tuple[str, ...]


@dataclass(frozen=True)
class ExtraFile:
    """A small side file (e.g. a simulator's weights) stored under extras/."""

    name: str
    path: str
    sha256: str
    bytes: int


# provenance key of a simulated dataset's own cut effectome (DatasetManifest.cut_effects)
CUT_EFFECTS_KEY = "network_cut_effects"


@dataclass(frozen=True)
class DatasetManifest:
    name: str
    regions: tuple[RegionSpec, ...]
    bin_width_s: float
    n_bins: int
    ic_enc_seq_len: int
    obs_model: str
    splits: dict[str, int]
    shards: tuple[ShardInfo, ...]
    ext_dims: dict[str, int] = field(default_factory=dict)
    truth: tuple[str, ...] = ()
    # comm_matrix[dst][src]: true message dimension of src -> dst, 0 where absent; None
    # (null in dataset.json) where nobody knows it (recordings). A matrix without a single
    # pathway is read as None too: format-1 ingests wrote zeros for "unknown", and no truth
    # metric is defined against a network in which no region talks to another.
    comm_matrix: tuple[tuple[int, ...], ...] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    task: tuple[str, ...] = ()
    extras: tuple[ExtraFile, ...] = ()
    # Multi-session datasets (data_loaders/sessions.py): each region holds the union of the
    # sessions' neurons, each trial names its session in the `session` column. Empty: one
    # session (the key is then left out of dataset.json, as before sessions existed).
    sessions: tuple[SessionSpec, ...] = ()
    # Regions whose messages some trials record as silenced (column silenced/<region>, 1 in
    # the silenced bins): training applies the same silencing to the model's messages.
    # Empty: no recorded interventions (the key is then left out of dataset.json).
    silenced: tuple[str, ...] = ()
    format_version: int = schema.FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.comm_matrix is not None and not any(v for row in self.comm_matrix for v in row):
            object.__setattr__(self, "comm_matrix", None)
        if isinstance(self.silenced, list):
            object.__setattr__(self, "silenced", tuple(self.silenced))
        if not all(isinstance(s, SessionSpec) for s in self.sessions):
            object.__setattr__(self, "sessions", _sessions.coerce(self.sessions))
        problems = _problems(self)
        if problems:
            raise DatasetError(
                f"{schema.MANIFEST_NAME}: invalid manifest: " + "; ".join(problems)
                + f". Fix dataset.json or {_REMAKE}"
            )

    # -- derived facts -------------------------------------------------------------------
    @property
    def region_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.regions)

    @property
    def cut_effects(self) -> np.ndarray | None:
        """(R, R) ``[dst][src]``: the simulated network's own cut effectome
        (data_loaders/simulate/cut_effects.py), what a perfect fit's cut effectome would be;
        None for recordings and for datasets simulated before the simulator measured it."""
        recorded = self.provenance.get(CUT_EFFECTS_KEY)
        if not isinstance(recorded, Mapping) or recorded.get("matrix") is None:
            return None
        return np.asarray(recorded["matrix"], dtype=float)

    @property
    def n_trials(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def time_axis(self) -> tuple[float, str]:
        """Seconds of bin 0 and what they count from (an event's name, or 'trial start').
        `mrlfads ingest` bins each trial over its window around the --align event
        (provenance ``window_s`` and ``options.align``), so an aligned session's times count
        from that event, as its user does; a simulated trial, or one binned from its start,
        counts from the start."""
        window = self.provenance.get("window_s") or [0.0]
        align = (self.provenance.get("options") or {}).get("align")
        return float(window[0]), align or "trial start"

    # -- sessions ----------------------------------------------------------------------------
    @property
    def n_sessions(self) -> int:
        return max(1, len(self.sessions))

    @property
    def session_names(self) -> tuple[str, ...]:
        """Names of the sessions; a single-session dataset has one, SINGLE_SESSION ('all')."""
        return tuple(s.name for s in self.effective_sessions)

    @property
    def effective_sessions(self) -> tuple[SessionSpec, ...]:
        """`sessions`, or for a single-session dataset one session recording every neuron."""
        if self.sessions:
            return self.sessions
        units = {r.name: (r.n_heldin, r.n_heldout) for r in self.regions}
        return (SessionSpec(_sessions.SINGLE_SESSION, units),)

    def session_blocks(self, region: str) -> list[SessionBlock]:
        """Per session, (heldin slice, heldout slice) of `region`: held-in slices index
        Batch.heldin[region] (= the first columns of x/<region>), held-out slices index
        Batch.heldout[region] (x/<region> column = n_heldin + index)."""
        self.region(region)
        return _sessions.blocks(self.effective_sessions, region)

    def session_columns(self, region: str, session: int) -> np.ndarray:
        """Columns of x/<region> recorded by session index `session` (held-in, held-out)."""
        self.region(region)
        return _sessions.columns(self.effective_sessions, region, session)

    def session_masks(self) -> dict[str, np.ndarray]:
        """region -> bool (S, n_neurons): True where session s recorded that x column
        (S = 1 and all True for a single-session dataset)."""
        return _sessions.masks(self.effective_sessions, self.region_names)

    def region(self, name: str) -> RegionSpec:
        for r in self.regions:
            if r.name == name:
                return r
        raise DatasetError(f"{schema.MANIFEST_NAME}: no region {name!r}; regions are {self.region_names}")

    def shards_for(self, split: str | None) -> tuple[ShardInfo, ...]:
        """Shards holding rows of `split` (all shards for None): others are never opened."""
        if split is None:
            return self.shards
        return tuple(s for s in self.shards if split in s.splits)

    def tensor_columns(self) -> tuple[str, ...]:
        cols = [schema.x_col(r.name) for r in self.regions]
        cols += [schema.ext_col(r) for r in self.region_names if self.ext_dims.get(r, 0) > 0]
        cols += [schema.silenced_col(r) for r in self.silenced]
        return tuple(cols) + self.truth + self.task

    def expected_shape(self, col: str) -> tuple[int | None, ...] | None:
        """Per-row shape the manifest implies for `col` (None = any size, or a scalar)."""
        t = self.n_bins
        if col.startswith("x/"):
            return (t, self.region(col[2:]).n_neurons)
        if col.startswith("ext/"):
            return (t, self.ext_dims[col[4:]])
        if col.startswith("silenced/"):
            return (t,)
        if col.startswith("truth/rates/"):
            return (t, self.region(col[len("truth/rates/"):]).n_neurons)
        pair = schema.parse_message_col(col)
        if pair is not None:
            if self.comm_matrix is None:
                return (t, None)
            names = self.region_names
            d = self.comm_matrix[names.index(pair[1])][names.index(pair[0])]
            return (t, d if d > 0 else None)
        if col.startswith("truth/inputs/"):
            return (t, None)
        return None

    # -- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["regions"] = [
            {**dataclasses.asdict(r), "neuron_ids": list(r.neuron_ids) if r.neuron_ids else None}
            for r in self.regions
        ]
        d["shards"] = [{**dataclasses.asdict(s), "splits": list(s.splits)} for s in self.shards]
        d["truth"], d["task"] = list(self.truth), list(self.task)
        d["comm_matrix"] = None if self.comm_matrix is None else [list(r) for r in self.comm_matrix]
        d["extras"] = [dataclasses.asdict(e) for e in self.extras]
        if self.sessions:
            d["sessions"] = [s.to_dict() for s in self.sessions]
        else:  # single-session datasets keep the layout they had before sessions existed
            del d["sessions"]
        if self.silenced:
            d["silenced"] = list(self.silenced)
        else:  # as for sessions: datasets without interventions keep their layout
            del d["silenced"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = schema.MANIFEST_NAME) -> DatasetManifest:
        if not isinstance(data, Mapping):
            raise DatasetError(f"{source}: expected a JSON object, got {type(data).__name__}; {_REMAKE}")
        version = data.get("format_version")
        if version not in schema.SUPPORTED_VERSIONS:
            raise DatasetError(
                f"{source}: key 'format_version' is {version!r}, but this mrlfads reads format "
                f"version(s) {list(schema.SUPPORTED_VERSIONS)}; upgrade mrlfads or {_REMAKE}"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        missing = sorted(k for k in ("name", "regions", "bin_width_s", "n_bins", "ic_enc_seq_len",
                                     "obs_model", "splits", "shards") if k not in data)
        errs = [f"unknown key {k!r}" for k in unknown] + [f"missing key {k!r}" for k in missing]
        if errs:
            raise DatasetError(f"{source}: " + "; ".join(errs) + f"; {_REMAKE}")
        try:
            kw = dict(data)
            kw["regions"] = tuple(
                RegionSpec(r["name"], r["n_heldin"], r.get("n_heldout", 0),
                           tuple(r["neuron_ids"]) if r.get("neuron_ids") else None)
                for r in data["regions"]
            )
            kw["shards"] = tuple(ShardInfo(s["path"], s["rows"], s["sha256"], tuple(s["splits"]))
                                 for s in data["shards"])
            kw["extras"] = tuple(ExtraFile(**e) for e in data.get("extras", ()))
            kw["truth"] = tuple(data.get("truth", ()))
            kw["task"] = tuple(data.get("task", ()))
            if data.get("comm_matrix") is not None:
                kw["comm_matrix"] = tuple(tuple(row) for row in data["comm_matrix"])
            kw["ext_dims"] = dict(data.get("ext_dims") or {})
            kw["provenance"] = dict(data.get("provenance") or {})
            kw["sessions"] = _sessions.coerce(data.get("sessions") or ())
            kw["silenced"] = tuple(data.get("silenced") or ())
            return cls(**kw)
        except DatasetError as e:
            raise DatasetError(str(e).replace(f"{schema.MANIFEST_NAME}:", f"{source}:", 1)) from None
        except (KeyError, TypeError, AttributeError) as e:
            raise DatasetError(f"{source}: malformed entry ({type(e).__name__}: {e}); {_REMAKE}") from None

    @classmethod
    def from_json(cls, text: str | bytes, source: str = schema.MANIFEST_NAME) -> DatasetManifest:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetError(f"{source}: not valid JSON ({e}); {_REMAKE}") from None
        return cls.from_dict(data, source)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(v: Any) -> str:
    """repr of a manifest value, cut so one hostile entry cannot flood an error line."""
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _problems(m: DatasetManifest) -> list[str]:
    """Every inconsistency in `m`, each naming its key and the fix."""
    p: list[str] = []
    if m.format_version not in schema.SUPPORTED_VERSIONS:
        p.append(f"key 'format_version': {m.format_version!r} unsupported")
    if not isinstance(m.name, str) or not m.name:
        p.append("key 'name': must be a non-empty string")
    if not m.regions:
        p.append("key 'regions': needs at least one region")
    names = []
    for i, r in enumerate(m.regions):
        k = f"regions[{i}]"
        if not isinstance(r.name, str) or not schema.REGION_RE.match(r.name):
            p.append(f"key '{k}.name': {r.name!r} is not a valid region name (^[A-Za-z][A-Za-z0-9_]*$)")
        names.append(r.name)
        if not _is_int(r.n_heldin) or r.n_heldin < 1:
            p.append(f"key '{k}.n_heldin': region {r.name!r} has {r.n_heldin!r} held-in neurons; "
                     "the encoders need at least 1 (move neurons from held-out to held-in or drop the region)")
        if not _is_int(r.n_heldout) or r.n_heldout < 0:
            p.append(f"key '{k}.n_heldout': must be an integer >= 0, got {r.n_heldout!r}")
        if _is_int(r.n_heldin) and _is_int(r.n_heldout) \
                and r.n_heldin + r.n_heldout > schema.MAX_NEURONS_PER_REGION:
            p.append(f"key '{k}': region {r.name!r} declares {r.n_heldin + r.n_heldout} neurons, "
                     f"more than the {schema.MAX_NEURONS_PER_REGION} a region may have (the "
                     "model's read-in layer is neurons x neurons); split the region")
        if r.neuron_ids is not None and _is_int(r.n_heldin) and _is_int(r.n_heldout) \
                and len(r.neuron_ids) != r.n_heldin + r.n_heldout:
            p.append(f"key '{k}.neuron_ids': {len(r.neuron_ids)} ids for {r.n_heldin + r.n_heldout} neurons")
    if len(set(names)) != len(names):
        p.append(f"key 'regions': duplicate region names {names}")
    if not isinstance(m.bin_width_s, (int, float)) or not math.isfinite(m.bin_width_s) or m.bin_width_s <= 0:
        p.append(f"key 'bin_width_s': must be a positive number of seconds, got {m.bin_width_s!r}")
    if not _is_int(m.ic_enc_seq_len) or m.ic_enc_seq_len < 1:
        p.append(f"key 'ic_enc_seq_len': must be an integer >= 1 (the model's initial-condition "
                 f"encoder reads these first bins of each trial), got {m.ic_enc_seq_len!r}")
    elif not _is_int(m.n_bins) or m.n_bins < m.ic_enc_seq_len + 1:
        p.append(f"key 'n_bins': {m.n_bins!r} bins but ic_enc_seq_len is {m.ic_enc_seq_len}; trials need "
                 "at least ic_enc_seq_len + 1 bins (use longer trials or a smaller ic_enc_seq_len)")
    if m.obs_model not in schema.OBS_MODELS:
        p.append(f"key 'obs_model': {m.obs_model!r} is not one of {list(schema.OBS_MODELS)}")
    for r, d in m.ext_dims.items():
        if r not in names:
            p.append(f"key 'ext_dims.{r}': no such region (regions are {names})")
        if not _is_int(d) or not 0 <= d <= schema.MAX_EXT_DIM:
            p.append(f"key 'ext_dims.{r}': must be an integer in [0, {schema.MAX_EXT_DIM}], "
                     f"got {d!r}")
    for r in m.silenced:
        if r not in names:
            p.append(f"key 'silenced': {r!r} is not a region (regions are {names})")
    if len(set(m.silenced)) != len(m.silenced):
        p.append(f"key 'silenced': duplicate regions {list(m.silenced)}")
    for s, n in m.splits.items():
        if s not in schema.SPLITS:
            p.append(f"key 'splits.{s}': unknown split (use {list(schema.SPLITS)})")
        if not _is_int(n) or n < 0:
            p.append(f"key 'splits.{s}': must be a trial count >= 0, got {n!r}")
    per_split: dict[str, int] = {}
    for i, s in enumerate(m.shards):
        if not _is_int(s.rows) or s.rows < 0:
            p.append(f"key 'shards[{i}].rows': must be an integer >= 0, got {s.rows!r}")
        if not isinstance(s.path, str) or not schema.SHARD_PATH_RE.match(s.path):
            p.append(f"key 'shards[{i}].path': {_short(s.path)} is not a shard name the writer "
                     f"makes ('{schema.SHARDS_DIR}/part-NNNNN.arrow' or '.parquet'); a dataset "
                     "reads only its own files, never absolute paths or '..'")
        if not isinstance(s.sha256, str) or len(s.sha256) != 64:
            p.append(f"key 'shards[{i}].sha256': must be a 64-hex-digit sha256")
        for sp in s.splits:
            per_split[sp] = per_split.get(sp, 0) + 1
            if sp not in schema.SPLITS:
                p.append(f"key 'shards[{i}].splits': unknown split {sp!r}")
    if all(_is_int(s.rows) for s in m.shards) and all(_is_int(v) for v in m.splits.values()):
        total = sum(m.splits.values())
        if total != sum(s.rows for s in m.shards):
            p.append(f"key 'splits': counts sum to {total} trials but shards hold "
                     f"{sum(s.rows for s in m.shards)} rows")
    for sp, n in m.splits.items():
        if n > 0 and sp not in per_split:
            p.append(f"key 'shards': no shard lists split {sp!r}, which has {n} trials")
    for i, e in enumerate(m.extras):
        if not isinstance(e.name, str) or not schema.EXTRA_NAME_RE.match(e.name):
            p.append(f"key 'extras[{i}].name': {_short(e.name)} is not a plain file name")
        if not isinstance(e.path, str) or not schema.EXTRA_PATH_RE.match(e.path):
            p.append(f"key 'extras[{i}].path': {_short(e.path)} is not a file directly under "
                     f"'{schema.EXTRAS_DIR}/'; a dataset reads only its own files, never "
                     "absolute paths or '..'")
    for col in m.truth:
        if not schema.is_truth_col(col):
            p.append(f"key 'truth': {col!r} is not a truth column name")
        else:
            region = schema.truth_region(col)
            pair = schema.parse_message_col(col)
            for reg in ([region] if region else list(pair or ())):
                if reg not in names:
                    p.append(f"key 'truth': {col!r} names unknown region {reg!r}")
    for col in m.task:
        if not schema.is_task_col(col):
            p.append(f"key 'task': {col!r} is not a task column name ('task/<name>')")
    if all(_is_int(r.n_heldin) and _is_int(r.n_heldout) for r in m.regions) \
            and len(set(names)) == len(names):
        p += _sessions.problems(m.regions, m.sessions)
    effects = m.provenance.get(CUT_EFFECTS_KEY)
    if isinstance(effects, Mapping) and effects.get("matrix") is not None:
        E = np.asarray(effects["matrix"], dtype=object)
        R = len(m.regions)
        if E.shape != (R, R) or not all(isinstance(v, (int, float)) and math.isfinite(v)
                                        and v >= 0 for v in E.ravel()):
            p.append(f"key 'provenance.{CUT_EFFECTS_KEY}.matrix': must be {R} x {R} "
                     "(regions x regions) finite numbers >= 0")
    cm = m.comm_matrix
    if cm is None:
        return p
    if len(cm) != len(m.regions) or any(len(row) != len(m.regions) for row in cm):
        p.append(f"key 'comm_matrix': must be {len(m.regions)} x {len(m.regions)} (regions x regions)")
    elif any(not _is_int(v) or v < 0 for row in cm for v in row):
        p.append("key 'comm_matrix': entries must be integers >= 0 (true message dimensions)")
    return p
