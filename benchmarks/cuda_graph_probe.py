"""Which part of a training step captures as a CUDA graph, and how fast the graph replays.

    python benchmarks/cuda_graph_probe.py [--batch 16] [--steps 20]

Tries, at the default size (docs/MODEL.md), capturing (1) the forward, (2) forward + loss +
backward, (3) plus gradient clipping, (4) plus the AdamW step, with capture_error_mode
"global" (the whole step also "relaxed"), each in its own process; prints per attempt either
the replay speed (trials/s) or the first lines of the error and the innermost frame of this
project's code. Used to find what keeps the whole step out of a graph (bench_train.py
--modes graph times the whole-step variant).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

PARTS = ("forward", "backward", "clip", "step")


def attempt(torch, part: str, error_mode: str, batch: int, steps: int) -> str:
    from benchmarks.bench_train import build_step, capture_graph
    from mrlfads.config import LossConfig
    from mrlfads.loss import compute_loss

    _, model, _ = build_step(torch, "fast", batch, False, "cuda", "eager")
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.0, capturable=True)
    heldin = [torch.randn(batch, 200, 64, device="cuda") for _ in range(3)]

    def body():
        out = model(heldin, sample=True)
        if part == "forward":
            return
        compute_loss(out, heldin, None, LossConfig(), epoch=300).total.backward()
        if part in ("clip", "step"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 200.0)
        if part == "step":
            opt.step()

    graph = capture_graph(torch, body, opt, error_mode)
    graph.replay()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        graph.replay()
    torch.cuda.synchronize()
    return f"OK {batch * steps / (time.perf_counter() - t):.1f} trials/s"


def _report(torch, part: str, mode: str, batch: int, steps: int) -> str:
    try:
        return attempt(torch, part, mode, batch, steps)
    except Exception as exc:
        tb = traceback.extract_tb(exc.__traceback__)
        ours = [f for f in tb if "/mrlfads/" in f.filename or "/benchmarks/" in f.filename]
        where = (f"{ours[-1].filename.rsplit('/', 2)[-1]}:{ours[-1].lineno} {ours[-1].line}"
                 if ours else "?")
        lines = [ln for ln in str(exc).splitlines() if ln.strip()][:2]
        return (f"FAILED {type(exc).__name__}: {' | '.join(lines)} [at {where}; innermost "
                f"{tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno} {tb[-1].line}]")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--one", nargs=2, metavar=("PART", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # a failed capture can leave the CUDA context unusable: one per process
        import torch

        print(_report(torch, *args.one, args.batch, args.steps), flush=True)
        return 0
    for part in PARTS:
        for mode in ("global", "relaxed") if part == "step" else ("global",):
            done = subprocess.run([sys.executable, __file__, "--one", part, mode, "--batch",
                                   str(args.batch), "--steps", str(args.steps)],
                                  capture_output=True, text=True, check=False, timeout=120)
            res = (done.stdout.strip().splitlines() or [done.stderr.strip()[-300:]])[-1]
            print(f"{part:8s} {mode:7s} batch {args.batch}: {res}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
