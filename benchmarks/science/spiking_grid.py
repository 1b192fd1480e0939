"""Spiking benchmark: every network as Poisson spikes, the defaults and the PBT best
(docs/RESULTS.md, "Spikes").

    .venv/bin/python benchmarks/science/spiking_grid.py --out spiking_runs [--seeds 0 1] \
        [--arms defaults pbt] [--datasets memory-ring ...] [--epochs 100] [--rate-hz 5] \
        [--bin-ms 10] [--trials 480] [--population 4] [--ceilings]

Each network is simulated once (cached under OUT/data) as spikes at ``--rate-hz`` in
``--bin-ms`` bins: 48 units in the largest region, ``--trials`` trials (480; 80% train) of
60 network steps (1.2 s).
``defaults`` trains the default configuration for ``--epochs`` epochs (the ramps stretched
to fit, as `mrlfads train --epochs` does) and scores ``best.pt``'s model: the checkpoint a
user is told to use. ``pbt`` runs search_spaces/pbt.yaml (a synchronous population,
perturbation every 10 epochs after the ramps) and scores the sweep's best trial. Scores on
the validation trials: both effectomes (cut, the default, and message RMS) against the
true communication matrix, message R^2, inferred-input R^2 and co-bps; beside them, what
the data allows: the co-bps of the true rates and the cross-validated R^2 of a linear
decoder from the spikes around each message to the message; and the co-bps of smoothed
held-in spikes (mrlfads/baselines.py), which a model must beat. One JSON line per run goes
to OUT/results.jsonl; the table is printed at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

EPOCHS = 100  # a run's default length: --epochs
DATASETS = {  # name -> (kind, network seed)
    "memory-ring": ("memory-ring", 0), "relay-decision": ("relay-decision", 0),
    "random-0": ("random", 0), "random-1": ("random", 1), "random-2": ("random", 2),
}
UNITS, TRIALS, STEPS = 48, 480, 60
COLUMNS = ["effectome_cut_cosine", "effectome_cut_separation", "effectome_cut_effect_cosine",
           "effectome_cosine",
           "effectome_separation", "message_r2", "input_r2", "co_bps"]


def dataset(out: Path, name: str, rate_hz: float, bin_ms: float, trials: int = TRIALS) -> Path:
    from mrlfads.data_loaders.simulate import simulate

    size = "" if trials == TRIALS else f"-{trials}tr"
    path = out / "data" / f"{name}-{rate_hz:g}hz-{bin_ms:g}ms{size}"
    if not (path / "dataset.json").exists():
        kind, seed = DATASETS[name]
        simulate(kind, out=str(path), seed=seed, obs="poisson", rate_hz=rate_hz, bin_ms=bin_ms,
                 n_units=UNITS, trials=trials, n_bins=round(STEPS * 20 / bin_ms), overwrite=True)
    return path


def ceilings(path: Path) -> dict[str, float]:
    """What the spikes allow: co-bps of the true rates, a ridge decoder's R^2 from the
    spikes to each true message (``decoder_r2``), per pathway and averaged, and the cosine
    with the true matrix of the network's own cut effectome (``network_cut_cosine``: what
    a perfect fit's cut effectome would score)."""
    from mrlfads import metrics as M
    from mrlfads.data_loaders import schema
    from mrlfads.data_loaders.reader import ArrowDataset

    ds = ArrowDataset.open(path)
    m, tau = ds.manifest, ds.manifest.ic_enc_seq_len
    rate_cols = {r.name: schema.truth_rates_col(r.name) for r in m.regions}
    a = ds.arrays("valid", [f"x/{r.name}" for r in m.regions] + list(rate_cols.values()))
    spikes = np.concatenate([a[f"x/{r.name}"][:, tau:, r.n_heldin:] for r in m.regions], -1)
    rates = np.concatenate([a[rate_cols[r.name]][:, tau:, r.n_heldin:] for r in m.regions], -1)
    out = {"true_rates_co_bps": float(M.bits_per_spike(spikes, np.log(rates)))}
    out["smoothing_co_bps"] = smoothing_co_bps(ds)
    if m.cut_effects is not None and m.comm_matrix is not None:
        out["network_cut_cosine"] = float(M.effectome_cosine(m.cut_effects, m.comm_matrix))
    r2 = decoder_r2(path)
    out["decoder_message_r2"] = float(np.mean(list(r2.values()))) if r2 else float("nan")
    out.update({f"decoder_message_r2/{k}": v for k, v in r2.items()})
    return out


def smoothing_co_bps(ds) -> float:
    """The spike-smoothing baseline's held-out co-bps on the validation trials, fitted on the
    training trials (training/smoothing.py: what `mrlfads infer` reports beside a model);
    NaN where it does not apply (e.g. no training split)."""
    from mrlfads.training.smoothing import KEY, smoothing_scores

    return float(smoothing_scores(ds, ["valid"])[1].get(f"valid/{KEY}", np.nan))


def decoder_r2(path: Path) -> dict[str, float]:
    """Per pathway 'src->dst': the R^2 of a ridge decoder from the source's and target's
    spikes at lags -1..+5 bins to the true message, fitted on the first half of the
    validation trials and scored on the second (variance-weighted over its dimensions)."""
    from mrlfads.data_loaders.reader import ArrowDataset

    ds = ArrowDataset.open(path)
    m, tau = ds.manifest, ds.manifest.ic_enc_seq_len
    msgs = sorted(c for c in m.truth if c.startswith("truth/messages/"))
    a = ds.arrays("valid", [f"x/{r.name}" for r in m.regions] + msgs)
    out = {}
    for col in msgs:
        pathway = col.rsplit("/", 1)[1]
        src, dst = pathway.split("->")
        feats = [np.roll(a[f"x/{r}"], lag, axis=1) for lag in range(-5, 2) for r in (src, dst)]
        X = np.concatenate(feats, -1)[:, tau:-6]  # (trials, T', features)
        out[pathway] = _ridge_r2(X, a[col][:, tau:-6])
    return out


def _ridge_r2(X: np.ndarray, Y: np.ndarray, lam: float = 10.0) -> float:
    """Fit Y ~ X by ridge regression on the first half of the trials, variance-weighted R^2
    on the second half; X (trials, T, dx), Y (trials, T, dy)."""
    half = X.shape[0] // 2
    flat = [A.reshape(-1, A.shape[-1]) for A in (X[:half], X[half:], Y[:half], Y[half:])]
    Xf, Xt, Yf, Yt = [np.hstack([A, np.ones((len(A), 1))]) if i < 2 else A
                      for i, A in enumerate(flat)]
    W = np.linalg.solve(Xf.T @ Xf + lam * np.eye(Xf.shape[1]), Xf.T @ Yf)
    return float(1 - ((Yt - Xt @ W) ** 2).sum() / ((Yt - Yt.mean(0)) ** 2).sum())


def score(checkpoint: str, path: Path) -> dict[str, float]:
    """The metrics of a saved model on the validation trials, as training logs them."""
    import torch

    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.training.checkpoint import load_model
    from mrlfads.training.config import RunConfig
    from mrlfads.training.data import load_split
    from mrlfads.training.evaluate import collect_outputs, cut_effectome_metrics
    from mrlfads.training.evaluate import score as score_split

    model, run, _ = load_model(checkpoint)
    cfg = RunConfig.from_dict(run)
    ds = ArrowDataset.open(path)
    valid = load_split(ds, "valid", torch.device("cpu"), with_truth=True)
    outputs, _ = collect_outputs(model, valid, cfg, epoch=cfg.train.epochs)
    metrics = score_split(outputs, valid, cfg.model, ds.manifest.comm_matrix)
    metrics.update(cut_effectome_metrics(model, valid, ds.manifest.comm_matrix,
                                         cut_effects=ds.manifest.cut_effects,
                                         max_trials=valid.n_trials))
    return {c: float(metrics.get(f"valid/{c}", np.nan)) for c in COLUMNS}


def run_defaults(path: Path, seed: int, epochs: int, run_dir: Path,
                 overrides: dict | None = None) -> dict[str, float]:
    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.training.config import RunConfig
    from mrlfads.training.fit import BEST, fit
    from mrlfads.training.loop import Trainer

    ds = ArrowDataset.open(path)
    cfg = RunConfig.for_dataset(ds.manifest, uri=str(path), overrides={
        "train.seed": seed, "train.epochs": epochs, "train.threads": 1, **(overrides or {})})
    fit(Trainer(cfg, ds), run_dir, progress=False)
    return score(str(run_dir / BEST), path)


def run_pbt(path: Path, seed: int, epochs: int, population: int, out: Path) -> dict:
    from dataclasses import replace

    from mrlfads.search_spaces.space import SearchSpace
    from mrlfads.training import sweep

    space = SearchSpace.from_yaml(sweep.DEFAULT_SPACE)
    space = replace(space.with_scheduler(population=population, perturbation_interval=10,
                                         synch=True, patience=100), seed=seed)
    space = replace(space, resources=replace(space.resources, cpu=2 / population))
    plan = sweep.plan_sweep(str(path), space=space, name=f"pbt-{path.name}-s{seed}",
                            storage=str(out / "sweeps"),
                            run_overrides={"train.epochs": epochs, "train.seed": seed})
    summary = sweep.run_sweep(plan, verbose=0)
    result = score(summary.checkpoint, path)
    return {**result, "hparams": summary.hparams, "exploits": summary.exploits}


def run_name(data: str, seed: int, sets: list[str], epochs: int = EPOCHS) -> str:
    """A run directory's name: the dataset, the seed, the epochs where they are not the
    default (so a longer run never overwrites a shorter one's folder) and the ``--set``
    items, or, where those would pass the file-name limit (255 bytes), a digest of the
    items instead."""
    import hashlib

    head = "-".join([data, f"s{seed}", *([f"e{epochs}"] if epochs != EPOCHS else [])])
    name = "-".join([head, *sets])
    if len(name.encode()) <= 200:
        return name
    digest = hashlib.sha1("\0".join(sets).encode()).hexdigest()[:12]
    return f"{head}-set-{digest}"


def table(rows: list[dict]) -> str:
    head = ("| network | arm | runs | " + " | ".join(COLUMNS)
            + " | smoothing co-bps | decoder R^2 | true co-bps | network's cut cosine |")
    lines = [head, "|" + "---|" * (len(COLUMNS) + 7)]
    for name in DATASETS:
        for arm in dict.fromkeys(r["arm"] for r in rows):
            sel = [r for r in rows if r["dataset"] == name and r["arm"] == arm]
            if not sel:
                continue
            cells = []
            for c in COLUMNS:
                v = np.array([r["metrics"].get(c, np.nan) for r in sel], dtype=float)
                if not np.isfinite(v).any():
                    cells.append("n/a")
                elif len(v) == 1:  # one run: no spread to show
                    cells.append(f"{v[0]:.3f}")
                else:
                    cells.append(f"{np.nanmean(v):.3f} ± {np.nanstd(v):.3f}")
            ceil = sel[0]["ceilings"]
            smoothing = ceil.get("smoothing_co_bps", float("nan"))  # absent from older rows
            network = ceil.get("network_cut_cosine", float("nan"))  # absent from older rows
            bounds = (f" | {smoothing:.3f} | {ceil['decoder_message_r2']:.3f}"
                      f" | {ceil['true_rates_co_bps']:.3f} | {network:.3f} |")
            lines.append(f"| {name} | {arm} | {len(sel)} | " + " | ".join(cells) + bounds)
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="spiking_runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--arms", nargs="+", default=["defaults"], choices=["defaults", "pbt"])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--rate-hz", type=float, default=5.0)
    p.add_argument("--bin-ms", type=float, default=10.0)
    p.add_argument("--trials", type=int, default=TRIALS)
    p.add_argument("--population", type=int, default=4)
    p.add_argument("--ceilings", action="store_true",
                   help="print what each dataset allows (true-rate and smoothing co-bps, the "
                        "message decoder's R^2) as one JSON line per dataset, and fit nothing")
    p.add_argument("--set", nargs="*", default=[], metavar="PATH=VALUE",
                   help="config overrides for the defaults arm (YAML 1.2 values), recorded as "
                        "that arm's variant: the row's arm becomes 'defaults PATH=VALUE ...'")
    args = p.parse_args()
    from mrlfads.training.yaml12 import parse_sets

    overrides = parse_sets(args.set)
    variant = " ".join(args.set)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    rows = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
    # a run is keyed by everything that makes it another run (rows of old files lack the
    # rate, bin and trials: they were all 5 Hz in 10 ms bins, 480 trials)
    def key(r):
        return (r["dataset"], r["arm"], r["seed"], r["epochs"], r.get("rate_hz", 5.0),
                r.get("bin_ms", 10.0), r.get("trials", TRIALS))

    if args.ceilings:
        for name in args.datasets:
            path = dataset(out, name, args.rate_hz, args.bin_ms, args.trials)
            print(json.dumps({"dataset": name, "trials": args.trials, "ceilings": ceilings(path)}),
                  flush=True)
        return
    seen = {key(r) for r in rows}
    setting = (args.epochs, args.rate_hz, args.bin_ms, args.trials)
    arm_name = {"defaults": f"defaults {variant}".strip(), "pbt": "pbt"}
    for name in args.datasets:
        path = dataset(out, name, args.rate_hz, args.bin_ms, args.trials)
        ceil = ceilings(path)
        for arm in args.arms:
            for seed in args.seeds:
                if (name, arm_name[arm], seed, *setting) in seen:
                    continue
                t0 = time.time()
                if arm == "defaults":
                    run_dir = out / "runs" / run_name(path.name, seed, args.set, args.epochs)
                    metrics = run_defaults(path, seed, args.epochs, run_dir, overrides)
                else:
                    metrics = run_pbt(path, seed, args.epochs, args.population, out)
                row = {"dataset": name, "arm": arm_name[arm], "seed": seed, "epochs": args.epochs,
                       "rate_hz": args.rate_hz, "bin_ms": args.bin_ms, "trials": args.trials,
                       "seconds": round(time.time() - t0), "metrics": metrics, "ceilings": ceil}
                rows.append(row)
                with open(results, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    print(table([r for r in rows if key(r)[3:] == setting]))


if __name__ == "__main__":
    main()
