"""Recorded interventions on the spiking benchmark: do trials with a region silenced fix the
pathway ranking that observation alone gets wrong? (docs/RESULTS.md, "Recorded
interventions")

    .venv/bin/python benchmarks/science/interventions.py --out interventions_runs \
        [--datasets random-2 random-0] [--seeds 0 1] [--intervention-trials 160] [--epochs 100]

Every dataset is spiking_grid.py's (5 Hz, 10 ms bins, 480 trials, 48 units per region) in
three arms that share the same 480 trials and so the same validation trials:
``observational`` (those alone), ``more trials`` (N extra training trials, nothing
silenced: what more data alone gives) and ``interventions`` (the same N extra trials, each
silencing every message of one random region over a random quarter of the trial, which
training silences in the model too). Each arm is fitted with the default configuration
and its best.pt scored on the validation trials; one JSON line per fit goes to
OUT/results.jsonl as fits finish, then a markdown table of every line so far.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import spiking_grid as sg  # benchmarks/science is not a package

ARMS = ("observational", "more trials", "interventions")


def dataset(out: Path, name: str, arm: str, n: int) -> Path:
    from mrlfads.data_loaders.simulate import SimInterventions, simulate

    tag = {"observational": "obs", "more trials": f"extra{n}", "interventions": f"int{n}"}[arm]
    path = out / "data" / f"{name}-{tag}"
    if not (path / "dataset.json").exists():
        kind, seed = sg.DATASETS[name]
        extra = None if arm == "observational" else SimInterventions(
            n, control=arm == "more trials")
        simulate(kind, out=str(path), seed=seed, obs="poisson", rate_hz=5.0, bin_ms=10.0,
                 n_units=sg.UNITS, trials=sg.TRIALS, n_bins=round(sg.STEPS * 20 / 10),
                 overwrite=True, interventions=extra)
    return path


def table(rows: list[dict]) -> str:
    cols = ["effectome_cut_cosine", "effectome_cut_separation", "message_r2", "co_bps"]
    lines = ["| network | arm | seed | " + " | ".join(cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for r in sorted(rows, key=lambda r: (r["dataset"], ARMS.index(r["arm"]), r["seed"])):
        lines.append(f"| {r['dataset']} | {r['arm']} | {r['seed']} | "
                     + " | ".join(f"{r[c]:.3f}" for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="interventions_runs")
    p.add_argument("--datasets", nargs="+", default=["random-2"], choices=list(sg.DATASETS))
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--intervention-trials", type=int, default=160)
    p.add_argument("--epochs", type=int, default=100)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = args.intervention_trials
    for name in args.datasets:
        for arm in args.arms:
            path = dataset(out, name, arm, n)
            for seed in args.seeds:
                t0 = time.time()
                run_dir = out / "runs" / f"{path.name}-s{seed}-e{args.epochs}"
                res = sg.run_defaults(path, seed, args.epochs, run_dir)
                res.update(dataset=name, arm=arm, extra_trials=0 if arm == ARMS[0] else n,
                           seed=seed, epochs=args.epochs,
                           minutes=round((time.time() - t0) / 60, 1))
                with open(out / "results.jsonl", "a") as f:
                    f.write(json.dumps(res) + "\n")
                print(json.dumps(res), flush=True)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    print(table(rows))


if __name__ == "__main__":
    main()
