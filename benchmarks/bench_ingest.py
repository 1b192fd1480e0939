"""Speed and memory of `mrlfads ingest` on a large synthetic NWB session.

    .venv/bin/python benchmarks/bench_ingest.py                  # 400 units x 1000 trials
    .venv/bin/python benchmarks/bench_ingest.py --smoke-test     # seconds, for a quick check

Reports ingest units/s and spikes/s (file already written; time = reading + binning +
writing the Arrow dataset), peak RSS of a fresh process doing only the ingest, and, side by
side, the binning kernel against a per-trial np.histogram loop. Results: docs/PERFORMANCE.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CHILD = """
import json, sys, time

def hwm_mb():  # peak RSS of this process image; unlike ru_maxrss it is not inherited via fork
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

t = time.perf_counter()
import pynwb  # imported before timing: ~2-5 s of one-off import is not ingest work
from mrlfads.data_loaders.nwb import IngestOptions, ingest
base = hwm_mb()
t_import = time.perf_counter() - t
o = IngestOptions(bin_ms=20, align="go_cue_time", window=(-0.5, 0.5), perturb_column="photostim",
                  heldout=0.2)
t = time.perf_counter()
m = ingest([sys.argv[1]], sys.argv[2], o, overwrite=True)
dt = time.perf_counter() - t
peak = hwm_mb()
print(json.dumps(dict(seconds=dt, import_s=t_import, base_rss_mb=base,
                      peak_rss_mb=peak, n_bins=m.n_bins, splits=m.splits)))
"""


def spike_count(path: str) -> int:
    import h5py

    with h5py.File(path, "r") as f:
        return int(f["units/spike_times"].shape[0])


def bench_kernel(n_spikes: int, n_trials: int, n_bins: int, repeats: int = 3) -> dict:
    """One unit's binning: flat searchsorted + bincount vs a per-trial histogram loop."""
    from mrlfads.data_loaders.nwb.binning import bin_spikes, window_edges

    rng = np.random.default_rng(0)
    total = n_trials * 2.5
    spikes = np.sort(rng.uniform(0, total, n_spikes))
    edges = window_edges(np.arange(n_trials) * 2.5 + 0.5, n_bins, 0.02)

    def loop():
        return np.stack([np.histogram(spikes[np.searchsorted(spikes, e[0]):np.searchsorted(spikes, e[-1])], e)[0]
                         for e in edges])

    out = {}
    for name, fn in (("searchsorted", lambda: bin_spikes(spikes, edges)), ("histogram_loop", loop)):
        best = min(_timed(fn) for _ in range(repeats))
        out[name] = best
    assert np.array_equal(bin_spikes(spikes, edges), loop())
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--units", type=int, default=400)
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--rate-hz", type=float, default=10.0)
    ap.add_argument("--workdir", default=None, help="keep the NWB file here between runs")
    ap.add_argument("--smoke-test", action="store_true", help="40 units x 100 trials")
    args = ap.parse_args()
    if args.smoke_test:
        args.units, args.trials = 40, 100
    from mrlfads.data_loaders.nwb.testing import synthetic_session

    work = args.workdir or tempfile.mkdtemp(prefix="bench_ingest_")
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, f"synthetic_{args.units}u_{args.trials}t.nwb")
    if not os.path.exists(path):
        t = time.perf_counter()
        synthetic_session(path, n_units=args.units, n_trials=args.trials, rate_hz=args.rate_hz,
                          regions=("ALM", "STR", "THAL", "M1"))
        print(f"wrote {path} in {time.perf_counter() - t:.1f} s")
    n_spikes = spike_count(path)
    env = {**os.environ, "PYTHONPATH": ROOT}
    res = subprocess.run([sys.executable, "-c", CHILD, path, os.path.join(work, "ds")],
                         capture_output=True, text=True, env=env, check=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    out_mb = args.trials * r["n_bins"] * args.units * 4 / 2**20
    report = {
        "units": args.units, "trials": args.trials, "spikes": n_spikes,
        "nwb_file_mb": round(os.path.getsize(path) / 2**20, 1),
        "spike_times_mb": round(n_spikes * 8 / 2**20, 1), "output_x_mb": round(out_mb, 1),
        "ingest_s": round(r["seconds"], 2),
        "units_per_s": round(args.units / r["seconds"], 1),
        "spikes_per_s": round(n_spikes / r["seconds"]),
        "rss_after_import_mb": round(r["base_rss_mb"], 1),
        "peak_rss_mb": round(r["peak_rss_mb"], 1), "splits": r["splits"],
        "kernel_one_unit_s": {k: round(v, 5) for k, v in
                              bench_kernel(n_spikes // args.units, args.trials, r["n_bins"]).items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
