"""`mrlfads perturb`: in-silico perturbation of a fitted model, one per run.

`--silence REGION` zeroes every message the region sends, `--cut SRC->DST` one pathway,
`--silence-inputs REGION` the inferred inputs the region receives; `--channels` narrows any
of them to some message (or input) dimensions. Over bins [start, stop) of `--window`, on the
posterior means of `--split` (docs/MODEL.md, "In-silico perturbation").

Predicted effect per neuron (held-in then held-out, the dataset's columns): the trial mean
of |perturbed - unperturbed rate| from the window's start to the trial's end. When the
dataset holds trials flagged as perturbed (split ``perturbed``, e.g. photoinhibition kept
out of training), the measured effect per neuron is |trial mean of perturbed trials - that
of the control trials| over the same bins, and the report adds the Spearman rank
correlation of predicted against measured effects (all neurons, and per region) and a
scatter figure.

`--out DIR` holds report.json (the summary printed), effects.npz (per-neuron effects and
their time courses) and, with measured effects, predicted_vs_measured.png; written
atomically like `mrlfads infer`'s output.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

NAME = "perturb"
HELP = ("silence a region's messages, one pathway, or a region's inferred inputs over a "
        "window and report the predicted effect on every neuron")

EFFECTS_FILE = "effects.npz"
REPORT_FILE = "report.json"
FIGURE_FILE = "predicted_vs_measured.png"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="checkpoint file or models:/NAME@ALIAS")
    p.add_argument("--data", required=True, help="dataset directory or URI")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--silence", metavar="REGION", help="region whose outgoing messages are cut")
    what.add_argument("--cut", metavar="SRC->DST", help="one pathway to cut (quote it in a shell)")
    what.add_argument("--silence-inputs", metavar="REGION",
                      help="region whose inferred inputs (unobserved regions) are silenced")
    p.add_argument("--channels", metavar="I,J,...",
                   help="only these message dimensions (--silence, --cut; 0..com_dim-1) or input "
                   "dimensions (--silence-inputs; 0..co_dim-1); default: all")
    p.add_argument("--window", required=True, metavar="START:STOP", help="trial bins, e.g. 50:100")
    p.add_argument("--split", default="valid", help="unperturbed trials to run (default: valid)")
    p.add_argument("--out", metavar="DIR",
                   help="write report.json, effects.npz and the scatter figure here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
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


def parse_perturbation(args: argparse.Namespace, model_cfg, window: tuple[int, int]):
    """The Perturbation the flags name, checked against the model's regions, pathways and
    dimensions; a ValueError naming the flag and the choices otherwise."""
    from mrlfads.inference import Perturbation

    names = list(model_cfg.region_names)
    if args.cut is not None:
        src, sep, dst = args.cut.partition("->")
        src, dst = src.strip(), dst.strip()
        if not sep or not src or not dst:
            raise ValueError(f"--cut {args.cut!r}: name one pathway as SRC->DST, e.g. "
                             f"--cut '{names[0]}->{names[-1]}' (quote it: '>' is a redirect in a shell)")
        bad = [r for r in (src, dst) if r not in names]
        if bad:
            raise ValueError(f"--cut {args.cut!r}: {bad[0]!r} is not a region of the model; "
                             f"regions are {names}")
        if src == dst:
            raise ValueError(f"--cut {args.cut!r}: a region sends no message to itself; name two "
                             f"different regions of {names}")
        kind, target, flag = "cut", f"{src}->{dst}", "--cut"
    elif args.silence_inputs is not None:
        kind, target, flag = "inputs", args.silence_inputs, "--silence-inputs"
        if target not in names:
            raise ValueError(f"--silence-inputs {target!r}: not a region of the model; choose "
                             f"from {names}")
        if not model_cfg.inferred_inputs:
            raise ValueError(f"--silence-inputs {target!r}: this model has no inferred inputs "
                             "(model.inferred_inputs is false); silence messages with --silence "
                             "or --cut instead")
    else:
        kind, target, flag = "silence", args.silence, "--silence"
        if target not in names:
            raise ValueError(f"--silence {target!r}: not a region of the model; choose from {names}")
    if kind != "inputs" and len(names) < 2:
        raise ValueError(f"{flag}: the model has one region ({names[0]}) and so no messages; "
                         "use --silence-inputs")
    width, dim = ((model_cfg.co_dim, "co_dim") if kind == "inputs"
                  else (model_cfg.com_dim, "com_dim"))
    channels = None
    if args.channels is not None:
        try:
            channels = tuple(sorted({int(c) for c in args.channels.split(",")}))
        except ValueError:
            raise ValueError(f"--channels {args.channels!r}: expected comma-separated dimension "
                             f"numbers, e.g. --channels 0,2") from None
        bad = [c for c in channels if not 0 <= c < width]
        if bad:
            raise ValueError(f"--channels {args.channels!r}: {flag} has dimensions 0..{width - 1} "
                             f"(the model's {dim}={width}); {bad} are outside")
    return Perturbation(kind, target, window, channels)


def run(args: argparse.Namespace) -> int:
    from data_loaders.reader import ArrowDataset
    from mrlfads.inference import perturbation_effects
    from training.config import RunConfig, check_against_data
    from training.data import load_split
    from training.loop import resolve_device
    from training.model_source import load_any_model

    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.overwrite:
        raise FileExistsError(f"--out {out} already exists: choose another --out or pass --overwrite")
    model, run_cfg_dict, _ = load_any_model(args.model, args.tracking_uri)
    dataset = ArrowDataset.open(args.data)
    m = dataset.manifest
    cfg = RunConfig.from_dict(run_cfg_dict).with_overrides(
        {"data.valid_split": args.split, "data.train_split": args.split})
    if args.split not in m.splits or m.splits[args.split] == 0:
        raise ValueError(f"--split {args.split!r}: the dataset has no such trials; its splits are "
                         f"{ {k: v for k, v in m.splits.items() if v} }")
    check_against_data(cfg, m)
    window = parse_window(args.window, m.n_bins, cfg.model.ic_enc_seq_len)
    pert = parse_perturbation(args, cfg.model, window)
    device = resolve_device(args.device)
    model.to(device)
    data = load_split(dataset, args.split, device)
    effects = perturbation_effects(model, data.heldin, data.ext, pert)
    names = list(cfg.model.region_names)
    n_in = {r.name: r.n_heldin for r in m.regions}
    report = {
        "perturbation": {"kind": pert.kind, "target": pert.target, "window": list(window),
                         "channels": None if pert.channels is None else list(pert.channels)},
        "window": list(window), "split": args.split, "trials": data.n_trials,
        # the mean over trials, reconstructed bins and held-in neurons, per region
        "mean_abs_rate_change": {r: float(effects[f"abs_delta/{r}"][:, : n_in[r]].mean())
                                 for r in names},
        "bins": [cfg.model.ic_enc_seq_len, m.n_bins],
        "neurons": {r.name: {"heldin": r.n_heldin, "heldout": r.n_heldout} for r in m.regions},
        "model": args.model, "data": args.data,
    }
    if pert.kind == "silence":
        report["silenced"] = pert.target
    arrays = dict(effects)
    if m.splits.get("perturbed", 0) > 0:
        measured = _measured(dataset, data, window[0], cfg.model.ic_enc_seq_len, device)
        arrays.update(measured["arrays"])
        report.update(measured["summary"])
        report.update(_compare(effects, measured["arrays"], names))
    _print_table(report)
    if out is not None:
        _write(out, report, arrays, names, args.overwrite)
        print(f"wrote {out}")
    return 0


def _measured(dataset, control, start: int, tau: int, device) -> dict:
    """Measured effects of the recorded perturbation per neuron (held-in then held-out):
    ``measured_delta/<r>`` (T', N) trial mean of perturbed - control trials over bins
    tau..T-1, and ``measured/<r>`` (N,) the mean of its magnitude from ``start`` on."""
    import torch

    from training.data import load_split

    perturbed = load_split(dataset, "perturbed", device)
    def trial_mean(split, r: int):
        x = torch.cat([split.heldin[r], split.heldout[r]], dim=-1)[:, tau:]
        return x.double().mean(dim=0).cpu().numpy()  # (T', N)

    arrays, per_region = {}, {}
    for r, name in enumerate(dataset.manifest.region_names):
        delta = trial_mean(perturbed, r) - trial_mean(control, r)
        arrays[f"measured_delta/{name}"] = delta
        arrays[f"measured/{name}"] = abs(delta[max(start - tau, 0):]).mean(axis=0)
        per_region[name] = float(abs(delta[max(start - tau, 0):]).mean())
    return {"arrays": arrays,
            "summary": {"measured_mean_abs_change": per_region,
                        "perturbed_trials": perturbed.n_trials}}


def _compare(effects: dict, measured: dict, names: list[str]) -> dict:
    """Spearman rank correlation of predicted and measured per-neuron effects."""
    import numpy as np

    from mrlfads.metrics import rank_correlation

    def rho(p, q):
        return rank_correlation(p, q) if p.size >= 2 else float("nan")

    pred = {r: effects[f"effect/{r}"] for r in names}
    meas = {r: measured[f"measured/{r}"] for r in names}
    return {"rank_correlation": rho(np.concatenate(list(pred.values())),
                                    np.concatenate(list(meas.values()))),
            "rank_correlation_by_region": {r: rho(pred[r], meas[r]) for r in names}}


def _write(out: Path, report: dict, arrays: dict, names: list[str], overwrite: bool) -> None:
    """report.json, effects.npz and (with measured effects) the scatter, all or nothing."""
    import numpy as np

    from training.infer_io import _json_safe

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        body = dict(report, effects_file=EFFECTS_FILE)
        if "rank_correlation" in report:
            from tracking.figures import perturbation_scatter

            rho = {**report["rank_correlation_by_region"], "all": report["rank_correlation"]}
            p = report["perturbation"]
            perturbation_scatter({r: arrays[f"effect/{r}"] for r in names},
                                 {r: arrays[f"measured/{r}"] for r in names}, tmp / FIGURE_FILE,
                                 title=f"{p['kind']} {p['target']}, bins {p['window'][0]}:"
                                       f"{p['window'][1]}", rho=rho)
            body["figure"] = FIGURE_FILE
        with open(tmp / EFFECTS_FILE, "wb") as f:
            np.savez(f, **{k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()})
        (tmp / REPORT_FILE).write_text(json.dumps(_json_safe(body), indent=2))
        if out.exists():
            if not overwrite:
                raise FileExistsError(f"--out {out} already exists: choose another --out or "
                                      "pass --overwrite")
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    p = report["perturbation"]
    what = {"silence": f"silencing {p['target']}'s messages", "cut": f"cutting {p['target']}",
            "inputs": f"silencing {p['target']}'s inferred inputs"}[p["kind"]]
    if p["channels"] is not None:
        what += f" (channels {','.join(map(str, p['channels']))})"
    table = Table(title=f"{what} over bins {p['window'][0]}:{p['window'][1]} "
                        f"({report['trials']} trials)")
    table.add_column("region")
    table.add_column("predicted mean |change|", justify="right")
    measured = report.get("measured_mean_abs_change")
    if measured:
        table.add_column("measured mean |change|", justify="right")
        table.add_column("rank corr. per neuron", justify="right")
    for name, value in report["mean_abs_rate_change"].items():
        row = [f"{value:.4g}"]
        if measured:
            row += [f"{measured[name]:.4g}", f"{report['rank_correlation_by_region'][name]:.3f}"]
        table.add_row(name, *row)
    Console().print(table)
    if "rank_correlation" in report:
        print(f"rank correlation predicted vs measured (all neurons): "
              f"{report['rank_correlation']:.3f}")
