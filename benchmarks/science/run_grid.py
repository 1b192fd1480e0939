"""Science grid: MR-LFADS and its ablations on the simulated benchmark (docs/RESULTS.md).

    .venv/bin/python benchmarks/science/run_grid.py --out science_runs [--seeds 0 1] \
        [--datasets memory-ring relay-decision random-0 random-1 random-2] [--epochs 30]

For every dataset, variant and seed it simulates (once per dataset, cached), trains with
benchmarks/science/reduced_ring.yaml plus the variant's overrides, and records the last
epoch's validation metrics in OUT/results.jsonl (one line per run, appended as runs finish,
so an interrupted grid keeps what it did; ``cut`` holds each pathway's cut effect). Then it
prints a markdown table of mean +- std.
``--datasets memory-ring-1280-trials memory-ring-64-units`` runs the size study; ``--set
loss.kl_co_scale=4 ...`` adds config overrides to every run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# OpenMP's wait policy is left at its default: one training process, 2 threads, idle cores
# (docs/PERFORMANCE.md, "Threads and OMP_WAIT_POLICY").
HERE = Path(__file__).resolve().parent
CONFIG = HERE / "reduced_ring.yaml"
VARIANTS = {
    "mr-lfads (rates)": {},
    "messages from factors": {"model.message_source": "factors"},
    "messages from generator": {"model.message_source": "generator"},
    "no inferred inputs": {"model.inferred_inputs": False},
}
DATASETS = {  # name -> (kind, seed, simulate kwargs)
    "memory-ring": ("memory-ring", 0, {"trials": 320, "n_bins": 60, "n_units": 16}),
    "relay-decision": ("relay-decision", 0, {"trials": 320, "n_bins": 60, "n_units": 16}),
    "random-0": ("random", 0, {"trials": 320, "n_bins": 60, "n_units": 16}),
    "random-1": ("random", 1, {"trials": 320, "n_bins": 60, "n_units": 16}),
    "random-2": ("random", 2, {"trials": 320, "n_bins": 60, "n_units": 16}),
    # the size study (RESULTS.md, "The gap"): 4x the trials, or 4x the units per region
    "memory-ring-1280-trials": ("memory-ring", 0, {"trials": 1280, "n_bins": 60, "n_units": 16}),
    "memory-ring-64-units": ("memory-ring", 0, {"trials": 320, "n_bins": 60, "n_units": 64}),
}
GRID = ("memory-ring", "relay-decision", "random-0", "random-1", "random-2")  # the default
COLUMNS = ["valid/effectome_cut_cosine", "valid/effectome_cut_separation",
           "valid/effectome_cut_effect_cosine", "valid/effectome_cosine", "valid/effectome_separation", "valid/message_r2",
           "valid/input_r2", "valid/r2_mean"]


def dataset_path(out: Path, name: str) -> Path:
    from mrlfads.data_loaders.simulate import simulate

    path = out / "data" / name
    if not (path / "dataset.json").exists():
        kind, seed, kwargs = DATASETS[name]
        simulate(kind, out=str(path), seed=seed, obs="gaussian", overwrite=True, **kwargs)
    return path


def train_once(data: Path, overrides: dict, seed: int, epochs: int) -> dict[str, float]:
    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.training.config import RunConfig, load_config_file
    from mrlfads.training.loop import Trainer

    ds = ArrowDataset.open(data)
    cfg = RunConfig.for_dataset(ds.manifest, uri=str(data), user=load_config_file(CONFIG),
                                overrides={**overrides, "train.seed": seed, "train.epochs": epochs})
    trainer = Trainer(cfg, ds)
    metrics: dict[str, float] = {}
    while trainer.epoch < epochs:
        metrics = trainer.run_epoch()
    r2s = [v for k, v in metrics.items() if k.startswith("valid/r2/")]
    metrics["valid/r2_mean"] = sum(r2s) / len(r2s)
    return metrics


def table(rows: list[dict]) -> str:
    import numpy as np

    lines = ["| dataset | variant | runs | " + " | ".join(c.split("/", 1)[1] for c in COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(COLUMNS)]
    keys = sorted({(r["dataset"], r["variant"]) for r in rows},
                  key=lambda k: (list(DATASETS).index(k[0]),
                                 list(VARIANTS).index(k[1].split(" + ")[0]), k[1]))
    for ds, var in keys:
        sel = [r for r in rows if r["dataset"] == ds and r["variant"] == var]
        cells = []
        for c in COLUMNS:
            vals = np.array([r["metrics"].get(c, np.nan) for r in sel], dtype=float)
            cells.append(f"{np.nanmean(vals):.3f} ± {np.nanstd(vals):.3f}" if np.isfinite(vals).any() else "n/a")
        lines.append(f"| {ds} | {var} | {len(sel)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="science_runs")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--datasets", nargs="+", default=list(GRID), choices=list(DATASETS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="extra config overrides for every run, e.g. loss.kl_co_scale=4 (YAML 1.2 "
                        "values); the variant's label records them")
    args = p.parse_args()
    from mrlfads.config_utils import ConfigError
    from mrlfads.training.yaml12 import parse_sets

    try:  # YAML 1.2 values, as `mrlfads train --set` reads them
        extra = parse_sets(args.set)
    except ConfigError as exc:
        p.error(str(exc))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = [json.loads(x) for x in results.read_text().splitlines()] if results.exists() else []
    seen = {(r["dataset"], r["variant"], r["seed"], r["epochs"]) for r in done}
    for name in args.datasets:
        data = dataset_path(out, name)
        for base in args.variants:
            variant = " + ".join([base, *args.set])
            for seed in args.seeds:
                if (name, variant, seed, args.epochs) in seen:
                    continue
                t0 = time.time()
                metrics = train_once(data, {**VARIANTS[base], **extra}, seed, args.epochs)
                row = {"dataset": name, "variant": variant, "seed": seed, "epochs": args.epochs,
                       "seconds": round(time.time() - t0, 1),
                       "metrics": {k: metrics.get(k) for k in COLUMNS},
                       "cut": {k.rsplit("/", 1)[1]: v for k, v in metrics.items()
                               if "effectome_cut/" in k}}
                done.append(row)
                with open(results, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    print(table([r for r in done if r["epochs"] == args.epochs]))


if __name__ == "__main__":
    main()
