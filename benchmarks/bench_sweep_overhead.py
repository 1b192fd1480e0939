"""Sweep overhead: wall time of a PBT sweep against the same training run bare.

    .venv/bin/python benchmarks/bench_sweep_overhead.py --data DIR [--epochs 10] [--config FILE]

Both run the same RunConfig for the same epochs on one CPU thread per training run, one
after the other: first `Trainer.run_epoch` in a loop (plus the per-epoch checkpoint `mrlfads
train` writes) on one core, then `mrlfads sweep`'s machinery (local Ray start, Tune, the
trainable, checkpoints and one exploit at the perturbation interval) with the smallest
population PBT accepts, 2 trials of 1 CPU each, side by side on the 2 cores. On an otherwise
idle 2-core machine the sweep's wall time would equal the bare run's with zero overhead.
Ray's start-up is reported separately: it is paid once per sweep, not per trial.

A third arm runs two bare runs at once, one per core, without Ray: the sweep's two trials
minus the machinery. Both it and the sweep pay for two processes sharing caches and memory
bandwidth, so sweep against it is the machinery's own overhead; sweep against one bare run
also counts that sharing (which grew once the compiled CPU loop made steps faster).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def bare(data: str, cfg_file: str | None, epochs: int) -> float:
    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.training.config import RunConfig, load_config_file
    from mrlfads.training.loop import Trainer

    ds = ArrowDataset.open(data)
    cfg = RunConfig.for_dataset(ds.manifest, uri=data, user=load_config_file(cfg_file),
                                overrides={"train.epochs": epochs, "train.threads": 1})
    t0 = time.perf_counter()
    trainer = Trainer(cfg, ds)
    with tempfile.TemporaryDirectory() as tmp:
        while trainer.epoch < epochs:
            trainer.run_epoch()
            trainer.save_checkpoint(os.path.join(tmp, "last.pt"))
    return time.perf_counter() - t0


def bare_pair(data: str, cfg_file: str | None, epochs: int) -> float:
    """Wall time of two bare runs started together in two fresh processes."""
    import multiprocessing

    t0 = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.starmap(bare, [(data, cfg_file, epochs)] * 2)
    return time.perf_counter() - t0


def swept(data: str, cfg_file: str | None, epochs: int) -> tuple[float, float]:
    import ray

    from mrlfads.search_spaces.space import SearchSpace
    from mrlfads.training import sweep
    from mrlfads.training.config import load_config_file

    space = SearchSpace.from_yaml(sweep.DEFAULT_SPACE)
    space = space.with_scheduler(population=2, perturbation_interval=max(1, epochs // 2),
                                 burn_in=0)
    space = replace(space, resources=replace(space.resources, cpu=1, gpu=0))
    with tempfile.TemporaryDirectory() as tmp:
        plan = sweep.plan_sweep(data, space=space, name="overhead", storage=tmp,
                                user_config=load_config_file(cfg_file),
                                run_overrides={"train.epochs": epochs})
        t0 = time.perf_counter()
        sweep.init_ray(None)
        t_ray = time.perf_counter() - t0
        t1 = time.perf_counter()
        sweep.run_sweep(plan, verbose=0)
        t_sweep = time.perf_counter() - t1
    ray.shutdown()
    return t_ray, t_sweep


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--config", default=None)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--arms", nargs="+", default=["bare", "pair", "sweep"],
                   choices=["bare", "pair", "sweep"])
    args = p.parse_args()
    times = {}
    if "bare" in args.arms:
        times["bare"] = bare(args.data, args.config, args.epochs)
        print(f"bare training: {times['bare']:.1f} s for {args.epochs} epochs")
    if "pair" in args.arms:
        times["pair"] = bare_pair(args.data, args.config, args.epochs)
        print(f"two bare runs side by side, no Ray: {times['pair']:.1f} s")
    if "sweep" in args.arms:
        t_ray, t_sweep = swept(args.data, args.config, args.epochs)
        print(f"ray start: {t_ray:.1f} s (once per sweep)")
        print(f"sweep (2 trials side by side): {t_sweep:.1f} s")
        for arm, label in (("bare", "one bare run"), ("pair", "two bare runs side by side")):
            if arm in times:
                print(f"  overhead against {label}: {100 * (t_sweep / times[arm] - 1):.1f}% "
                      f"excluding Ray start, {100 * ((t_sweep + t_ray) / times[arm] - 1):.1f}% "
                      "including it")


if __name__ == "__main__":
    main()
