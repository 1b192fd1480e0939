"""Region-by-region reference MR-LFADS (docs/MODEL.md, "Generative model", "Inference network").

Slow and obvious on purpose: one region and one ordered pair at a time, rates computed
explicitly and fed to the message maps, torch's own ``gru_cell`` kernel. It reads the live
(unpadded) slices of the batched model's parameters, so outputs and gradients of the two
must agree; tests hold the fast path to it. Dropout masks are drawn differently, so compare
with dropout off.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.nn import functional as F

from mrlfads.layers import block_columns, clipped_gru_cell, posterior_var, unit_columns
from mrlfads.loss import l2_weight_penalty
from mrlfads.outputs import ModelOutput

Tensor = torch.Tensor


def region_weights(model, r: int) -> dict[str, Tensor]:
    """Region r's live weights in nn.Linear / GRUCell layout ``(out, in)``."""
    s, cfg = model.sizes, model.cfg
    gcols = block_columns(s.G[r], s.Gm, 3)
    rcols = block_columns(s.N[r], s.Nm, s.K)
    w = {}
    if cfg.inferred_inputs:
        w["con_ih"] = torch.cat([model.con_w_ie[r], model.con_w_if[r, : s.F[r]]]).T
        w["con_hh"], w["con_bih"], w["con_bhh"] = model.con_w_hh[r].T, model.con_b_ih[r, 0], model.con_b_hh[r, 0]
        w["co"], w["co_b"] = model.co_w[r].T, model.co_b[r, 0]
    parts = ([model.gen_w_iu[r]] if s.gen_in else []) + ([model.gen_w_ie[r, : s.D[r]]] if s.Dm else [])
    w["gen_ih"] = torch.cat(parts)[:, gcols].T  # (3G_r, U + (R-1)C + D_r)
    w["gen_hh"] = model.gen_w_hh[r, : s.G[r]][:, gcols].T
    w["gen_bih"], w["gen_bhh"] = model.gen_b_ih[r, 0, gcols], model.gen_b_hh[r, 0, gcols]
    w["fac"] = unit_columns(model.fac_w[r, : s.G[r], : s.F[r]].T, dim=1)  # unit rows (F_r, G_r)
    w["ro"], w["ro_b"] = model.ro_w[r, : s.F[r]][:, rcols].T, model.ro_b[r, 0, rcols]
    if s.Hm:
        hcols = block_columns(s.H[r], s.Hm, s.K)
        w["ho"], w["ho_b"] = model.ho_w[r, : s.F[r]][:, hcols].T, model.ho_b[r, 0, hcols]
    return w


def oracle_forward(model, heldin: Sequence[Tensor], ext=None, sample: bool = True,
                   silence: Mapping | None = None, noise: dict | None = None,
                   silence_inputs: Mapping | None = None, session=None,
                   silenced: Tensor | None = None) -> ModelOutput:
    """Same contract as ``MRLFADS.forward``, computed one region at a time."""
    cfg, s = model.cfg, model.sizes
    B, T = model.check_inputs(heldin, ext)
    sess = model.check_session(session)
    tau, Tp, U, clip = cfg.ic_enc_seq_len, T - cfg.ic_enc_seq_len, s.U, cfg.cell_clip
    if sample and noise is None:
        noise = model.draw_noise(B, Tp, heldin[0])
    W = [region_weights(model, r) for r in range(s.R)]
    drop = model._drop
    ic_mean, ic_var, g, f, h_con, enc = [], [], [], [], [], []
    for r in range(s.R):
        n = s.N[r]
        z = (heldin[r] - model.input_mean[r, :n]) / model.input_scale[r, :n]
        if cfg.sessions:  # the neurons this session did not record read as 0
            z = z * model.session_recorded[sess, r, :n]
        xi = drop(model.readin[r](z))
        _, hn = model.ic_enc[r](xi[:, :tau])
        mean, logvar = model.ic_head[r](drop(torch.cat([hn[0], hn[1]], -1))).chunk(2, -1)
        var = posterior_var(logvar)
        z0 = mean + var.sqrt() * noise["ic"][r] if sample else mean
        ic_mean.append(mean)
        ic_var.append(var)
        g.append(model.ic_to_g0[r](z0))
        f.append(F.linear(drop(g[r]), W[r]["fac"]))
        h_con.append(heldin[r].new_zeros(B, cfg.con_dim))
        enc.append(xi[:, tau:])  # what the controller-input encoders read, below
    if cfg.inferred_inputs:
        enc = [model.controller_ahead(gru(seen)[0])
               for gru, seen in zip(model.ci_enc, model.controller_reads(enc))]
    keep = model.message_keep(silence, B, Tp, heldin[0], silenced) if s.P else None
    keep_u = model.input_keep(silence_inputs, Tp, heldin[0])
    rec = {k: [[] for _ in range(s.R)] for k in ("f", "rho", "co", "u")}
    mrec = {k: [[] for _ in range(s.P)] for k in ("mean", "var", "m")}
    for i in range(Tp):
        msgs = []
        for p, (a, r) in enumerate(s.pairs):
            if cfg.message_source == "rates":
                rho = F.linear(f[a], W[a]["ro"], W[a]["ro_b"])[:, : s.N[a]]  # mean part
                source = rho - model.source_baseline[a, : s.N[a]]  # relative to baseline
            else:
                source = f[a] if cfg.message_source == "factors" else g[a]
            if cfg.detach_message_source:  # the message map trains, its source does not
                source = source.detach()
            A, b = model.msg_w[p, : s.src[a]].T, model.msg_b[p, 0]
            mean, logvar = F.linear(source, A, b).chunk(2, -1)
            var = posterior_var(logvar)
            m = mean + var.sqrt() * noise["msg"][i, p] if sample else mean
            if keep is not None:
                m, mean = m * keep[i, p], mean * keep[i, p]
            msgs.append(m)
            for k, v in (("mean", mean), ("var", var), ("m", m)):
                mrec[k][p].append(v)
        for r in range(s.R):
            gen_in = []
            if cfg.inferred_inputs:
                x = torch.cat([drop(enc[r][:, i]), drop(f[r])], -1)
                h_con[r] = clipped_gru_cell(x, h_con[r], W[r]["con_ih"], W[r]["con_hh"],
                                            W[r]["con_bih"], W[r]["con_bhh"], clip)
                co = F.linear(h_con[r], W[r]["co"], W[r]["co_b"])
                u = co[:, :U] + posterior_var(co[:, U:]).sqrt() * noise["co"][i, r] if sample else co[:, :U]
                if keep_u is not None:
                    u = u * keep_u[i, r]
                rec["co"][r].append(co)
                rec["u"][r].append(u)
                gen_in.append(u)
            gen_in += [msgs[p] for p, (_, dst) in enumerate(s.pairs) if dst == r]
            if s.D[r]:
                gen_in.append(ext[r][:, tau + i])
            g[r] = clipped_gru_cell(torch.cat(gen_in, -1), g[r], W[r]["gen_ih"], W[r]["gen_hh"],
                                    W[r]["gen_bih"], W[r]["gen_bhh"], clip)
        for r in range(s.R):
            f[r] = F.linear(drop(g[r]), W[r]["fac"])
            rec["f"][r].append(f[r])
    return _assemble(model, W, rec, mrec, ic_mean, ic_var, sess)


def _assemble(model, W, rec, mrec, ic_mean, ic_var, session: int) -> ModelOutput:
    cfg, s = model.cfg, model.sizes
    U, gauss = s.U, cfg.obs_model == "gaussian"
    fac = [torch.stack(x, 1) for x in rec["f"]]  # (B, T', F_r)
    ro = [F.linear(fac[r], W[r]["ro"], W[r]["ro_b"]) for r in range(s.R)]
    ho = [F.linear(fac[r].detach(), W[r]["ho"], W[r]["ho_b"]) if s.Hm and s.H[r]
          else fac[r].new_zeros(*fac[r].shape[:2], s.K * s.H[r]) for r in range(s.R)]
    co = [torch.stack(x, 1) for x in rec["co"]] if cfg.inferred_inputs else None
    l2 = []
    for r in range(s.R):
        mats = [model.gen_w_hh[r, : s.G[r]][:, block_columns(s.G[r], s.Gm, 3)],
                model.ic_enc[r].weight_hh_l0, model.ic_enc[r].weight_hh_l0_reverse]
        if cfg.inferred_inputs:
            mats += [model.con_w_hh[r], model.ci_enc[r].weight_hh_l0]
        l2.append(l2_weight_penalty(mats))
    stack_pairs = (lambda k: torch.stack([torch.stack(x, 1) for x in mrec[k]], 2)) if s.P else None
    return ModelOutput(
        obs_model=cfg.obs_model, region_names=cfg.region_names, pairs=s.pairs,
        readout=[x[..., : n] for x, n in zip(ro, s.N)],
        obs_logvar=[x[..., n:] for x, n in zip(ro, s.N)] if gauss else None,
        heldout_readout=[x[..., : n] for x, n in zip(ho, s.H)],
        heldout_logvar=[x[..., n:] for x, n in zip(ho, s.H)] if gauss else None,
        factors=fac, ic_mean=ic_mean, ic_var=ic_var,
        ic_prior_logvar=list(model.ic_prior_logvar),
        co_mean=[x[..., :U] for x in co] if co else None,
        co_var=[posterior_var(x[..., U:]) for x in co] if co else None,
        inputs=[torch.stack(x, 1) for x in rec["u"]] if co else None,
        co_prior_logvar=list(model.co_prior_logvar) if co else None,
        msg_mean=stack_pairs("mean") if s.P else None,  # (B, T', P, C)
        msg_var=stack_pairs("var") if s.P else None,
        messages=stack_pairs("m") if s.P else None,
        com_prior_logvar=model.com_prior_logvar if s.P else None,
        open_pathways=model.open_pathways,
        co_prior_logtau=model.input_prior_logtau(),
        l2=l2, recorded=model.recorded(session)[0], recorded_heldout=model.recorded(session)[1],
    )
