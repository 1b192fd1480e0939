"""`mrlfads simulate`: write a simulated multi-region benchmark with full ground truth."""
from __future__ import annotations

import argparse

from mrlfads.training.commands import at_least, positive_float

NAME = "simulate"
HELP = ("Train a multi-region data-generating RNN (memory-ring, relay-decision or random) and "
        "write its trials as an Arrow dataset with true messages, inputs and rates.")
KINDS = ("memory-ring", "relay-decision", "random")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KINDS, help="which network family to simulate")
    parser.add_argument("--out", required=True,
                        help="dataset directory to write (local path or s3://bucket/prefix)")
    parser.add_argument("--trials", type=at_least(2), default=None,
                        help="number of trials (default: 2048)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed: picks the network, its training and the trials (default 0)")
    parser.add_argument("--obs", choices=("gaussian", "poisson"), default="gaussian",
                        help="observations: the hidden units themselves, or Poisson spikes "
                             "drawn from them (default gaussian)")
    parser.add_argument("--rate-hz", type=positive_float, default=None,
                        help="Poisson spikes: mean firing rate over units, trials and bins; "
                             "units' base rates vary log-normally around it (default 5)")
    parser.add_argument("--bin-ms", type=positive_float, default=None,
                        help="bin width in ms (default 20). The networks step every 20 ms "
                             "whatever the bins: 5 or 10 ms bins split a step, 40 ms bins pool "
                             "two")
    parser.add_argument("--smoke-test", action="store_true",
                        help="tiny network and dataset (seconds), to check the pipeline")
    parser.add_argument("--bins", type=at_least(2), default=None,
                        help="bins per trial (default: the family's trial length, e.g. 200 "
                             "bins of 20 ms for memory-ring)")
    parser.add_argument("--units", type=at_least(2), default=None,
                        help="units per region (default: the family's, 64)")
    parser.add_argument("--sessions", type=at_least(1), default=1,
                        help="recording sessions of the one network (default 1). Each session "
                             "has its own --trials trials and records its own random subset "
                             "of each region's units: a multi-session dataset, one session per "
                             "trial, each region holding the union of the sessions' neurons")
    parser.add_argument("--session-frac", type=_fraction, default=None, metavar="F",
                        help="with --sessions: fraction of each region's units a session "
                             "records, round(F * units), at least 1 (default 1 / sessions)")
    parser.add_argument("--silence", default=None, metavar="REGION",
                        help="also record perturbed trials: every message REGION sends is zero "
                             "over --window. They form the 'perturbed' split (never trained "
                             "on), and extras/perturbation.npz holds each neuron's true effect "
                             "in the keys of `mrlfads perturb`'s effects.npz")
    parser.add_argument("--window", default=None, metavar="START:STOP",
                        help="with --silence: trial bins [START, STOP) to silence over")
    parser.add_argument("--perturbed-trials", type=at_least(1), default=None, metavar="N",
                        help="with --silence: number of perturbed trials, drawn like the "
                             "others and added to them (default: a quarter of --trials)")
    parser.add_argument("--intervention-trials", type=at_least(1), default=None, metavar="N",
                        help="also record N training trials with interventions: each silences "
                             "every message of one random region (any region, whether it sends "
                             "or not) over a random quarter of the "
                             "trial, and the dataset's silenced/<region> columns say where, so "
                             "training silences the model's messages the same way (what "
                             "observational trials cannot tell apart: docs/MODEL.md, "
                             "'Recorded interventions')")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a dataset already at --out")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mrlfads.training.api import simulate

    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.3f}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(f"training {args.kind} network", total=None, loss=float("nan"))

        def progress(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, loss=loss)

        dataset = simulate(args.kind, args.out, trials=args.trials, seed=args.seed, obs=args.obs,
                           rate_hz=args.rate_hz, bin_ms=args.bin_ms, bins=args.bins,
                           units=args.units, smoke_test=args.smoke_test,
                           overwrite=args.overwrite, progress=progress,
                           sessions=args.sessions, session_frac=args.session_frac,
                           silence=args.silence, window=args.window,
                           perturbed_trials=args.perturbed_trials,
                           intervention_trials=args.intervention_trials)
    _report(dataset, args.out)
    return 0


def _report(dataset, out: str) -> None:
    manifest, summary = dataset.manifest, dataset.summary
    names = manifest.region_names
    print(f"wrote {manifest.name} to {out}")
    print(f"  observations: {manifest.obs_model}, {manifest.n_bins} bins of "
          f"{manifest.bin_width_s * 1000:g} ms, ic_enc_seq_len {manifest.ic_enc_seq_len}")
    for r in manifest.regions:
        print(f"  region {r.name}: {r.n_heldin} held-in + {r.n_heldout} held-out neurons")
    if manifest.sessions:
        print(f"  sessions: {len(manifest.sessions)} (each region holds every session's own "
              "neurons; a trial's columns of other sessions are 0)")
    if manifest.obs_model == "poisson":
        rate = summary["rate_per_bin"]
        print(f"  spikes: mean rate {rate / manifest.bin_width_s:.3g} Hz ({rate:.3g} per bin); "
              f"{summary['spikes_per_bin']:.3g} per bin drawn")
    print("  trials: " + ", ".join(f"{k} {v}" for k, v in manifest.splits.items()))
    pert = manifest.provenance.get("perturbation")
    if pert:
        zeroed = ", ".join(pert["messages_zeroed"]) or "none: it sends no message"
        print(f"  perturbed trials: {pert['trials']}, {pert['target']} silenced over bins "
              f"{pert['window'][0]}:{pert['window'][1]} (messages zeroed: {zeroed}); true "
              f"effects in extras/perturbation.npz")
    inter = manifest.provenance.get("interventions")
    if inter:
        per = ", ".join(f"{k} {v}" for k, v in inter["trials_per_region"].items())
        print(f"  intervention trials (trained on): {inter['trials']}, messages silenced per "
              f"region: {per}")
    cm = manifest.comm_matrix or [[0] * len(names)] * len(names)  # None: no pathway at all
    paths = [f"{names[s]}->{names[d]} (dim {cm[d][s]})"
             for d in range(len(names)) for s in range(len(names)) if cm[d][s]]
    print("  pathways: " + (", ".join(paths) if paths else "none"))
    print(f"  task loss on the simulated trials: {summary['task_loss']:.3f} "
          f"(1 = learnt nothing; trained {summary['train_steps']} steps)")
    seconds = summary["seconds"]
    print(f"  took {seconds.get('total', float('nan')):.1f} s "
          f"(training {seconds.get('train', float('nan')):.1f} s) before writing")
