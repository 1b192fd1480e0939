"""MR-LFADS, the fast path: all regions advance together, one batched step per time bin.

Per step (SPEC section 3): messages from the sources' previous rates -> controller -> u_t ->
generator -> factors. Inside the loop every op covers all regions (bmm over a region axis)
or all ordered pairs at once; input projections that do not depend on the recurrence (the
controller-input encoder's and the external inputs' share of the gates) are computed for
the whole sequence before the loop, and readouts after it. For rate-based messages the
readout is folded into the message map (A (W f + c) + b = (A W) f + (A c + b)), so the loop
never materialises the rates. ``mrlfads.oracle`` is the plain region-by-region reference.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.nn import functional as F

from mrlfads.config import ModelConfig
from mrlfads.config_utils import from_dict
from mrlfads.layers import gru_update, posterior_var, unit_columns
from mrlfads.loss import compute_loss  # noqa: F401  (re-exported: the model's loss)
from mrlfads.outputs import ModelOutput
from mrlfads.params import ModelParams

Tensor = torch.Tensor


class InputError(ValueError):
    """Batch tensors that do not match the model config (names the argument and region)."""


class MRLFADS(ModelParams):
    """Multi-region LFADS. ``forward(heldin, ext, sample, silence) -> ModelOutput``."""

    def __init__(self, cfg: ModelConfig | Mapping) -> None:
        if isinstance(cfg, Mapping):
            cfg = from_dict(ModelConfig, cfg, where="model")
        super().__init__(cfg)
        self.dropout_p = cfg.dropout

    def set_dropout(self, p: float) -> None:
        """Change every dropout rate at run time (PBT mutates ``model.dropout``)."""
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"model.dropout={p} must be in [0, 1)")
        self.dropout_p = float(p)

    def _drop(self, x: Tensor) -> Tensor:
        if self.dropout_p > 0 and self.training:
            return F.dropout(x, self.dropout_p, True)
        return x

    # ---------------------------------------------------------------- inputs
    def check_inputs(self, heldin: Sequence[Tensor], ext) -> tuple[int, int]:
        """Validate shapes; return (B, T). Raises InputError naming the tensor."""
        s, names = self.sizes, self.cfg.region_names
        if len(heldin) != s.R:
            raise InputError(f"heldin: got {len(heldin)} tensors, the model has regions {names}")
        B, T = heldin[0].shape[0], heldin[0].shape[1]
        for r, x in enumerate(heldin):
            if x.dim() != 3 or x.shape != (B, T, s.N[r]):
                raise InputError(f"heldin[{r}] (region {names[r]!r}): shape {tuple(x.shape)}, "
                                 f"expected ({B}, {T}, {s.N[r]}) = (trials, bins, held-in neurons)")
        if T <= self.cfg.ic_enc_seq_len:
            raise InputError(f"heldin: {T} bins, need more than ic_enc_seq_len="
                             f"{self.cfg.ic_enc_seq_len}")
        for r in range(s.R):
            e = None if ext is None else ext[r]
            if s.D[r] and (e is None or tuple(e.shape) != (B, T, s.D[r])):
                got = None if e is None else tuple(e.shape)
                raise InputError(f"ext[{r}] (region {names[r]!r}): got {got}, expected "
                                 f"({B}, {T}, {s.D[r]}) external inputs (ext_dim={s.D[r]})")
        return B, T

    def draw_noise(self, B: int, Tp: int, like: Tensor) -> dict[str, Tensor]:
        """Standard-normal draws for every sampled latent, in the layout the loop uses."""
        s, cfg = self.sizes, self.cfg
        opts = dict(device=like.device, dtype=like.dtype)
        return {"ic": torch.randn(s.R, B, cfg.ic_dim, **opts),
                "co": torch.randn(Tp, s.R, B, max(s.U, 1), **opts),
                "msg": torch.randn(Tp, max(s.P, 1), B, cfg.com_dim, **opts)}

    def silence_keep(self, silence, Tp: int, like: Tensor) -> Tensor | None:
        """(T', P, 1, 1) 0/1 factor: 0 where the pair's source is silenced at that bin."""
        if not silence:
            return None
        names, tau = self.cfg.region_names, self.cfg.ic_enc_seq_len
        keep = torch.ones(Tp, self.sizes.P, 1, 1, device=like.device, dtype=like.dtype)
        for region, (start, stop) in silence.items():
            if isinstance(region, str) and region not in names:
                raise InputError(f"silence: unknown region {region!r}; regions are {names}")
            src = names.index(region) if isinstance(region, str) else int(region)
            lo, hi = max(int(start) - tau, 0), max(int(stop) - tau, 0)
            for p, (a, _) in enumerate(self.sizes.pairs):
                if a == src:
                    keep[lo:hi, p] = 0.0
        return keep

    # ---------------------------------------------------------------- encoders
    def encode(self, heldin: Sequence[Tensor]):
        """IC posterior per region and controller-input encodings (R, B, T', E) or None."""
        tau, cfg = self.cfg.ic_enc_seq_len, self.cfg
        ic_mean, ic_logvar, enc = [], [], []
        for r, x in enumerate(heldin):
            xi = self._drop(self.readin[r](x))  # (B, T, N_r)
            _, hn = self.ic_enc[r](xi[:, :tau])  # hn: (2, B, E_ic) final fwd / bwd states
            h = self._drop(torch.cat([hn[0], hn[1]], -1))
            mean, logvar = self.ic_head[r](h).chunk(2, -1)
            ic_mean.append(mean)
            ic_logvar.append(logvar)
            if cfg.inferred_inputs:
                enc.append(self.ci_enc[r](xi[:, tau:])[0])  # (B, T', E_ci), causal
        e = torch.stack(enc) if enc else None
        return ic_mean, ic_logvar, e

    def _seq_gates(self, seq: Tensor, w: Tensor, b: Tensor) -> Tensor:
        """Input-to-gate projection of a whole sequence: (R, B, T', I) -> (T', R, B, out)."""
        R, B, Tp, I = seq.shape
        flat = seq.transpose(1, 2).reshape(R, Tp * B, I)  # (R, T'*B, I), time-major rows
        out = torch.baddbmm(b, flat, w)  # (R, T'*B, out)
        return out.view(R, Tp, B, -1).transpose(0, 1).contiguous()  # (T', R, B, out)

    def _pad_stack(self, xs: Sequence[Tensor], width: int) -> Tensor:
        """Stack per-region (B, ..., n_r) tensors into (R, B, ..., width), zero-padded."""
        return torch.stack([F.pad(x, (0, width - x.shape[-1])) for x in xs])

    # ---------------------------------------------------------------- forward
    def forward(self, heldin: Sequence[Tensor], ext: Sequence[Tensor | None] | None = None,
                sample: bool = True, silence: Mapping | None = None,
                noise: dict[str, Tensor] | None = None) -> ModelOutput:
        """Run every region; ``sample`` draws posterior samples, else uses posterior means.

        ``silence={region: (start, stop)}`` zeroes all messages the region sends over trial
        bins [start, stop). ``noise`` (from ``draw_noise``) fixes the samples for tests.
        """
        B, T = self.check_inputs(heldin, ext)
        cfg, s, w = self.cfg, self.sizes, self.masked()
        tau, Tp, C, clip = cfg.ic_enc_seq_len, T - cfg.ic_enc_seq_len, cfg.com_dim, cfg.cell_clip
        x0 = heldin[0]
        if sample and noise is None:
            noise = self.draw_noise(B, Tp, x0)
        ic_mean, ic_logvar, e = self.encode(heldin)
        ic_var = [posterior_var(lv) for lv in ic_logvar]
        z0 = [m + v.sqrt() * noise["ic"][r] if sample else m
              for r, (m, v) in enumerate(zip(ic_mean, ic_var))]
        g = self._pad_stack([self.ic_to_g0[r](z) for r, z in enumerate(z0)], s.Gm)  # (R, B, Gm)
        fac_w = unit_columns(w["fac_w"])  # (R, Gm, Fm), unit norm per factor
        f = torch.bmm(self._drop(g), fac_w)  # (R, B, Fm) = f_0
        # sequence-wide gate contributions (outside the loop)
        # unbind: one backward node for the whole sequence (indexing [i] would allocate a
        # full-size zero gradient per step)
        ci_gates = (self._seq_gates(self._drop(e), w["con_w_ie"], w["con_b_ih"]).unbind(0)
                    if cfg.inferred_inputs else None)
        if s.Dm:
            ext_seq = self._pad_stack([ext[r][:, tau:] if s.D[r] else
                                       x0.new_zeros(B, Tp, 0) for r in range(s.R)], s.Dm)
            gen_x_gates = self._seq_gates(ext_seq, w["gen_w_ie"], w["gen_b_ih"]).unbind(0)
        else:
            gen_x_gates = [w["gen_b_ih"]] * Tp  # (R, 1, 3Gm), broadcast over trials
        msg_w = msg_b = None
        if s.P:
            msg_w, msg_b = w["msg_w"], w["msg_b"]
            if cfg.message_source == "rates":  # fold the rate readout into the message map
                ro_w = w["ro_w"][:, :, : s.Nm][self.src_index]  # (P, Fm, Nm)
                ro_b = w["ro_b"][:, :, : s.Nm][self.src_index]  # (P, 1, Nm)
                msg_b = torch.baddbmm(msg_b, ro_b, msg_w)  # (P, 1, 2C)
                msg_w = torch.bmm(ro_w, msg_w)  # (P, Fm, 2C)
        keep = self.silence_keep(silence, Tp, x0) if s.P else None
        h_con = x0.new_zeros(s.R, B, cfg.con_dim)
        rec: dict[str, list[Tensor]] = {k: [] for k in ("f", "co", "u", "mp", "m")}
        for i in range(Tp):
            gen_in = []
            if s.P:
                state = g if cfg.message_source == "generator" else f
                mp = torch.baddbmm(msg_b, state.index_select(0, self.src_index), msg_w)  # (P,B,2C)
                m_mean, m_logvar = mp[..., :C], mp[..., C:]
                m = m_mean + posterior_var(m_logvar).sqrt() * noise["msg"][i] if sample else m_mean
                if keep is not None:
                    m, mp = m * keep[i], torch.cat([m_mean * keep[i], m_logvar], -1)
                rec["mp"].append(mp)
                rec["m"].append(m)
                # (P, B, C) -> (R_dst, R-1, B, C) -> (R_dst, B, (R-1)*C)
                m_in = m.view(s.R, s.R - 1, B, C).transpose(1, 2).reshape(s.R, B, -1)
                gen_in.append(m_in)
            if cfg.inferred_inputs:
                xg = torch.baddbmm(ci_gates[i], self._drop(f), w["con_w_if"])
                hg = torch.baddbmm(w["con_b_hh"], h_con, w["con_w_hh"])
                h_con = gru_update(xg, hg, h_con, clip)
                co = torch.baddbmm(w["co_b"], h_con, w["co_w"])  # (R, B, 2U)
                u = co[..., : s.U]
                if sample:
                    u = u + posterior_var(co[..., s.U:]).sqrt() * noise["co"][i]
                rec["co"].append(co)
                rec["u"].append(u)
                gen_in.insert(0, u)
            if gen_in:
                xg = torch.baddbmm(gen_x_gates[i], torch.cat(gen_in, -1), w["gen_w_iu"])
            else:
                xg = gen_x_gates[i]
            hg = torch.baddbmm(w["gen_b_hh"], g, w["gen_w_hh"])
            g = gru_update(xg, hg, g, clip)
            f = torch.bmm(self._drop(g), fac_w)
            rec["f"].append(f)
        return self._collect(rec, w, ic_mean, ic_var, B, Tp)

    def _collect(self, rec, w, ic_mean, ic_var, B: int, Tp: int) -> ModelOutput:
        """Readouts over the whole sequence and per-region (B, T', ...) views."""
        cfg, s = self.cfg, self.sizes
        R, U, C = s.R, s.U, cfg.com_dim
        fac = torch.stack(rec["f"])  # (T', R, B, Fm)
        fac_flat = fac.transpose(0, 1).reshape(R, Tp * B, s.Fm)  # (R, T'*B, Fm)
        ro = torch.baddbmm(w["ro_b"], fac_flat, w["ro_w"]).view(R, Tp, B, -1)

        def per_region(x: Tensor, sizes, offset: int = 0) -> list[Tensor]:
            # x: (R, T', B, width) -> [(B, T', n_r)]
            return [x[r, :, :, offset: offset + n].transpose(0, 1) for r, n in enumerate(sizes)]

        gauss = cfg.obs_model == "gaussian"
        if s.Hm:
            ho = torch.baddbmm(w["ho_b"], fac_flat.detach(), w["ho_w"]).view(R, Tp, B, -1)
        else:
            ho = fac.new_zeros(R, Tp, B, s.K)
        co_mean = co_var = inputs = None
        if cfg.inferred_inputs:
            co = torch.stack(rec["co"]).transpose(0, 1)  # (R, T', B, 2U)
            co_mean = per_region(co[..., :U], [U] * R)
            co_var = per_region(posterior_var(co[..., U:]), [U] * R)
            inputs = per_region(torch.stack(rec["u"]).transpose(0, 1), [U] * R)
        msg_mean = msg_var = messages = None
        if s.P:
            mp = torch.stack(rec["mp"]).permute(2, 0, 1, 3)  # (T', P, B, 2C) -> (B, T', P, 2C)
            msg_mean, msg_var = mp[..., :C], posterior_var(mp[..., C:])
            messages = torch.stack(rec["m"]).permute(2, 0, 1, 3)  # (B, T', P, C)
        return ModelOutput(
            obs_model=cfg.obs_model, region_names=cfg.region_names, pairs=s.pairs,
            readout=per_region(ro, s.N),
            obs_logvar=per_region(ro, s.N, s.Nm) if gauss else None,
            heldout_readout=per_region(ho, s.H),
            heldout_logvar=per_region(ho, s.H, s.Hm) if gauss else None,
            factors=per_region(fac.transpose(0, 1), s.F),
            ic_mean=ic_mean, ic_var=ic_var, ic_prior_logvar=list(self.ic_prior_logvar),
            co_mean=co_mean, co_var=co_var, inputs=inputs,
            co_prior_logvar=list(self.co_prior_logvar) if cfg.inferred_inputs else None,
            msg_mean=msg_mean, msg_var=msg_var, messages=messages,
            com_prior_logvar=self.com_prior_logvar if s.P else None,
            l2=self.l2_terms(),
        )
