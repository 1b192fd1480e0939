"""Hand-written BPTT of the time loop agrees with finite differences (float64 gradcheck),
including the dropout and silencing branches the oracle comparison cannot reach; the
registered operators pass torch's own checks, compile, and report their FLOPs; for both
the compiled CPU loop and the Python loop (``loop_impl``)."""
from __future__ import annotations

import pytest
import torch

from mrlfads import loop_ops, recurrence
from mrlfads.loop_io import (
    DIFFERENTIABLE,
    LoopInputs,
    LoopOutputs,
    LoopSpec,
    LoopWeights,
    loop_matmul_flops,
    to_list,
)

pytestmark = pytest.mark.usefixtures("loop_impl")

R, B, T, G, FD, CN, U, C, E = 3, 2, 3, 3, 2, 3, 2, 2, 2
P = R * (R - 1)


def loop_inputs(src_is_g: bool, sample: bool, dropout: bool, silence: bool, seed: int = 0,
                ext_seq: bool = True):
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *s, grad=True: (0.5 * torch.randn(*s, generator=gen, dtype=torch.float64)
                                 ).requires_grad_(grad)
    S = G if src_is_g else FD
    # pairs ordered by destination, as the model's view (R, R-1, B, C) expects
    pairs = [(a, b) for b in range(R) for a in range(R) if a != b]
    mask = lambda *s: ((torch.rand(*s, generator=gen) < 0.7).double() / 0.7)
    keep = torch.ones(T, P, 1, 1, dtype=torch.float64)
    keep_u = torch.ones(T, R, 1, U, dtype=torch.float64)
    if silence:
        keep[1:3, :2] = 0.0
        keep_u[1:, 1, :, :1] = 0.0
    spec = LoopSpec(R=R, P=P, C=C, U=U, T=T, clip=0.8, src_is_g=src_is_g, sample=sample)
    inputs = LoopInputs(
        g0=rnd(R, B, G), f0=rnd(R, B, FD), ce=rnd(R, T, B, E),
        gx=rnd(T, R, B, 3 * G) if ext_seq else rnd(R, 1, 3 * G),
        eps_msg=rnd(T, P, B, C, grad=False) if sample else None,
        eps_co=rnd(T, R, B, U, grad=False) if sample else None,
        keep=keep if silence else None, keep_u=keep_u if silence else None,
        drop_f=mask(T, R, B, FD) if dropout else None, drop_g=mask(T, R, B, G) if dropout else None,
        src_index=torch.tensor([a for a, _ in pairs]))
    weights = LoopWeights(
        gen_w_hh=rnd(R, G, 3 * G), gen_b_hh=rnd(R, 1, 3 * G), fac_w=rnd(R, G, FD),
        gen_w_iu=rnd(R, U + (R - 1) * C, 3 * G), con_w_ie=rnd(R, E, 3 * CN),
        con_b_ih=rnd(R, 1, 3 * CN), con_w_if=rnd(R, FD, 3 * CN), con_w_hh=rnd(R, CN, 3 * CN),
        con_b_hh=rnd(R, 1, 3 * CN), co_w=rnd(R, CN, 2 * U), co_b=rnd(R, 1, 2 * U),
        msg_w=rnd(P, S, 2 * C), msg_b=rnd(P, 1, 2 * C))
    return spec, inputs, weights


def differentiable(inputs: LoopInputs, weights: LoopWeights) -> list[torch.Tensor]:
    return [getattr(inputs, n) for n in DIFFERENTIABLE] + list(weights)


@pytest.mark.parametrize("src_is_g,sample,dropout,silence", [
    (False, True, True, False), (True, False, True, True), (False, True, False, True)])
def test_loop_gradients_match_finite_differences(src_is_g, sample, dropout, silence):
    spec, inputs, weights = loop_inputs(src_is_g, sample, dropout, silence)
    n = len(DIFFERENTIABLE)

    def f(*ts):
        outs = loop_ops.loop(spec, inputs._replace(**dict(zip(DIFFERENTIABLE, ts[:n]))),
                             LoopWeights(*ts[n:]))
        # weight every output differently so each output's gradient path is exercised
        return sum((o * torch.linspace(0.5, 1.5, o.numel(), dtype=o.dtype).view_as(o)).sum()
                   for o in outs)

    assert torch.autograd.gradcheck(f, differentiable(inputs, weights), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("ext_seq", [True, False])
def test_loop_operators_pass_torch_opcheck(ext_seq):
    """The registered operators' schema, fake (shape) functions, autograd registration and
    tracing by AOT autograd (what torch.compile uses) agree with the real kernels."""
    spec, inputs, weights = loop_inputs(False, True, True, True, ext_seq=ext_seq)
    like = inputs.g0
    args = (to_list(inputs, like), to_list(weights, like))
    torch.library.opcheck(loop_ops.recurrence_op, args, spec.scalars())
    xg = torch.randn(4, 2, 3, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, 9, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 1, 9, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(loop_ops.gru_sequence_op, (xg, w, b))


def test_loop_compiles_without_graph_breaks():
    spec, inputs, weights = loop_inputs(False, True, False, False)
    fn = lambda i, w: sum(o.sum() for o in loop_ops.loop(spec, i, w) if o is not None)
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    ref = fn(inputs, weights)
    got = compiled(inputs, weights)
    torch.testing.assert_close(got, ref)
    grads = torch.autograd.grad(got, differentiable(inputs, weights))
    refs = torch.autograd.grad(ref, differentiable(inputs, weights))
    for a, b in zip(grads, refs):
        torch.testing.assert_close(a, b)


def test_flop_counter_sees_the_loop_with_the_python_loops_matmul_count():
    """torch.utils.flop_counter counts the operators (the compiled loop's matmuls were
    invisible to it) with the same total as the aten matmuls of the Python loop itself,
    and a hand count for one configuration."""
    from torch.utils.flop_counter import FlopCounterMode

    spec, inputs, weights = loop_inputs(False, True, True, False)
    with FlopCounterMode(display=False) as op_count:
        outs = loop_ops.loop(spec, inputs, weights)
        sum(o.sum() for o in outs).backward()
    with torch.no_grad(), FlopCounterMode(display=False) as aten_fwd:
        o, saved = recurrence.forward(spec, inputs, weights)
    with torch.no_grad(), FlopCounterMode(display=False) as aten_bwd:
        recurrence.backward(spec, LoopOutputs(*(torch.ones_like(t) for t in o)), inputs,
                            weights, o, saved)
    forward = loop_matmul_flops(spec, inputs, weights)
    # by hand, per step: gen hh 3x9, gen in 6x9, factors 3x2, controller in 2x9, hh 3x9,
    # co 3x4 (each x R=3 regions), messages 2x4 (x P=6 pairs); ci gates 2x9 (x R); B=2, T=3
    per_step = 2 * B * (R * (27 + 54 + 6 + 18 + 27 + 12 + 18) + P * 8)
    assert forward == T * per_step == 6408
    assert aten_fwd.get_total_flops() == forward
    assert aten_bwd.get_total_flops() == 2 * forward
    assert op_count.get_total_flops() == 3 * forward


def test_gru_sequence_matches_torch_gru():
    torch.manual_seed(0)
    grus = [torch.nn.GRU(3, 4, batch_first=True).double() for _ in range(2)]
    x = [torch.randn(B, 5, 3, dtype=torch.float64) for _ in grus]
    xg = torch.stack([torch.nn.functional.linear(xi, m.weight_ih_l0, m.bias_ih_l0)
                      for xi, m in zip(x, grus)]).permute(2, 0, 1, 3)  # (T, R, B, 3H)
    w = torch.stack([m.weight_hh_l0.T for m in grus])
    b = torch.stack([m.bias_hh_l0 for m in grus]).unsqueeze(1)
    ours = loop_ops.gru_sequence(xg, w, b)  # (R, T, B, H)
    ref = torch.stack([m(xi)[0] for xi, m in zip(x, grus)]).transpose(1, 2)
    torch.testing.assert_close(ours, ref)
    wts = torch.linspace(0.5, 1.5, ref.numel(), dtype=ref.dtype).view_as(ref)
    params = [p for m in grus for p in (m.weight_hh_l0, m.bias_hh_l0, m.weight_ih_l0)]
    g_ours = torch.autograd.grad((ours * wts).sum(), params)
    g_ref = torch.autograd.grad((ref * wts).sum(), params)
    for a, c in zip(g_ours, g_ref):
        torch.testing.assert_close(a, c)


def test_training_step_frees_its_buffers():
    """Regression: outputs kept as ctx attributes formed an output -> grad_fn -> ctx ->
    output cycle that Python's GC cannot see, leaking ~145 MB per epoch at benchmark size."""
    import gc
    import weakref

    from mrlfads.config import LossConfig, ModelConfig, RegionConfig
    from mrlfads.loss import compute_loss
    from mrlfads.model import MRLFADS

    cfg = ModelConfig(regions=(RegionConfig("A", 3, 1), RegionConfig("B", 3, 1)),
                      obs_model="poisson", ic_enc_seq_len=4, ic_enc_dim=4, ci_enc_dim=4,
                      con_dim=4, co_dim=2, ic_dim=2, com_dim=2)
    model = MRLFADS(cfg)
    x = [torch.poisson(torch.ones(5, 12, 3)) for _ in range(2)]
    y = [torch.poisson(torch.ones(5, 12, 1)) for _ in range(2)]
    out = model(x, sample=True)
    compute_loss(out, x, y, LossConfig(), 0).total.backward()

    def base(t):
        while t._base is not None:
            t = t._base
        return weakref.ref(t)

    refs = [base(out.co_mean[0]), base(out.msg_mean), base(out.factors[0])]
    del out
    gc.collect()
    assert all(r() is None for r in refs)
