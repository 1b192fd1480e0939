"""PBT against hand-set defaults on the reduced memory ring (docs/RESULTS.md).

    .venv/bin/python benchmarks/science/pbt_vs_defaults.py --data DIR [--epochs 60] \
        [--population 8] [--out science_runs/pbt]

Both arms use benchmarks/science/reduced_ring.yaml and the same epochs. Defaults: one run
at the config's hyperparameters (the default KL/L2 scales, docs/MODEL.md). PBT: search_spaces/
pbt.yaml with a synchronous population (every member on the 2 cores at once, 0.25 CPU each),
perturbation every 5 epochs after the KL/L2 ramps. Reports, for the default run and the
best PBT trial (ranked by its smoothed held-out loss, as a user would rank), the held-out
loss, effectome cosine and message R^2 at the last epoch.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# the grid's config and training loop, so "defaults" here is a grid run with no overrides
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_grid import CONFIG, train_once

KEYS = ["valid/heldout_loss", "objective", "valid/effectome_cosine", "valid/message_r2",
        "valid/input_r2"]


def defaults(data: str, epochs: int) -> dict[str, float]:
    """One run at the config's own hyperparameters (train.seed 0, the config default)."""
    metrics = train_once(Path(data), {}, seed=0, epochs=epochs)
    return {k: metrics.get(k) for k in KEYS}


def pbt(data: str, epochs: int, population: int, out: Path) -> dict:
    from mrlfads.search_spaces.space import SearchSpace
    from mrlfads.training import sweep
    from mrlfads.training.config import load_config_file

    space = SearchSpace.from_yaml(sweep.DEFAULT_SPACE)
    space = space.with_scheduler(population=population, perturbation_interval=5, synch=True,
                                 patience=100)
    space = replace(space, resources=replace(space.resources, cpu=0.25))
    plan = sweep.plan_sweep(data, space=space, name=f"pbt-{int(time.time())}", storage=str(out),
                            user_config=load_config_file(CONFIG),
                            run_overrides={"train.epochs": epochs})
    summary = sweep.run_sweep(plan, verbose=0)
    return {"best": {k: summary.best_metrics.get(k) for k in KEYS}, "hparams": summary.hparams,
            "exploits": summary.exploits, "trials": summary.trials}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--population", type=int, default=8)
    p.add_argument("--out", default="science_runs/pbt")
    args = p.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    result = {"defaults": defaults(args.data, args.epochs)}
    result["defaults_seconds"] = round(time.time() - t0, 1)
    t1 = time.time()
    result["pbt"] = pbt(args.data, args.epochs, args.population, out)
    result["pbt_seconds"] = round(time.time() - t1, 1)
    (out / "pbt_vs_defaults.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
