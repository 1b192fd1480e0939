"""`mrlfads report SWEEP|RUN`: one self-contained HTML page of a sweep or a training run
(training/report.py)."""
from __future__ import annotations

import argparse

from mrlfads.training.commands import at_least
from mrlfads.training.cpu_threads import add_threads_argument

NAME = "report"
HELP = ("write one self-contained HTML page (opens without a server) of a sweep directory or "
        "a `mrlfads train` run directory: PSTHs, rate heatmaps, latents, messages, inputs, "
        "effectome, perturbations; for a sweep PBT trajectories and lineage")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="SWEEP|RUN",
                   help="a sweep directory (STORAGE/NAME, with summary.json or "
                   "mrlfads_sweep.json) or a `mrlfads train --out` directory (best.pt)")
    p.add_argument("--out", default="report.html", help="the HTML file (default: report.html)")
    p.add_argument("--data", help="the dataset, where it is no longer where the run config "
                   "says (default: the run config's data.uri)")
    p.add_argument("--neurons", action="append", default=[], metavar="REGION:I,J,...",
                   help="neurons of REGION in the PSTH figure (the dataset's columns: held-in "
                   "first, then held-out; a stitched dataset's session figures show those "
                   "the session recorded; repeatable); default: the most active --n-neurons "
                   "per region")
    p.add_argument("--n-neurons", type=at_least(1), default=4, metavar="K",
                   help="most active neurons per region in the PSTH figure (default 4)")
    p.add_argument("--perturb", action="append", default=[], metavar="DIR",
                   help="a `mrlfads perturb --out` folder to draw (repeatable)")
    p.add_argument("--trials", type=at_least(1), default=256, metavar="N",
                   help="validation trials run through the model (default 256)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    add_threads_argument(p)


def run(args: argparse.Namespace) -> int:
    from mrlfads.training.cpu_threads import set_threads
    from mrlfads.training.loop import resolve_device
    from mrlfads.training.report import ReportOptions, kind_of, parse_neurons, write_report

    kind = kind_of(args.path)  # bad paths fail before anything heavy loads
    set_threads(args.threads)
    try:
        device = str(resolve_device(args.device))
    except RuntimeError:  # torch's own words for a malformed device name
        raise ValueError(f"--device {args.device!r}: use cpu, cuda or cuda:N") from None
    options = ReportOptions(data=args.data, neurons=parse_neurons(args.neurons),
                            n_neurons=args.n_neurons, perturb=list(args.perturb),
                            trials=args.trials, device=device)
    out = write_report(args.path, args.out, options)
    print(f"wrote {out} ({kind} {args.path}); open it in a browser")
    return 0
