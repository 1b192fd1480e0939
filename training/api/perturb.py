"""`Model.perturb`: in-silico perturbation of a fitted model, one per call; `mrlfads perturb`
calls it.

``silence=REGION`` zeroes every message the region sends, ``cut="SRC->DST"`` one pathway,
``silence_inputs=REGION`` the inferred inputs the region receives; ``channels`` narrows any
of them to some message (or input) dimensions. Over trial bins [start, stop) of ``window``,
on the posterior means of ``split`` (docs/MODEL.md, "In-silico perturbation").

Predicted effect per neuron (held-in then held-out, the dataset's columns): the trial mean
of |perturbed - unperturbed rate| from the window's start to the trial's end. When the
dataset holds trials flagged as perturbed (split ``perturbed``, e.g. photoinhibition kept
out of training), the measured effect per neuron is |trial mean of perturbed trials - that
of the control trials| over the same bins, and the report adds the Spearman rank
correlation of predicted against measured effects (all neurons, and per region), beside
that of ranking neurons by their firing rate alone and that of the signed changes
(docs/MODEL.md, "Perturbations").

`Perturbed.save(DIR)` writes report.json (the summary), effects.npz (per-neuron effects and
their time courses) and, with measured effects, predicted_vs_measured.png, atomically.
Errors name the argument as the CLI spells it (``--silence-inputs`` is ``silence_inputs``).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrlfads.config import pathway_pair

if TYPE_CHECKING:
    from mrlfads.training.api.datasets import Dataset
    from mrlfads.training.api.models import Model

EFFECTS_FILE = "effects.npz"
REPORT_FILE = "report.json"
FIGURE_FILE = "predicted_vs_measured.png"


class Perturbed:
    """One perturbation's outcome: ``report`` (what report.json holds: the perturbation,
    the mean |rate change| per region, and with a recorded perturbation the measured change
    and rank correlations) and ``effects`` (``effect/<r>`` per neuron, ``delta/<r>``,
    ``abs_delta/<r>`` and ``base/<r>`` per bin and neuron, ``measured*/<r>`` when measured)."""

    def __init__(self, report: dict[str, Any], effects: dict[str, Any]) -> None:
        self.report, self.effects = report, effects

    def save(self, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """report.json, effects.npz and (with measured effects) the scatter, all or nothing."""
        from mrlfads.training.infer_io import check_out

        out = Path(out)
        check_out(out, overwrite)
        _write(out, self.report, self.effects, list(self.report["mean_abs_rate_change"]),
               overwrite)
        return out

    def __repr__(self) -> str:
        p = self.report["perturbation"]
        change = ", ".join(f"{r} {v:.3g}" for r, v in self.report["mean_abs_rate_change"].items())
        return (f"Perturbed({p['kind']} {p['target']} over bins {p['window'][0]}:"
                f"{p['window'][1]}: mean |rate change| {change})")


def parse_window(window: str | tuple[int, int], n_bins: int, first_bin: int = 0
                 ) -> tuple[int, int]:
    """(start, stop) trial bins from ``"START:STOP"`` or a pair. ``first_bin`` is the
    model's ic_enc_seq_len: bins before it only feed the initial-condition encoder, no
    message is sent there, so a window starting earlier would report (partly or wholly)
    zero effect for bins it never changed."""
    from mrlfads.data_loaders.simulate.perturbation import parse_window as bins

    text = window if isinstance(window, str) else ":".join(map(str, window))
    start, stop = bins(text)
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


def make_perturbation(model_cfg: Any, window: tuple[int, int], *, silence: str | None = None,
                      cut: str | None = None, silence_inputs: str | None = None,
                      channels: str | Iterable[int] | None = None):
    """The `mrlfads.inference.Perturbation` named by exactly one of ``silence``, ``cut`` and
    ``silence_inputs``, checked against the model's regions, pathways and dimensions; a
    ValueError naming the argument and the choices otherwise."""
    from mrlfads.inference import Perturbation

    names = list(model_cfg.region_names)
    given = [k for k, v in (("--silence", silence), ("--cut", cut),
                            ("--silence-inputs", silence_inputs)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"name one perturbation: --silence REGION, --cut SRC->DST or "
                         f"--silence-inputs REGION (got {given or 'none'})")
    if cut is not None:
        src, dst = pathway_pair(cut)
        if not src or not dst:
            raise ValueError(f"--cut {cut!r}: name one pathway as SRC->DST, e.g. "
                             f"--cut '{names[0]}->{names[-1]}' (quote it: '>' is a redirect in a shell)")
        bad = [r for r in (src, dst) if r not in names]
        if bad:
            raise ValueError(f"--cut {cut!r}: {bad[0]!r} is not a region of the model; "
                             f"regions are {names}")
        if src == dst:
            raise ValueError(f"--cut {cut!r}: a region sends no message to itself; name two "
                             f"different regions of {names}")
        kind, target, flag = "cut", f"{src}->{dst}", "--cut"
    elif silence_inputs is not None:
        kind, target, flag = "inputs", silence_inputs, "--silence-inputs"
        if target not in names:
            raise ValueError(f"--silence-inputs {target!r}: not a region of the model; choose "
                             f"from {names}")
        if not model_cfg.inferred_inputs:
            raise ValueError(f"--silence-inputs {target!r}: this model has no inferred inputs "
                             "(model.inferred_inputs is false); silence messages with --silence "
                             "or --cut instead")
    else:
        kind, target, flag = "silence", silence, "--silence"
        if target not in names:
            raise ValueError(f"--silence {target!r}: not a region of the model; choose from {names}")
    if kind != "inputs" and len(names) < 2:
        raise ValueError(f"{flag}: the model has one region ({names[0]}) and so no messages; "
                         "use --silence-inputs")
    width, dim = ((model_cfg.co_dim, "co_dim") if kind == "inputs"
                  else (model_cfg.com_dim, "com_dim"))
    chosen = None
    if channels is not None:
        text = channels if isinstance(channels, str) else ",".join(map(str, channels))
        try:
            chosen = tuple(sorted({int(c) for c in text.split(",")}))
        except ValueError:
            raise ValueError(f"--channels {text!r}: expected comma-separated dimension "
                             f"numbers, e.g. --channels 0,2") from None
        bad = [c for c in chosen if not 0 <= c < width]
        if bad:
            raise ValueError(f"--channels {text!r}: {flag} has dimensions 0..{width - 1} "
                             f"(the model's {dim}={width}); {bad} are outside")
    return Perturbation(kind, target, window, chosen)


def perturb(model: Model, dataset: Dataset | str | os.PathLike, *,
            window: str | tuple[int, int], silence: str | None = None, cut: str | None = None,
            silence_inputs: str | None = None, channels: str | Iterable[int] | None = None,
            split: str = "valid", device: str = "auto", out: str | os.PathLike | None = None,
            overwrite: bool = False) -> Perturbed:
    """Run one perturbation on the trials of ``split`` (module docstring); ``out``, if
    given, is checked before any work and written at the end."""
    from mrlfads.inference import perturbation_effects
    from mrlfads.training.api.datasets import open_dataset
    from mrlfads.training.config import check_against_data
    from mrlfads.training.data import load_split
    from mrlfads.training.loop import resolve_device

    if out is not None:
        from mrlfads.training.infer_io import check_out

        check_out(out, overwrite)
    data_set = open_dataset(dataset)
    m = data_set.manifest
    cfg = model.config.with_overrides({"data.valid_split": split, "data.train_split": split})
    if split not in m.splits or m.splits[split] == 0:
        raise ValueError(f"--split {split!r}: the dataset has no such trials; its splits are "
                         f"{ {k: v for k, v in m.splits.items() if v} }")
    check_against_data(cfg, m)
    win = parse_window(window, m.n_bins, cfg.model.ic_enc_seq_len)
    pert = make_perturbation(cfg.model, win, silence=silence, cut=cut,
                             silence_inputs=silence_inputs, channels=channels)
    dev = resolve_device(device)
    net = model.module.to(dev)
    data = load_split(data_set.arrow, split, dev)
    effects = perturbation_effects(net, data.heldin, data.ext, pert, sessions=data.session)
    names = list(cfg.model.region_names)
    n_in = {r.name: r.n_heldin for r in m.regions}
    report = {
        "perturbation": {"kind": pert.kind, "target": pert.target, "window": list(win),
                         "channels": None if pert.channels is None else list(pert.channels)},
        "window": list(win), "split": split, "trials": data.n_trials,
        # the window in seconds, and what they count from (an ingested session's --align
        # event, or the trial's start): a user thinks of a silencing in seconds
        **_window_seconds(m, win),
        # the mean over trials, reconstructed bins and held-in neurons, per region
        # (NaN-free: a stitched model's neurons whose session has no trials here are NaN)
        "mean_abs_rate_change": {r: _nanmean(effects[f"abs_delta/{r}"][:, : n_in[r]])
                                 for r in names},
        "bins": [cfg.model.ic_enc_seq_len, m.n_bins],
        "neurons": {r.name: {"heldin": r.n_heldin, "heldout": r.n_heldout} for r in m.regions},
        "model": model.source, "data": data_set.uri,
    }
    if pert.kind == "silence":
        report["silenced"] = pert.target
    arrays = dict(effects)
    if m.splits.get("perturbed", 0) > 0:
        measured = measured_effects(data_set.arrow, data, win[0], cfg.model.ic_enc_seq_len, dev)
        arrays.update(measured["arrays"])
        report.update(measured["summary"])
        report.update(compare(effects, measured["arrays"], names,
                              max(win[0] - cfg.model.ic_enc_seq_len, 0)))
    result = Perturbed(report, arrays)
    if out is not None:
        result.save(out, overwrite=overwrite)
    return result


def _window_seconds(m, win: tuple[int, int]) -> dict:
    """``window_s`` [start, stop) in seconds and ``time_from``; {} without a bin width."""
    if not m.bin_width_s:
        return {}
    zero, time_from = m.time_axis
    return {"window_s": [round(zero + b * m.bin_width_s, 9) for b in win],
            "time_from": time_from}


def measured_effects(dataset, control, start: int, tau: int, device) -> dict:
    """Measured effects of the recorded perturbation per neuron (held-in then held-out):
    ``measured_delta/<r>`` (T', N) trial mean of perturbed - control trials over bins
    tau..T-1, ``measured/<r>`` (N,) the mean of its magnitude from ``start`` on, and
    ``control_rate/<r>`` (N,) the control trials' mean count per bin over those bins."""
    import torch

    from mrlfads.sessions import own_session_mean
    from mrlfads.training.data import load_split

    perturbed = load_split(dataset, "perturbed", device)
    masks = dataset.manifest.session_masks()  # region -> (S, N): who recorded which column

    def trial_mean(split, r: int):
        x = torch.cat([split.heldin[r], split.heldout[r]], dim=-1)[:, tau:]
        x = x.double().cpu().numpy()
        if split.session is None:
            return x.mean(axis=0)  # (T', N)
        # several sessions: each neuron over the trials of the session that recorded it
        return own_session_mean(x, masks[names[r]][split.session.cpu().numpy()])

    arrays, per_region = {}, {}
    names = dataset.manifest.region_names
    first = max(start - tau, 0)
    for r, name in enumerate(names):
        rate = trial_mean(control, r)
        delta = trial_mean(perturbed, r) - rate
        arrays[f"measured_delta/{name}"] = delta
        arrays[f"measured/{name}"] = abs(delta[first:]).mean(axis=0)
        arrays[f"control_rate/{name}"] = rate[first:].mean(axis=0)
        per_region[name] = _nanmean(abs(delta[first:]))
    return {"arrays": arrays,
            "summary": {"measured_mean_abs_change": per_region,
                        "perturbed_trials": perturbed.n_trials}}


def _nanmean(a) -> float:
    """Mean over the finite entries (NaN if none)."""
    import numpy as np

    a = np.asarray(a, np.float64)
    return float(a[np.isfinite(a)].mean()) if np.isfinite(a).any() else float("nan")


def compare(effects: dict, measured: dict, names: list[str], first: int = 0) -> dict:
    """Spearman rank correlations of predicted and measured per-neuron effects:

    - ``rank_correlation`` (and ``_by_region``): of the effect sizes (mean |change|);
    - ``rank_correlation_rate_only``: of the control trials' rates with the measured sizes.
      A neuron that fires more changes more in counts, and its measured change carries
      more noise, so ranking neurons by rate alone already correlates; a prediction of
      sizes is informative only above it;
    - ``rank_correlation_signed``: of the signed trial-mean changes (bins ``first`` on of
      the tau..T-1 time courses). Noise has no sign, so this one is not inflated by rates,
      and it asks for the direction of each neuron's change too; ``_by_region`` per region.
      A recording's silencing also suppresses the silenced region's own neurons directly,
      which cutting its messages does not model: there, read the other regions' rows."""
    import numpy as np

    from mrlfads.metrics import rank_correlation

    def rho(p, q):
        keep = np.isfinite(p) & np.isfinite(q)  # neurons of sessions without trials here
        return rank_correlation(p[keep], q[keep]) if keep.sum() >= 2 else float("nan")

    def cat(d, key):  # every region's neurons
        return np.concatenate([d[f"{key}/{r}"] for r in names])

    def signed(d, key, regions=names):  # each neuron's time course averaged from `first` on
        return np.concatenate([np.asarray(d[f"{key}/{r}"])[first:].mean(axis=0)
                               for r in regions])

    sizes = cat(measured, "measured")
    return {"rank_correlation": rho(cat(effects, "effect"), sizes),
            "rank_correlation_rate_only": rho(cat(measured, "control_rate"), sizes),
            "rank_correlation_signed": rho(signed(effects, "delta"),
                                           signed(measured, "measured_delta")),
            "rank_correlation_by_region": {r: rho(effects[f"effect/{r}"], measured[f"measured/{r}"])
                                           for r in names},
            "rank_correlation_signed_by_region": {
                r: rho(signed(effects, "delta", [r]), signed(measured, "measured_delta", [r]))
                for r in names}}


def _write(out: Path, report: dict, arrays: dict, names: list[str], overwrite: bool) -> None:
    """report.json, effects.npz and (with measured effects) the scatter, all or nothing."""
    import numpy as np

    from mrlfads.training.infer_io import _json_safe, staged_dir

    with staged_dir(out, overwrite) as tmp:
        body = dict(report, effects_file=EFFECTS_FILE)
        if "rank_correlation" in report:
            from mrlfads.tracking.figures import perturbation_scatter

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
