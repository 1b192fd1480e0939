"""Several fits' effectomes side by side: which pathways every fit ranks the same way.

Held-out likelihood cannot tell some wrong wirings from the true one, and fits from other
training seeds make different ones (docs/RESULTS.md, "Another CPU's networks"): a pathway
that some fits rank above another and some below is uncertain. This reads the
`effectome.json` of each `mrlfads infer` output (E[dst][src], the cut effectome) and names
those pairs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrlfads.files import EFFECTOME


@dataclass(frozen=True)
class CutEffectome:
    """One fit's cut effectome: ``matrix[dst][src]``, NaN where there is no pathway."""

    source: str
    regions: tuple[str, ...]
    matrix: np.ndarray


def read_effectome(path: str | Path) -> CutEffectome:
    """An `mrlfads infer --out` folder, or the effectome.json in one."""
    p = Path(path)
    file = p / EFFECTOME if p.is_dir() else p
    if not file.is_file():
        raise ValueError(f"{path}: no {EFFECTOME}; pass an `mrlfads infer --out` folder "
                         "or the effectome.json in one")
    try:
        data = json.loads(file.read_text())
        regions = tuple(str(r) for r in data["regions"])
        matrix = np.array([[np.nan if v is None else float(v) for v in row]
                           for row in data["matrix"]], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{file}: not an mrlfads effectome ({exc}); write it with "
                         "`mrlfads infer --out`") from None
    if matrix.shape != (len(regions), len(regions)):
        raise ValueError(f"{file}: its matrix is {matrix.shape[0]} x {matrix.shape[1]} for "
                         f"{len(regions)} regions; write it again with `mrlfads infer --out`")
    return CutEffectome(str(path), regions, matrix)


def compare(fits: list[CutEffectome]) -> dict:
    """Per pathway (src -> dst, every fit's value) its mean, range and the pathways whose
    order against it differs between fits; the mean matrix. Pathways a fit lacks (NaN:
    closed, or the diagonal) take no part in the orders."""
    if len(fits) < 2:
        raise ValueError("compare-effectomes: give two or more fits")
    regions = fits[0].regions
    for f in fits[1:]:
        if f.regions != regions:
            raise ValueError(f"{f.source}: regions {list(f.regions)} differ from "
                             f"{fits[0].source}'s {list(regions)}; compare fits of one dataset")
    stack = np.stack([f.matrix for f in fits])  # (fit, dst, src)
    names, values = [], []
    for d, dst in enumerate(regions):
        for s, src in enumerate(regions):
            if s != d and np.isfinite(stack[:, d, s]).any():
                names.append(f"{src}->{dst}")
                values.append(stack[:, d, s])
    v = np.array(values)  # (pathway, fit)
    complete = np.isfinite(v).all(1)
    flips: dict[str, list[str]] = {n: [] for n in names}
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if complete[i] and complete[j]:
                diff = v[i] - v[j]
                if (diff > 0).any() and (diff < 0).any():
                    flips[names[i]].append(names[j])
                    flips[names[j]].append(names[i])
    mean = np.nanmean(v, 1)
    tier = _tiers(v, complete)
    pathways = [{"pathway": n, "mean": float(mean[k]), "min": float(np.nanmin(v[k])),
                 "max": float(np.nanmax(v[k])), "tier": tier.get(k),
                 "values": [None if not np.isfinite(x) else float(x) for x in v[k]],
                 "order_differs_from": sorted(flips[n], key=names.index)}
                for k, n in enumerate(names)]
    pathways.sort(key=lambda p: -p["mean"])
    finite = np.isfinite(stack)
    counts = finite.sum(0)
    mean_matrix = np.where(counts > 0, np.where(finite, stack, 0).sum(0) / np.maximum(counts, 1),
                           np.nan)
    n_pairs = sum(len(p["order_differs_from"]) for p in pathways) // 2
    return {"fits": [f.source for f in fits], "regions": list(regions),
            "index": "matrix[dst][src]",
            "mean_matrix": [[None if not np.isfinite(x) else float(x) for x in row]
                            for row in mean_matrix],
            "pathways": pathways, "pairs_in_differing_order": n_pairs}


def _tiers(v: np.ndarray, complete: np.ndarray) -> dict[int, int]:
    """Tier (1 = strongest) of each pathway every fit has: a boundary falls after the top k
    wherever every fit has the same k pathways on top, so every fit ranks each tier's
    pathways above every lower tier's; within a tier some fits order them differently."""
    idx = np.flatnonzero(complete)
    if not len(idx):
        return {}
    ranked = [idx[np.argsort(-v[idx, f], kind="stable")] for f in range(v.shape[1])]
    tiers, t = {}, 1
    for k in range(len(idx)):
        tiers[int(ranked[0][k])] = t
        if all(set(r[:k + 1]) == set(ranked[0][:k + 1]) for r in ranked[1:]):
            t += 1
    return tiers
