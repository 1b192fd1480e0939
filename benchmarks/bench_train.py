"""Training speed of MR-LFADS: batched fast path vs the region-by-region oracle.

    .venv/bin/python benchmarks/bench_train.py                 # SPEC size, batch 16 and 64
    .venv/bin/python benchmarks/bench_train.py --smoke          # seconds, tiny sizes

SPEC size: 3 regions x 64 neurons, T=200, tau=10, gaussian, SPEC defaults. One training
step = forward (posterior samples) + loss + backward + AdamW step. Each (impl, batch) runs in
its own subprocess so its peak RSS (ru_maxrss) is its own; the dense fp32 matmul rate and
the model's analytic FLOPs (FlopCounterMode over one step) are measured in that process.
OMP_WAIT_POLICY defaults to PASSIVE: on a shared, oversubscribed CPU OpenMP's spin-waiting
made the model's small matmuls 10-30x slower.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

AUTHORS_TRIALS_PER_S = {16: 3.4, 64: 6.3}


def matmul_gflops(torch, n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def worker(impl: str, batch: int, steps: int, smoke: bool, threads: int | None) -> dict:
    import resource

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from mrlfads.config import LossConfig, ModelConfig, RegionConfig
    from mrlfads.loss import compute_loss
    from mrlfads.model import MRLFADS
    from mrlfads.oracle import oracle_forward

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    n, T = (8, 30) if smoke else (64, 200)
    cfg = ModelConfig(regions=tuple(RegionConfig(f"A{i}", n) for i in range(3)),
                      obs_model="gaussian", **(dict(ic_enc_dim=8, ci_enc_dim=8, con_dim=16,
                                                    ic_dim=8) if smoke else {}))
    model = MRLFADS(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, betas=(0.9, 0.999), weight_decay=0.0)
    heldin = [torch.randn(batch, T, n) for _ in cfg.regions]
    loss_cfg = LossConfig()
    fwds = {"fast": lambda: model(heldin, sample=True),
            "oracle": lambda: oracle_forward(model, heldin, sample=True)}
    if impl == "paired":  # alternate fast/oracle steps: both see the same machine load
        return paired(torch, fwds, model, opt, heldin, loss_cfg, compute_loss, batch, steps)
    fwd = fwds[impl]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step():
        opt.zero_grad(set_to_none=True)
        loss = compute_loss(fwd(), heldin, None, loss_cfg, epoch=300).total
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 200.0)
        opt.step()

    with FlopCounterMode(display=False) as counter:
        step()  # also the warm-up
    flops = counter.get_total_flops()
    gflops_peak = matmul_gflops(torch)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    best, median = min(times), sorted(times)[len(times) // 2]
    return {
        "impl": impl, "batch": batch, "steps": steps, "threads": torch.get_num_threads(),
        "step_s": times, "trials_per_s": batch / median, "trials_per_s_best": batch / best,
        "flops_per_step": flops, "achieved_gflops": flops / median / 1e9,
        "matmul_gflops": gflops_peak, "fraction_of_matmul": flops / median / 1e9 / gflops_peak,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss_before / 1024, "loadavg": os.getloadavg(),
    }


def paired(torch, fwds, model, opt, heldin, loss_cfg, compute_loss, batch, steps) -> dict:
    times = {k: [] for k in fwds}
    for i in range(steps + 1):
        for name, fwd in fwds.items():
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            compute_loss(fwd(), heldin, None, loss_cfg, epoch=300).total.backward()
            opt.step()
            if i:  # the first round is the warm-up
                times[name].append(time.perf_counter() - t)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {"impl": "paired", "batch": batch, "step_s": times,
            "trials_per_s": {k: batch / v for k, v in med.items()},
            "speedup": med["oracle"] / med["fast"], "loadavg": os.getloadavg()}


def machine() -> str:
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return f"{model}, {os.cpu_count()} cores, {mem:.0f} GiB RAM"


def _run_worker(args, mode: str, batch: int) -> dict:
    """One measurement in a fresh process (so peak RSS is per configuration)."""
    cmd = [sys.executable, __file__, "--worker", mode, str(batch), "--steps", str(args.steps)]
    cmd += (["--smoke"] if args.smoke else []) + (["--threads", str(args.threads)] if args.threads else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--impls", nargs="+", default=["fast", "oracle"], choices=["fast", "oracle"])
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, for a quick check")
    ap.add_argument("--paired", action="store_true",
                    help="also time fast and oracle steps alternately in one process")
    ap.add_argument("--paired-only", action="store_true", help="with --paired: only that")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.steps, args.smoke,
                                args.threads)))
        return 0
    print(f"machine: {machine()}; load {os.getloadavg()}; OMP_WAIT_POLICY="
          f"{os.environ['OMP_WAIT_POLICY']}", flush=True)
    results = []
    if args.paired:
        for batch in args.batches:
            res = _run_worker(args, "paired", batch)
            results.append(res)
            print(f"paired batch {batch}: fast {res['trials_per_s']['fast']:.1f} trials/s, "
                  f"oracle {res['trials_per_s']['oracle']:.1f}, speedup {res['speedup']:.1f}x, "
                  f"load {res['loadavg'][0]:.1f}", flush=True)
        args.batches = [] if args.paired_only else args.batches
    for batch in args.batches:
        for impl in args.impls:
            res = _run_worker(args, impl, batch)
            results.append(res)
            print(f"{impl:6s} batch {batch:3d}: {res['trials_per_s']:7.1f} trials/s "
                  f"(best {res['trials_per_s_best']:.1f}), {res['achieved_gflops']:.1f} GFLOP/s "
                  f"= {100 * res['fraction_of_matmul']:.0f}% of matmul "
                  f"{res['matmul_gflops']:.1f}, peak RSS {res['peak_rss_mb']:.0f} MB, "
                  f"load {res['loadavg'][0]:.1f}", flush=True)
    by = {(r["impl"], r["batch"]): r for r in results}
    for batch in args.batches:
        if ("fast", batch) in by and ("oracle", batch) in by:
            speedup = by["fast", batch]["trials_per_s"] / by["oracle", batch]["trials_per_s"]
            ref = AUTHORS_TRIALS_PER_S.get(batch)
            vs = f", {by['fast', batch]['trials_per_s'] / ref:.1f}x authors' {ref}" if ref else ""
            print(f"batch {batch}: fast/oracle {speedup:.1f}x{vs}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"machine": machine(), "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
