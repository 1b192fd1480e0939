"""Several NWB files with different units -> one multi-session dataset (`--sessions separate`).

Each file is a session named after its file stem (made a valid, unique name). Each region
holds the union of the sessions' own units (data_loaders/sessions.py): a unit belongs to
its file's session only; units are never matched across files. A region a file lacks, or
whose units all fail --drop-quality or --min-neurons, is recorded in the session's
`missing` with the reason. Each session holds out its own units (--heldout per session).
"""
from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass

import numpy as np

from mrlfads.data_loaders import schema
from mrlfads.data_loaders.errors import IngestError
from mrlfads.data_loaders.nwb import remote
from mrlfads.data_loaders.nwb.options import IngestOptions
from mrlfads.data_loaders.nwb.plan import FilePlan
from mrlfads.data_loaders.sessions import SessionSpec, columns


@dataclass(frozen=True)
class RegionLayout:
    """Columns of x/<region>: per file, its unit rows and the columns they fill."""

    name: str
    n_heldin: int
    n_heldout: int
    rows: tuple[np.ndarray, ...]  # per file: unit rows, held-in first then held-out
    cols: tuple[np.ndarray, ...]  # per file: the x/<region> column of each of those rows


def matchable(plans: list[FilePlan], o: IngestOptions) -> bool:
    """Whether the files can be one session: same regions, same unit count per region."""
    if o.regions is not None:
        if any(r not in p.region_rows for p in plans for r in o.regions):
            return False
        names = list(o.regions)
    else:
        if len({p.regions for p in plans}) > 1:
            return False
        names = list(plans[0].regions)
    return all(len({len(p.region_rows[r]) for p in plans}) == 1 for r in names)


def _file_name(path: str) -> str:
    if remote.is_remote(path):
        return posixpath.basename(path.split("?")[0].rstrip("/")) or path
    return os.path.basename(path)


def session_names(paths: list[str]) -> list[str]:
    """Each file's stem, with characters a session name cannot hold replaced by '_', made
    unique with -2, -3, ... ("sub-01_ses-1.nwb" -> "sub-01_ses-1")."""
    out: list[str] = []
    for path in paths:
        stem = os.path.splitext(_file_name(path))[0]
        name = re.sub(r"[^A-Za-z0-9_-]", "_", stem) or "session"
        if not schema.SESSION_RE.match(name):
            name = "s" + name
        base, k = name, 2
        while name in out:
            name, k = f"{base}-{k}", k + 1
        out.append(name)
    return out


def _reason(p: FilePlan, r: str, o: IngestOptions) -> str | None:
    """Why file `p` records no unit of region `r` (None if it does)."""
    n = len(p.region_rows.get(r, ()))
    if r not in p.labelled:
        return f"not in file {_file_name(p.path)}"
    if n == 0:
        return (f"no units left after --drop-quality {','.join(o.drop_quality)} in "
                f"{_file_name(p.path)}")
    if n < o.min_neurons:
        return f"{n} units < --min-neurons {o.min_neurons} in {_file_name(p.path)}"
    return None


def _held_out(p: FilePlan, r: str, o: IngestOptions, rng: np.random.Generator) -> np.ndarray:
    """Positions (within the file's units of `r`) held out, this session's own choice."""
    n = len(p.region_rows[r])
    if o.heldout_column is not None:
        out = np.flatnonzero(p.heldout_flags[p.region_rows[r]])
    else:
        out = np.sort(rng.choice(n, size=min(o.n_heldout(n), n), replace=False))
    if n - len(out) < 1:
        raise IngestError(f"{p.path}: region {r!r}: {len(out)} of its {n} units would be held "
                          "out, leaving none for the encoders; lower --heldout (or mark fewer "
                          "with --heldout-column)")
    return out


def separate_layouts(plans: list[FilePlan], o: IngestOptions, warnings: list[str]
                     ) -> tuple[list[RegionLayout], list[SessionSpec]]:
    """A session per file: the layouts of the union columns and the sessions' specs."""
    if o.regions is not None:
        names = list(o.regions)
        nowhere = [r for r in names if not any(r in p.labelled for p in plans)]
        if nowhere:
            raise IngestError(f"requested regions {nowhere} (--regions) are in none of "
                              f"{[p.path for p in plans]}, whose regions are "
                              f"{ {_file_name(p.path): list(p.labelled) for p in plans} }; fix "
                              "--regions (or --region-map)")
    else:
        names = sorted({r for p in plans for r in p.regions})
    reasons = {(k, r): _reason(p, r, o) for k, p in enumerate(plans) for r in names}
    kept = []
    for r in names:
        if all(reasons[(k, r)] for k in range(len(plans))):
            warnings.append(f"region {r!r} dropped: no session has {o.min_neurons}+ units "
                            "(--min-neurons)")
        elif not schema.REGION_RE.match(r):
            raise IngestError(f"region label {r!r} is not a valid region name (letters, digits, "
                              "'_', starting with a letter); map it with --region-map FILE "
                              "({label: region}) or leave it out with --regions")
        else:
            kept.append(r)
    if not kept:
        raise IngestError(f"no region has at least {o.min_neurons} units (--min-neurons) in "
                          f"any of {[p.path for p in plans]}; lower --min-neurons or check the regions")
    rng = np.random.default_rng(o.seed)
    rows: dict[tuple[int, str], np.ndarray] = {}
    specs = []
    for k, (p, name) in enumerate(zip(plans, session_names([p.path for p in plans]))):
        units, missing = {}, {}
        for r in kept:
            if reasons[(k, r)] is not None:
                units[r], missing[r] = (0, 0), reasons[(k, r)]
                rows[(k, r)] = np.empty(0, dtype=np.int64)
                continue
            n = len(p.region_rows[r])
            out = _held_out(p, r, o, rng)
            rows[(k, r)] = p.region_rows[r][np.concatenate([np.setdiff1d(np.arange(n), out), out])]
            units[r] = (n - len(out), len(out))
        if not any(units[r][0] for r in kept):
            raise IngestError(f"{p.path}: none of the kept regions {kept} has units in this file "
                              f"({missing}); leave the file out or change --regions")
        specs.append(SessionSpec(name, units, missing, {"file": _file_name(p.path), "index": k}))
    layouts = []
    for r in kept:
        layouts.append(RegionLayout(
            r, sum(s.units[r][0] for s in specs), sum(s.units[r][1] for s in specs),
            tuple(rows[(k, r)] for k in range(len(plans))),
            tuple(columns(specs, r, k) for k in range(len(plans)))))
    return layouts, specs


def neuron_ids(plans: list[FilePlan], layout: RegionLayout, specs: list[SessionSpec]) -> tuple[str, ...]:
    """'<session>/<unit id>' of every column of x/<region>."""
    ids = np.empty(layout.n_heldin + layout.n_heldout, dtype=object)
    for k, (p, s) in enumerate(zip(plans, specs)):
        ids[layout.cols[k]] = [f"{s.name}/{int(u)}" for u in p.unit_ids[layout.rows[k]]]
    return tuple(ids.tolist())
