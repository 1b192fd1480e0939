"""MR-LFADS, the fast path: all regions advance together, one batched step per time bin.

Per step: messages from the sources' previous rates -> controller -> u_t ->
generator -> factors. Inside the loop every op covers all regions (bmm over a region axis)
or all ordered pairs at once; input projections that do not depend on the recurrence (the
controller-input encoder's and the external inputs' share of the gates) are computed for
the whole sequence in one GEMM before the steps start, and readouts after them. For
rate-based messages the readout is folded into the message map
(A (W f + c) + b = (A W) f + (A c + b)), so the loop never materialises the rates. The
loop itself is one registered operator with hand-written backprop through time
(``mrlfads.loop_ops``; its inputs and outputs are the structures of ``mrlfads.loop_io``);
dropout masks for all steps are drawn up front.
``mrlfads.oracle`` is the plain region-by-region reference. The model itself:
docs/MODEL.md, "Generative model" and "Inference network".
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.nn import functional as F

from mrlfads import native
from mrlfads.config import ModelConfig, pathway_pair
from mrlfads.config_utils import from_dict
from mrlfads.effectome import message_rows
from mrlfads.layers import posterior_var, unit_columns
from mrlfads.loop_io import LoopInputs, LoopSpec, LoopWeights
from mrlfads.loop_ops import gru_sequence, loop
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
        # the same rate as a tensor, changed in place: what a captured CUDA graph reads
        # (training/step.py); not saved, the run config holds it
        self.register_buffer("dropout_rate", torch.tensor(float(cfg.dropout)), persistent=False)

    def set_dropout(self, p: float) -> None:
        """Change every dropout rate at run time (PBT mutates ``model.dropout``)."""
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"model.dropout={p} must be in [0, 1)")
        self.dropout_p = float(p)
        self.dropout_rate.fill_(self.dropout_p)

    def _drop(self, x: Tensor) -> Tensor:
        mask = self._drop_masks(x.shape, x)
        return x if mask is None else x * mask

    def _drop_masks(self, shape, like: Tensor) -> Tensor | None:
        """Scaled dropout masks for every step at once (same law as F.dropout), or None."""
        p = self.dropout_p
        if not (p > 0 and self.training):
            return None
        ops = native.ops_for(like)
        if ops is not None:  # drawn on all cores; the seed comes from torch's generator
            seed = int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64))
            return ops.dropout_mask(list(shape), p, seed, like.dtype)
        # rand < keep is Bernoulli(keep) like F.dropout's bernoulli_, about 2x faster on CPU;
        # the rate is read from its tensor, so a captured graph follows later changes
        keep_p = 1 - self.dropout_rate.to(like.dtype)
        keep = torch.rand(shape, device=like.device, dtype=like.dtype) < keep_p
        return keep.to(like.dtype).div_(keep_p)

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

    def check_session(self, session) -> int:
        """The batch's session index (every trial of a batch is from one session); a model
        of several sessions needs it, a model of one takes 0 or None."""
        S, names = self.cfg.n_sessions, [s.name for s in self.cfg.sessions]
        if session is None:
            if S > 1:
                raise InputError(f"session: this model stitches {S} sessions {names}; pass "
                                 f"session=<index 0..{S - 1}> (one session per batch)")
            return 0
        if isinstance(session, Tensor):
            if session.numel() == 0 or bool((session != session.flatten()[0]).any()):
                raise InputError("session: every trial of a batch must be from one session; "
                                 "batch the sessions separately")
            session = int(session.flatten()[0])
        if isinstance(session, bool) or not isinstance(session, int) or not 0 <= session < S:
            raise InputError(f"session: {session!r} is not a session index 0..{S - 1}"
                             + (f" of {names}" if names else " (the model has one session)"))
        return session

    def draw_noise(self, B: int, Tp: int, like: Tensor) -> dict[str, Tensor]:
        """Standard-normal draws for every sampled latent, in the layout the loop uses."""
        s, cfg = self.sizes, self.cfg
        opts = dict(device=like.device, dtype=like.dtype)
        return {"ic": torch.randn(s.R, B, cfg.ic_dim, **opts),
                "co": torch.randn(Tp, s.R, B, max(s.U, 1), **opts),
                "msg": torch.randn(Tp, max(s.P, 1), B, cfg.com_dim, **opts)}

    def silence_keep(self, silence, Tp: int, like: Tensor) -> Tensor | None:
        """(T', P, 1, 1) 0/1 factor: 0 where a silenced pathway carries no message, or
        (T', P, 1, com_dim) when a value names channels.

        Keys of ``silence`` are a region (every message it sends) or one pathway
        ``"src->dst"``; values are trial bins ``(start, stop)``, or ``(start, stop,
        channels)`` to silence only those message dimensions."""
        if not silence:
            return None
        tau, C = self.cfg.ic_enc_seq_len, self.cfg.com_dim
        parsed = [(self._silenced_pairs(k), *_window_channels(f"silence[{k!r}]", v, C, "com_dim"))
                  for k, v in silence.items()]
        width = C if any(ch is not None for *_, ch in parsed) else 1
        keep = torch.ones(Tp, self.sizes.P, 1, width, device=like.device, dtype=like.dtype)
        for pairs, start, stop, channels in parsed:
            lo, hi = max(start - tau, 0), max(stop - tau, 0)
            for p in pairs:
                if channels is None:
                    keep[lo:hi, p] = 0.0
                else:
                    keep[lo:hi, p, :, channels] = 0.0
        return keep

    def message_keep(self, silence, B: int, Tp: int, like: Tensor,
                     silenced: Tensor | None = None) -> Tensor | None:
        """The 0/1 factor on every message: ``silence_keep``'s, times ``pathway_keep``'s
        in training, times ``recorded_keep``'s, times 0 on closed pathways (``cfg.pathways``);
        (T', P, 1 or B, 1 or com_dim), or None when nothing is zeroed."""
        keep = self.silence_keep(silence, Tp, like)
        closed = getattr(self, "open_keep", None)
        closed = None if closed is None else closed.to(like.dtype)
        for factor in (self.pathway_keep(B, like), self.recorded_keep(silenced, B, Tp, like),
                       closed):
            if factor is not None:
                keep = factor.expand(Tp, -1, -1, -1) if keep is None else keep * factor
        return keep

    def recorded_keep(self, silenced: Tensor | None, B: int, Tp: int, like: Tensor
                      ) -> Tensor | None:
        """(T', P, B, 1) 0/1 factor from the trials' recorded interventions: ``silenced``
        (B, T, R) is 1 where the experiment silenced every message a region sends
        (docs/MODEL.md, "Recorded interventions"); None when not given."""
        if silenced is None:
            return None
        tau, R = self.cfg.ic_enc_seq_len, self.sizes.R
        if tuple(silenced.shape) != (B, tau + Tp, R):
            raise InputError(f"silenced: shape {tuple(silenced.shape)}, expected ({B}, "
                             f"{tau + Tp}, {R}): (trials, bins, regions in model order), 1 where "
                             "a region's messages were silenced")
        sent = 1.0 - silenced[:, tau:].to(like.dtype)  # (B, T', R)
        return sent[:, :, self.src_index].permute(1, 2, 0).unsqueeze(-1)

    def pathway_keep(self, B: int, like: Tensor) -> Tensor | None:
        """(1, P, B, 1) 0/1 factor in training: each pathway's message is zero for a whole
        trial with chance ``pathway_dropout``, unscaled (a cut, as the cut effectome makes
        it); None in evaluation or when the chance is 0."""
        p = self.cfg.pathway_dropout
        if not (p > 0 and self.training):
            return None
        return (torch.rand(1, self.sizes.P, B, 1, device=like.device) >= p).to(like.dtype)

    def input_keep(self, silence_inputs, Tp: int, like: Tensor) -> Tensor | None:
        """(T', R, 1, co_dim) 0/1 factor on the inferred inputs u_t the generators receive.

        Keys of ``silence_inputs`` are regions; values ``(start, stop)`` trial bins, or
        ``(start, stop, channels)`` to silence only those input dimensions."""
        if not silence_inputs:
            return None
        names = self.cfg.region_names
        if not self.cfg.inferred_inputs:
            raise InputError(f"silence_inputs: this model has no inferred inputs "
                             f"(model.inferred_inputs is false), so there is nothing to silence "
                             f"in {sorted(silence_inputs)}; silence messages instead")
        tau, U = self.cfg.ic_enc_seq_len, self.sizes.U
        keep = torch.ones(Tp, self.sizes.R, 1, U, device=like.device, dtype=like.dtype)
        for key, value in silence_inputs.items():
            if key not in names:
                raise InputError(f"silence_inputs: unknown region {key!r}; regions are {names}")
            start, stop, channels = _window_channels(f"silence_inputs[{key!r}]", value, U, "co_dim")
            lo, hi = max(start - tau, 0), max(stop - tau, 0)
            keep[lo:hi, names.index(key), :, slice(None) if channels is None else channels] = 0.0
        return keep

    def _silenced_pairs(self, key) -> list[int]:
        """Indices (into ``sizes.pairs``) of the pathways a ``silence`` key names."""
        names = self.cfg.region_names
        if isinstance(key, str) and "->" in key:
            src, dst = pathway_pair(key)  # spaces around the names allowed, as in model.pathways
            if src not in names or dst not in names or src == dst:
                raise InputError(f"silence: unknown pathway {key!r}; use 'SRC->DST' with two "
                                 f"different regions of {names}")
            return [self.sizes.pairs.index((names.index(src), names.index(dst)))]
        if isinstance(key, str) and key not in names:
            raise InputError(f"silence: unknown region {key!r}; regions are {names}")
        src = names.index(key) if isinstance(key, str) else int(key)
        return [p for p, (a, _) in enumerate(self.sizes.pairs) if a == src]

    # ---------------------------------------------------------------- encoders
    def encode(self, heldin: Sequence[Tensor], session: int = 0):
        """IC posterior per region and controller-input encodings (R, T', B, E) or None.

        The ci encoders (``nn.GRU`` modules, one per region) run as one ``gru_sequence``:
        their input gates per region in one matmul each, the recurrence for all regions in
        one bmm per step (same math as calling the modules).
        """
        tau, cfg = self.cfg.ic_enc_seq_len, self.cfg
        ic_mean, ic_logvar, xis = [], [], []
        for r, x in enumerate(heldin):
            xi = self._drop(self.read_in(r, x, session))  # (B, T, N_r)
            xis.append(xi[:, tau:])
            _, hn = self.ic_enc[r](xi[:, :tau])  # hn: (2, B, E_ic) final fwd / bwd states
            h = self._drop(torch.cat([hn[0], hn[1]], -1))
            mean, logvar = self.ic_head[r](h).chunk(2, -1)
            ic_mean.append(mean)
            ic_logvar.append(logvar)
        if not cfg.inferred_inputs:
            return ic_mean, ic_logvar, None
        ci_x = [F.linear(seen, enc.weight_ih_l0, enc.bias_ih_l0)  # (B, T', 3E)
                for enc, seen in zip(self.ci_enc, self.controller_reads(xis))]
        xg = torch.stack(ci_x).permute(2, 0, 1, 3)  # (R, B, T', 3E) -> (T', R, B, 3E)
        w_hh = torch.stack([m.weight_hh_l0.T for m in self.ci_enc])  # (R, E, 3E)
        b_hh = torch.stack([m.bias_hh_l0 for m in self.ci_enc]).unsqueeze(1)  # (R, 1, 3E)
        return ic_mean, ic_logvar, self.controller_ahead(gru_sequence(xg, w_hh, b_hh))

    def _seq_gates(self, seq: Tensor, w: Tensor, b: Tensor) -> Tensor:
        """Input-to-gate projection of a whole sequence: (R, T', B, I) -> (T', R, B, out)."""
        R, Tp, B, I = seq.shape
        flat = seq.reshape(R, Tp * B, I)  # (R, T'*B, I), time-major rows
        out = torch.baddbmm(b, flat, w)  # (R, T'*B, out)
        return out.view(R, Tp, B, -1).transpose(0, 1)  # (T', R, B, out) view; loop reads [i]

    def _pad_stack(self, xs: Sequence[Tensor], width: int) -> Tensor:
        """Stack per-region (B, ..., n_r) tensors into (R, B, ..., width), zero-padded."""
        return torch.stack([F.pad(x, (0, width - x.shape[-1])) for x in xs])

    def message_weights(self, gen_w_iu: Tensor) -> Tensor:
        """(P, com_dim, 3 Gm): for every pathway (src, dst), in ``sizes.pairs`` order, the rows
        of the target generator's input weights that read its message (``message_rows``)."""
        return torch.stack([gen_w_iu[dst, message_rows(self, src, dst)]
                            for src, dst in self.sizes.pairs])

    # ---------------------------------------------------------------- forward
    def forward(self, heldin: Sequence[Tensor], ext: Sequence[Tensor | None] | None = None,
                sample: bool = True, silence: Mapping | None = None,
                noise: dict[str, Tensor] | None = None,
                silence_inputs: Mapping | None = None, session: int | Tensor | None = None,
                silenced: Tensor | None = None) -> ModelOutput:
        """Run every region; ``sample`` draws posterior samples, else uses posterior means.

        ``session``: the batch's session (a stitched model's trials are batched per
        session; docs/MODEL.md, "Several sessions").

        ``silence={region: (start, stop)}`` zeroes all messages the region sends over trial
        bins [start, stop); a key ``"src->dst"`` zeroes that one pathway; a value
        ``(start, stop, channels)`` zeroes only those message dimensions.
        ``silence_inputs={region: (start, stop[, channels])}`` zeroes the inferred inputs
        that region's generator receives (the controller's posterior, ``co_mean``, is left
        as inferred; ``inputs`` shows the zeros). ``noise`` (from ``draw_noise``) fixes the
        samples for tests. ``silenced`` (B, T, R): each trial's recorded interventions, 1
        where the experiment silenced every message a region sends (``recorded_keep``).
        """
        B, T = self.check_inputs(heldin, ext)
        sess = self.check_session(session)
        cfg, s, w = self.cfg, self.sizes, self.masked()
        tau, Tp, C, clip = cfg.ic_enc_seq_len, T - cfg.ic_enc_seq_len, cfg.com_dim, cfg.cell_clip
        x0 = heldin[0]
        if sample and noise is None:
            noise = self.draw_noise(B, Tp, x0)
        ic_mean, ic_logvar, e = self.encode(heldin, sess)
        ic_var = [posterior_var(lv) for lv in ic_logvar]
        z0 = [m + v.sqrt() * noise["ic"][r] if sample else m
              for r, (m, v) in enumerate(zip(ic_mean, ic_var))]
        g = self._pad_stack([self.ic_to_g0[r](z) for r, z in enumerate(z0)], s.Gm)  # (R, B, Gm)
        fac_w = unit_columns(w["fac_w"])  # (R, Gm, Fm), unit norm per factor
        f = torch.bmm(self._drop(g), fac_w)  # (R, B, Fm) = f_0
        # the ci encoding goes to the loop, which forms the controller's input gates from it
        # in one GEMM into a recycled buffer; the external inputs' gates are formed here
        ce = self._drop(e) if cfg.inferred_inputs else None  # (R, T', B, E)
        if s.Dm:
            ext_seq = self._pad_stack([ext[r][:, tau:] if s.D[r] else
                                       x0.new_zeros(B, Tp, 0) for r in range(s.R)], s.Dm)
            ext_seq = ext_seq.transpose(1, 2)  # (R, B, T', Dm) -> (R, T', B, Dm)
            gen_x_gates = self._seq_gates(ext_seq, w["gen_w_ie"], w["gen_b_ih"])  # (T', R, B, 3Gm)
        else:
            gen_x_gates = w["gen_b_ih"]  # (R, 1, 3Gm), broadcast over time and trials
        msg_w = msg_b = None
        if s.P:
            msg_w, msg_b = w["msg_w"], w["msg_b"]
            if cfg.message_source == "rates":  # fold the rate readout into the message map
                # messages read each source neuron's readout minus its baseline
                ro_w, ro_b = w["ro_w"][:, :, : s.Nm], w["ro_b"][:, :, : s.Nm]
                if cfg.detach_message_source:  # the source's readout is its own as well
                    ro_w, ro_b = ro_w.detach(), ro_b.detach()
                ro_w = ro_w[self.src_index]  # (P, Fm, Nm)
                ro_b = (ro_b - self.source_baseline.unsqueeze(1))[self.src_index]  # (P, 1, Nm)
                msg_b = torch.baddbmm(msg_b, ro_b, msg_w)  # (P, 1, 2C)
                msg_w = torch.bmm(ro_w, msg_w)  # (P, Fm, 2C)
        keep = self.message_keep(silence, B, Tp, x0, silenced) if s.P else None
        keep_u = self.input_keep(silence_inputs, Tp, x0)
        spec = LoopSpec(R=s.R, P=s.P, C=C, U=s.U, T=Tp, clip=clip, sample=sample,
                        src_is_g=cfg.message_source == "generator",
                        detach_src=cfg.detach_message_source)
        nz = noise if sample else {}
        inputs = LoopInputs(
            g0=g, f0=f, ce=ce, gx=gen_x_gates,
            eps_msg=nz.get("msg") if s.P else None,
            eps_co=nz.get("co") if cfg.inferred_inputs else None, keep=keep, keep_u=keep_u,
            drop_f=self._drop_masks((Tp, s.R, B, s.Fm), x0) if cfg.inferred_inputs else None,
            drop_g=self._drop_masks((Tp, s.R, B, s.Gm), x0),
            src_index=getattr(self, "src_index", None))
        weights = LoopWeights(**{k: w.get(k) for k in LoopWeights._fields}) \
            ._replace(fac_w=fac_w, msg_w=msg_w, msg_b=msg_b)
        fac, co, u, mp, m = loop(spec, inputs, weights)
        rec = {"f": fac, "co": co, "u": u, "mp": mp, "m": m}
        return self._collect(rec, w, ic_mean, ic_var, B, Tp, sess)

    def recorded(self, session: int) -> tuple[list[Tensor], list[Tensor]] | tuple[None, None]:
        """Per region, 0/1 over held-in and held-out neurons: which ``session`` recorded
        (what the likelihood counts); (None, None) for a model of one session."""
        if not self.cfg.sessions:
            return None, None
        s = self.sizes
        return ([self.session_recorded[session, r, : s.N[r]] for r in range(s.R)],
                [self.session_recorded_heldout[session, r, : s.H[r]] for r in range(s.R)])

    def _collect(self, rec, w, ic_mean, ic_var, B: int, Tp: int, session: int) -> ModelOutput:
        """Readouts over the whole sequence and per-region (B, T', ...) views."""
        cfg, s = self.cfg, self.sizes
        R, U, C = s.R, s.U, cfg.com_dim
        fac = rec["f"]  # (R, T', B, Fm)
        fac_flat = fac.reshape(R, Tp * B, s.Fm)  # (R, T'*B, Fm), no copy
        ro = torch.baddbmm(w["ro_b"], fac_flat, w["ro_w"]).view(R, Tp, B, -1)

        def per_region(x: Tensor, sizes, groups: int = 1) -> list[list[Tensor]]:
            """(R, T', B, groups * w) -> per group, [(B, T', n_r)] (region r's first n_r of
            each w-wide group). One unbind and one split per region: their backward nodes
            gather the gradients, where a slice view per output each allocated and zeroed a
            gradient the size of x (6 full-size zero fills per step for a gaussian readout)."""
            w = x.shape[-1] // groups
            out: list[list[Tensor]] = [[] for _ in range(groups)]
            for xr, n in zip(x.unbind(0), sizes):
                parts = xr.split_with_sizes([n, w - n] * groups, -1)
                for k in range(groups):
                    out[k].append(parts[2 * k].transpose(0, 1))
            return out

        gauss = cfg.obs_model == "gaussian"
        recorded, recorded_heldout = self.recorded(session)
        if s.Hm:
            ho = torch.baddbmm(w["ho_b"], fac_flat.detach(), w["ho_w"]).view(R, Tp, B, -1)
        else:
            ho = fac.new_zeros(R, Tp, B, s.K)
        co_mean = co_var = inputs = None
        if cfg.inferred_inputs:
            co_mean, co_logvar = per_region(rec["co"], [U] * R, 2)  # (R, T', B, 2U)
            co_var = [posterior_var(lv) for lv in co_logvar]
            (inputs,) = per_region(rec["u"], [U] * R)
        msg_mean = msg_var = messages = None
        if s.P:
            mp = rec["mp"].permute(2, 1, 0, 3)  # (P, T', B, 2C) -> (B, T', P, 2C)
            msg_mean, msg_var = mp[..., :C], posterior_var(mp[..., C:])
            messages = rec["m"].permute(2, 1, 0, 3)  # (P, T', B, C) -> (B, T', P, C)
        readout, heldout = per_region(ro, s.N, 1 + gauss), per_region(ho, s.H, 1 + gauss)
        return ModelOutput(
            obs_model=cfg.obs_model, region_names=cfg.region_names, pairs=s.pairs,
            readout=readout[0], obs_logvar=readout[1] if gauss else None,
            heldout_readout=heldout[0], heldout_logvar=heldout[1] if gauss else None,
            factors=per_region(fac, s.F)[0],
            ic_mean=ic_mean, ic_var=ic_var, ic_prior_logvar=list(self.ic_prior_logvar),
            co_mean=co_mean, co_var=co_var, inputs=inputs,
            co_prior_logvar=list(self.co_prior_logvar) if cfg.inferred_inputs else None,
            msg_mean=msg_mean, msg_var=msg_var, messages=messages,
            com_prior_logvar=self.com_prior_logvar if s.P else None,
            open_pathways=self.open_pathways,
            co_prior_logtau=self.input_prior_logtau(),
            msg_weights=self.message_weights(w["gen_w_iu"]) if s.P else None,
            l2=self.l2_terms(), recorded=recorded, recorded_heldout=recorded_heldout,
        )


def _window_channels(what: str, value, width: int, dim_name: str):
    """``(start, stop)`` or ``(start, stop, channels)`` -> (start, stop, sorted channel list
    or None for all), each channel checked against ``width`` (the model's ``dim_name``)."""
    try:
        start, stop, *rest = value
        start, stop = int(start), int(stop)
    except (TypeError, ValueError):
        raise InputError(f"{what}: expected (start, stop) or (start, stop, channels), "
                         f"got {value!r}") from None
    if len(rest) > 1:
        raise InputError(f"{what}: expected (start, stop) or (start, stop, channels), got {value!r}")
    if not rest or rest[0] is None:
        return start, stop, None
    channels = sorted({int(c) for c in rest[0]})
    bad = [c for c in channels if not 0 <= c < width]
    if not channels or bad:
        raise InputError(f"{what}: channels {list(rest[0])} must be a non-empty subset of "
                         f"0..{width - 1} ({dim_name}={width})")
    return start, stop, channels
