"""A spiking session written the way DANDI's photoinhibition sessions are, with a known
wiring, for trying the README's ingest recipe and the defaults as a new user would
(docs/RESULTS.md, "A session as DANDI stores it").

    .venv/bin/python benchmarks/science/dandi_session.py write s0.nwb [--seed 0] [--trials 400] \
        [--session 0]
    .venv/bin/python benchmarks/science/dandi_session.py score s0.nwb out/s0   # an infer output

Three regions, each a 3-dimensional damped rotation with process noise, stepped every 5 ms:
Thal -> ALM -> Str (a pathway adds a random linear map of its source's state to its
target's next state; a condition-dependent pulse drives Thal for 100 ms at the go cue).
Each unit's rate is a log-normal base around 5 Hz times exp of a random projection of its
region's state; two units per region never fire. The file holds what a converted recording
holds and the recipe has to cope with: 4 units of quality 'noise', one unit labelled
'root', trials of 2.5-3.5 s with the go cue 1.2-1.8 s in (so a -1:1 s window leaves some
trials), and on ~15% of trials a 0.4 s photoinhibition of ALM from 0.3 s before to 0.1 s
after the cue, stored as text columns `photostim_onset` and `photostim_duration` (seconds
from the trial's start, 'N/A' on other trials). Photoinhibition zeroes everything ALM
sends and divides its own neurons' rates by 10, as a laser does. ``--session K`` records
the same network again through other units (3K fewer per region) on other trials, as
another session of the same animal would, for stitching. ``write`` puts the true wiring
(regions and the message dimensions, [dst][src]) in OUT.nwb.truth.json; ``score`` prints an
infer output's cut effectome (and the message RMS) against it: cosine, and separation (the
smallest present pathway over the largest absent one; above 1 means every present pathway
ranks above every absent one).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

REGIONS = {"ALM": 45, "Thal": 18, "Str": 70}  # units per region
PATHWAYS = (("Thal", "ALM"), ("ALM", "Str"))  # (source, target)
DIM, STEP_S = 3, 0.005


def _rotation(theta: float, radius: float) -> np.ndarray:
    a = np.eye(DIM) * radius
    a[:2, :2] = radius * np.array([[np.cos(theta), -np.sin(theta)],
                                   [np.sin(theta), np.cos(theta)]])
    return a


def _units(rng: np.random.Generator, counts: dict[str, int]):
    """Each unit's loading on its region's state and its base rate (two never fire)."""
    loading = {r: 0.6 * rng.standard_normal((n, DIM)) for r, n in counts.items()}
    base = {r: np.exp(rng.normal(np.log(5.0), 0.6, n)) for r, n in counts.items()}
    for r in counts:
        base[r][:2] = 0.0
    return loading, base


def write(path: str, seed: int, n_trials: int, session: int = 0) -> None:
    """``seed`` picks the network; ``session`` k > 0 records it again through other units
    (3k fewer per region, new loadings and rates) on other trials, as a second session of
    the same animal would: `mrlfads ingest` makes such files one stitched dataset."""
    from mrlfads.data_loaders.nwb.testing import build_nwb

    rng = np.random.default_rng(seed)
    names = list(REGIONS)
    dynamics = {"ALM": _rotation(0.06, 0.985), "Thal": _rotation(0.09, 0.98),
                "Str": _rotation(0.04, 0.985)}
    coupling = {p: (0.06 if p[0] == "Thal" else 0.05) * rng.standard_normal((DIM, DIM))
                for p in PATHWAYS}
    counts = dict(REGIONS)
    loading, base = _units(rng, counts)
    pulse = rng.standard_normal((2, DIM))
    if session > 0:  # the same network, other units and trials
        rng = np.random.default_rng([seed, session])
        counts = {r: n - 3 * session for r, n in REGIONS.items()}
        loading, base = _units(rng, counts)
    spikes = {r: [[] for _ in range(counts[r])] for r in names}
    columns = {"go_cue_time": [], "trial_type": [], "photostim_onset": [],
               "photostim_duration": []}
    trials, t0 = [], 0.0
    for _ in range(n_trials):
        length, go = rng.uniform(2.5, 3.5), rng.uniform(1.2, 1.8)
        cond, stim = int(rng.integers(2)), rng.random() < 0.15
        onset = go + rng.uniform(-0.3, 0.1) if stim else None
        x = {r: 0.3 * rng.standard_normal(DIM) for r in names}
        for i in range(int(length / STEP_S)):
            t = i * STEP_S
            silenced = stim and onset <= t < onset + 0.4
            nxt = {}
            for r in names:
                v = dynamics[r] @ x[r] + 0.04 * rng.standard_normal(DIM)
                for (src, dst), w in coupling.items():
                    if dst == r and not (silenced and src == "ALM"):
                        v = v + w @ x[src]
                if r == "Thal" and go <= t < go + 0.1:
                    v = v + 0.15 * pulse[cond]
                nxt[r] = v
            x = nxt
            for r in names:
                rate = base[r] * np.exp(np.clip(loading[r] @ x[r], -5, 3))
                if silenced and r == "ALM":
                    rate = rate / 10
                for u in np.flatnonzero(rng.random(counts[r]) < rate * STEP_S):
                    spikes[r][u].append(t0 + t + rng.uniform(0, STEP_S))
        trials.append((t0, t0 + length))
        columns["go_cue_time"].append(t0 + go)
        columns["trial_type"].append("LR"[cond])
        columns["photostim_onset"].append(f"{onset:.3f}" if stim else "N/A")
        columns["photostim_duration"].append("0.4" if stim else "N/A")
        t0 += length + rng.uniform(0.5, 1.0)
    units, locations, quality = [], [], []
    for r in names:
        for u in range(counts[r]):
            units.append(sorted(spikes[r][u]))
            locations.append(r)
            quality.append("good")
    for j in range(4):  # noise units: flat 500 spikes over the session
        units.append(sorted(rng.uniform(0, t0, 500)))
        locations.append(names[j % len(names)])
        quality.append("noise")
    units.append(sorted(rng.uniform(0, t0, 200)))  # a unit no atlas region claims
    locations.append("root")
    quality.append("good")
    build_nwb(path, spikes=units, locations=locations, unit_columns={"quality": quality},
              trials=trials, trial_columns=columns)
    comm = [[DIM if (src, dst) in PATHWAYS else 0 for src in names] for dst in names]
    with open(path + ".truth.json", "w") as fh:
        json.dump({"regions": names, "comm": comm}, fh)
    stimulated = sum(o != "N/A" for o in columns["photostim_onset"])
    print(f"wrote {path}: {n_trials} trials, {stimulated} with ALM photoinhibited")


def score(path: str, infer_out: str) -> None:
    with open(path + ".truth.json") as fh:
        truth = json.load(fh)
    with open(os.path.join(infer_out, "effectome.json")) as fh:
        eff = json.load(fh)
    regions = eff["regions"]
    order = [truth["regions"].index(r) for r in regions]
    true = np.asarray(truth["comm"], float)[np.ix_(order, order)]
    off = ~np.eye(len(regions), dtype=bool)
    for key in ("matrix", "message_rms"):
        m = np.array([[np.nan if v is None else v for v in row] for row in eff[key]])
        got, want = m[off], true[off]
        cosine = got @ want / np.linalg.norm(got) / np.linalg.norm(want)
        separation = got[want > 0].min() / got[want == 0].max()
        print(f"{key}: cosine {cosine:.3f}, separation {separation:.3f}")
        for i, dst in enumerate(regions):
            print(f"  into {dst}: " + ", ".join(
                f"{regions[j]} {m[i, j]:.3f}{' (true)' if true[i, j] else ''}"
                for j in range(len(regions)) if j != i))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write", help="write the NWB file and its truth")
    w.add_argument("nwb")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--trials", type=int, default=400)
    w.add_argument("--session", type=int, default=0,
                   help="k > 0: the same network through other units, on other trials")
    s = sub.add_parser("score", help="score an infer output against the truth")
    s.add_argument("nwb")
    s.add_argument("infer_out")
    args = p.parse_args()
    if args.cmd == "write":
        write(args.nwb, args.seed, args.trials, args.session)
    else:
        score(args.nwb, args.infer_out)


if __name__ == "__main__":
    main()
