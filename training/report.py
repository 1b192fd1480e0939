"""`mrlfads report`'s page: a `mrlfads train` run directory or a sweep directory read from
disk, its model run on validation trials, everything drawn into one HTML file.

A run directory holds best.pt / last.pt and metrics.jsonl (training/fit.py); a sweep
directory holds the sweep's plan (mrlfads_sweep.json), its summary (summary.json, once
finished), PBT's exploit log (pbt_global.txt) and one folder per trial (result.json,
checkpoint_NNNNNN/). Nothing here needs MLflow or Ray.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrlfads.tracking.html_report import Section

# Metrics worth a row in the page's summary, where the run has them.
SHOWN = ("objective", "valid/co_bps", "valid/bps", "valid/r2", "valid/heldout_r2",
         "valid/psth_r2", "valid/heldout_psth_r2", "valid/message_r2", "valid/input_r2",
         "valid/effectome_cut_cosine", "valid/effectome_cut_separation",
         "valid/effectome_cut_effect_cosine", "valid/effectome_cosine")
CURVES = ("objective", "valid/loss", "valid/co_bps", "valid/psth_r2", "valid/message_r2")
PERTURB_REPORT, PERTURB_EFFECTS = "report.json", "effects.npz"


class ReportError(ValueError):
    """The report cannot be made as asked; the message names the input and the fix."""


@dataclass
class ReportOptions:
    """What the page shows beyond its defaults."""

    data: str | None = None  # the dataset, where it is not where the run config says
    neurons: dict[str, list[int]] = field(default_factory=dict)  # PSTH neurons per region
    n_neurons: int = 4
    perturb: list[str] = field(default_factory=list)  # `mrlfads perturb --out` folders
    trials: int = 256  # validation trials run through the model
    device: str = "cpu"


def kind_of(path: str | Path) -> str:
    """'run' or 'sweep', or a ReportError saying what the path should be."""
    from mrlfads.training.fit import BEST, LAST
    from mrlfads.training.sweep import PLAN_FILE, SUMMARY_FILE

    p = Path(path)
    if not p.exists():
        raise ReportError(f"{p} does not exist: pass a `mrlfads train` run directory (--out "
                          "of train) or a sweep directory (STORAGE/NAME of `mrlfads sweep`)")
    if p.is_dir() and ((p / BEST).is_file() or (p / LAST).is_file()):
        return "run"
    if p.is_dir() and ((p / PLAN_FILE).is_file() or (p / SUMMARY_FILE).is_file()):
        return "sweep"
    raise ReportError(f"{p} is neither a `mrlfads train` run directory (it would hold {BEST} or "
                      f"{LAST}) nor a sweep directory (it would hold {PLAN_FILE} or "
                      f"{SUMMARY_FILE}); pass one of those")


def parse_neurons(items: Sequence[str]) -> dict[str, list[int]]:
    """``["V1:0,3,5"]`` -> ``{"V1": [0, 3, 5]}``."""
    out: dict[str, list[int]] = {}
    for item in items:
        region, sep, ids = item.partition(":")
        try:
            values = [int(v) for v in ids.split(",") if v.strip()]
        except ValueError:
            values = []
        if not sep or not region.strip() or not values:
            raise ReportError(f"--neurons {item!r}: expected REGION:I,J,... (neuron columns of "
                              "the region, held-in first), e.g. --neurons V1:0,3,5")
        out.setdefault(region.strip(), []).extend(values)
    return out


def build(path: str | Path, options: ReportOptions) -> tuple[str, str, list[Section]]:
    """(title, subtitle, sections) of the page for a run or sweep directory."""
    p = Path(path)
    kind = kind_of(p)
    _perturb_outputs(options.perturb)  # bad folders fail before any model runs
    if kind == "run":
        return _run_page(p, options)
    return _sweep_page(p, options)


def write_report(path: str | Path, out: str | Path, options: ReportOptions) -> Path:
    """Build the page and write it (atomically) to ``out``."""
    from mrlfads.tracking import html_report

    out = Path(out)
    if out.is_dir():
        raise ReportError(f"--out {out} is a directory: name the HTML file to write, e.g. "
                          f"--out {out / 'report.html'}")
    title, subtitle, sections = build(path, options)
    return html_report.write(out, html_report.render(title, sections, subtitle))


# ----------------------------------------------------------------------------- a model
def _model_sections(checkpoint: str | Path, options: ReportOptions,
                    heading: str = "") -> list[Section]:
    """The figure sections of the model in ``checkpoint`` on its data's validation trials."""
    return _figure_sections(*_model_and_data(checkpoint, options), options, heading)


def _figure_sections(model: Any, cfg: Any, dataset: Any, options: ReportOptions,
                     heading: str = "") -> list[Section]:
    """The figure sections of ``model`` on ``dataset``'s validation trials."""
    import torch

    from mrlfads.tracking.figures import png_bytes
    from mrlfads.training.report_figures import figure_set, fit_views

    model.to(torch.device(options.device))
    sections = []
    for label, view in fit_views(model, dataset, cfg, max_trials=options.trials):
        where = f" (session {label})" if label else ""  # stitched models: one set per session
        for f in figure_set(view, options.neurons or None, options.n_neurons):
            sections.append(Section(f"{heading}{f.title}{where}", [f.caption],
                                    figures=[(f.title, png_bytes(f.figure))]))
    return sections


def _model_and_data(checkpoint: str | Path, options: ReportOptions):
    """The model in ``checkpoint``, its run config and its dataset (``--data`` or where the
    config says), checked against each other."""
    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.training.checkpoint import load_model
    from mrlfads.training.config import RunConfig, check_against_data
    from mrlfads.training.report_figures import check_neurons

    model, run_cfg, _ = load_model(checkpoint)
    cfg = RunConfig.from_dict(run_cfg)
    check_neurons({r.name: r.n_heldin + r.n_heldout for r in cfg.model.regions}, options.neurons)
    uri = options.data or cfg.data.uri
    if options.data is None and "://" not in uri and not Path(uri, "dataset.json").is_file():
        raise ReportError(f"the data {checkpoint} was trained on, {uri!r}, is not on this "
                          "machine: pass --data DIR, the dataset's directory (or URI)")
    try:
        dataset = ArrowDataset.open(uri)
    except (ValueError, OSError) as exc:
        raise ReportError(f"--data {uri}: {exc}") from None
    if cfg.data.valid_split not in dataset.manifest.splits or \
            not dataset.manifest.splits[cfg.data.valid_split]:
        raise ReportError(f"the data at {uri} has no {cfg.data.valid_split!r} trials (the "
                          "model's validation split): pass --data with the dataset it was "
                          "trained on")
    check_against_data(cfg, dataset.manifest)
    return model, cfg, dataset


def _baseline_row(value: Any) -> list[list[str]]:
    """The smoothing baseline's row (training/smoothing.py), where there is one."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return []
    from mrlfads.training.smoothing import MEANING

    return [["valid/smoothing_co_bps", f"{value:.4g} ({MEANING})"]]


def _metric_rows(metrics: Mapping[str, Any]) -> list[list[str]]:
    return [[k, f"{float(metrics[k]):.4g}"] for k in SHOWN
            if isinstance(metrics.get(k), (int, float)) and math.isfinite(float(metrics[k]))]


def _perturb_outputs(dirs: Sequence[str]) -> list[Path]:
    """The `mrlfads perturb --out` folders, each checked to hold its two files."""
    for d in dirs:
        p = Path(d)
        if not (p / PERTURB_REPORT).is_file() or not (p / PERTURB_EFFECTS).is_file():
            raise ReportError(f"--perturb {d}: no {PERTURB_REPORT} and {PERTURB_EFFECTS} there; "
                              "pass a folder written by `mrlfads perturb ... --out DIR`")
    return [Path(d) for d in dirs]


def _perturb_sections(dirs: Sequence[str]) -> list[Section]:
    """Predicted (against measured, where recorded) effect per neuron of each
    `mrlfads perturb --out` folder."""
    import numpy as np

    from mrlfads.tracking.figures import perturbation_figure, png_bytes
    from mrlfads.tracking.fit_figures import effects_figure

    out = []
    for p in _perturb_outputs(dirs):
        d = str(p)
        try:
            report = json.loads((p / PERTURB_REPORT).read_text(encoding="utf-8"))
            with np.load(p / PERTURB_EFFECTS) as z:
                arrays = {k: z[k] for k in z.files}
            pert = report["perturbation"]
            regions = list(report["mean_abs_rate_change"])
            predicted = {r: arrays[f"effect/{r}"] for r in regions}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ReportError(f"--perturb {d}: not a readable `mrlfads perturb` output "
                              f"({type(exc).__name__}: {exc}); write it again with --out") from None
        what = (f"{pert['kind']} {pert['target']}, bins {pert['window'][0]}:{pert['window'][1]}"
                + (f", channels {pert['channels']}" if pert.get("channels") else ""))
        if all(f"measured/{r}" in arrays for r in regions):
            rho = {**report.get("rank_correlation_by_region", {}),
                   "all": report.get("rank_correlation", float("nan"))}
            rho = {k: (float("nan") if v is None else v) for k, v in rho.items()}
            fig = perturbation_figure(predicted, {r: arrays[f"measured/{r}"] for r in regions},
                                      title=what, rho=rho)
            caption = ("Predicted against measured effect per neuron (mean |change| from the "
                       "window's start); Spearman rank correlations in the legend.")
            if "rank_correlation_rate_only" in report:  # outputs written before it lack it
                caption += (f" Ranking the neurons by firing rate alone scores "
                            f"{report['rank_correlation_rate_only']:.2f}; the signed changes "
                            f"correlate {report['rank_correlation_signed']:.2f}.")
        else:
            fig = effects_figure(predicted, what)
            caption = ("Predicted effect per neuron (mean |rate change| from the window's "
                       "start); the data holds no perturbed trials to compare with.")
        out.append(Section(f"Perturbation: {what}", [caption, f"from {p}"],
                           figures=[(f"perturbation {what}", png_bytes(fig))]))
    return out


# ----------------------------------------------------------------------------- a run
def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _run_page(run: Path, options: ReportOptions) -> tuple[str, str, list[Section]]:
    from mrlfads.tracking.figures import png_bytes
    from mrlfads.tracking.fit_figures import training_curves_figure
    from mrlfads.training import checkpoint as ckpt
    from mrlfads.training.fit import BEST, LAST

    which = run / BEST if (run / BEST).is_file() else run / LAST
    saved = ckpt.load(which)
    rows = _read_jsonl(run / "metrics.jsonl")
    metrics = saved.get("metrics") if isinstance(saved.get("metrics"), dict) else (
        rows[-1] if rows else {})
    table = [["what", "value"], ["run directory", str(run)], ["model", which.name],
             ["epoch of the model", str(saved.get("epoch", "?"))],
             ["epochs trained", str(int(rows[-1]["epoch"])) if rows and "epoch" in rows[-1]
              else "?"]]
    table += _metric_rows(metrics)
    from mrlfads.training.smoothing import KEY, smoothing_scores

    model, cfg, dataset = _model_and_data(which, options)
    d = cfg.data
    baseline = smoothing_scores(dataset, [d.valid_split], train_split=d.train_split)[1]
    table += _baseline_row(baseline.get(f"{d.valid_split}/{KEY}"))
    sections = [Section("Run", [f"The model in {which.name}, run on validation trials."],
                        table=table)]
    if rows:
        sections.append(Section("Training", ["Per-epoch validation metrics (metrics.jsonl)."],
                                figures=[("training curves",
                                          png_bytes(training_curves_figure(rows, CURVES)))]))
    sections += _figure_sections(model, cfg, dataset, options)
    sections += _perturb_sections(options.perturb)
    return f"mrlfads run {run.name}", f"{run}", sections


# ----------------------------------------------------------------------------- a sweep
@dataclass
class SweepFiles:
    """What a sweep directory says about its population."""

    trials: dict[str, Path]  # trial id -> its folder
    history: dict[str, dict[str, list[tuple[float, float]]]]  # trial -> hp -> [(epoch, v)]
    last: dict[str, dict[str, Any]]  # trial -> its last result
    exploits: dict[str, list[dict[str, Any]]]  # tracking/lineage.py events


_TRIAL_DIR = re.compile(r"_([0-9a-f]+_\d{5})_(\d+)(?:_|$)")


def read_sweep(sweep: Path) -> SweepFiles:
    """Trials, their hyperparameters over epochs and PBT's exploits, from the files Tune and
    PBT write (result.json per trial; pbt_global.txt: one line per exploit, [target tag,
    donor tag, target epoch, donor epoch, ...], tags starting with the trial's index)."""
    trials, index = {}, {}
    for d in sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "result.json").is_file()):
        m = _TRIAL_DIR.search(d.name)
        tid = m.group(1) if m else d.name
        trials[tid] = d
        if m:
            index[m.group(2)] = tid
    history: dict[str, dict[str, list[tuple[float, float]]]] = {}
    last: dict[str, dict[str, Any]] = {}
    for tid, d in trials.items():
        for row in _read_jsonl(d / "result.json"):
            epoch = row.get("epoch", row.get("training_iteration"))
            if not isinstance(epoch, (int, float)):
                continue
            for k, v in row.items():
                if k.startswith("hp/") and isinstance(v, (int, float)):
                    history.setdefault(tid, {}).setdefault(k[3:], []).append((float(epoch), float(v)))
            last[tid] = row
    exploits: dict[str, list[dict[str, Any]]] = {}
    global_log = sweep / "pbt_global.txt"
    lines = global_log.read_text(encoding="utf-8").splitlines() if global_log.is_file() else []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not (isinstance(row, list) and len(row) >= 4):
            continue
        target, donor = (index.get(re.match(r"\d*", str(tag)).group(0)) for tag in row[:2])
        if target is None or donor is None:
            continue
        exploits.setdefault(target, []).append(
            {"epoch": row[2], "donor_trial": donor, "donor_epoch": row[3]})
    return SweepFiles(trials, history, last, exploits)


def _newest_checkpoint(trial_dir: Path) -> Path | None:
    from mrlfads.training.checkpoint import CHECKPOINT_NAME

    found = sorted(trial_dir.glob(f"checkpoint_*/{CHECKPOINT_NAME}"))
    return found[-1] if found else None


def _sweep_page(sweep: Path, options: ReportOptions) -> tuple[str, str, list[Section]]:
    from mrlfads.ramps import best_trial
    from mrlfads.tracking.figures import hparam_figure, lineage_figure, png_bytes
    from mrlfads.tracking.lineage import lineage
    from mrlfads.training.sweep import PLAN_FILE, SUMMARY_FILE

    def read(name: str) -> dict:
        try:
            return json.loads((sweep / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, json.JSONDecodeError) as exc:
            raise ReportError(f"{sweep / name} is not readable JSON ({exc}): is {sweep} a "
                              "sweep directory?") from None

    plan, summary = read(PLAN_FILE), read(SUMMARY_FILE)
    files = read_sweep(sweep)
    sched = ((plan.get("space") or {}).get("scheduler") or {})
    metric, mode = sched.get("metric", "objective"), sched.get("mode", "min")
    best = summary.get("best_trial")
    statuses = summary.get("trials") or {}
    if best is None:
        finished = {t: m for t, m in files.last.items() if not str(statuses.get(t, "")).startswith("ERROR")}
        best = best_trial(finished, metric, mode)
    name = plan.get("name") or sweep.name
    table = [["what", "value"], ["sweep", name], ["directory", str(sweep)],
             ["trials", str(len(files.trials))],
             ["exploits", str(sum(len(v) for v in files.exploits.values()))],
             ["ranked on", f"{metric} ({mode})" + (f": {summary['objective']}"
                                                    if summary.get("objective") else "")],
             ["best trial", best or "none yet"]]
    if not summary:
        table.append(["summary", (f"no {SUMMARY_FILE} yet (the sweep has not finished): the best "
                                 "trial is the best latest result")])
    elif summary.get("unfinished"):
        table.append(["interrupted", (f"{summary['unfinished']} of {len(statuses)} trials did not "
                                      "finish: the best trial so far; `mrlfads sweep --resume` "
                                      "continues the sweep")])
    table += _metric_rows(summary.get("best_metrics") or files.last.get(best, {}))
    table += _baseline_row((summary.get("baseline") or {}).get("valid/smoothing_co_bps"))
    trial_rows = [["trial", "status", "last epoch", metric]]
    for tid in sorted(files.trials):
        row = files.last.get(tid, {})
        value = row.get(metric)
        trial_rows.append([tid + (" (best)" if tid == best else ""),
                           str(statuses.get(tid, "?"))[:80], str(row.get("epoch", "?")),
                           f"{value:.4g}" if isinstance(value, (int, float)) else "?"])
    sections = [Section("Sweep", [], table=table),
                Section("Trials", [], table=trial_rows)]
    if files.history:
        fig = hparam_figure(files.history,
                            exploits={t: [e["epoch"] for e in evs] for t, evs in files.exploits.items()})
        sections.append(Section(
            "PBT hyperparameters",
            [("Each searched hyperparameter over epochs, one line per trial; dots mark the "
             "epochs at which a trial exploited (took a better trial's weights and perturbed "
             "values).")], figures=[("PBT hyperparameter trajectories", png_bytes(fig))]))
    epochs = {t: float(files.last.get(t, {}).get("epoch", 0) or 0) for t in files.trials}
    chain = lineage(files.exploits, best) if best else []
    lineage_text = (" <- ".join([best] + [h["donor_trial"] for h in chain]) if best
                    else "no best trial yet")
    sections.append(Section(
        "Lineage",
        ["Who the best trial's weights came from, newest first: " + lineage_text],
        figures=[("PBT lineage graph", png_bytes(lineage_figure(epochs, files.exploits, best)))]))
    if best is not None:
        ckpt = _newest_checkpoint(files.trials[best]) if best in files.trials else None
        if ckpt is None and summary.get("checkpoint"):
            local = Path(str(summary["checkpoint"])).expanduser()
            ckpt = local if local.is_file() else None
        if ckpt is None:
            sections.append(Section("Best trial", [
                (f"No checkpoint of trial {best} on this machine (looked in "
                f"{files.trials.get(best, sweep)} and the summary's checkpoint): the model "
                "figures need it.")]))
        else:
            sections += _model_sections(ckpt, options, heading="Best trial: ")
    sections += _perturb_sections(options.perturb)
    return f"mrlfads sweep {name}", str(sweep), sections
