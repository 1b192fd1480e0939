"""The time loop and the ci encoders' GRU as registered torch operators.

``mrlfads::recurrence`` and ``mrlfads::gru_sequence`` (with their ``*_backward``) are
declared with ``torch.library.custom_op``: autograd through ``register_autograd``, shapes
without running through ``register_fake`` (so ``torch.compile`` and ``torch.library.opcheck``
trace them), and FLOPs through ``torch.utils.flop_counter`` (``loop_io.loop_matmul_flops``).
Each runs the compiled CPU loop (``mrlfads.native``) on float32/float64 CPU tensors when it
is available and the Python loop (``mrlfads.recurrence``) otherwise (CUDA, no compiler,
``USE_NATIVE`` off). Both backends take and return the structures of ``mrlfads.loop_io``;
the operators carry them as tensor lists in field order.

The forward operators also return the activations their backward needs (``LoopSaved``,
``GRUSaved``); the functions ``loop`` and ``gru_sequence`` hide them from callers.
"""
from __future__ import annotations

from dataclasses import fields

import torch
from torch.utils.flop_counter import register_flop_formula

from mrlfads import native, recurrence
from mrlfads.layers import LOGVAR_MAX, VAR_FLOOR
from mrlfads.loop_io import (
    DIFFERENTIABLE,
    GRUSaved,
    LoopInputs,
    LoopOutputs,
    LoopSaved,
    LoopSpec,
    LoopWeights,
    from_list,
    loop_matmul_flops,
    loop_shapes,
    to_list,
)

Tensor = torch.Tensor

USE_NATIVE = True  # tests and benchmarks switch this off to run the Python loop on the CPU

# the field lists loop.cpp declares must be these, in this order (checked on first use)
_STRUCTS = {"inputs": LoopInputs, "weights": LoopWeights, "outputs": LoopOutputs,
            "saved": LoopSaved, "gru_saved": GRUSaved}
_checked: dict[int, bool] = {}


def _native_ops(t: Tensor):
    """The compiled ops when they apply to ``t``, else None."""
    ops = native.ops_for(t) if USE_NATIVE else None
    if ops is not None and id(ops) not in _checked:
        for name, cls in _STRUCTS.items():
            theirs = ops.loop_fields(name).split(",")
            if theirs != list(cls._fields):
                raise RuntimeError(f"mrlfads native loop: loop.cpp's {name} fields {theirs} do "
                                   f"not match mrlfads.loop_io.{cls.__name__} {list(cls._fields)}"
                                   "; declare the same fields in both, in the same order")
        _checked[id(ops)] = True
    return ops


# the operators take LoopSpec's fields as scalars, in its field order
_SPEC_FIELDS = tuple(f.name for f in fields(LoopSpec))
_BOUNDS = {"var_floor": VAR_FLOOR, "logvar_max": LOGVAR_MAX}
_N_OUT = len(LoopOutputs._fields)


# ---------------------------------------------------------------- the MR-LFADS loop
@torch.library.custom_op("mrlfads::recurrence", mutates_args=())
def recurrence_op(inputs: list[Tensor], weights: list[Tensor], R: int, P: int, C: int, U: int,
                  T: int, clip: float, src_is_g: bool, sample: bool,
                  detach_src: bool) -> list[Tensor]:
    """LoopOutputs then LoopSaved, as one list in field order."""
    ops = _native_ops(inputs[0])
    if ops is not None:
        return list(ops.recurrence_forward(inputs, weights, R=R, P=P, C=C, U=U, T=T, clip=clip,
                                           src_is_g=src_is_g, sample=sample,
                                           detach_src=detach_src, **_BOUNDS))
    spec = LoopSpec(R, P, C, U, T, clip, src_is_g, sample, detach_src)
    out, saved = recurrence.forward(spec, from_list(LoopInputs, inputs),
                                    from_list(LoopWeights, weights))
    like = inputs[0]
    return to_list(out, like) + to_list(saved, like)


@recurrence_op.register_fake
def _(inputs, weights, R, P, C, U, T, clip, src_is_g, sample, detach_src):
    spec = LoopSpec(R, P, C, U, T, clip, src_is_g, sample, detach_src)
    out, saved = loop_shapes(spec, from_list(LoopInputs, inputs), from_list(LoopWeights, weights))
    like = inputs[0]
    return [like.new_empty(0 if s is None else s) for s in (*out, *saved)]


@torch.library.custom_op("mrlfads::recurrence_backward", mutates_args=())
def recurrence_backward_op(grads: list[Tensor], inputs: list[Tensor], weights: list[Tensor],
                           outputs: list[Tensor], saved: list[Tensor], R: int, P: int, C: int,
                           U: int, T: int, clip: float, src_is_g: bool,
                           sample: bool, detach_src: bool) -> list[Tensor]:
    """Gradients of LoopInputs then LoopWeights, one list in field order (empty where none)."""
    ops = _native_ops(inputs[0])
    if ops is not None:
        return list(ops.recurrence_backward(grads, inputs, weights, outputs, saved, R=R, P=P,
                                            C=C, U=U, T=T, clip=clip, src_is_g=src_is_g,
                                            sample=sample, detach_src=detach_src, **_BOUNDS))
    spec = LoopSpec(R, P, C, U, T, clip, src_is_g, sample, detach_src)
    d_in, d_w = recurrence.backward(
        spec, from_list(LoopOutputs, grads), from_list(LoopInputs, inputs),
        from_list(LoopWeights, weights), from_list(LoopOutputs, outputs),
        from_list(LoopSaved, saved))
    like = inputs[0]
    return to_list(d_in, like) + to_list(d_w, like)


@recurrence_backward_op.register_fake
def _(grads, inputs, weights, outputs, saved, R, P, C, U, T, clip, src_is_g, sample,
      detach_src):
    x = from_list(LoopInputs, inputs)
    like = inputs[0]
    d_in = [t if name in DIFFERENTIABLE and t is not None else None
            for name, t in zip(LoopInputs._fields, x)]
    res = [like.new_empty(0) if t is None else torch.empty_like(t) for t in d_in]
    if x.gx.dim() == 4:  # the backends hand out a (T', R, ...) view of an (R, T', ...) buffer
        T_, R_, B_, W_ = x.gx.shape
        res[LoopInputs._fields.index("gx")] = like.new_empty(R_, T_, B_, W_).transpose(0, 1)
    return res + [like.new_empty(0) if t.numel() == 0 else torch.empty_like(t) for t in weights]


def _setup_loop(ctx, inputs, output):
    ins, ws, *scalars = inputs
    ctx.spec = dict(zip(_SPEC_FIELDS, scalars, strict=True))
    ctx.n = (len(ins), len(ws), _N_OUT)
    ctx.mark_non_differentiable(*output[_N_OUT:])  # the saved activations
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*ins, *ws, *output)


def _backward_loop(ctx, grads):
    n_in, n_w, n_out = ctx.n
    t = ctx.saved_tensors
    ins, ws, outs, saved = t[:n_in], t[n_in: n_in + n_w], t[n_in + n_w: n_in + n_w + n_out], \
        t[n_in + n_w + n_out:]
    like = ins[0]
    g = [like.new_empty(0) if x is None else x for x in grads[:n_out]]
    res = recurrence_backward_op(g, list(ins), list(ws), list(outs), list(saved), **ctx.spec)
    as_none = lambda ts: [x if x.numel() else None for x in ts]
    return as_none(res[:n_in]), as_none(res[n_in:]), *([None] * len(ctx.spec))


recurrence_op.register_autograd(_backward_loop, setup_context=_setup_loop)


@register_flop_formula(torch.ops.mrlfads.recurrence)
def _loop_flops(inputs, weights, R, P, C, U, T, clip, src_is_g, sample, detach_src=False,
                *args, **kwargs) -> int:
    return loop_matmul_flops(LoopSpec(R, P, C, U, T, clip, src_is_g, sample, detach_src),
                             _shapes(LoopInputs, inputs), _shapes(LoopWeights, weights))


@register_flop_formula(torch.ops.mrlfads.recurrence_backward)
def _loop_backward_flops(grads, inputs, weights, outputs, saved, R, P, C, U, T, clip, src_is_g,
                         sample, detach_src=False, *args, **kwargs) -> int:
    return 2 * _loop_flops(inputs, weights, R, P, C, U, T, clip, src_is_g, sample, detach_src)


class _Shape:
    """What a flop formula gets for a tensor (its shape), with the ``.shape`` the size
    arithmetic of ``loop_matmul_flops`` reads."""

    def __init__(self, shape):
        self.shape = tuple(shape)


def _shapes(cls, shapes):
    return cls(*(_Shape(s) if s is not None and 0 not in tuple(s) else None for s in shapes))


def loop(spec: LoopSpec, inputs: LoopInputs, weights: LoopWeights) -> LoopOutputs:
    """Run the time loop (differentiable). Runs in float32 with autocast off: the loops
    write into single-dtype buffers and mix saved activations with float32 weights in
    backward, so bfloat16 autocast failed there; encoders and readouts around it still
    autocast."""
    inputs, weights = _float32(inputs), _float32(weights)
    like = inputs.g0
    with torch.autocast(device_type=like.device.type, enabled=False):
        res = recurrence_op(to_list(inputs, like), to_list(weights, like), **spec.scalars())
    return from_list(LoopOutputs, res[:_N_OUT])


def _float32(fields):
    """Half-precision tensors of a structure (or tuple) upcast to float32."""
    half = (torch.float16, torch.bfloat16)
    vals = [t.float() if t is not None and t.dtype in half else t for t in fields]
    return type(fields)(*vals) if hasattr(fields, "_fields") else tuple(vals)


# ---------------------------------------------------------------- plain GRU over a sequence
@torch.library.custom_op("mrlfads::gru_sequence", mutates_args=())
def gru_sequence_op(xg: Tensor, w_hh: Tensor, b_hh: Tensor) -> list[Tensor]:
    """GRUSaved in field order (its ``states`` are the result)."""
    ops = _native_ops(xg)
    if ops is not None:
        return list(ops.gru_sequence_forward(xg, w_hh, b_hh))
    return list(recurrence.gru_sequence_forward(xg, w_hh, b_hh))


@gru_sequence_op.register_fake
def _(xg, w_hh, b_hh):
    T, R, B, _ = xg.shape
    H = w_hh.shape[1]
    return [xg.new_empty(R, T, B, H), xg.new_empty(R, T, B, 2 * H), xg.new_empty(R, T, B, H),
            xg.new_empty(R, T, B, H)]


@torch.library.custom_op("mrlfads::gru_sequence_backward", mutates_args=())
def gru_sequence_backward_op(grad: Tensor, w_hh: Tensor, saved: list[Tensor]) -> list[Tensor]:
    """Gradients of (xg, w_hh, b_hh)."""
    ops = _native_ops(grad)
    if ops is not None:
        return list(ops.gru_sequence_backward(grad, w_hh, saved))
    return list(recurrence.gru_sequence_backward(grad, w_hh, GRUSaved(*saved)))


@gru_sequence_backward_op.register_fake
def _(grad, w_hh, saved):
    R, T, B, H = grad.shape
    return [grad.new_empty(R, T, B, 3 * H).transpose(0, 1), torch.empty_like(w_hh),
            grad.new_empty(R, 1, 3 * H)]


def _setup_gru(ctx, inputs, output):
    ctx.mark_non_differentiable(*output[1:])  # the gate caches
    ctx.set_materialize_grads(False)  # (else each backward zero-fills one per cache)
    ctx.save_for_backward(inputs[1], *output)


def _backward_gru(ctx, grads):
    w_hh, *saved = ctx.saved_tensors
    return tuple(gru_sequence_backward_op(grads[0], w_hh, saved))


gru_sequence_op.register_autograd(_backward_gru, setup_context=_setup_gru)


@register_flop_formula(torch.ops.mrlfads.gru_sequence)
def _gru_flops(xg, w_hh, b_hh, *args, **kwargs) -> int:
    T, R, B, _ = xg
    return 2 * T * R * B * w_hh[1] * w_hh[2]


@register_flop_formula(torch.ops.mrlfads.gru_sequence_backward)
def _gru_backward_flops(grad, w_hh, saved, *args, **kwargs) -> int:
    R, T, B, _ = grad
    return 2 * 2 * T * R * B * w_hh[1] * w_hh[2]


def gru_sequence(xg: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
    """A plain GRU (h_0 = 0, no clip, PyTorch's gates) over a whole sequence, all regions in
    one bmm per step: ``xg`` (T, R, B, 3H) the input gates W_ih x + b_ih computed outside,
    ``w_hh`` (R, H, 3H), ``b_hh`` (R, 1, 3H); the states (R, T, B, H). Float32, autocast off
    (as ``loop``)."""
    xg, w_hh, b_hh = _float32((xg, w_hh, b_hh))
    with torch.autocast(device_type=xg.device.type, enabled=False):
        return gru_sequence_op(xg, w_hh, b_hh)[0]
