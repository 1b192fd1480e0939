"""PBT exploit events and lineage: pure functions over plain dicts (testable by hand).

An exploit event, as logged on a trial's run::

    {"epoch": 4, "resumed_at": 5, "donor_trial": "abc_00002", "donor_epoch": 4,
     "old": {"train.lr": 0.01}, "new": {"train.lr": 0.012}}

``epoch`` is the trial's last logged step before it took the donor's weights.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PERTURBED = "@perturbed"


def orig_tag(experiment_tag: str) -> str:
    """The trial's tag at creation (PBT appends ``@perturbed[...]`` on each exploit)."""
    return experiment_tag.split(PERTURBED, 1)[0]


def changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[dict, dict]:
    """The entries whose value differs (floats compared exactly: PBT sets new values)."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return {k: old.get(k) for k in keys}, {k: new.get(k) for k in keys}


def last_policy_line(policy_file: str | os.PathLike, tag: str) -> list | None:
    """The newest line of Ray PBT's ``pbt_policy_<trial>.txt`` where ``tag`` was the target.

    Each line: [target tag, donor tag, target iteration, donor iteration, donor config,
    new config] (PopulationBasedTraining._log_config_on_step, log_config=True).
    """
    p = Path(policy_file)
    if not p.is_file():
        return None
    found = None
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, list) and len(row) >= 4 and row[0] == tag:
            found = row
    return found


def lineage(events: Mapping[str, Sequence[Mapping[str, Any]]], trial: str,
            max_hops: int = 1000) -> list[dict[str, Any]]:
    """Who the ``trial``'s weights came from, newest hop first.

    Walk back: the trial's latest exploit names a donor and the donor's epoch at cloning;
    the donor's own history counts only up to that epoch; repeat until a trial never
    exploited (its weights are its own from epoch 0).
    """
    chain: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    cur, upto = trial, math.inf
    for _ in range(max_hops):
        past = [e for e in events.get(cur, []) if e.get("donor_trial") and e["epoch"] <= upto]
        if not past:
            break
        e = max(past, key=lambda ev: ev["epoch"])
        if (cur, e["epoch"]) in seen:  # a cycle: the records are inconsistent, stop
            break
        seen.add((cur, e["epoch"]))
        chain.append({"trial": cur, **e})
        donor_epoch = e.get("donor_epoch")
        cur, upto = e["donor_trial"], (e["epoch"] if donor_epoch is None else donor_epoch)
    return chain


def best_path(events: Mapping[str, Sequence[Mapping[str, Any]]], trial: str,
              last_epoch: float) -> list[tuple[str, float, float]]:
    """The stretches of training that made ``trial``'s final weights, newest first, as
    ``(trial, from_epoch, to_epoch)``: the trial itself from its latest exploit to
    ``last_epoch``, then each donor (``lineage``) from its own previous exploit (or 0) up to
    the epoch its weights were copied."""
    segments = []
    cur, upto = trial, float(last_epoch)
    for hop in lineage(events, trial):
        segments.append((cur, float(hop["epoch"]), upto))
        donor_epoch = hop.get("donor_epoch")
        cur, upto = hop["donor_trial"], float(hop["epoch"] if donor_epoch is None else donor_epoch)
    segments.append((cur, 0.0, upto))
    return segments
