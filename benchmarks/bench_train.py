"""Training speed of MR-LFADS: batched fast path vs the region-by-region oracle.

    .venv/bin/python benchmarks/bench_train.py                 # the paper's size (docs/MODEL.md, "Defaults"), batch 16 and 64
    .venv/bin/python benchmarks/bench_train.py --impls fast python oracle
    .venv/bin/python benchmarks/bench_train.py --smoke          # seconds, tiny sizes
    python benchmarks/bench_train.py --device cuda --modes eager amp graph compile
    python benchmarks/bench_train.py --device cuda --pack 1 2 4 8   # trials per GPU

Impls: fast (the batched model; on a CPU its time loop is the compiled one,
mrlfads/native), python (the batched model with the Python loop), oracle (region by region).
Modes: eager; amp (CUDA: bfloat16 autocast); graph (CUDA: the whole step, forward + loss +
backward + clip + AdamW, captured once as a CUDA graph and replayed); compile
(torch.compile of the model's forward, default inductor). For fast and python, eager, amp
and graph time `mrlfads train`'s own step object (training/step.py: batch buffers,
hyperparameters in tensors, CUDA graphs); oracle and compile time a plain step. ``--pack N`` starts N processes
that train at once on the one device, each its own model, the way Ray packs fractional-GPU
trials, and reports the sum of their trials/s over a common time window.

Default size: 3 regions x 64 neurons, T=200, tau=10, gaussian, docs/MODEL.md defaults. One training
step = forward (posterior samples) + loss + backward + AdamW step. Each (impl, batch) runs in
its own subprocess so its peak RSS (ru_maxrss) is its own; the dense fp32 matmul rate and
the model's analytic FLOPs (FlopCounterMode over one step) are measured in that process.
OMP_WAIT_POLICY is left as the environment has it (`mrlfads train` leaves OpenMP's default):
set OMP_WAIT_POLICY=PASSIVE to measure what a sweep's trials get on shared cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from machine_info import describe

AUTHORS_TRIALS_PER_S = {16: 3.4, 64: 6.3}


def matmul_gflops(torch, n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def _sync(torch, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_gflops_on(torch, device: str) -> float:
    """Dense fp32 matmul rate (TF32 off, torch's default) on ``device``."""
    if not device.startswith("cuda"):
        return matmul_gflops(torch)
    n, reps = 8192, 10
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def capture_graph(torch, body, opt, error_mode: str = "global"):
    """``body`` (one step without zero_grad) as a CUDA graph, PyTorch's "whole network
    capture": warm up on a side stream, capture once with the gradients unset; each step
    is then one ``graph.replay()``."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            body()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(graph, capture_error_mode=error_mode):
        body()
    return graph


def build_step(torch, impl: str, batch: int, smoke: bool, device: str, mode: str):
    """(step function, model, optimiser): one training step at the chosen size, impl, mode."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from mrlfads.config import LossConfig, ModelConfig, RegionConfig
    from mrlfads.loss import compute_loss
    from mrlfads.model import MRLFADS
    from mrlfads.oracle import oracle_forward

    torch.manual_seed(0)
    n, T = (8, 30) if smoke else (64, 200)
    cfg = ModelConfig(regions=tuple(RegionConfig(f"A{i}", n) for i in range(3)),
                      obs_model="gaussian", **(dict(ic_enc_dim=8, ci_enc_dim=8, con_dim=16,
                                                    ic_dim=8) if smoke else {}))
    model = MRLFADS(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, betas=(0.9, 0.999), weight_decay=0.0,
                            capturable=(mode == "graph"))
    heldin = [torch.randn(batch, T, n, device=device) for _ in cfg.regions]
    loss_cfg = LossConfig()
    if impl == "python":  # the batched path with the Python loop instead of the compiled one
        from mrlfads import loop_ops

        loop_ops.USE_NATIVE = False
    if impl != "oracle" and mode in ("eager", "amp", "graph"):
        return real_step(torch, cfg, model, heldin, device, mode)
    forward = (lambda: oracle_forward(model, heldin, sample=True)) if impl == "oracle" else (
        lambda: model(heldin, sample=True))
    if mode == "compile":
        compiled = torch.compile(model)
        forward = lambda: compiled(heldin, sample=True)
    amp = mode == "amp" and device.startswith("cuda")

    def body():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            loss = compute_loss(forward(), heldin, None, loss_cfg, epoch=300).total
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 200.0)
        opt.step()

    def step():
        opt.zero_grad(set_to_none=True)
        body()

    if mode != "graph":
        return step, model, opt
    graph = capture_graph(torch, body, opt)

    def replay():
        graph.replay()

    # the graph reads and writes the memory of these: keep them alive as long as the step
    replay.keep_alive = (graph, model, opt, heldin, body)
    return replay, model, opt


def real_step(torch, model_cfg, model, heldin, device: str, mode: str):
    """`mrlfads train`'s own step (training/step.py): eager, amp, or captured as a CUDA graph
    (after its eager warm-up steps) and replayed; the default loss and optimiser settings,
    every ramp at full weight."""
    import numpy as np

    from mrlfads.training.config import RunConfig, TrainConfig
    from mrlfads.training.data import SplitTensors
    from mrlfads.training.step import WARMUP_STEPS, TrainStep

    cfg = RunConfig(model=model_cfg, train=TrainConfig(device=device, amp=mode == "amp",
                                                       cuda_graph=mode == "graph"))
    t = cfg.train
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps,
                            weight_decay=t.weight_decay, capturable=mode == "graph")
    step = TrainStep(model, opt, cfg, torch.device(device), graph=mode == "graph")
    step.set_epoch(10_000)
    B = heldin[0].shape[0]
    data = SplitTensors("train", list(heldin), [x[..., :0] for x in heldin], None,
                        np.arange(B))
    idx = torch.arange(B, device=device)

    def run():
        step.run(data, idx, None)

    for _ in range(WARMUP_STEPS + 1 if mode == "graph" else 0):  # the last one captures
        run()
    run.keep_alive = step
    return run, model, opt


def worker(impl: str, batch: int, steps: int, smoke: bool, threads: int | None,
           device: str = "cpu", mode: str = "eager", start_at: float | None = None,
           duration: float | None = None) -> dict:
    import resource

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    if threads:
        torch.set_num_threads(threads)
    cuda = device.startswith("cuda")
    t_build = time.perf_counter()
    step = build_step(torch, impl, batch, smoke, device, mode)[0]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode in ("eager", "amp"):  # the loop operators report their FLOPs to the counter
        with FlopCounterMode(display=False) as counter:
            step()  # also the warm-up
        flops = counter.get_total_flops()
    else:  # graphs and compiled code hide their ops from the counter: count one eager step
        step()
        flop_step = build_step(torch, impl, batch, smoke, device, "eager")[0]
        with FlopCounterMode(display=False) as counter:
            flop_step()
        flops = counter.get_total_flops()
        del flop_step  # its model must not count in this mode's memory
    for _ in range(1 if start_at is None else 5):  # caches and allocator settle
        step()
    _sync(torch, device)
    warmup_s = time.perf_counter() - t_build
    gflops_peak = matmul_gflops_on(torch, device) if start_at is None else float("nan")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    if start_at is not None:  # packing: every process times the same wall-clock window
        while time.time() < start_at:
            time.sleep(0.01)
        end = start_at + duration
        while time.time() < end:
            t = time.perf_counter()
            step()
            _sync(torch, device)
            times.append(time.perf_counter() - t)
    else:
        for _ in range(steps):
            t = time.perf_counter()
            step()
            _sync(torch, device)
            times.append(time.perf_counter() - t)
    best, median = min(times), sorted(times)[len(times) // 2]
    window = sum(times)
    return {
        "impl": impl, "batch": batch, "device": device, "mode": mode, "steps": len(times),
        "threads": torch.get_num_threads(), "warmup_s": warmup_s,
        "step_s": times if len(times) <= 20 else [median],
        "trials_per_s": batch / median, "trials_per_s_best": batch / best,
        "trials_per_s_window": batch * len(times) / window,
        "flops_per_step": flops, "achieved_gflops": flops / median / 1e9,
        "matmul_gflops": gflops_peak, "fraction_of_matmul": flops / median / 1e9 / gflops_peak,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": rss_before / 1024, "loadavg": os.getloadavg(),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None,
        "gpu": torch.cuda.get_device_name() if cuda else None, "torch": torch.__version__,
    }


def paired(batch: int, steps: int, smoke: bool, threads: int | None, device: str) -> dict:
    """Alternate fast and oracle steps (same weights, same data): both see the same load."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    fns = {impl: build_step(torch, impl, batch, smoke, device, "eager")[0]
           for impl in ("fast", "oracle")}
    times = {k: [] for k in fns}
    for i in range(steps + 1):
        for name, step in fns.items():
            t = time.perf_counter()
            step()
            _sync(torch, device)
            if i:  # the first round is the warm-up
                times[name].append(time.perf_counter() - t)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {"impl": "paired", "batch": batch, "device": device, "step_s": times,
            "trials_per_s": {k: batch / v for k, v in med.items()},
            "speedup": med["oracle"] / med["fast"], "loadavg": os.getloadavg()}


def _worker_cmd(args, impl: str, batch: int, mode: str = "eager") -> list[str]:
    cmd = [sys.executable, __file__, "--worker", impl, str(batch), "--steps", str(args.steps),
           "--device", args.device, "--modes", mode]
    cmd += (["--smoke"] if args.smoke else []) + (["--threads", str(args.threads)] if args.threads else [])
    return cmd


def _last_line(stderr: str) -> str:
    """What a failed worker said last (its exception), for the results."""
    return (stderr.strip().splitlines() or ["?"])[-1][:300]


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def _run_worker(args, impl: str, batch: int, mode: str = "eager") -> dict:
    """One measurement in a fresh process (so peak RSS is per configuration); a worker that
    fails or outlives ``--worker-timeout`` is reported as such, not fatal."""
    try:
        done = subprocess.run(_worker_cmd(args, impl, batch, mode), capture_output=True,
                              text=True, timeout=args.worker_timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"impl": impl, "batch": batch, "mode": mode, "device": args.device,
                "failed": f"did not finish in {args.worker_timeout} s"}
    if done.returncode != 0:
        return {"impl": impl, "batch": batch, "mode": mode, "device": args.device,
                "failed": _last_line(done.stderr)}
    return _last_json(done.stdout)


def _run_pack(args, n: int, batch: int) -> dict:
    """``n`` training processes on one device at once, timed over the same window."""
    start_at = time.time() + args.pack_warmup
    procs = [subprocess.Popen(_worker_cmd(args, "fast", batch, args.modes[0]) + [
        "--start-at", str(start_at), "--duration", str(args.pack_seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)]
    outs = [p.communicate() for p in procs]
    each = []
    for p, (out, err) in zip(procs, outs):
        if p.returncode != 0:
            return {"pack": n, "batch": batch, "failed": _last_line(err)}
        each.append(_last_json(out))
    late = [r["warmup_s"] for r in each if r["warmup_s"] > args.pack_warmup]
    return {"pack": n, "batch": batch, "device": args.device, "mode": args.modes[0],
            "trials_per_s_total": sum(r["trials_per_s_window"] for r in each),
            "trials_per_s_each": [r["trials_per_s_window"] for r in each],
            "peak_gpu_mb_each": [r["peak_gpu_mb"] for r in each],
            "late_starters": len(late), "gpu": each[0]["gpu"]}


def _print(res: dict) -> None:
    if "failed" in res:
        print(f"{res.get('impl', 'pack')} {res.get('mode', '')} batch {res['batch']}: FAILED: "
              f"{res['failed']}", flush=True)
    elif res.get("impl") == "paired":
        print(f"paired batch {res['batch']}: fast {res['trials_per_s']['fast']:.1f} trials/s, "
              f"oracle {res['trials_per_s']['oracle']:.1f}, speedup {res['speedup']:.1f}x, "
              f"load {res['loadavg'][0]:.1f}", flush=True)
    elif "pack" in res:
        each = ", ".join(f"{v:.0f}" for v in res["trials_per_s_each"])
        gpu = max(v or 0 for v in res["peak_gpu_mb_each"])
        print(f"pack {res['pack']} x batch {res['batch']}: {res['trials_per_s_total']:.1f} "
              f"trials/s in all ({each}); peak GPU memory per process {gpu:.0f} MB"
              + (f"; {res['late_starters']} started late" if res["late_starters"] else ""),
              flush=True)
    else:
        gpu = f", peak GPU {res['peak_gpu_mb']:.0f} MB" if res.get("peak_gpu_mb") else ""
        print(f"{res['impl']:6s} {res['mode']:7s} batch {res['batch']:3d}: "
              f"{res['trials_per_s']:8.1f} trials/s (best {res['trials_per_s_best']:.1f}), "
              f"{res['achieved_gflops']:.1f} GFLOP/s = {100 * res['fraction_of_matmul']:.1f}% of "
              f"matmul {res['matmul_gflops']:.0f}, peak RSS {res['peak_rss_mb']:.0f} MB{gpu}, "
              f"warm-up {res['warmup_s']:.1f} s, load {res['loadavg'][0]:.1f}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--impls", nargs="+", default=["fast", "oracle"],
                    choices=["fast", "python", "oracle"],
                    help="fast: batched path (compiled loop on CPU); python: batched path with "
                         "the Python loop; oracle: region-by-region reference")
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, for a quick check")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--modes", nargs="+", default=["eager"],
                    choices=["eager", "amp", "graph", "compile"],
                    help="eager; CUDA only: amp, graph; compile (fast impl only)")
    ap.add_argument("--worker-timeout", type=float, default=600.0,
                    help="seconds before a measurement (e.g. a compile) is given up")
    ap.add_argument("--paired", action="store_true",
                    help="also time fast and oracle steps alternately in one process")
    ap.add_argument("--paired-only", action="store_true", help="with --paired: only that")
    ap.add_argument("--pack", type=int, nargs="+", default=None, metavar="N",
                    help="instead: N concurrent training processes on the device (fast impl)")
    ap.add_argument("--pack-seconds", type=float, default=15.0, help="timed window per --pack N")
    ap.add_argument("--pack-warmup", type=float, default=45.0,
                    help="seconds every process gets to start up before the window opens")
    ap.add_argument("--out", default=None, help="append the results here as JSON lines")
    ap.add_argument("--worker", nargs=2, metavar=("IMPL", "BATCH"), help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--duration", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        impl, batch = args.worker[0], int(args.worker[1])
        res = (paired(batch, args.steps, args.smoke, args.threads, args.device) if impl == "paired"
               else worker(impl, batch, args.steps, args.smoke, args.threads, args.device,
                           args.modes[0], args.start_at, args.duration))
        print(json.dumps(res))
        return 0
    print(f"machine: {describe()}; load {os.getloadavg()}; OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY') or '(default)'}; device {args.device}", flush=True)
    results = []

    def record(res: dict) -> None:
        results.append(res)
        _print(res)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps({"machine": describe(), **res}) + "\n")

    if args.pack:
        for n in args.pack:
            for batch in args.batches:
                record(_run_pack(args, n, batch))
        return 0
    if args.paired:
        for batch in args.batches:
            record(_run_worker(args, "paired", batch))
        args.batches = [] if args.paired_only else args.batches
    for batch in args.batches:
        for mode in args.modes:
            for impl in (args.impls if mode == "eager" else ["fast"]):
                record(_run_worker(args, impl, batch, mode))
    by = {(r["impl"], r["batch"]): r for r in results
          if r.get("mode") == "eager" and "failed" not in r}
    for batch in args.batches:
        if ("fast", batch) in by and ("oracle", batch) in by:
            speedup = by["fast", batch]["trials_per_s"] / by["oracle", batch]["trials_per_s"]
            ref = AUTHORS_TRIALS_PER_S.get(batch)
            vs = f", {by['fast', batch]['trials_per_s'] / ref:.1f}x authors' {ref}" if ref else ""
            print(f"batch {batch}: fast/oracle {speedup:.1f}x{vs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
