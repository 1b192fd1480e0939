"""`mrlfads demo`: the whole path a user takes, end to end, on the embedded defaults.

simulate a memory ring -> write it as an NWB file -> ingest the NWB file -> PBT sweep on a
local Ray, tracked in the SQLite MLflow store under the working directory -> promote the
best trial -> infer and perturb with the registered model. Each step is the same
subcommand a user runs, so the path real users take is the path exercised every day.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

NAME = "demo"
HELP = "simulate -> NWB -> ingest -> PBT sweep -> promote -> infer -> perturb, on this machine"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default="demo_work", help="where data, sweeps and outputs go")
    p.add_argument("--name", help="sweep name (default: demo-TIMESTAMP)")
    p.add_argument("--trials", type=int, default=192, help="simulated trials (default 192)")


def _step(title: str, argv: list[str]) -> None:
    from mrlfads.training.cli import main

    print(f"\n=== {title}\n$ mrlfads {' '.join(argv)}", flush=True)
    code = main(argv)
    if code != 0:
        raise SystemExit(f"demo step failed ({title}): exit code {code}")


def run(args: argparse.Namespace) -> int:
    from mrlfads.data_loaders.nwb.export import dataset_to_nwb
    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.data_loaders.simulate import preset

    work = Path(args.workdir)
    for sub in ("sim", "data", "infer", "session.nwb"):
        target = work / sub
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    work.mkdir(parents=True, exist_ok=True)
    name = args.name or f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.time()

    # a quarter as many trials again with A0's messages silenced: the recorded perturbation
    # that `perturb` is compared with at the end
    smoke = preset("memory-ring", smoke_test=True)
    window = f"{smoke.ic_enc_seq_len + 2}:{smoke.n_bins}"
    _step("simulate a 3-region memory ring (Poisson spikes), with A0 silenced in some trials",
          ["simulate", "memory-ring", "--smoke-test", "--obs", "poisson", "--trials",
           str(args.trials), "--silence", "A0", "--window", window, "--out", str(work / "sim")])
    sim = ArrowDataset.open(work / "sim").manifest
    nwb = work / "session.nwb"
    print(f"\n=== write the simulation as an NWB file\n{nwb}", flush=True)
    dataset_to_nwb(str(work / "sim"), str(nwb))
    _step("ingest the NWB file into Arrow shards",
          ["ingest", str(nwb), "--out", str(work / "data"),
           "--bin-ms", f"{sim.bin_width_s * 1000:g}", "--ic-enc-seq-len", str(sim.ic_enc_seq_len),
           "--heldout-column", "heldout", "--perturb-column", "perturbed"])
    _step("population-based training on a local Ray, tracked in MLflow",
          ["sweep", "--data", str(work / "data"), "--name", name, "--smoke-test",
           "--storage", str((work / "sweeps").resolve())])
    _step("promote the best trial to the model registry", ["promote", "--sweep", name])
    model = f"models:/mrlfads-{name}@champion"
    _step("infer with the registered model",
          ["infer", "--model", model, "--data", str(work / "data"), "--out", str(work / "infer")])
    _step("silence A0 in silico, and compare with the trials where it was silenced",
          ["perturb", "--model", model, "--data", str(work / "data"), "--silence", "A0",
           "--window", window])
    print(f"\ndemo finished in {time.time() - started:.0f} s. Compare the trials in the MLflow UI "
          f"with `mrlfads ui` (experiment {name!r}); outputs are in {work}/.")
    return 0
