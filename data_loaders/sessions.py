"""Sessions of a multi-session dataset: which neurons of each region each session recorded.

Sessions (acute probes, several animals) record different neurons. A dataset stores them as
one set of regions holding the union of all sessions' neurons, a session per trial:

    x/<region> columns = held-in of session 0, held-in of session 1, ...,
                         then held-out of session 0, held-out of session 1, ...

so a region's n_heldin is the sum of its sessions' held-in counts (n_heldout likewise). A
neuron belongs to exactly one session; in a trial of session s every column of another
session is exactly 0. `session_blocks` is the one place these offsets are computed:
writer, simulator, ingest and loaders all take them from here.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from mrlfads.data_loaders import schema
from mrlfads.data_loaders.errors import DatasetError

SINGLE_SESSION = "all"  # name of the one implicit session of a dataset without `sessions`
_KEYS = ("name", "units", "missing", "provenance")


@dataclass(frozen=True)
class SessionSpec:
    """One session: units[region] = (n_heldin, n_heldout) for EVERY region of the dataset,
    (0, 0) where it did not record the region, with the reason in missing[region]."""

    name: str
    units: dict[str, tuple[int, int]]
    missing: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.units, Mapping):
            raise DatasetError(f"session {self.name!r}: 'units' must map region -> "
                               f"[n_heldin, n_heldout], got {type(self.units).__name__}")
        units = {}
        for r, v in self.units.items():
            if not isinstance(v, (tuple, list)) or len(v) != 2:
                raise DatasetError(f"session {self.name!r}: units[{r!r}] must be "
                                   f"[n_heldin, n_heldout], got {v!r}")
            units[r] = tuple(int(c) if isinstance(c, np.integer) else c for c in v)  # JSON-ready
        object.__setattr__(self, "units", units)
        object.__setattr__(self, "missing", dict(self.missing or {}))
        object.__setattr__(self, "provenance", dict(self.provenance or {}))

    def recorded(self, region: str) -> bool:
        """Whether this session has any neuron (held-in or held-out) in `region`."""
        return tuple(self.units.get(region, (0, 0))) != (0, 0)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "units": {r: list(v) for r, v in self.units.items()},
                "missing": dict(self.missing), "provenance": dict(self.provenance)}

    @classmethod
    def from_dict(cls, data: Any, where: str = "sessions") -> SessionSpec:
        if isinstance(data, SessionSpec):
            return data
        if not isinstance(data, Mapping):
            raise DatasetError(f"{where}: expected an object {{name, units, missing, "
                               f"provenance}}, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_KEYS))
        if unknown or "name" not in data or "units" not in data:
            what = (f"unknown key(s) {unknown}" if unknown else "needs 'name' and 'units'")
            raise DatasetError(f"{where}: {what}; a session is {{name, units, missing, provenance}}")
        return cls(data["name"], data["units"], data.get("missing") or {},
                   data.get("provenance") or {})


class SessionBlock(NamedTuple):
    """Where one session's neurons of one region sit. `heldin` indexes the held-in columns
    (Batch.heldin[region], which are also the first columns of x/<region>); `heldout`
    indexes the held-out columns (Batch.heldout[region]; add the region's n_heldin for the
    column of x/<region>)."""

    heldin: slice
    heldout: slice


def blocks(sessions: Sequence[SessionSpec], region: str) -> list[SessionBlock]:
    """Per session, its held-in and held-out columns of `region` (the union layout)."""
    out, hin, hout = [], 0, 0
    for s in sessions:
        a, b = s.units[region]
        out.append(SessionBlock(slice(hin, hin + a), slice(hout, hout + b)))
        hin, hout = hin + a, hout + b
    return out


def columns(sessions: Sequence[SessionSpec], region: str, index: int) -> np.ndarray:
    """Columns of x/<region> holding session `index`'s neurons: held-in, then held-out."""
    bl = blocks(sessions, region)
    n_heldin = sum(s.units[region][0] for s in sessions)
    hin, hout = bl[index]
    return np.concatenate([np.arange(hin.start, hin.stop),
                           n_heldin + np.arange(hout.start, hout.stop)]).astype(np.int64)


def masks(sessions: Sequence[SessionSpec], regions: Sequence[str]) -> dict[str, np.ndarray]:
    """region -> bool (S, n_neurons): True where session s recorded column j of x/<region>."""
    out = {}
    for r in regions:
        n = sum(sum(s.units[r]) for s in sessions)
        m = np.zeros((len(sessions), n), dtype=bool)
        for i in range(len(sessions)):
            m[i, columns(sessions, r, i)] = True
        out[r] = m
    return out


def coerce(sessions: Sequence[Any] | None, arg: str = "sessions") -> tuple[SessionSpec, ...]:
    """SessionSpecs from SessionSpec objects or dicts (as in dataset.json)."""
    if sessions is None:
        return ()
    if isinstance(sessions, (str, bytes, Mapping)):
        raise DatasetError(f"{arg}: expected a list of sessions, got {type(sessions).__name__}")
    return tuple(SessionSpec.from_dict(s, f"{arg}[{i}]") for i, s in enumerate(sessions))


def n_valid(n: int, valid_frac: float) -> int:
    """Valid trials of a session of n trials: round(n * frac), but at least 1 when frac > 0
    and n >= 2, and never all of them (each session is split on its own)."""
    if valid_frac <= 0 or n < 2:
        return 0
    return min(max(1, round(n * valid_frac)), n - 1)


def _is_count(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0


def problems(regions: Sequence[Any], sessions: Sequence[SessionSpec]) -> list[str]:
    """Every inconsistency between `regions` (RegionSpec) and `sessions`, each naming its
    key and the fix. Empty `sessions` (a single-session dataset) has none."""
    if not sessions:
        return []
    p: list[str] = []
    names = [r.name for r in regions]
    seen: set[str] = set()
    for i, s in enumerate(sessions):
        k = f"sessions[{i}]"
        if not isinstance(s.name, str) or not schema.SESSION_RE.match(s.name):
            p.append(f"key '{k}.name': {s.name!r} is not a valid session name (letters, digits, "
                     "'_' and '-', starting with a letter or digit)")
        elif s.name in seen:
            p.append(f"key '{k}.name': duplicate session name {s.name!r}; give each session "
                     "its own name")
        seen.add(s.name)
        if set(s.units) != set(names):
            p.append(f"key '{k}.units': names regions {sorted(s.units)} but the dataset's "
                     f"regions are {names}; give every region, [0, 0] where not recorded")
            continue
        bad = [r for r, v in s.units.items() if not all(_is_count(c) for c in v)]
        if bad:
            p.append(f"key '{k}.units': counts of {bad} must be integers >= 0")
            continue
        absent = sorted(r for r in names if not s.recorded(r))
        if sorted(s.missing) != absent:
            p.append(f"key '{k}.missing': names {sorted(s.missing)} but the regions this "
                     f"session did not record ([0, 0]) are {absent}; give a reason for each "
                     "of those and no other")
        no_in = sorted(r for r in names if s.units[r][0] == 0 and s.units[r][1] > 0)
        if no_in:
            p.append(f"key '{k}.units': regions {no_in} have held-out but no held-in neurons "
                     "in this session; move one to held-in (the encoders read held-in only)")
        if not any(s.units[r][0] >= 1 for r in names):
            p.append(f"key '{k}.units': session {s.name!r} has no held-in neuron in any "
                     "region; drop the session")
    if p:
        return p
    for r in regions:
        hin = sum(s.units[r.name][0] for s in sessions)
        hout = sum(s.units[r.name][1] for s in sessions)
        if (hin, hout) != (r.n_heldin, r.n_heldout):
            p.append(f"key 'sessions': region {r.name!r} has {r.n_heldin} held-in + "
                     f"{r.n_heldout} held-out neurons, but its sessions' units sum to {hin} + "
                     f"{hout}; the region holds the union of every session's neurons")
        if not any(s.units[r.name][0] >= 1 for s in sessions):
            p.append(f"key 'sessions': no session records region {r.name!r} (held-in >= 1); "
                     "drop the region")
        ids = r.neuron_ids
        if ids is not None and len(set(ids)) != len(ids):
            p.append(f"key 'regions.{r.name}.neuron_ids': ids must be unique across "
                     "sessions; prefix each with its session's name (e.g. 's1/unit_17')")
    return p
