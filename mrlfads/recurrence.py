"""The MR-LFADS time loop as one autograd node with hand-written backprop through time.

Why: with autograd recording each step, a T'=190 loop built ~15k graph nodes, and every
in-loop matmul produced its own small weight gradient (K = batch) that autograd then summed
step by step. Here the forward saves only the activations backward needs; backward walks
the steps in reverse propagating state gradients (one matmul with W^T per map and step) and
forms every weight gradient at the end as ONE matmul over all T'*B rows. Same math as the
per-step formulation in ``MRLFADS``'s docstring and as ``mrlfads.oracle``, which the tests
check to 1e-5 in float64 (outputs and gradients).

Layouts: per-step per-region tensors are ``(R, B, width)``, per-pair ``(P, B, width)``.
Saved sequences and gradient buffers are region-major ``(R, T', B, width)`` and written in
place step by step, so each weight gradient is a bmm over a free ``(R, T'*B, width)`` view
(no stack or transpose copies). Weights are the padded, masked bmm layout ``(R, in, out)``.

On float32/float64 CPU tensors ``Recurrence`` and ``GRUSequence`` hand the same steps to
their compiled copy (``mrlfads.native``, ``loop.cpp``; about 2x faster on the CPU) when it
is available; the Python code here is the reference the tests hold it to, the fallback
without a compiler, and what runs on CUDA.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mrlfads import native
from mrlfads.layers import LOGVAR_MAX, VAR_FLOOR, bounded_logvar, bounded_logvar_grad

aten = torch.ops.aten

Tensor = torch.Tensor


def apply_float32(fn: type[torch.autograd.Function], *args):
    """``fn.apply(*args)`` with autocast off and half-precision inputs upcast to float32.

    The hand-written loops write into preallocated single-dtype buffers and their backward
    mixes saved activations with float32 weights, so under bfloat16 autocast they ran mixed
    dtypes and failed in backward. The loop runs in float32; encoders and readouts around
    it still autocast."""
    device = next(a.device.type for a in args if isinstance(a, Tensor))
    args = tuple(a.float() if isinstance(a, Tensor) and a.dtype in (torch.float16, torch.bfloat16)
                 else a for a in args)
    with torch.autocast(device_type=device, enabled=False):
        return fn.apply(*args)


@dataclass(frozen=True)
class LoopSpec:
    """Static facts about the loop (not tensors): sizes and switches."""

    R: int
    P: int
    C: int  # com_dim
    U: int  # co_dim, 0 without inferred inputs
    clip: float
    src_is_g: bool  # messages read the generator state (else factors / folded rates)
    sample: bool


def _gru_fwd(xg: Tensor, hg: Tensor, h: Tensor, clip: float | None):
    """Clipped GRU step (PyTorch's r, z, n gate order) and what backward needs."""
    H = h.shape[-1]
    rz = torch.sigmoid(xg[..., : 2 * H] + hg[..., : 2 * H])
    r, z = rz[..., :H], rz[..., H:]
    hn = hg[..., 2 * H:]
    n = torch.tanh(torch.addcmul(xg[..., 2 * H:], r, hn))
    h_n = h - n
    pre = torch.addcmul(n, z, h_n)  # n + z (h - n)
    out = pre if clip is None else pre.clamp(-clip, clip)
    return out, (rz, n, hn, h_n, None if clip is None else pre.abs() <= clip)


def _gru_bwd(dout: Tensor, cache, dx: Tensor, dh: Tensor) -> Tensor:
    """Write the gradients wrt the gate pre-activations into ``dx`` (xg) and ``dh`` (hg),
    both (..., 3H) views of preallocated buffers; return the gradient wrt the previous h."""
    rz, n, hn, h_n, inside = cache
    H = n.shape[-1]
    r, z = rz[..., :H], rz[..., H:]
    # clamp passes the gradient only where its input was inside [-clip, clip]
    dpre = dout if inside is None else torch.where(inside, dout, 0.0)
    dxn, dxrz = dx[..., 2 * H:], dx[..., : 2 * H]
    aten.tanh_backward.grad_input(torch.addcmul(dpre, dpre, z, value=-1.0), n,
                                  grad_input=dxn)  # d a, where n = tanh(a), dn = dpre (1 - z)
    torch.mul(dxn, hn, out=dx[..., :H])  # d r (before sigmoid')
    torch.mul(dpre, h_n, out=dx[..., H: 2 * H])  # d z (before sigmoid')
    aten.sigmoid_backward.grad_input(dxrz, rz, grad_input=dxrz)
    dh[..., : 2 * H].copy_(dxrz)
    torch.mul(dxn, r, out=dh[..., 2 * H:])
    return dpre * z


def _wgrad(x: Tensor, dy: Tensor) -> Tensor:
    """Sum over time and batch of x^T dy: (R, T', B, I), (R, T', B, O) -> (R, I, O)."""
    R, T, B, I = x.shape
    return torch.bmm(x.reshape(R, T * B, I).transpose(1, 2), dy.reshape(R, T * B, -1))


def _bgrad(dy: Tensor) -> Tensor:
    """(R, T', B, O) -> (R, 1, O) bias gradient."""
    return dy.sum(1).sum(1, keepdim=True)


def _std(logvar: Tensor) -> Tensor:
    """Posterior std from raw log-variance: sqrt(exp(bounded(logvar)) + floor)."""
    return (bounded_logvar(logvar).exp() + VAR_FLOOR).sqrt()


def _std_grad(d: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """d/dlogvar of eps * sqrt(exp(bounded(logvar)) + floor), times the incoming gradient d."""
    e = bounded_logvar(logvar).exp()
    return d * eps * e * bounded_logvar_grad(logvar) / (2 * (e + VAR_FLOOR).sqrt())


def _posterior_grad(out: Tensor, d: Tensor, params: Tensor, eps: Tensor | None) -> None:
    """Write the gradient w.r.t. posterior params ``(mean, logvar)`` into ``out``, given the
    gradient ``d`` w.r.t. the sample (or the mean when not sampling, ``eps`` None)."""
    w = d.shape[-1]
    out[..., :w] = d
    if eps is None:
        out[..., w:] = 0.0
    else:
        out[..., w:] = _std_grad(d, params[..., w:], eps)


USE_NATIVE = True  # tests and benchmarks switch this off to run the Python loop on the CPU


def _native(t: Tensor):
    return native.ops_for(t) if USE_NATIVE else None


def _none_if_empty(ts):
    return [t if t.numel() else None for t in ts]


class Recurrence(torch.autograd.Function):
    """Inputs (None where absent): g0, f0 (R, B, G/F); ce (R, T', B, E) the ci encoder's
    output (after dropout) with its weights to the controller's gates, con_w_ie (R, E, 3Cn)
    and con_b_ih (R, 1, 3Cn); gx (T', R, B, 3G) or (R, 1, 3G) generator gates from external
    inputs / bias; the loop's weights; eps_msg (T', P, B, C), eps_co (T', R, B, U);
    keep (T', P, 1, 1 or C); drop_f (T', R, B, F) and drop_g (T', R, B, G) scaled dropout
    masks; keep_u (T', R, 1, U) zeroes inferred inputs (silencing them runs the Python loop:
    the compiled loop has no such factor).
    Outputs, region- or pair-major (the layout the weight gradients need): factors
    (R, T', B, F), co (R, T', B, 2U), u (R, T', B, U), message posterior params
    (P, T', B, 2C) and messages (P, T', B, C); empty tensors where absent."""

    @staticmethod
    def forward(ctx, spec: LoopSpec, src_index, Tp, g, f, ce, con_w_ie, con_b_ih, gx, msg_w,
                msg_b, con_w_if, con_w_hh, con_b_hh, co_w, co_b, gen_w_iu, gen_w_hh, gen_b_hh,
                fac_w, eps_msg, eps_co, keep, drop_f, drop_g, keep_u=None):
        ops = ctx.native = _native(g) if keep_u is None else None
        ctx.spec, ctx.gx_seq = spec, gx.dim() == 4
        # CO and MP are outputs: kept as ctx attributes they would form a reference cycle
        # (output -> grad_fn -> ctx -> output) that Python's GC cannot see, leaking every
        # step's buffers; save_for_backward is the leak-free way to keep outputs.
        inputs_kept = (src_index, msg_w, ce, con_w_ie, con_w_if, con_w_hh, co_w, gen_w_iu,
                       gen_w_hh, fac_w, eps_msg, eps_co, keep, drop_f, drop_g, keep_u)
        ctx.set_materialize_grads(False)
        if ops is not None:
            outs = ops.recurrence_forward(
                spec.R, spec.P, spec.C, spec.U, spec.clip, spec.src_is_g, spec.sample, VAR_FLOOR,
                LOGVAR_MAX,
                Tp, g, f, ce, con_w_ie, con_b_ih, gx, msg_w, msg_b, con_w_if, con_w_hh,
                con_b_hh, co_w, co_b, gen_w_iu, gen_w_hh, gen_b_hh, fac_w, eps_msg, eps_co, keep,
                drop_f, drop_g, src_index)
            ctx.bufs = outs[5:]
            ctx.save_for_backward(*inputs_kept[:-1], outs[1], outs[3])  # CO, MP (no keep_u)
            return tuple(outs[:5])  # Fs, CO, Us, MP, M
        R, P, C, U, clip = spec.R, spec.P, spec.C, spec.U, spec.clip
        B, Gm, Fm = g.shape[1], g.shape[2], fac_w.shape[2]
        con, gx_seq = ce is not None, ctx.gx_seq
        new = lambda *shape: g.new_empty(shape)
        empty = g.new_zeros(0)
        Gs = new(R, Tp + 1, B, Gm)  # generator states g_0..g_T'
        Gs[:, 0] = g
        Fs = new(R, Tp, B, Fm)  # factors f_1..f_T'
        GD = new(R, Tp, B, Gm) if drop_g is not None else Gs[:, 1:]  # g after dropout
        Xs = new(R, Tp, B, gen_w_iu.shape[1]) if gen_w_iu is not None else None
        Hs = new(R, Tp + 1, B, con_w_hh.shape[1]) if con else None  # controller states
        FD = new(R, Tp, B, Fm) if con else None  # controller's factor input (after dropout)
        CO, Us = (new(R, Tp, B, 2 * U), new(R, Tp, B, U)) if con else (empty, empty)
        ST = new(P, Tp, B, msg_w.shape[1]) if P else None  # message sources per pair
        MP, M = (new(P, Tp, B, 2 * C), new(P, Tp, B, C)) if P else (empty, empty)
        if con:
            Hs[:, 0] = 0.0
            # the controller's input gates from the ci encoder, whole sequence at once
            ci = torch.baddbmm(con_b_ih, ce.reshape(R, Tp * B, -1), con_w_ie).view(R, Tp, B, -1)
        gen_cache, con_cache = [], []
        for i in range(Tp):
            g = Gs[:, i]
            if P:
                st = ST[:, i]
                torch.index_select(g if spec.src_is_g else f, 0, src_index, out=st) \
                    if st.is_contiguous() else st.copy_((g if spec.src_is_g else f)[src_index])
                mp = torch.baddbmm(msg_b, st, msg_w)  # (P, B, 2C)
                m_mean, m_lv = mp[..., :C], mp[..., C:]
                m = M[:, i]
                if spec.sample:
                    torch.addcmul(m_mean, _std(m_lv), eps_msg[i], out=m)
                else:
                    m.copy_(m_mean)
                if keep is not None:
                    m.mul_(keep[i])
                    torch.mul(m_mean, keep[i], out=MP[:, i, :, :C])
                    MP[:, i, :, C:] = m_lv
                else:
                    MP[:, i] = mp
                # (P, B, C) -> (R_dst, R-1, B, C) -> (R_dst, B, R-1, C) into x's message slots
                Xs[:, i, :, U:].view(R, B, R - 1, C).copy_(m.view(R, R - 1, B, C).transpose(1, 2))
            if con:
                h = Hs[:, i]
                fd = torch.mul(f, drop_f[i], out=FD[:, i]) if drop_f is not None else FD[:, i].copy_(f)
                xg = torch.baddbmm(ci[:, i], fd, con_w_if)
                hg = torch.baddbmm(con_b_hh, h, con_w_hh)
                h, cache = _gru_fwd(xg, hg, h, clip)
                Hs[:, i + 1] = h
                con_cache.append(cache)
                co = torch.baddbmm(co_b, h, co_w)  # (R, B, 2U)
                CO[:, i] = co
                u = Us[:, i]
                if spec.sample:
                    torch.addcmul(co[..., :U], _std(co[..., U:]), eps_co[i], out=u)
                else:
                    u.copy_(co[..., :U])
                if keep_u is not None:
                    u.mul_(keep_u[i])
                Xs[:, i, :, :U] = u
            gxi = gx[i] if gx_seq else gx
            if Xs is not None:
                xg = torch.baddbmm(gxi, Xs[:, i], gen_w_iu)
            else:
                xg = gxi.expand(R, B, gxi.shape[-1])
            hg = torch.baddbmm(gen_b_hh, g, gen_w_hh)
            g, cache = _gru_fwd(xg, hg, g, clip)
            Gs[:, i + 1] = g
            gen_cache.append(cache)
            gd = torch.mul(g, drop_g[i], out=GD[:, i]) if drop_g is not None else g
            f = Fs[:, i]
            torch.bmm(gd, fac_w, out=f) if f.is_contiguous() else f.copy_(torch.bmm(gd, fac_w))
        ctx.Tp, ctx.con = Tp, con
        ctx.caches = (gen_cache, con_cache)
        ctx.bufs = (Gs, GD, Xs, Hs, FD, ST)
        ctx.save_for_backward(*inputs_kept, CO, MP)
        return Fs, CO, Us, MP, M

    @staticmethod
    def backward(ctx, gF, gCO, gU, gMP, gM):
        if ctx.native is not None:
            s = ctx.spec
            grads = ctx.native.recurrence_backward(
                s.R, s.P, s.C, s.U, s.clip, s.src_is_g, s.sample, VAR_FLOOR, LOGVAR_MAX, ctx.gx_seq,
                gF, gCO, gU, gMP, gM, *ctx.saved_tensors, *ctx.bufs)
            return (None, None, None, *_none_if_empty(grads), None, None, None, None, None, None)
        spec, Tp, con = ctx.spec, ctx.Tp, ctx.con
        (src_index, msg_w, ce, con_w_ie, con_w_if, con_w_hh, co_w, gen_w_iu, gen_w_hh, fac_w,
         eps_msg, eps_co, keep, drop_f, drop_g, keep_u, CO, MP) = ctx.saved_tensors
        Gs, GD, Xs, Hs, FD, ST = ctx.bufs
        gen_cache, con_cache = ctx.caches
        R, P, C, U = spec.R, spec.P, spec.C, spec.U
        B, Gm, Fm = Gs.shape[2], Gs.shape[3], fac_w.shape[2]
        T_ = lambda w: w.transpose(1, 2)  # (R, in, out) -> (R, out, in)
        new = lambda *shape: Gs.new_empty(shape)
        DF, DGX, DGH = new(R, Tp, B, Fm), new(R, Tp, B, 3 * Gm), new(R, Tp, B, 3 * Gm)
        if con:
            Cn = Hs.shape[3]
            DCX, DCH, DCO = new(R, Tp, B, 3 * Cn), new(R, Tp, B, 3 * Cn), new(R, Tp, B, 2 * U)
            dh = Hs.new_zeros(R, B, Cn)
        DMP = new(P, Tp, B, 2 * C) if P else None
        dg = Gs.new_zeros(R, B, Gm)
        df = Gs.new_zeros(R, B, Fm)
        for i in reversed(range(Tp)):
            dfi = torch.add(df, gF[:, i], out=DF[:, i]) if gF is not None else DF[:, i].copy_(df)
            dgd = torch.bmm(dfi, T_(fac_w))
            dgn = torch.addcmul(dg, dgd, drop_g[i]) if drop_g is not None else dg + dgd
            dg = _gru_bwd(dgn, gen_cache[i], DGX[:, i], DGH[:, i])
            dg = torch.baddbmm(dg, DGH[:, i], T_(gen_w_hh))
            dx = torch.bmm(DGX[:, i], T_(gen_w_iu)) if Xs is not None else None
            df = None
            if con:
                du = dx[..., :U]
                if gU is not None:
                    du = du + gU[:, i]
                if keep_u is not None:
                    du = du * keep_u[i]
                dco = DCO[:, i]
                _posterior_grad(dco, du, CO[:, i], eps_co[i] if spec.sample else None)
                if gCO is not None:
                    dco.add_(gCO[:, i])
                dhn = torch.baddbmm(dh, dco, T_(co_w))
                dh = _gru_bwd(dhn, con_cache[i], DCX[:, i], DCH[:, i])
                dh = torch.baddbmm(dh, DCH[:, i], T_(con_w_hh))
                dfd = torch.bmm(DCX[:, i], T_(con_w_if))
                df = dfd * drop_f[i] if drop_f is not None else dfd
            if P:
                # (R_dst, B, R-1, C) -> (R_dst, R-1, B, C) = (P, B, C)
                dm = dx[..., U:].view(R, B, R - 1, C).transpose(1, 2).reshape(P, B, C)
                if gM is not None:
                    dm = dm + gM[:, i]
                if keep is not None:
                    dm = dm * keep[i]
                dmp = DMP[:, i]
                _posterior_grad(dmp, dm, MP[:, i], eps_msg[i] if spec.sample else None)
                if gMP is not None:
                    gmp = gMP[:, i]
                    if keep is not None:
                        dmp[..., :C].addcmul_(gmp[..., :C], keep[i])
                        dmp[..., C:].add_(gmp[..., C:])
                    else:
                        dmp.add_(gmp)
                dsrc = Gs.new_zeros(R, B, msg_w.shape[1])
                dsrc.index_add_(0, src_index, torch.bmm(dmp, T_(msg_w)))
                if spec.src_is_g:
                    dg = dg + dsrc
                else:
                    df = dsrc if df is None else df + dsrc
            if df is None:
                df = Gs.new_zeros(R, B, Fm)
        out = dict.fromkeys(("ce", "con_w_ie", "con_b_ih", "msg_w", "msg_b", "con_w_if",
                             "con_w_hh", "con_b_hh", "co_w", "co_b", "gen_w_iu"))
        out["fac_w"] = _wgrad(GD, DF)
        out["gen_w_hh"], out["gen_b_hh"] = _wgrad(Gs[:, :Tp], DGH), _bgrad(DGH)
        out["gx"] = DGX.transpose(0, 1) if ctx.gx_seq else _bgrad(DGX)
        if Xs is not None:
            out["gen_w_iu"] = _wgrad(Xs, DGX)
        if con:
            dcx = DCX.reshape(R, Tp * B, -1)
            out["ce"] = torch.bmm(dcx, T_(con_w_ie)).view(R, Tp, B, -1)
            out["con_w_ie"], out["con_b_ih"] = _wgrad(ce, DCX), _bgrad(DCX)
            out["con_w_if"] = _wgrad(FD, DCX)
            out["con_w_hh"], out["con_b_hh"] = _wgrad(Hs[:, :Tp], DCH), _bgrad(DCH)
            out["co_w"], out["co_b"] = _wgrad(Hs[:, 1:], DCO), _bgrad(DCO)
        if P:
            out["msg_w"], out["msg_b"] = _wgrad(ST, DMP), _bgrad(DMP)
        return (None, None, None, dg, df, out["ce"], out["con_w_ie"], out["con_b_ih"],
                out["gx"], out["msg_w"], out["msg_b"],
                out["con_w_if"], out["con_w_hh"], out["con_b_hh"], out["co_w"], out["co_b"],
                out["gen_w_iu"], out["gen_w_hh"], out["gen_b_hh"], out["fac_w"],
                None, None, None, None, None, None)


class GRUSequence(torch.autograd.Function):
    """A plain GRU (h0 = 0, no clip) over a whole sequence, all regions in one bmm per step.

    ``xg`` (T, R, B, 3H) are the input gates W_ih x + b_ih computed outside for the whole
    sequence; ``w_hh`` (R, H, 3H) and ``b_hh`` (R, 1, 3H). Returns the states (R, T, B, H).
    Same math as ``nn.GRU``; backward forms the W_hh gradient as one matmul over all steps.
    """

    @staticmethod
    def forward(ctx, xg, w_hh, b_hh):
        ops = ctx.native = _native(xg)
        if ops is not None:
            Hs, *caches = ops.gru_sequence_forward(xg, w_hh, b_hh)
            ctx.Hs, ctx.caches = Hs, caches
            ctx.save_for_backward(w_hh)
            return Hs[:, 1:]
        T, R, B, _ = xg.shape
        Hs = xg.new_empty(R, T + 1, B, w_hh.shape[1])
        Hs[:, 0] = 0.0
        caches = []
        for i in range(T):
            h = Hs[:, i]
            hg = torch.baddbmm(b_hh, h, w_hh)
            h, cache = _gru_fwd(xg[i], hg, h, None)
            Hs[:, i + 1] = h
            caches.append(cache)
        ctx.Hs, ctx.caches = Hs, caches
        ctx.save_for_backward(w_hh)
        return Hs[:, 1:]

    @staticmethod
    def backward(ctx, gH):
        (w_hh,) = ctx.saved_tensors
        Hs, caches = ctx.Hs, ctx.caches
        if ctx.native is not None:
            return tuple(ctx.native.gru_sequence_backward(gH, w_hh, Hs, *caches))
        R, T, B, H = gH.shape
        w_t = w_hh.transpose(1, 2)
        DX, DH = Hs.new_empty(R, T, B, 3 * H), Hs.new_empty(R, T, B, 3 * H)
        dh = Hs.new_zeros(R, B, H)
        for i in reversed(range(T)):
            dh = _gru_bwd(dh + gH[:, i], caches[i], DX[:, i], DH[:, i])
            dh = torch.baddbmm(dh, DH[:, i], w_t)
        return DX.transpose(0, 1), _wgrad(Hs[:, :T], DH), _bgrad(DH)
