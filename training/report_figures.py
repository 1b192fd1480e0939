"""The figures a person looks at after a fit, from the model run on validation trials:
condition-averaged PSTHs (data against model), rate heatmaps, latent trajectories (PCA of
factors), messages and inferred inputs by condition (in the truth's coordinates when the
truth is known), the effectome (cut, the default, and message RMS; truth and inferred-input
magnitude beside it) and one example trial.

``fit_view`` runs the model once (posterior means) and keeps what the figures need;
``figure_set`` reduces it (training/figure_data.py) and draws (tracking/fit_figures.py,
tracking/figures.py). Logged at the end of `mrlfads train`, of every sweep trial and on
`mrlfads promote`; inlined into `mrlfads report`'s page.
"""
from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrlfads.training import figure_data as fd

# Validation trials run through the model for the figures: condition averages need many,
# a report must stay quick.
VIEW_TRIALS = 256
# The cut effectomes cost one forward pass per pathway (or region) on this many trials.
EFFECT_TRIALS = 64
N_NEURONS = 4  # most active neurons per region in the PSTH figure by default
MAX_PATHWAYS = 12  # rows of the messages figure: R (R - 1) pathways grow fast


@dataclass
class FitView:
    """The model's posterior means on (the first ``VIEW_TRIALS``) validation trials and
    the data they are compared with, all over the bins the model reconstructs (tau..T-1).

    ``data``/``rates`` per region hold held-in then held-out neurons (the dataset's column
    order; a stitched session's view only the columns its session recorded, ``columns``
    saying which); messages are keyed ``"src->dst"``; truths only where the dataset has
    them."""

    regions: list[str]
    t: np.ndarray  # (T',) time of each bin from the trial's start
    time_label: str
    unit: str  # of data and rates as drawn
    scale: float  # data and rates are multiplied by this to be in ``unit``
    groups: list[tuple[str, np.ndarray]]
    data: dict[str, np.ndarray]
    rates: dict[str, np.ndarray]
    factors: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    messages: dict[str, np.ndarray] = field(default_factory=dict)
    true_messages: dict[str, np.ndarray] = field(default_factory=dict)
    true_inputs: dict[str, np.ndarray] = field(default_factory=dict)
    effectome: np.ndarray | None = None  # the cut effectome
    message_rms: np.ndarray | None = None
    truth_comm: np.ndarray | None = None
    input_effect: dict[str, list[float]] | None = None
    # per region, the dataset column (held-in first, then held-out) of each column of
    # ``data``/``rates``; a region not here shows every column in order
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    def column_ids(self, region: str) -> np.ndarray:
        """The dataset column of each of ``region``'s columns in ``data``/``rates``."""
        ids = self.columns.get(region)
        return np.arange(self.data[region].shape[-1]) if ids is None else ids


@dataclass
class ModelFigure:
    """One figure: file stem, section title, what it shows, and the drawing."""

    name: str
    title: str
    caption: str
    figure: Any


def fit_views(model: Any, dataset: Any, run_cfg: Any, max_trials: int = VIEW_TRIALS
              ) -> list[tuple[str, FitView]]:
    """``[("", fit_view(...))]``; a stitched model gets one view per session with validation
    trials, labelled with the session's name (its trials, the neurons it recorded)."""
    sessions = run_cfg.model.sessions
    if not sessions:
        return [("", fit_view(model, dataset, run_cfg, max_trials))]
    from mrlfads.training.data import load_split

    device = next(model.parameters()).device
    data = load_split(dataset, run_cfg.data.valid_split, device, with_truth=True)
    return [(sessions[k].name, fit_view(model, dataset, run_cfg, max_trials, session=k,
                                        data=data))
            for k, _ in data.session_groups()]


def fit_view(model: Any, dataset: Any, run_cfg: Any, max_trials: int = VIEW_TRIALS,
             effect_trials: int = EFFECT_TRIALS, session: int | None = None,
             data: Any = None) -> FitView:
    """Run ``model`` on the first ``max_trials`` trials of the validation split (of
    ``session``'s trials and neurons, for a stitched model); ``data``: that split, when
    the caller has already read it (with truth)."""
    import torch

    from mrlfads import metrics as M
    from mrlfads.data_loaders import schema
    from mrlfads.effectome import cut_effectome, input_cut_effectome, input_rms
    from mrlfads.training.data import load_split
    from mrlfads.training.evaluate import collect_outputs

    m = dataset.manifest
    device = next(model.parameters()).device
    if data is None:
        data = load_split(dataset, run_cfg.data.valid_split, device, with_truth=True)
    if session is not None and data.session is not None:
        data = data.subset(torch.nonzero(data.session == session).flatten())
    data = data.head(max_trials)
    outputs, _ = collect_outputs(model, data, run_cfg, epoch=run_cfg.train.epochs)
    names = list(run_cfg.model.region_names)
    columns = {}  # region -> the dataset columns shown (held-in, then held-out); all if absent
    if session is not None and run_cfg.model.sessions:  # only the neurons it recorded
        rec_in, rec_out = model.recorded(session)
        columns = {n: np.concatenate([np.flatnonzero(rec_in[r].cpu().numpy()),
                                      rec_in[r].numel() + np.flatnonzero(rec_out[r].cpu().numpy())])
                   for r, n in enumerate(names)}
    tau = run_cfg.model.ic_enc_seq_len
    poisson = run_cfg.model.obs_model == "poisson"
    bw = float(m.bin_width_s or 0.0)
    scale = 1.0 / bw if poisson and bw > 0 else 1.0
    unit = ("spikes/s" if bw > 0 else "spikes/bin") if poisson else "data units"
    start_s, time_from = m.time_axis
    t = start_s + np.arange(tau, m.n_bins) * bw if bw > 0 else np.arange(tau, m.n_bins) * 1.0

    def numpy(x):
        return x[:, tau:].detach().float().cpu().numpy()

    def shown(n, heldin, heldout):  # (trials, T', neurons) of region n, the columns shown
        both = np.concatenate([heldin, heldout], axis=-1)
        return both[..., columns[n]] if n in columns else both

    view = FitView(
        regions=names, t=t, time_label=f"time from {time_from} (s)" if bw > 0 else "bin",
        unit=unit, scale=scale, groups=fd.condition_groups(data.condition, data.n_trials),
        data={n: shown(n, numpy(data.heldin[r]), numpy(data.heldout[r]))
              for r, n in enumerate(names)},
        rates={n: shown(n, outputs[f"rates/{n}"], outputs[f"heldout_rates/{n}"]) for n in names},
        factors={n: outputs[f"factors/{n}"] for n in names},
        inputs={n: outputs[f"inputs/{n}"] for n in names if f"inputs/{n}" in outputs},
        messages={k.split("/", 1)[1]: v for k, v in outputs.items() if k.startswith("messages/")},
        columns=columns)
    for col, arr in data.truth.items():
        pair = schema.parse_message_col(col)
        if pair is not None and f"{pair[0]}->{pair[1]}" in view.messages and arr.shape[-1] > 0:
            view.true_messages[f"{pair[0]}->{pair[1]}"] = np.asarray(arr[:, tau:], dtype=float)
    for n in view.inputs:
        arr = data.truth.get(schema.truth_inputs_col(n))
        if arr is not None and arr.shape[-1] > 0:
            view.true_inputs[n] = np.asarray(arr[:, tau:], dtype=float)
    if m.comm_matrix is not None and np.any(m.comm_matrix):
        view.truth_comm = np.asarray(m.comm_matrix, dtype=float)
    head = data.head(effect_trials)
    if view.messages:
        view.effectome = cut_effectome(model, head.heldin, head.ext, sessions=head.session)
        view.message_rms = M.effectome(
            {tuple(k.split("->")): v for k, v in view.messages.items()}, names)
    if view.inputs and len(view.inputs) == len(names):
        view.input_effect = {
            "readout change when silenced": [float(v) for v in
                                             input_cut_effectome(model, head.heldin, head.ext,
                                                                 sessions=head.session)],
            "RMS of the inputs": [float(v) for v in input_rms(view.inputs, names)]}
    return view


def check_neurons(counts: Mapping[str, int], neurons: Mapping[str, Sequence[int]]) -> None:
    """A ValueError naming the first asked-for neuron that a region (``counts``: its
    neurons, held-in plus held-out) does not have, or a region the model does not have."""
    for region, asked in neurons.items():
        if region not in counts:
            raise ValueError(f"--neurons {region}:...: not a region of the model; regions are "
                             f"{list(counts)}")
        bad = [i for i in asked if not 0 <= int(i) < counts[region]]
        if bad:
            raise ValueError(f"--neurons {region}:{','.join(map(str, asked))}: region {region} "
                             f"has neurons 0..{counts[region] - 1} (held-in first, then "
                             f"held-out); {bad} are outside")


def choose_neurons(view: FitView, neurons: Mapping[str, Sequence[int]] | None = None,
                   n_neurons: int = N_NEURONS) -> dict[str, list[int]]:
    """The neurons the PSTH figure shows per region, as positions among the view's columns:
    those asked for (dataset columns, held-in first; a stitched session's view keeps those
    its session recorded), else the ``n_neurons`` most active (highest mean activity over
    validation trials and bins)."""
    if not view.columns:  # (a session's view: the caller checks against every neuron)
        check_neurons({r: view.data[r].shape[-1] for r in view.regions}, neurons or {})
    chosen = {}
    for r in view.regions:
        if neurons and r in neurons:
            at = {int(c): i for i, c in enumerate(view.column_ids(r))}
            chosen[r] = [at[int(i)] for i in neurons[r] if int(i) in at]
        else:
            chosen[r] = [int(i) for i in fd.most_active(view.data[r], n_neurons)]
    return chosen


def aligned_series(inferred: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray],
                   groups) -> tuple[dict, dict, dict, dict]:
    """Condition averages to draw: each inferred signal in the truth's coordinates where
    the truth is known (``figure_data.align_to_truth``), else as inferred; the truth's
    averages (None where unknown); a title per signal; the cross-validated R^2 of the same
    regression (message_r2's) per signal with a truth and at least 4 trials."""
    from mrlfads import metrics as M

    shown, true, titles, scores = {}, {}, {}, {}
    for name, x in inferred.items():
        y = truth.get(name)
        if y is None:
            shown[name], true[name] = fd.condition_means(x, groups), None
            titles[name] = "inferred (no truth: arbitrary basis)"
            continue
        aligned, _ = fd.align_to_truth(x, y)
        shown[name], true[name] = fd.condition_means(aligned, groups), fd.condition_means(y, groups)
        titles[name] = "fitted linear map"
        if x.shape[0] >= 4:
            scores[name] = M.message_r2({"a->b": x}, {"a->b": y})["a->b"]
            titles[name] += f", CV R\u00b2 {scores[name]:.2f}"
    return shown, true, titles, scores


def pathways_shown(view: FitView, limit: int = MAX_PATHWAYS) -> list[str]:
    """The pathways the messages figure draws: those with a known truth first, then by the
    cut effectome, strongest first (ties and without an effectome: in the model's order)."""
    names = view.regions

    def strength(pathway: str) -> float:
        if view.effectome is None:
            return 0.0
        src, dst = pathway.split("->")
        value = float(view.effectome[names.index(dst), names.index(src)])
        return value if np.isfinite(value) else 0.0

    order = sorted(view.messages, key=lambda p: (p not in view.true_messages, -strength(p)))
    return order[:limit]


def _scores_text(scores: Mapping[str, float]) -> str:
    return ("" if not scores else " Cross-validated R\u00b2: "
            + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()) + ".")


def figure_set(view: FitView, neurons: Mapping[str, Sequence[int]] | None = None,
               n_neurons: int = N_NEURONS) -> list[ModelFigure]:
    """Every model figure of ``view``, in reading order."""
    from mrlfads.tracking import figures
    from mrlfads.tracking import fit_figures as ff

    labels = [c for c, _ in view.groups]
    regions = view.regions
    # the neuron figures show the regions with recorded neurons (a stitched model's session
    # view can lack a region); the latent and message figures show every region
    observed = [r for r in regions if view.data[r].shape[-1] > 0]
    chosen = choose_neurons(view, neurons, n_neurons)
    ids = {r: [int(view.column_ids(r)[i]) for i in chosen[r]] for r in regions}
    unrecorded = {r: [int(i) for i in neurons[r] if int(i) not in ids[r]]
                  for r in regions if neurons and r in neurons}
    unrecorded = {r: v for r, v in unrecorded.items() if v}
    data_avg = {r: fd.condition_means(view.data[r], view.groups) * view.scale for r in observed}
    rate_avg = {r: fd.condition_means(view.rates[r], view.groups) * view.scale for r in observed}
    cond = (f"{len(labels)} condition(s)" if labels != [fd.ALL_TRIALS]
            else "no condition labels: every trial together")
    n_trials = view.data[observed[0]].shape[0]
    out = [ModelFigure(
        "psth", "Condition-averaged PSTHs",
        f"Data (thin) against model rates (thick), averaged over the trials of each condition "
        f"({n_trials} validation trials, {cond}); neurons: "
        + "; ".join(f"{r} {ids[r]}" for r in observed)
        + (" (the most active by default)" if not neurons else "")
        + ("; not recorded in this session: " + "; ".join(f"{r} {v}" for r, v in
                                                            unrecorded.items())
           if unrecorded else ""),
        ff.psth_figure({r: data_avg[r][..., chosen[r]] for r in observed},
                       {r: rate_avg[r][..., chosen[r]] for r in observed},
                       {r: ids[r] for r in observed}, labels,
                       view.t, view.unit, view.time_label))]
    out.append(ModelFigure(
        "rates_heatmap", "Rate heatmap",
        "Every neuron's condition-averaged activity, data beside model on one colour scale "
        "per region; conditions end to end, neurons ordered by the model's peak time.",
        ff.rate_heatmap_figure(data_avg, rate_avg, labels, view.unit)))
    projections, explained = {}, {}
    for r in regions:
        comps, mean, ev = fd.pca(view.factors[r], 2)
        projections[r] = fd.project(fd.condition_means(view.factors[r], view.groups), comps, mean)
        explained[r] = ev
    out.append(ModelFigure(
        "latents", "Latent trajectories",
        "Each region's factors projected on their first two principal components (fitted on "
        "every validation trial and bin), averaged by condition; a dot marks the first bin.",
        ff.latent_figure(projections, labels, explained)))
    if view.messages:
        drawn = pathways_shown(view)
        shown, true, titles, scores = aligned_series({p: view.messages[p] for p in drawn},
                                                     view.true_messages, view.groups)
        left_out = len(view.messages) - len(drawn)
        out.append(ModelFigure(
            "messages", "Messages",
            (f"{len(drawn)} of {len(view.messages)} pathways (those with a known truth, then "
             "the strongest by the cut effectome). " if left_out else "")
            + "Message means by condition. Messages are identified only up to a linear map: "
            "where the truth is known, the inferred message is shown through the least-squares "
            "map (with intercept) onto the true one, the regression message_r2 scores "
            "(cross-validated R\u00b2 in each title); dashed: the truth." + _scores_text(scores),
            ff.time_course_figure(shown, true, labels, view.t, titles, "messages",
                                  view.time_label)))
    if view.inputs:
        shown, true, titles, scores = aligned_series(view.inputs, view.true_inputs, view.groups)
        out.append(ModelFigure(
            "inputs", "Inferred inputs",
            "Inferred inputs (from unobserved regions) by condition, through the fitted linear "
            "map onto the true inputs where they are known (dashed)." + _scores_text(scores),
            ff.time_course_figure(shown, true, labels, view.t, titles, "inferred inputs",
                                  view.time_label)))
    if view.effectome is not None:
        out.append(ModelFigure(
            "effectome", "Effectome",
            "The cut effectome: E[r, s] = RMS change of region r's predicted activity when "
            "the pathway s -> r alone is silenced, on a colour scale from 0"
            + ("; the true communication matrix beside it" if view.truth_comm is not None else "")
            + ("; bars: the inferred inputs' magnitude per region" if view.input_effect else "")
            + ".",
            figures.effectome_figure(view.effectome, regions, truth=view.truth_comm,
                                     title=figures.EFFECTOME_PREFIXES["effectome_cut/"],
                                     inputs=view.input_effect)))
        out.append(ModelFigure(
            "effectome_message_rms", "Effectome (message RMS)",
            "The paper's effectome, the RMS of the message means; a message's scale is not "
            "identified, so read its ranking with care.",
            figures.effectome_figure(view.message_rms, regions, truth=view.truth_comm,
                                     title=figures.EFFECTOME_PREFIXES["effectome/"])))
    first = {r: view.rates[r][0] * view.scale for r in observed}
    trial0 = {r: view.data[r][0] * view.scale for r in observed}
    out.append(ModelFigure(
        "rates_vs_data", "Example trial",
        "Validation trial 0: data (grey) against the model's rates, first neurons per region.",
        figures.rates_vs_data_figure(first, trial0, t=view.t, title="validation trial 0")))
    return out


def make_model_figures(model: Any, dataset: Any, run_cfg: Any, out_dir: str | Path,
                       n_trials: int = VIEW_TRIALS) -> list[Path]:
    """Write the PNGs for ``model`` on the first validation trials; returns their paths."""
    from mrlfads.tracking import figures

    return [figures.save(f.figure, Path(out_dir) / f"{f.name}{'_' + label if label else ''}.png")
            for label, view in fit_views(model, dataset, run_cfg, max_trials=n_trials)
            for f in figure_set(view)]


def log_model_figures(log_artifact, model: Any, dataset: Any, run_cfg: Any) -> None:
    """Draw the figures into a temporary folder and hand each to ``log_artifact(path, dir)``."""
    with tempfile.TemporaryDirectory() as tmp:
        for path in make_model_figures(model, dataset, run_cfg, tmp):
            log_artifact(str(path), "figures")


def checkpoint_figures(checkpoint: str, out_dir: str | Path) -> list[Path]:
    """The figures of a sweep trial's checkpoint (a Tune checkpoint folder, local or
    remote), on the data its run config names: what the sweep's tracking callback logs on
    each trial's run when the trial ends."""
    import os

    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.training.checkpoint import load_model
    from mrlfads.training.config import RunConfig

    path = os.path.expanduser(str(checkpoint).removeprefix("file://"))
    if "://" in path:  # on the sweep's remote storage: Tune fetches it
        from ray.tune import Checkpoint

        with Checkpoint(path).as_directory() as local:
            model, run_cfg, _ = load_model(local)
    else:
        model, run_cfg, _ = load_model(path)  # a checkpoint folder or file
    cfg = RunConfig.from_dict(run_cfg)
    return make_model_figures(model, ArrowDataset.open(cfg.data.uri), cfg, out_dir)
