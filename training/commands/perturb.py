"""`mrlfads perturb`: in-silico silencing of one region's outgoing messages.

Predicted effect of silencing region s over bins [start, stop): per region, the mean absolute
change of rates (docs/MODEL.md, "Metrics"). When the dataset holds trials flagged as perturbed
(split ``perturbed``, e.g. photoinhibition kept out of training), the measured effect per
neuron is |trial-averaged activity of perturbed trials - that of unperturbed trials| from
``start`` to the end of the trial, and the report adds the Spearman rank correlation between
predicted and measured per-neuron effects.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "perturb"
HELP = "silence a region's outgoing messages over a window and report the effect on every region"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint file or models:/NAME@ALIAS")
    p.add_argument("--data", required=True, help="dataset directory or URI")
    p.add_argument("--silence", required=True, metavar="REGION", help="region whose messages are cut")
    p.add_argument("--window", required=True, metavar="START:STOP", help="trial bins, e.g. 50:100")
    p.add_argument("--split", default="valid", help="unperturbed trials to run (default: valid)")
    p.add_argument("--out", help="write the report as JSON here")
    p.add_argument("--device", default="auto")
    p.add_argument("--tracking-uri", help="MLflow tracking URI for models:/ URIs")


def parse_window(text: str, n_bins: int, first_bin: int = 0) -> tuple[int, int]:
    """(start, stop) trial bins. ``first_bin`` is the model's ic_enc_seq_len: bins before it
    only feed the initial-condition encoder, no message is sent there, so a window starting
    earlier would report (partly or wholly) zero effect for bins it never changed."""
    try:
        start, stop = (int(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"--window {text!r}: expected START:STOP in trial bins, e.g. 50:100") from None
    if not 0 <= start < stop <= n_bins:
        raise ValueError(f"--window {text!r}: need 0 <= START < STOP <= {n_bins} (the trial has "
                         f"{n_bins} bins)")
    if start < first_bin:
        raise ValueError(
            f"--window {text!r}: bins 0-{first_bin - 1} feed the model's initial-condition "
            f"encoder (ic_enc_seq_len={first_bin}) and carry no messages, so silencing there "
            f"changes nothing; the first bin a window may start at is {first_bin} "
            f"(e.g. --window {first_bin}:{n_bins})")
    return start, stop


def run(args: argparse.Namespace) -> int:
    from data_loaders.reader import ArrowDataset
    from mrlfads.inference import silence_effect
    from training.config import RunConfig, check_against_data
    from training.data import load_split
    from training.loop import resolve_device
    from training.model_source import load_any_model

    model, run_cfg_dict, _ = load_any_model(args.model, args.tracking_uri)
    dataset = ArrowDataset.open(args.data)
    m = dataset.manifest
    cfg = RunConfig.from_dict(run_cfg_dict).with_overrides(
        {"data.valid_split": args.split, "data.train_split": args.split})
    if args.split not in m.splits:
        raise ValueError(f"--split {args.split!r}: the dataset has splits {sorted(m.splits)}")
    check_against_data(cfg, m)
    names = list(cfg.model.region_names)
    if args.silence not in names:
        raise ValueError(f"--silence {args.silence!r}: not a region of the model; choose from {names}")
    window = parse_window(args.window, m.n_bins, cfg.model.ic_enc_seq_len)
    device = resolve_device(args.device)
    model.to(device)
    data = load_split(dataset, args.split, device)
    effects = silence_effect(model, data.heldin, data.ext, args.silence, window)
    report = {"silenced": args.silence, "window": list(window), "split": args.split,
              "trials": data.n_trials, "mean_abs_rate_change": effects}
    if m.splits.get("perturbed", 0) > 0:
        report.update(_measured(model, dataset, data, args.silence, window, device,
                                cfg.model.ic_enc_seq_len))
    _print_table(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return 0


def _measured(model, dataset, control, region, window, device, tau) -> dict:
    """Measured per-neuron effects of the recorded perturbation, and their rank correlation."""
    import numpy as np
    import torch

    from mrlfads.metrics import rank_correlation
    from training.data import load_split

    perturbed = load_split(dataset, "perturbed", device)
    start = max(window[0], tau)
    with torch.no_grad():
        model.eval()
        base = model(control.heldin, control.ext, sample=False)
        cut = model(control.heldin, control.ext, sample=False, silence={region: window})
    predicted, measured, per_region = [], [], {}
    for r, name in enumerate(model.cfg.region_names):
        pred = (cut.rates[r] - base.rates[r])[:, start - tau:].abs().mean(dim=(0, 1))  # (N,)
        meas = (perturbed.heldin[r][:, start:].mean(dim=0)
                - control.heldin[r][:, start:].mean(dim=0)).abs().mean(dim=0)  # (N,)
        predicted.append(pred.cpu().numpy())
        measured.append(meas.cpu().numpy())
        per_region[name] = float(meas.mean())
    rho = rank_correlation(np.concatenate(predicted), np.concatenate(measured))
    return {"measured_mean_abs_change": per_region, "perturbed_trials": perturbed.n_trials,
            "rank_correlation": float(rho)}


def _print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"silencing {report['silenced']} over bins {report['window'][0]}:"
                        f"{report['window'][1]} ({report['trials']} trials)")
    table.add_column("region")
    table.add_column("predicted mean |change|", justify="right")
    measured = report.get("measured_mean_abs_change")
    if measured:
        table.add_column("measured mean |change|", justify="right")
    for name, value in report["mean_abs_rate_change"].items():
        row = [name, f"{value:.4g}"] + ([f"{measured[name]:.4g}"] if measured else [])
        table.add_row(row[0], *row[1:])
    Console().print(table)
    if "rank_correlation" in report:
        print(f"rank correlation predicted vs measured (per neuron): {report['rank_correlation']:.3f}")
