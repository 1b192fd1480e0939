"""The MR-LFADS time loop in Python: forward, and backprop through time written by hand.

Why by hand: with autograd recording each step, a T'=190 loop built ~15k graph nodes, and
every in-loop matmul produced its own small weight gradient (K = batch) that autograd then
summed step by step. Here the forward saves only the activations backward needs
(``LoopSaved``); backward walks the steps in reverse propagating state gradients (one
matmul with W^T per map and step) and forms every weight gradient at the end as ONE matmul
over all T'*B rows. Same math as the per-step formulation in ``MRLFADS``'s docstring and as
``mrlfads.oracle``, which the tests check to 1e-5 in float64 (outputs and gradients).

This is the reference backend of the operators in ``mrlfads.loop_ops`` and what runs on
CUDA and without a compiler; ``native/loop.cpp`` is its compiled CPU copy (same steps,
buffers and saved activations). Inputs, weights, outputs and saved activations are the
named structures of ``mrlfads.loop_io``.
"""
from __future__ import annotations

import torch

from mrlfads.layers import VAR_FLOOR, bounded_logvar, bounded_logvar_grad
from mrlfads.loop_io import (
    GRUSaved,
    LoopInputs,
    LoopOutputs,
    LoopSaved,
    LoopSpec,
    LoopWeights,
    loop_shapes,
)

aten = torch.ops.aten

Tensor = torch.Tensor


def _gru_fwd(xg: Tensor, hg: Tensor, h: Tensor, clip: float | None, out: Tensor,
             rz: Tensor, n: Tensor, hn: Tensor) -> Tensor:
    """Clipped GRU step (PyTorch's r, z, n gate order) into ``out``; what backward needs
    (sigmoid(r, z), n and the hidden share of the n gate) into ``rz``, ``n``, ``hn``."""
    H = h.shape[-1]
    torch.sigmoid(xg[..., : 2 * H] + hg[..., : 2 * H], out=rz)
    r, z = rz[..., :H], rz[..., H:]
    hn.copy_(hg[..., 2 * H:])
    torch.tanh(torch.addcmul(xg[..., 2 * H:], r, hn), out=n)
    pre = torch.addcmul(n, z, h - n)  # n + z (h - n)
    return out.copy_(pre if clip is None else pre.clamp(-clip, clip))


def _gru_bwd(dout: Tensor, rz: Tensor, n: Tensor, hn: Tensor, h: Tensor, clip: float | None,
             dx: Tensor, dh: Tensor) -> Tensor:
    """Write the gradients wrt the gate pre-activations into ``dx`` (xg) and ``dh`` (hg),
    both (..., 3H) views of preallocated buffers; return the gradient wrt the previous
    state ``h`` along the elementwise path (the W_hh path is the caller's)."""
    H = n.shape[-1]
    r, z = rz[..., :H], rz[..., H:]
    h_n = h - n
    # clamp passes the gradient only where its input was inside [-clip, clip]
    dpre = dout if clip is None else torch.where(torch.addcmul(n, z, h_n).abs() <= clip,
                                                 dout, 0.0)
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


def _alloc(shapes, like: Tensor):
    """A structure of fresh tensors for a structure of shapes (None stays None)."""
    return type(shapes)(*(None if s is None else like.new_empty(s) for s in shapes))


def forward(spec: LoopSpec, x: LoopInputs, w: LoopWeights) -> tuple[LoopOutputs, LoopSaved]:
    """Run the loop; the outputs, and what ``backward`` needs."""
    R, P, C, U, Tp, clip = spec.R, spec.P, spec.C, spec.U, spec.T, spec.clip
    out_shapes, saved_shapes = loop_shapes(spec, x, w)
    o, s = _alloc(out_shapes, x.g0), _alloc(saved_shapes, x.g0)
    B = x.g0.shape[1]
    con, gx_seq = x.ce is not None, x.gx.dim() == 4
    s.Gs[:, 0] = x.g0
    GD = s.GD if s.GD is not None else s.Gs[:, 1:]  # g after dropout
    if con:
        s.Hs[:, 0] = 0.0
        # the controller's input gates from the ci encoder, whole sequence at once
        ci = torch.baddbmm(w.con_b_ih, x.ce.reshape(R, Tp * B, -1), w.con_w_ie).view(R, Tp, B, -1)
    f = x.f0
    for i in range(Tp):
        g = s.Gs[:, i]
        if P:
            st = s.ST[:, i]
            torch.index_select(g if spec.src_is_g else f, 0, x.src_index, out=st) \
                if st.is_contiguous() else st.copy_((g if spec.src_is_g else f)[x.src_index])
            mp = torch.baddbmm(w.msg_b, st, w.msg_w)  # (P, B, 2C)
            m_mean, m_lv = mp[..., :C], mp[..., C:]
            m = o.messages[:, i]
            if spec.sample:
                torch.addcmul(m_mean, _std(m_lv), x.eps_msg[i], out=m)
            else:
                m.copy_(m_mean)
            if x.keep is not None:
                m.mul_(x.keep[i])
                torch.mul(m_mean, x.keep[i], out=o.msg_params[:, i, :, :C])
                o.msg_params[:, i, :, C:] = m_lv
            else:
                o.msg_params[:, i] = mp
            # (P, B, C) -> (R_dst, R-1, B, C) -> (R_dst, B, R-1, C) into x's message slots
            s.Xs[:, i, :, U:].view(R, B, R - 1, C).copy_(m.view(R, R - 1, B, C).transpose(1, 2))
        if con:
            h = s.Hs[:, i]
            fd = s.FD[:, i]
            torch.mul(f, x.drop_f[i], out=fd) if x.drop_f is not None else fd.copy_(f)
            xg = torch.baddbmm(ci[:, i], fd, w.con_w_if)
            hg = torch.baddbmm(w.con_b_hh, h, w.con_w_hh)
            h = _gru_fwd(xg, hg, h, clip, s.Hs[:, i + 1], s.con_rz[:, i], s.con_n[:, i],
                         s.con_hn[:, i])
            co = torch.baddbmm(w.co_b, h, w.co_w)  # (R, B, 2U)
            o.co[:, i] = co
            u = o.inputs[:, i]
            if spec.sample:
                torch.addcmul(co[..., :U], _std(co[..., U:]), x.eps_co[i], out=u)
            else:
                u.copy_(co[..., :U])
            if x.keep_u is not None:
                u.mul_(x.keep_u[i])
            s.Xs[:, i, :, :U] = u
        gxi = x.gx[i] if gx_seq else x.gx
        if s.Xs is not None:
            xg = torch.baddbmm(gxi, s.Xs[:, i], w.gen_w_iu)
        else:
            xg = gxi.expand(R, B, gxi.shape[-1])
        hg = torch.baddbmm(w.gen_b_hh, g, w.gen_w_hh)
        g = _gru_fwd(xg, hg, g, clip, s.Gs[:, i + 1], s.gen_rz[:, i], s.gen_n[:, i],
                     s.gen_hn[:, i])
        gd = torch.mul(g, x.drop_g[i], out=GD[:, i]) if x.drop_g is not None else g
        f = o.factors[:, i]
        torch.bmm(gd, w.fac_w, out=f) if f.is_contiguous() else f.copy_(torch.bmm(gd, w.fac_w))
    return o, s


def backward(spec: LoopSpec, grads: LoopOutputs, x: LoopInputs, w: LoopWeights,
             o: LoopOutputs, s: LoopSaved) -> tuple[LoopInputs, LoopWeights]:
    """Gradients w.r.t. the differentiable inputs and the weights (None where absent or not
    differentiated), given the gradients w.r.t. the outputs (None where none arrived)."""
    R, P, C, U, Tp, clip = spec.R, spec.P, spec.C, spec.U, spec.T, spec.clip
    gF, gCO, gU, gMP, gM = grads
    Gs = s.Gs
    GD = s.GD if s.GD is not None else Gs[:, 1:]
    con = x.ce is not None
    B, Gm, Fm = Gs.shape[2], Gs.shape[3], w.fac_w.shape[2]
    T_ = lambda m: m.transpose(1, 2)  # (R, in, out) -> (R, out, in)
    new = lambda *shape: Gs.new_empty(shape)
    DF, DGX, DGH = new(R, Tp, B, Fm), new(R, Tp, B, 3 * Gm), new(R, Tp, B, 3 * Gm)
    if con:
        Cn = s.Hs.shape[3]
        DCX, DCH, DCO = new(R, Tp, B, 3 * Cn), new(R, Tp, B, 3 * Cn), new(R, Tp, B, 2 * U)
        dh = s.Hs.new_zeros(R, B, Cn)
    DMP = new(P, Tp, B, 2 * C) if P else None
    dg = Gs.new_zeros(R, B, Gm)
    df = Gs.new_zeros(R, B, Fm)
    for i in reversed(range(Tp)):
        dfi = torch.add(df, gF[:, i], out=DF[:, i]) if gF is not None else DF[:, i].copy_(df)
        dgd = torch.bmm(dfi, T_(w.fac_w))
        dgn = torch.addcmul(dg, dgd, x.drop_g[i]) if x.drop_g is not None else dg + dgd
        dg = _gru_bwd(dgn, s.gen_rz[:, i], s.gen_n[:, i], s.gen_hn[:, i], Gs[:, i], clip,
                      DGX[:, i], DGH[:, i])
        dg = torch.baddbmm(dg, DGH[:, i], T_(w.gen_w_hh))
        dx = torch.bmm(DGX[:, i], T_(w.gen_w_iu)) if s.Xs is not None else None
        df = None
        if con:
            du = dx[..., :U]
            if gU is not None:
                du = du + gU[:, i]
            if x.keep_u is not None:
                du = du * x.keep_u[i]
            dco = DCO[:, i]
            _posterior_grad(dco, du, o.co[:, i], x.eps_co[i] if spec.sample else None)
            if gCO is not None:
                dco.add_(gCO[:, i])
            dhn = torch.baddbmm(dh, dco, T_(w.co_w))
            dh = _gru_bwd(dhn, s.con_rz[:, i], s.con_n[:, i], s.con_hn[:, i], s.Hs[:, i], clip,
                          DCX[:, i], DCH[:, i])
            dh = torch.baddbmm(dh, DCH[:, i], T_(w.con_w_hh))
            dfd = torch.bmm(DCX[:, i], T_(w.con_w_if))
            df = dfd * x.drop_f[i] if x.drop_f is not None else dfd
        if P:
            # (R_dst, B, R-1, C) -> (R_dst, R-1, B, C) = (P, B, C)
            dm = dx[..., U:].view(R, B, R - 1, C).transpose(1, 2).reshape(P, B, C)
            if gM is not None:
                dm = dm + gM[:, i]
            if x.keep is not None:
                dm = dm * x.keep[i]
            dmp = DMP[:, i]
            _posterior_grad(dmp, dm, o.msg_params[:, i], x.eps_msg[i] if spec.sample else None)
            if gMP is not None:
                gmp = gMP[:, i]
                if x.keep is not None:
                    dmp[..., :C].addcmul_(gmp[..., :C], x.keep[i])
                    dmp[..., C:].add_(gmp[..., C:])
                else:
                    dmp.add_(gmp)
            if not spec.detach_src:  # else the message trains its map only, not its source
                dsrc = Gs.new_zeros(R, B, w.msg_w.shape[1])
                dsrc.index_add_(0, x.src_index, torch.bmm(dmp, T_(w.msg_w)))
                if spec.src_is_g:
                    dg = dg + dsrc
                else:
                    df = dsrc if df is None else df + dsrc
        if df is None:
            df = Gs.new_zeros(R, B, Fm)
    dw = dict.fromkeys(LoopWeights._fields)
    dw["fac_w"] = _wgrad(GD, DF)
    dw["gen_w_hh"], dw["gen_b_hh"] = _wgrad(Gs[:, :Tp], DGH), _bgrad(DGH)
    if s.Xs is not None:
        dw["gen_w_iu"] = _wgrad(s.Xs, DGX)
    dce = None
    if con:
        dce = torch.bmm(DCX.reshape(R, Tp * B, -1), T_(w.con_w_ie)).view(R, Tp, B, -1)
        dw["con_w_ie"], dw["con_b_ih"] = _wgrad(x.ce, DCX), _bgrad(DCX)
        dw["con_w_if"] = _wgrad(s.FD, DCX)
        dw["con_w_hh"], dw["con_b_hh"] = _wgrad(s.Hs[:, :Tp], DCH), _bgrad(DCH)
        dw["co_w"], dw["co_b"] = _wgrad(s.Hs[:, 1:], DCO), _bgrad(DCO)
    if P:
        dw["msg_w"], dw["msg_b"] = _wgrad(s.ST, DMP), _bgrad(DMP)
    dgx = DGX.transpose(0, 1) if x.gx.dim() == 4 else _bgrad(DGX)
    dx_in = LoopInputs(**dict.fromkeys(LoopInputs._fields)) \
        ._replace(g0=dg, f0=df, ce=dce, gx=dgx)
    return dx_in, LoopWeights(**dw)


def gru_sequence_forward(xg: Tensor, w_hh: Tensor, b_hh: Tensor) -> GRUSaved:
    """A plain GRU (h_0 = 0, no clip) over the input gates ``xg`` (T, R, B, 3H), all regions
    in one bmm per step; the states and gate caches."""
    T, R, B, _ = xg.shape
    H = w_hh.shape[1]
    new = lambda *shape: xg.new_empty(shape)
    s = GRUSaved(states=new(R, T, B, H), rz=new(R, T, B, 2 * H), n=new(R, T, B, H),
                 hn=new(R, T, B, H))
    h = xg.new_zeros(R, B, H)
    for i in range(T):
        hg = torch.baddbmm(b_hh, h, w_hh)
        h = _gru_fwd(xg[i], hg, h, None, s.states[:, i], s.rz[:, i], s.n[:, i], s.hn[:, i])
    return s


def gru_sequence_backward(gH: Tensor, w_hh: Tensor, s: GRUSaved) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients (d xg (T, R, B, 3H), d w_hh, d b_hh) for the states' gradient gH (R, T, B, H)."""
    R, T, B, H = gH.shape
    w_t = w_hh.transpose(1, 2)
    DX, DH = gH.new_empty(R, T, B, 3 * H), gH.new_empty(R, T, B, 3 * H)
    zero = gH.new_zeros(R, B, H)
    dh = zero
    for i in reversed(range(T)):
        prev = s.states[:, i - 1] if i else zero
        dh = _gru_bwd(dh + gH[:, i], s.rz[:, i], s.n[:, i], s.hn[:, i], prev, None,
                      DX[:, i], DH[:, i])
        dh = torch.baddbmm(dh, DH[:, i], w_t)
    # h_0 = 0 adds nothing to W_hh's gradient: states h_1..h_{T-1} meet steps 2..T
    dw = _wgrad(s.states[:, : T - 1], DH[:, 1:])
    return DX.transpose(0, 1), dw, _bgrad(DH)
