"""The loss: negative ELBO with structured KL bottlenecks (docs/MODEL.md, "Loss"). Pure functions.

Every term is summed over time, neurons and latent dims and averaged over trials. Only the
reconstructed bins tau..T-1 count; ``compute_loss`` takes full-length (B, T, n) data and
keeps the last T' bins, T' read from the model output.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from mrlfads.outputs import LossTerms, ModelOutput
from mrlfads.ramps import loss_weights

Tensor = torch.Tensor
_LOG_2PI = math.log(2.0 * math.pi)


def poisson_nll(counts: Tensor, log_rate: Tensor) -> Tensor:
    """Elementwise -log Poisson(counts | exp(log_rate)), with the log(counts!) term. Data
    first, then the prediction: the argument order of every loss and metric here."""
    return torch.exp(log_rate) - counts * log_rate + torch.lgamma(counts + 1.0)


def gaussian_nll(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """Elementwise -log N(x | mean, exp(logvar))."""
    return 0.5 * (_LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def kl_diag_gaussian(mean_q: Tensor, var_q: Tensor, logvar_p: Tensor,
                     mean_p: Tensor | float = 0.0) -> Tensor:
    """Elementwise KL(N(mean_q, var_q) || N(mean_p, exp(logvar_p)))."""
    return 0.5 * (logvar_p - torch.log(var_q) + (var_q + (mean_q - mean_p) ** 2)
                  * torch.exp(-logvar_p) - 1.0)


def kl_ar1_inputs(mean_q: Tensor, var_q: Tensor, used: Tensor, logvar_p: Tensor,
                  logtau_p: Tensor) -> Tensor:
    """Elementwise KL (B, T', D) of each bin's input posterior from an AR(1) prior given the
    input of the bin before (docs/MODEL.md, "Ablations").

    The prior is stationary with variance exp(logvar_p) and time constant tau =
    exp(logtau_p) bins: u_0 ~ N(0, var), u_t | u_{t-1} ~ N(a u_{t-1}, var (1 - a^2)),
    a = exp(-1 / tau). ``used`` is the input the model actually fed forward (a sample in
    training, the mean in evaluation), so the KL of bin t is taken against the prior
    conditioned on it; summed over bins this estimates KL(q(u) || p(u)) of the whole
    sequence, without sampling u_t itself.
    """
    inv_tau = torch.exp(-logtau_p)
    a = torch.exp(-inv_tau)
    logvar_cond = logvar_p + torch.log(-torch.expm1(-2.0 * inv_tau))
    first = kl_diag_gaussian(mean_q[:, :1], var_q[:, :1], logvar_p)
    rest = kl_diag_gaussian(mean_q[:, 1:], var_q[:, 1:], logvar_cond, a * used[:, :-1])
    return torch.cat([first, rest], 1)


def l2_weight_penalty(weights: Sequence[Tensor]) -> Tensor:
    """Sum over matrices of 0.5 * ||W||^2 / numel (per-element normalised L2)."""
    return sum(0.5 * w.pow(2).sum() / w.numel() for w in weights)


def _f32(x: Tensor) -> Tensor:
    """Upcast autocast's half/bfloat16 outputs so the loss is summed in float32."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _trial_mean(x: Tensor) -> Tensor:
    """Sum every axis but the first (trials), then average over trials."""
    return x.reshape(x.shape[0], -1).sum(1).mean()


def observation_nll(obs_model: str, readout: Tensor, logvar: Tensor | None, x: Tensor,
                    weight: Tensor | None = None) -> Tensor:
    """Per-trial-mean NLL of data x (B, T', n) under a readout (log-rate or mean).

    ``weight`` (broadcastable to x) multiplies each element's NLL before the sum: 0 leaves
    an element out (coordinated dropout, sample validation), 1/fraction rescales the rest.
    """
    readout, x = _f32(readout), _f32(x)
    if obs_model == "poisson":
        nll = poisson_nll(x, readout)
    else:
        nll = gaussian_nll(x, readout, _f32(logvar))
    return _trial_mean(nll if weight is None else nll * weight)


def recon_terms(out: ModelOutput, heldin: Sequence[Tensor],
                weight: Sequence[Tensor | None] | None = None) -> list[Tensor]:
    """Per-region reconstruction NLL of the held-in data (bins tau..T-1), each element
    weighted by ``weight[r]`` (B, T', N_r) when given, and only over the neurons the
    batch's session recorded (``out.recorded``)."""
    Tp = out.readout[0].shape[1]
    return [observation_nll(out.obs_model, out.readout[r],
                            out.obs_logvar[r] if out.obs_logvar else None,
                            heldin[r][:, -Tp:],
                            _recorded(None if weight is None else weight[r], out.recorded, r))
            for r in range(len(out.region_names))]


def _recorded(weight: Tensor | None, recorded: Sequence[Tensor] | None, r: int) -> Tensor | None:
    """An element weight times region r's recorded-neuron mask (stitched models)."""
    if recorded is None:
        return weight
    return recorded[r] if weight is None else weight * recorded[r]


def pathway_drive(out: ModelOutput) -> Tensor | None:
    """(P,) each pathway's drive norm: the message means read through the target generator's
    input weights, sqrt of the sum over reconstructed bins and gate units of its square,
    averaged over trials (docs/MODEL.md, "Pathway sparsity"). A group norm: its penalty
    drives a whole pathway to zero, and it is blind to the message's unidentified scale
    (m -> a m, W -> W / a leave it unchanged). None with one region."""
    if out.msg_mean is None or out.msg_weights is None:
        return None
    # sum_t |m_t W|^2 = tr(S W W^T) with S = sum_t m_t^T m_t: (C, C) per pathway instead of
    # the (B, T', P, 3G) drive itself, a twentieth of the work at the spike defaults' sizes
    m, w = _f32(out.msg_mean), _f32(out.msg_weights)
    second = torch.einsum("btpc,btpd->pcd", m, m)  # (P, C, C), summed over trials and bins
    gram = torch.bmm(w, w.transpose(1, 2))  # (P, C, C)
    square = (second * gram).sum((1, 2)).clamp_min(0.0) / m.shape[0]  # >= 0 up to rounding
    return (square + 1e-8).sqrt()


def region_terms(out: ModelOutput, heldin: Sequence[Tensor],
                 heldout: Sequence[Tensor] | None,
                 recon_weight: Sequence[Tensor | None] | None = None,
                 drive_norms: bool = True) -> dict[str, list[Tensor]]:
    """Per-region terms: recon, kl_ic, kl_co, kl_com, l2, heldout, sparsity (unweighted by
    the loss weights; ``recon_weight`` weights the reconstruction's elements, see
    recon_terms). ``drive_norms=False`` leaves the sparsity terms at 0 without computing
    the drive norms: what a step whose pathway price is 0 needs."""
    Tp = out.readout[0].shape[1]
    R = len(out.region_names)
    terms: dict[str, list[Tensor]] = {k: [] for k in
                                      ("recon", "kl_ic", "kl_co", "kl_com", "l2", "heldout",
                                       "sparsity")}
    zero = out.readout[0].new_zeros(())
    # message KL per pair, (P,): one elementwise KL for all pairs, then plain integer
    # indexing per receiving region (no index tensor built per step: CUDA-graph safe)
    kl_pair = None if out.msg_mean is None else kl_diag_gaussian(
        _f32(out.msg_mean), _f32(out.msg_var), out.com_prior_logvar).sum((1, 3)).mean(0)
    terms["recon"] = recon_terms(out, heldin, recon_weight)
    drive = pathway_drive(out) if drive_norms else None
    for r in range(R):
        terms["kl_ic"].append(_trial_mean(kl_diag_gaussian(
            _f32(out.ic_mean[r]), _f32(out.ic_var[r]), out.ic_prior_logvar[r])))
        if out.co_mean is None:
            terms["kl_co"].append(zero)
        elif out.co_prior_logtau is None:
            terms["kl_co"].append(_trial_mean(kl_diag_gaussian(
                _f32(out.co_mean[r]), _f32(out.co_var[r]), out.co_prior_logvar[r])))
        else:
            terms["kl_co"].append(_trial_mean(kl_ar1_inputs(
                _f32(out.co_mean[r]), _f32(out.co_var[r]), _f32(out.inputs[r]),
                out.co_prior_logvar[r], out.co_prior_logtau[r])))
        # a closed pathway (ModelConfig.pathways) has no message, so no KL to charge
        into_r = [p for p, (_, dst) in enumerate(out.pairs)
                  if dst == r and (out.open_pathways is None or out.open_pathways[p])]
        if kl_pair is None or not into_r:
            terms["kl_com"].append(zero)
        else:
            terms["kl_com"].append(sum((kl_pair[p] for p in into_r[1:]), kl_pair[into_r[0]]))
        if drive is None or not into_r:
            terms["sparsity"].append(zero)
        else:
            terms["sparsity"].append(sum((drive[p] for p in into_r[1:]), drive[into_r[0]]))
        terms["l2"].append(out.l2[r])
        n_out = out.heldout_readout[r].shape[-1]
        if heldout is None or n_out == 0:
            terms["heldout"].append(zero)
        else:
            y = heldout[r][:, -Tp:]
            lv = out.heldout_logvar[r] if out.heldout_logvar else None
            terms["heldout"].append(observation_nll(out.obs_model, out.heldout_readout[r], lv, y,
                                                    _recorded(None, out.recorded_heldout, r)))
    return terms


def compute_loss(out: ModelOutput, heldin: Sequence[Tensor], heldout: Sequence[Tensor] | None,
                 loss_cfg, epoch: float,
                 recon_weight: Sequence[Tensor | None] | None = None,
                 weights: Mapping[str, Tensor | float] | None = None,
                 drive_norms: bool = True) -> LossTerms:
    """Training loss (ramped, weighted) and the true negative ELBO of one batch.

    Per region: recon + w_ic KL(z0) + w_u sum_t KL(u_t) + w_m sum_t sum_s KL(m^{s->r})
    + w_l2 L2 + heldout, with w = ramp(epoch) * scale; total = sum over regions.
    ``recon_weight[r]`` (B, T', N_r) weights each held-in element's NLL in recon: the
    coordinated-dropout and sample-validation masks (training/masks.py); ``heldin`` is
    always the unmasked data. ``weights`` replaces ``loss_weights(loss_cfg, epoch)``: the
    training step passes 0-d tensors it updates in place (training/step.py), and
    ``drive_norms=False`` when the pathway price is 0 (see region_terms).
    """
    terms = region_terms(out, heldin, heldout, recon_weight, drive_norms)
    weights = loss_weights(loss_cfg, epoch) if weights is None else dict(weights)
    total = sum(
        terms["recon"][r] + weights["kl_ic"] * terms["kl_ic"][r]
        + weights["kl_co"] * terms["kl_co"][r] + weights["kl_com"] * terms["kl_com"][r]
        + weights["l2"] * terms["l2"][r] + terms["heldout"][r]
        + weights["sparsity"] * terms["sparsity"][r]
        for r in range(len(out.region_names)))
    neg_elbo = sum(terms["recon"][r] + terms["kl_ic"][r] + terms["kl_co"][r] + terms["kl_com"][r]
                   for r in range(len(out.region_names)))
    names = out.region_names
    return LossTerms(**{k: dict(zip(names, v)) for k, v in terms.items()},
                     total=total, neg_elbo=neg_elbo, weights=weights)
