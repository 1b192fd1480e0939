"""Perturbation predictions against the truth (docs/RESULTS.md, "Perturbations").

    .venv/bin/python benchmarks/science/perturbation.py --out perturb_runs \
        [--datasets relay-decision random-0 random-1] [--seeds 0] [--epochs 100] \
        [--rate-hz 5] [--bin-ms 10] [--window 40:80]

Each network of spiking_grid.py (same units, trials and rates) is simulated once per
region with that region silenced (`mrlfads simulate --silence REGION --window ...`): a
quarter as many perturbed trials again, kept out of training, with the true effect of the
silencing on every neuron (each perturbed trial against its unperturbed twin). The other
trials are the same bytes in every one of these datasets, so one default fit per network
(``--epochs``, scored on ``best.pt`` as a user would) serves all its regions. For each
silenced region, `mrlfads perturb --silence REGION` predicts every neuron's effect, and
it is scored by Spearman rank correlation over all neurons:

- ``rho_true``: the predicted effect size (mean |change| from the window's start,
  `effect/<r>`) against the true one (each perturbed trial against its unperturbed twin);
- ``rate_baseline``: each neuron's mean rate against the true effect size (a neuron that
  fires more changes more in counts: the score of knowing nothing about the pathways);
- ``signed_true``: the predicted signed trial-mean change against the true one (direction
  and size; no rate baseline can score here);
- ``rho_measured``, ``rate_vs_measured``, ``signed_measured``: what `mrlfads perturb`
  reports against the perturbed and control trials' spikes (``rank_correlation``,
  ``rank_correlation_rate_only``, ``rank_correlation_signed``);
- ``signed_truth_vs_measured``: the true signed change against the measured one: how much
  the spikes allow a signed comparison to show;
- ``region_cosine``: cosine of predicted and true mean effect size per region.

A region that sends no message has no true effect; its row has no correlations.
One JSON line per (network, seed, silenced region) goes to OUT/results.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from spiking_grid import DATASETS, STEPS, TRIALS, UNITS

COLUMNS = ["rho_true", "rate_baseline", "signed_true", "rho_measured", "rate_vs_measured",
           "signed_measured", "signed_truth_vs_measured", "region_cosine"]


def dataset(out: Path, name: str, region: str, args) -> Path:
    from mrlfads.training.api import simulate

    path = out / "data" / f"{name}-{args.rate_hz:g}hz-{args.bin_ms:g}ms-silence-{region}"
    if not (path / "dataset.json").exists():
        kind, seed = DATASETS[name]
        simulate(kind, str(path), seed=seed, obs="poisson", rate_hz=args.rate_hz,
                 bin_ms=args.bin_ms, units=UNITS, trials=TRIALS,
                 bins=round(STEPS * 20 / args.bin_ms), silence=region, window=args.window,
                 overwrite=True)
    return path


def fit(path: Path, seed: int, epochs: int, run_dir: Path, overrides: dict) -> Path:
    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.training.config import RunConfig
    from mrlfads.training.fit import BEST
    from mrlfads.training.fit import fit as fit_run
    from mrlfads.training.loop import Trainer

    if not (run_dir / BEST).exists():
        ds = ArrowDataset.open(path)
        cfg = RunConfig.for_dataset(ds.manifest, uri=str(path), overrides={
            "train.seed": seed, "train.epochs": epochs, "train.threads": 1, **overrides})
        fit_run(Trainer(cfg, ds), run_dir, progress=False)
    return run_dir / BEST


def score(checkpoint: Path, path: Path, region: str, window: str) -> dict[str, float]:
    from mrlfads.metrics import rank_correlation
    from mrlfads.training.api import load, open_dataset

    model, data = load(str(checkpoint)), open_dataset(path)
    got = model.perturb(data, window=window, silence=region, device="cpu")
    names = data.manifest.region_names
    with np.load(path / "extras" / "perturbation.npz") as z:
        truth = {k: z[k] for k in z.files}
    first = int(truth["window"][0]) - data.manifest.ic_enc_seq_len

    def cat(d, key):
        return np.concatenate([np.asarray(d[f"{key}/{r}"], np.float64) for r in names])

    true = cat(truth, "effect")
    rates = np.concatenate([got.effects[f"base/{r}"].mean(0) for r in names])

    def signed(d, key):  # the trial-mean change from the window's start
        return np.concatenate([np.asarray(d[f"{key}/{r}"], np.float64)[first:].mean(0)
                               for r in names])

    pred_r = np.array([got.effects[f"effect/{r}"].mean() for r in names])
    true_r = np.array([truth[f"effect/{r}"].mean() for r in names])
    return {
        "rho_true": rank_correlation(cat(got.effects, "effect"), true),
        "rate_baseline": rank_correlation(rates, true),
        "signed_true": rank_correlation(signed(got.effects, "delta"), signed(truth, "delta")),
        "rho_measured": got.report["rank_correlation"],
        "rate_vs_measured": got.report["rank_correlation_rate_only"],
        "signed_measured": got.report["rank_correlation_signed"],
        "signed_truth_vs_measured": rank_correlation(signed(truth, "delta"),
                                                     signed(got.effects, "measured_delta")),
        "region_cosine": float(pred_r @ true_r / (np.linalg.norm(pred_r) * np.linalg.norm(true_r))),
        "true_effect_by_region": dict(zip(names, true_r.round(5).tolist())),
        "predicted_effect_by_region": dict(zip(names, pred_r.round(5).tolist())),
    }


def table(rows: list[dict]) -> str:
    """One markdown row per (network, rate, silenced region, seed, --set)."""
    head = ["network", "rate", "silenced", "seed", "settings", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join(
            [r["dataset"], f"{r.get('rate_hz', float('nan')):g} Hz", r["silenced"],
             str(r["seed"]), " ".join(r.get("set") or []) or "defaults"]
            + [f"{r[c]:.2f}" for c in COLUMNS]) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--datasets", nargs="+", default=["relay-decision", "random-0", "random-1"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--rate-hz", type=float, default=5.0)
    p.add_argument("--bin-ms", type=float, default=10.0)
    p.add_argument("--window", default="40:80", help="trial bins silenced (default 40:80)")
    p.add_argument("--set", nargs="*", default=[], metavar="PATH=VALUE",
                   help="config overrides of the fits, as `mrlfads train --set`")
    args = p.parse_args()
    from mrlfads.training.yaml12 import parse_sets

    overrides = parse_sets(args.set)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.datasets:
        first = None
        for region in _regions(args.out, name, args):
            path = dataset(args.out, name, region, args)
            first = first or path
            for seed in args.seeds:
                t0 = time.time()
                tag = f"{name}-{args.rate_hz:g}hz-{args.bin_ms:g}ms-seed{seed}"
                if args.set:
                    tag += "-" + "-".join(sorted(args.set)).replace("/", "_")
                best = fit(first, seed, args.epochs, args.out / "runs" / tag, overrides)
                row = {"dataset": name, "seed": seed, "silenced": region, "set": args.set,
                       "rate_hz": args.rate_hz, "bin_ms": args.bin_ms, "epochs": args.epochs,
                       **score(best, path, region, args.window),
                       "seconds": round(time.time() - t0, 1)}
                print(json.dumps(row), flush=True)
                with open(args.out / "results.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
    rows = [json.loads(x) for x in (args.out / "results.jsonl").read_text().splitlines()]
    print(table(rows))


def _regions(out: Path, name: str, args) -> list[str]:
    """The network's regions, read from its first simulated dataset (region 'A0' for the
    random networks and the ring, 'upstream' for the relay)."""
    first = "upstream" if name == "relay-decision" else "A0"
    path = dataset(out, name, first, args)
    return list(json.loads((path / "dataset.json").read_text())["provenance"]["units"])


if __name__ == "__main__":
    main()
