"""Validation: outputs over a split (posterior means, or averaged posterior samples), the
loss terms and every metric.

Used each epoch by the Trainer and by `mrlfads infer`; the metric keys are the ones in
docs/DESIGN.md, which tracking logs unchanged.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from mrlfads import metrics as M
from mrlfads.data_loaders import schema
from mrlfads.effectome import cut_effectome
from mrlfads.loss import compute_loss, recon_terms
from mrlfads.model import MRLFADS
from mrlfads.training.data import SplitTensors
from mrlfads.training.masks import validation_inputs

EVAL_BATCH = 256
# The cut effectome costs one forward pass per pathway: it is computed on this many
# validation trials, which pin an RMS over trials x bins x neurons down well.
EFFECT_TRIALS = 64


@torch.no_grad()
def collect_outputs(model: MRLFADS, data: SplitTensors, run_cfg: Any, epoch: int,
                    batch_size: int = EVAL_BATCH, *, samples: int = 0,
                    sv_hidden: list[torch.Tensor] | None = None
                    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Outputs of every trial as numpy, plus trial-weighted mean loss terms.

    ``samples=0`` (the default) runs the model once with posterior means. ``samples=N >= 1``
    runs it N times drawing posterior samples (dropout off) and averages each output over
    the runs (lfads-torch's posterior averaging): rates, held-out rates, factors, inputs and
    messages are the N-run means, ``readout``/``heldout`` the log of the mean rates
    (Poisson) or the mean of the means (Gaussian), and the loss terms the N-run means.
    ``sv_hidden`` (the split's sample-validation masks, training/masks.py) hides those
    elements from the encoders and adds the terms ``sv_recon/<r>`` and ``sv_recon_loss``.

    Output keys: ``readout/<r>``, ``rates/<r>``, ``heldout/<r>``, ``heldout_rates/<r>``,
    ``factors/<r>``, ``inputs/<r>`` (when the model has inferred inputs),
    ``messages/<src>-><dst>``; all (trials, T - tau, dim).
    """
    if samples < 0:
        raise ValueError(f"samples={samples}: use 0 for posterior means or N >= 1 posterior "
                         "samples to average")
    was_training = model.training
    model.eval()
    names = model.cfg.region_names
    poisson = model.cfg.obs_model == "poisson"
    sv_rate = float(getattr(run_cfg.train, "sv_rate", 0.0)) if sv_hidden is not None else 0.0
    passes = max(samples, 1)
    parts: dict[str, list[np.ndarray]] = {}
    totals: dict[str, float] = {}

    def numpy(value: torch.Tensor) -> np.ndarray:
        return value.detach().float().cpu().numpy()

    order = []
    batches = [(session, rows[i:i + batch_size]) for session, rows in data.session_groups()
               for i in range(0, rows.numel(), batch_size)]
    for session, idx in batches:  # one session per batch (stitched models)
        order.append(idx)
        heldin, heldout, ext = data.batch(idx)
        shown, weight, sv_weight = validation_inputs(
            heldin, sv_rate, None if sv_hidden is None else [m[idx] for m in sv_hidden])
        sums: dict[str, np.ndarray] = {}
        for _ in range(passes):
            extra = {"session": session} if model.cfg.sessions else {}  # stitched models
            out = model(shown, ext, sample=samples > 0, **extra, **data.intervention_kwargs(idx))
            terms = compute_loss(out, heldin, heldout, run_cfg.loss, epoch, recon_weight=weight)
            scalars = terms.scalars()
            if sv_weight is not None:
                sv_terms = recon_terms(out, heldin, sv_weight)
                scalars.update({f"sv_recon/{n}": float(v) for n, v in zip(names, sv_terms)})
                scalars["sv_recon_loss"] = float(sum(sv_terms))
            for key, value in scalars.items():
                totals[key] = totals.get(key, 0.0) + value * len(idx) / passes
            batch = {}
            for r, name in enumerate(names):
                batch[f"rates/{name}"] = out.rates[r]
                ho = out.heldout_readout[r]
                batch[f"heldout_rates/{name}"] = torch.exp(ho) if poisson else ho
                batch[f"factors/{name}"] = out.factors[r]
                if out.co_mean is not None:
                    batch[f"inputs/{name}"] = out.co_mean[r]
                if passes == 1:  # exact posterior-mean readouts (no log(exp(x)) round trip)
                    batch[f"readout/{name}"] = out.readout[r]
                    batch[f"heldout/{name}"] = ho
            if out.msg_mean is not None:
                for p, (s, d) in enumerate(out.pairs):
                    batch[f"messages/{names[s]}->{names[d]}"] = out.msg_mean[:, :, p]
            for key, value in batch.items():
                v = numpy(value)
                sums[key] = v if key not in sums else sums[key] + v
        for key, value in sums.items():
            parts.setdefault(key, []).append(value / passes if passes > 1 else value)
        if passes > 1:
            for name in names:
                for rate_key, key in ((f"rates/{name}", f"readout/{name}"),
                                      (f"heldout_rates/{name}", f"heldout/{name}")):
                    mean = parts[rate_key][-1]
                    parts.setdefault(key, []).append(np.log(mean) if poisson else mean)
    model.train(was_training)
    outputs = {k: np.concatenate(v) for k, v in parts.items()}
    trials = torch.cat(order).cpu().numpy() if order else np.zeros(0, dtype=np.int64)
    if not np.array_equal(trials, np.arange(len(trials))):  # sessions: back to trial order
        back = np.argsort(trials)
        outputs = {k: v[back] for k, v in outputs.items()}
    return outputs, {k: v / data.n_trials for k, v in totals.items()}


def score(outputs: dict[str, np.ndarray], data: SplitTensors, model_cfg: Any,
          comm_matrix: Any = None) -> dict[str, float]:
    """Reconstruction, held-out, PSTH, effectome and (with ground truth) recovery metrics.

    Poisson data: ``valid/bps/<r>`` (held-in) and ``valid/co_bps/<r>`` (held-out) are
    ``mrlfads.metrics.bits_per_spike`` with the Neural Latents Benchmark's null (each
    neuron's mean over the trials scored here); ``valid/bps`` and ``valid/co_bps`` pool
    every region's neurons the same way (spike-weighted). Gaussian data: ``valid/r2/<r>``
    and ``valid/heldout_r2/<r>``. With at least 2 conditions of ``PSTH_MIN_TRIALS`` trials:
    ``valid/psth_r2/<r>`` and ``valid/heldout_psth_r2/<r>`` (``mrlfads.metrics.psth_r2``),
    and the pooled ``valid/psth_r2`` and ``valid/heldout_psth_r2``.
    """
    tau = model_cfg.ic_enc_seq_len
    names = list(model_cfg.region_names)
    if model_cfg.sessions and data.session is not None:
        out = _session_scores(outputs, data, model_cfg)
    else:
        out = _reconstruction_scores(outputs, data, model_cfg)
    if len(names) > 1 and any(k.startswith("messages/") for k in outputs):
        messages = {tuple(k.split("/", 1)[1].split("->")): v
                    for k, v in outputs.items() if k.startswith("messages/")}
        E = M.effectome(messages, names)
        out.update(M.effectome_metrics(E, names))
        out.update(effectome_truth_scores(E, comm_matrix, "effectome"))
        out.update(_truth_scores(messages, outputs, data, names, tau))
    if model_cfg.obs_model == "poisson" and not model_cfg.sessions:
        out.update(_rate_truth_scores(outputs, data, names, tau))
    return out


def _rate_truth_scores(outputs, data, names, tau) -> dict[str, float]:
    """``valid/rate_r2/<r>``: R^2 of every neuron's predicted rate (held-in, then held-out)
    against its true rate, where the data has it (simulated spikes); ``valid/rate_r2``
    pools every region's neurons (variance-weighted)."""
    pairs = []
    for name in names:
        col = schema.truth_rates_col(name)
        if col not in data.truth or f"rates/{name}" not in outputs:
            continue
        pred = outputs[f"rates/{name}"]
        if f"heldout_rates/{name}" in outputs:
            pred = np.concatenate([pred, outputs[f"heldout_rates/{name}"]], axis=-1)
        true = data.truth[col][:, tau:]
        if true.shape == pred.shape and true.shape[-1]:
            pairs.append((name, true.reshape(-1, true.shape[-1]), pred.reshape(-1, pred.shape[-1])))
    if not pairs or data.n_trials < 2:
        return {}
    out = {f"valid/rate_r2/{name}": float(M.r2(t, p)) for name, t, p in pairs}
    out["valid/rate_r2"] = float(M.r2(np.concatenate([t for _, t, _ in pairs], axis=1),
                                      np.concatenate([p for _, _, p in pairs], axis=1)))
    return out


def _reconstruction_scores(outputs: dict[str, np.ndarray], data: SplitTensors, model_cfg: Any,
                           weights: dict[str, float] | None = None) -> dict[str, float]:
    """The reconstruction, held-out and PSTH metrics of ``score`` (every neuron of ``data``
    counts). ``weights``, when given, receives each key's pooling weight across sessions:
    its spikes (bits per spike) or its number of values (R^2)."""
    tau = model_cfg.ic_enc_seq_len
    names = list(model_cfg.region_names)
    poisson = model_cfg.obs_model == "poisson"
    out: dict[str, float] = {}
    weights = {} if weights is None else weights
    pooled: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    conditions = data.condition
    use_psth = conditions is not None and len(M.condition_groups(conditions)) >= 2
    for r, name in enumerate(names):
        x = data.heldin[r][:, tau:].cpu().numpy()  # (trials, T', N)
        y = data.heldout[r][:, tau:].cpu().numpy()  # (trials, T', H)
        scored = [("", x, f"readout/{name}", f"rates/{name}")] if x.shape[-1] else []
        if y.shape[-1]:
            scored.append(("heldout_", y, f"heldout/{name}", f"heldout_rates/{name}"))
        for prefix, d, readout_key, rates_key in scored:
            if poisson:
                key = "valid/co_bps" if prefix else "valid/bps"
                out[f"{key}/{name}"] = float(M.bits_per_spike(d, outputs[readout_key]))
                weights[f"{key}/{name}"] = float(d.sum())
                pooled.setdefault(key, []).append((d, outputs[readout_key]))
            else:
                out[f"valid/{prefix}r2/{name}"] = float(M.r2(d, outputs[readout_key]))
                weights[f"valid/{prefix}r2/{name}"] = float(d.size)
            if use_psth:
                key = f"valid/{prefix}psth_r2"
                out[f"{key}/{name}"] = float(M.psth_r2(d, outputs[rates_key], conditions))
                weights[f"{key}/{name}"] = float(d.size)
                pooled.setdefault(key, []).append((d, outputs[rates_key]))
    for key, pairs in pooled.items():
        d = np.concatenate([p[0] for p in pairs], axis=-1)  # every region's neurons
        pred = np.concatenate([p[1] for p in pairs], axis=-1)
        if key.endswith("bps"):
            out[key] = float(M.bits_per_spike(d, pred))
            weights[key] = float(d.sum())
        else:
            out[key] = float(M.psth_r2(d, pred, conditions))
            weights[key] = float(d.size)
    return out


def _session_scores(outputs: dict[str, np.ndarray], data: SplitTensors,
                    model_cfg: Any) -> dict[str, float]:
    """A stitched model's reconstruction metrics: per session, over its trials and the
    neurons it recorded, as ``valid/session/<name>/<metric>``; and pooled, as the usual
    keys: each key's per-session values weighted by that session's spikes (bits per spike:
    exactly the bits per spike of all sessions' neurons scored together, each against its
    own session's null) or number of values (R^2)."""
    from mrlfads.sessions import session_masks

    names = list(model_cfg.region_names)
    n_max = max(r.n_heldin for r in model_cfg.regions)
    h_max = max(r.n_heldout for r in model_cfg.regions)
    rec_in, rec_out = session_masks(model_cfg, n_max, h_max)
    out: dict[str, float] = {}
    sums: dict[str, list[float]] = {}
    for s, rows in data.session_groups():
        sname = model_cfg.sessions[s].name
        sub = data.subset(rows)
        host = rows.cpu().numpy()
        sub_out = {}
        for r, name in enumerate(names):
            cin = rec_in[s, r, : model_cfg.regions[r].n_heldin].bool()
            cout = rec_out[s, r, : model_cfg.regions[r].n_heldout].bool()
            sub.heldin[r], sub.heldout[r] = sub.heldin[r][..., cin], sub.heldout[r][..., cout]
            for key, cols in ((f"readout/{name}", cin), (f"rates/{name}", cin),
                              (f"heldout/{name}", cout), (f"heldout_rates/{name}", cout)):
                sub_out[key] = outputs[key][host][..., cols.numpy()]
        weights: dict[str, float] = {}
        scores = _reconstruction_scores(sub_out, sub, model_cfg, weights)
        for key, value in scores.items():
            out[f"valid/session/{sname}/{key[len('valid/'):]}"] = value
            if np.isfinite(value) and weights.get(key, 0) > 0:
                acc = sums.setdefault(key, [0.0, 0.0])
                acc[0] += value * weights[key]
                acc[1] += weights[key]
    for key, (total, weight) in sums.items():
        out[key] = total / weight
    return out


def effectome_truth_scores(E: np.ndarray, comm_matrix: Any, name: str) -> dict[str, float]:
    """``valid/<name>_cosine`` with the true communication matrix and
    ``valid/<name>_separation`` = weakest present pathway / strongest absent one (above 1:
    every present pathway ranks above every absent one); nothing when the truth is unknown."""
    if comm_matrix is None or not np.any(np.asarray(comm_matrix)):
        return {}
    truth = np.asarray(comm_matrix, dtype=float)
    off = ~np.eye(len(truth), dtype=bool)
    out: dict[str, float] = {}
    present, absent = E[off & (truth > 0)], E[off & (truth == 0)]
    if not np.all(np.isfinite(E[off])):  # not computed: NaN, so every epoch has the same keys
        out[f"valid/{name}_cosine"] = float("nan")
        if len(absent):
            out[f"valid/{name}_separation"] = float("nan")
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out[f"valid/{name}_cosine"] = float(M.effectome_cosine(E, truth))
    if len(absent):
        weakest, strongest = float(present.min()), float(absent.max())
        out[f"valid/{name}_separation"] = (weakest / strongest if strongest > 0
                                           else float("inf") if weakest > 0 else float("nan"))
    return out


def cut_effectome_metrics(model: MRLFADS, data: SplitTensors, comm_matrix: Any = None,
                          max_trials: int = EFFECT_TRIALS,
                          compute: bool = True, cut_effects: Any = None) -> dict[str, float]:
    """The cut effectome (``mrlfads.effectome.cut_effectome``: the target's readout change
    when one pathway is silenced) on the split's first ``max_trials`` trials, as
    ``effectome_cut/<s>_to_<r>`` plus its truth scores. One forward pass per pathway.

    ``cut_effects`` (a simulated dataset's ``manifest.cut_effects``: the network's own cut
    effectome) adds ``valid/effectome_cut_effect_cosine``, the cosine with what a perfect fit
    would measure.

    ``compute=False`` gives the same keys, all NaN, at no cost: Tune's progress.csv takes
    its columns from a trial's first report (and, on resume, from the first report after
    it), so every epoch must report the same keys."""
    names = list(model.cfg.region_names)
    if len(names) < 2:
        return {}
    if compute:
        head = data.head(max_trials) if data.session is None else _spread(data, max_trials)
        E = cut_effectome(model, head.heldin, head.ext, sessions=head.session)
    else:
        E = np.full((len(names), len(names)), np.nan)
    out = M.effectome_metrics(E, names, prefix="effectome_cut/")
    out.update(effectome_truth_scores(E, comm_matrix, "effectome_cut"))
    if cut_effects is not None and np.any(np.asarray(cut_effects)):
        off = ~np.eye(len(names), dtype=bool)
        out["valid/effectome_cut_effect_cosine"] = (
            float(M.effectome_cosine(E, cut_effects)) if np.all(np.isfinite(E[off]))
            else float("nan"))
    return out


def _spread(data: SplitTensors, n: int) -> SplitTensors:
    """About ``n`` trials with every session's share: its first trials, in proportion."""
    groups = data.session_groups()
    take = [rows[: max(1, round(n * rows.numel() / data.n_trials))] for _, rows in groups]
    return data.subset(torch.cat(take))


def _truth_scores(messages, outputs, data, names, tau) -> dict[str, float]:
    """Message R^2 and inferred-input R^2 where the data has ground truth."""
    out: dict[str, float] = {}
    true_msgs = {}
    for col, arr in data.truth.items():
        pair = schema.parse_message_col(col)
        if pair is not None and pair in messages and arr.shape[-1] > 0:
            true_msgs[pair] = arr[:, tau:]
    if true_msgs and data.n_trials >= 4:
        inferred = {p: messages[p] for p in true_msgs}
        scores = M.message_r2(inferred, true_msgs)
        out["valid/message_r2"] = float(scores["mean"])
        for (s, d), value in ((k, v) for k, v in scores.items() if k != "mean"):
            out[f"valid/message_r2/{s}_to_{d}"] = float(value)
    true_inputs = {name: data.truth[schema.truth_inputs_col(name)][:, tau:]
                   for name in names if schema.truth_inputs_col(name) in data.truth}
    if true_inputs and all(f"inputs/{n}" in outputs for n in true_inputs) and data.n_trials >= 4:
        scores = M.inferred_input_r2({n: outputs[f"inputs/{n}"] for n in true_inputs}, true_inputs)
        out["valid/input_r2"] = float(scores["mean"])
    return out


def evaluate_split(model: MRLFADS, data: SplitTensors, run_cfg: Any, epoch: int,
                   comm_matrix: Any = None,
                   sv_hidden: list[torch.Tensor] | None = None,
                   cut_effects: Any = None) -> dict[str, float]:
    """The per-epoch validation metrics (keys of docs/DESIGN.md), posterior means.

    With sample validation (``sv_hidden``) every metric is of the model run with those
    elements hidden, as in training; ``valid/sv_recon_loss`` scores exactly them. The cut
    effectome's keys are NaN here, so that every epoch reports the same keys; the Trainer
    computes it (``cut_effectome_metrics``) at the epochs where it is read (``run_epoch``).
    """
    outputs, terms = collect_outputs(model, data, run_cfg, epoch, sv_hidden=sv_hidden)
    metrics = {f"valid/{k}": v for k, v in terms.items()}
    metrics.update(score(outputs, data, run_cfg.model, comm_matrix))
    metrics.update(cut_effectome_metrics(model, data, comm_matrix, compute=False,
                                         cut_effects=cut_effects))
    return metrics
