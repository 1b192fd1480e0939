"""Stitching sessions (docs/RESULTS.md, "Several sessions"): does a model fitted on S sessions
that each record a fraction of every region's units recover the communication as well as
one session that records them all, and better than fitting each session alone?

    .venv/bin/python benchmarks/science/stitching.py --out stitch_runs [--network random-1] \
        [--obs poisson] [--rate-hz 20] [--bin-ms 10] [--sessions 4] [--frac 0.25] \
        [--trials 480] [--epochs 100] [--seeds 0] [--arms full stitched alone pbt]

One network (the spiking grid's size: 48 units in the largest region, 1.2 s trials), up to
four arms, each trained with the defaults for ``--epochs`` (ramps stretched to fit) and scored
on ``best.pt`` over its validation trials:

- ``full``: one session recording every unit, ``--trials`` trials;
- ``stitched``: ``--sessions`` sessions of ``--trials`` trials each, each recording its own
  random ``--frac`` of every region's units (`mrlfads simulate --sessions`), one model;
- ``alone``: each of those sessions as its own dataset, fitted on its own (mean and spread
  over the sessions);
- ``pbt``: the default sweep (search_spaces/pbt.yaml, as the spiking grid runs it:
  ``--population`` members, synchronous, perturbation every 10 epochs) on the stitched
  dataset, scored on its best trial's checkpoint (not among the default arms).

Scores: the cut effectome's cosine with the true communication matrix and its separation
(weakest present pathway / strongest absent one), message R^2, inferred-input R^2 and
co-bps (a stitched model's pooled over its sessions); beside them what the data allow: the
smoothing baseline's co-bps on the same held-out neurons (training/smoothing.py; a stitched
dataset's per session, pooled by spikes as the model's co-bps is), and the spiking grid's
decoder R^2 from one trial's recorded neurons to each true message (a stitched dataset's
averaged over its sessions, each with its own neurons). One JSON line per fit goes to
OUT/results.jsonl; the table is printed at the end. ``--ceilings`` prints those two for
each arm's data and fits nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spiking_grid import (  # this folder
    EPOCHS,
    decoder_r2,
    run_defaults,
    run_name,
    run_pbt,
    smoothing_co_bps,
)
from subset import write_subset  # this folder

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TQDM_DISABLE", "1")

NETWORKS = {"memory-ring": ("memory-ring", 0), "relay-decision": ("relay-decision", 0),
            "random-0": ("random", 0), "random-1": ("random", 1), "random-2": ("random", 2)}
UNITS, STEPS = 48, 60
COLUMNS = ["effectome_cut_cosine", "effectome_cut_separation", "effectome_cut_effect_cosine",
           "message_r2", "input_r2", "co_bps"]  # the effect cosine: against the network's own


def simulated(out: Path, args, sessions: int) -> Path:
    from mrlfads.data_loaders.simulate import simulate

    kind, seed = NETWORKS[args.network]
    path = out / "data" / (f"{args.network}-{args.obs}-{args.rate_hz:g}hz-{args.trials}"
                           + (f"-s{sessions}x{args.frac:g}" if sessions > 1 else "-full"))
    if not (path / "dataset.json").exists():
        simulate(kind, out=str(path), seed=seed, obs=args.obs, rate_hz=args.rate_hz,
                 bin_ms=args.bin_ms, n_units=UNITS, trials=args.trials,
                 n_bins=round(STEPS * 20 / args.bin_ms), sessions=sessions,
                 session_frac=args.frac if sessions > 1 else None, overwrite=True)
    return path


def session_alone(stitched: Path, k: int) -> Path:
    """Session k of a stitched dataset as a dataset of its own (its trials, its units)."""
    from mrlfads.data_loaders import schema
    from mrlfads.data_loaders.reader import ArrowDataset

    ds = ArrowDataset.open(stitched)
    m = ds.manifest
    name = m.sessions[k].name
    path = stitched.parent / f"{stitched.name}-{name}"
    if (path / "dataset.json").exists():
        return path
    keep = {}
    for r in m.regions:
        n_in, n_out = m.sessions[k].units[r.name]
        if n_in == 0:
            raise SystemExit(f"session {name} did not record region {r.name}: fitting it "
                             "alone needs every region (use a larger --frac)")
        # held-in then held-out columns of x/<r>
        keep[r.name] = (m.session_columns(r.name, k), n_in, n_out)
    rows = np.flatnonzero(ds.arrays(None, [schema.SESSION])[schema.SESSION] == k)
    return write_subset(ds, path, rows, keep, f"{m.name}-{name}",
                        {"from": stitched.name, "session": name}, overwrite=True)


def decoder_ceiling(path: Path, sessions: list[Path] | None = None) -> float:
    """What the spikes of one trial allow: the spiking grid's ridge decoder from the source's
    and target's spikes to each true message, averaged over pathways; for a stitched
    dataset, over its sessions too, each decoded from the neurons it recorded."""
    return float(np.mean([np.mean(list(decoder_r2(p).values())) for p in (sessions or [path])]))


def smoothing_ceiling(path: Path) -> float:
    """The spiking grid's smoothing co-bps of the dataset at ``path`` (per session and pooled
    for a stitched dataset): what a model's co-bps must beat; NaN where none."""
    from mrlfads.data_loaders.reader import ArrowDataset

    return smoothing_co_bps(ArrowDataset.open(path))


def fit_and_score(path: Path, seed: int, epochs: int, run_dir: Path,
                  overrides: dict | None = None) -> dict[str, float]:
    """The spiking grid's defaults arm (fit, then score ``best.pt``), this table's columns."""
    metrics = run_defaults(path, seed, epochs, run_dir, overrides)
    return {c: metrics[c] for c in COLUMNS}


def table(rows: list[dict]) -> str:
    lines = ["| arm | fits | trials per fit | " + " | ".join(COLUMNS)
             + " | smoothing co-bps | decoder R^2 |",
             "|" + "---|" * (len(COLUMNS) + 5)]
    settings = sorted({" ".join(r.get("set", [])) for r in rows})
    arms = ("full", "stitched", "alone", "pbt")
    for arm, setting in ((a, s) for s in settings for a in arms):
        sel = [r for r in rows if r["arm"] == arm and " ".join(r.get("set", [])) == setting]
        if not sel:
            continue
        cells = []
        for c in COLUMNS:
            v = np.array([r["metrics"].get(c, np.nan) for r in sel], dtype=float)  # older rows lack some
            cells.append(f"{v[0]:.3f}" if len(v) == 1 else
                         f"{np.nanmean(v):.3f} ± {np.nanstd(v):.3f}")
        ceil = np.mean([r.get("decoder_message_r2", np.nan) for r in sel])
        smoothing = np.mean([r.get("smoothing_co_bps", np.nan) for r in sel])  # older rows: NaN
        label = f"{arm} {setting}".strip()
        lines.append(f"| {label} | {len(sel)} | {sel[0]['trials']} | " + " | ".join(cells)
                     + f" | {smoothing:.3f} | {ceil:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="stitch_runs")
    p.add_argument("--network", default="random-1", choices=list(NETWORKS))
    p.add_argument("--obs", default="poisson", choices=["poisson", "gaussian"])
    p.add_argument("--rate-hz", type=float, default=20.0)
    p.add_argument("--bin-ms", type=float, default=10.0)
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--frac", type=float, default=0.25)
    p.add_argument("--trials", type=int, default=480, help="trials per session")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--arms", nargs="+", default=["full", "stitched", "alone"],
                   choices=["full", "stitched", "alone", "pbt"])
    p.add_argument("--population", type=int, default=4, help="the pbt arm's population")
    p.add_argument("--set", nargs="*", default=[], metavar="PATH=VALUE",
                   help="config overrides of every fit (YAML 1.2 values), recorded in each "
                        "row; the table shows each setting's rows apart")
    p.add_argument("--ceilings", action="store_true",
                   help="print each arm's smoothing co-bps and decoder R^2 as JSON lines, and "
                        "fit nothing")
    args = p.parse_args()
    from mrlfads.training.yaml12 import parse_sets

    overrides = parse_sets(args.set)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = ({(r["arm"], r["name"], r["seed"], tuple(r.get("set", [])), r.get("epochs", EPOCHS))
             for r in map(json.loads, results.open())} if results.exists() else set())
    stitched = simulated(out, args, args.sessions)
    alone = [session_alone(stitched, k) for k in range(args.sessions)]
    jobs = []
    if "full" in args.arms:
        jobs.append(("full", "full", simulated(out, args, 1)))
    if "stitched" in args.arms:
        jobs.append(("stitched", "stitched", stitched))
    if "alone" in args.arms:
        jobs += [("alone", f"session-{k}", p) for k, p in enumerate(alone)]
    if "pbt" in args.arms:
        if args.set:
            raise SystemExit("--set applies to the fits of the other arms; the pbt arm runs "
                             "the default search space as it is: leave --set out")
        jobs.append(("pbt", "stitched-pbt", stitched))
    if args.ceilings:
        for arm, name, path in jobs:
            print(json.dumps({"arm": arm, "name": name, "smoothing_co_bps": smoothing_ceiling(path),
                              "decoder_message_r2": decoder_ceiling(
                                  path, alone if path == stitched else None)}), flush=True)
        return
    for seed in args.seeds:
        for arm, name, path in jobs:
            if (arm, name, seed, tuple(args.set), args.epochs) in done:
                continue
            start = time.time()
            extra = {}
            if arm == "pbt":
                result = run_pbt(path, seed, args.epochs, args.population, out.resolve())
                metrics = {c: result[c] for c in COLUMNS}
                extra = {"hparams": result["hparams"], "exploits": result["exploits"],
                         "population": args.population}
            else:
                metrics = fit_and_score(path, seed, args.epochs,
                                        out / "runs" / run_name(name, seed, args.set, args.epochs),
                                        overrides)
            from mrlfads.data_loaders.reader import ArrowDataset

            n = sum(ArrowDataset.open(path).manifest.splits.values())
            ceiling = decoder_ceiling(path, alone if path == stitched else None)
            row = {"arm": arm, "name": name, "seed": seed, "set": args.set, "epochs": args.epochs,
                   "network": args.network, "obs": args.obs, "rate_hz": args.rate_hz,
                   "trials": n, "seconds": round(time.time() - start), "metrics": metrics,
                   "decoder_message_r2": ceiling, "smoothing_co_bps": smoothing_ceiling(path),
                   **extra}
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    print(table([json.loads(line) for line in results.open()]))


if __name__ == "__main__":
    main()
