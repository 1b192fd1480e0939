"""What goes into and out of the MR-LFADS time loop, declared once.

The loop (docs/MODEL.md, "Generative model") has two backends: the Python reference in
``mrlfads.recurrence`` and its compiled CPU copy in ``native/loop.cpp``; ``mrlfads.loop_ops``
registers them as torch operators. All of them, and the model that calls them, exchange
these named structures: adding a message type or a loop input is one field here (and in
loop.cpp's matching field list, which the first load checks against these) plus the
step's math in each backend. Across the operator boundary a structure travels as a list
of tensors in field order, an absent field as an empty tensor (``to_list`` /
``from_list``); nothing is passed or read back by position anywhere else.

Layouts: per-step tensors are region-major ``(R, B, width)`` or pair-major ``(P, B, width)``;
sequences the loop writes are ``(R, T', B, width)`` / ``(P, T', B, width)`` (so each
weight gradient is one bmm over a free ``(R, T'*B, width)`` view); weights are the padded,
masked bmm layout ``(R, in, out)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class LoopSpec:
    """Sizes and switches of one call (not tensors)."""

    R: int  # regions
    P: int  # ordered region pairs with a message, R (R - 1) or 0
    C: int  # message dimension (com_dim)
    U: int  # inferred-input dimension (co_dim), 0 without a controller
    T: int  # loop steps T' (the trial's bins after the IC encoder's window)
    clip: float  # GRU state clip
    src_is_g: bool  # messages read the generator state (else factors / folded rates)
    sample: bool  # posterior samples (else means)
    # no gradient from a message into its source's state (ModelConfig.detach_message_source)
    detach_src: bool = False

    def scalars(self) -> dict:
        """The spec as the registered operators take it (keyword arguments)."""
        return asdict(self)


class LoopInputs(NamedTuple):
    """Per-call tensors. Only the first four are differentiated (``DIFFERENTIABLE``)."""

    g0: Tensor  # (R, B, Gm) generator state at the loop's start
    f0: Tensor  # (R, B, Fm) factors read from g0
    ce: Tensor | None  # (R, T', B, E) ci encoding after dropout; controller only
    gx: Tensor  # (T', R, B, 3Gm) generator gates from external inputs, or (R, 1, 3Gm) bias
    eps_msg: Tensor | None  # (T', P, B, C) message noise, when sampling
    eps_co: Tensor | None  # (T', R, B, U) inferred-input noise, when sampling
    keep: Tensor | None  # (T', P, 1, 1 or C) 0 where a message is silenced
    keep_u: Tensor | None  # (T', R, 1, U) 0 where an inferred input is silenced
    drop_f: Tensor | None  # (T', R, B, Fm) scaled dropout mask on the controller's factors
    drop_g: Tensor | None  # (T', R, B, Gm) scaled dropout mask on g before the factors
    src_index: Tensor | None  # (P,) int64: the source region of each pair


DIFFERENTIABLE = ("g0", "f0", "ce", "gx")


class LoopWeights(NamedTuple):
    """The loop's parameters (already masked; messages' map folded with the readout for
    rate messages)."""

    gen_w_hh: Tensor  # (R, Gm, 3Gm)
    gen_b_hh: Tensor  # (R, 1, 3Gm)
    fac_w: Tensor  # (R, Gm, Fm), unit-norm columns
    gen_w_iu: Tensor | None  # (R, U + (R-1) C, 3Gm): inferred inputs and messages into g
    con_w_ie: Tensor | None  # (R, E, 3Cn) controller gates from the ci encoding
    con_b_ih: Tensor | None  # (R, 1, 3Cn)
    con_w_if: Tensor | None  # (R, Fm, 3Cn) controller gates from the factors
    con_w_hh: Tensor | None  # (R, Cn, 3Cn)
    con_b_hh: Tensor | None  # (R, 1, 3Cn)
    co_w: Tensor | None  # (R, Cn, 2U) controller state -> input posterior (mean, logvar)
    co_b: Tensor | None  # (R, 1, 2U)
    msg_w: Tensor | None  # (P, S, 2C) source -> message posterior (mean, logvar)
    msg_b: Tensor | None  # (P, 1, 2C)


class LoopOutputs(NamedTuple):
    factors: Tensor  # (R, T', B, Fm) f_1..f_T'
    co: Tensor | None  # (R, T', B, 2U) inferred-input posterior (mean, logvar)
    inputs: Tensor | None  # (R, T', B, U) inferred inputs u (after silencing)
    msg_params: Tensor | None  # (P, T', B, 2C) message posterior (mean after silencing, logvar)
    messages: Tensor | None  # (P, T', B, C)


class LoopSaved(NamedTuple):
    """Activations the forward keeps for backprop through time."""

    Gs: Tensor  # (R, T'+1, B, Gm) generator states g_0..g_T'
    GD: Tensor | None  # (R, T', B, Gm) g after dropout (None without: then Gs[:, 1:])
    Xs: Tensor | None  # (R, T', B, U + (R-1) C) generator inputs [u | messages]
    Hs: Tensor | None  # (R, T'+1, B, Cn) controller states
    FD: Tensor | None  # (R, T', B, Fm) the controller's factor input after dropout
    ST: Tensor | None  # (P, T', B, S) message sources per pair
    gen_rz: Tensor  # (R, T', B, 2Gm) generator GRU: sigmoid(r), sigmoid(z)
    gen_n: Tensor  # (R, T', B, Gm) candidate state n
    gen_hn: Tensor  # (R, T', B, Gm) hidden share of the n gate (W_hn h + b_hn)
    con_rz: Tensor | None  # controller GRU, same three
    con_n: Tensor | None
    con_hn: Tensor | None


class GRUSaved(NamedTuple):
    """What a plain GRU over a sequence keeps for backward (``mrlfads.loop_ops.gru_sequence``)."""

    states: Tensor  # (R, T, B, H) h_1..h_T (h_0 = 0)
    rz: Tensor  # (R, T, B, 2H)
    n: Tensor  # (R, T, B, H)
    hn: Tensor  # (R, T, B, H)


def loop_shapes(spec: LoopSpec, inputs: LoopInputs, weights: LoopWeights
                ) -> tuple[LoopOutputs, LoopSaved]:
    """Shapes (or None where absent) of every output and saved activation: what the Python
    loop allocates and what the registered operator promises without running (its fake)."""
    R, P, C, U, T = spec.R, spec.P, spec.C, spec.U, spec.T
    B, G = inputs.g0.shape[1], inputs.g0.shape[2]
    F = weights.fac_w.shape[2]
    con = inputs.ce is not None
    Cn = weights.con_w_hh.shape[1] if con else 0
    outputs = LoopOutputs(
        factors=(R, T, B, F), co=(R, T, B, 2 * U) if con else None,
        inputs=(R, T, B, U) if con else None,
        msg_params=(P, T, B, 2 * C) if P else None, messages=(P, T, B, C) if P else None)
    saved = LoopSaved(
        Gs=(R, T + 1, B, G), GD=(R, T, B, G) if inputs.drop_g is not None else None,
        Xs=(R, T, B, weights.gen_w_iu.shape[1]) if weights.gen_w_iu is not None else None,
        Hs=(R, T + 1, B, Cn) if con else None, FD=(R, T, B, F) if con else None,
        ST=(P, T, B, weights.msg_w.shape[1]) if P else None,
        gen_rz=(R, T, B, 2 * G), gen_n=(R, T, B, G), gen_hn=(R, T, B, G),
        con_rz=(R, T, B, 2 * Cn) if con else None, con_n=(R, T, B, Cn) if con else None,
        con_hn=(R, T, B, Cn) if con else None)
    return outputs, saved


def loop_matmul_flops(spec: LoopSpec, inputs: LoopInputs, weights: LoopWeights) -> int:
    """Multiply-add FLOPs (2 per multiply-add) of the forward's matrix products; backward
    does twice this (each product y = x W needs dx = dy W^T and dW = x^T dy). What the
    registered operators report to ``torch.utils.flop_counter``."""
    R, P, T = spec.R, spec.P, spec.T
    B = inputs.g0.shape[1]

    def mm(rows: int, w: Tensor | None) -> int:  # rows x (in, out) per region/pair, per step
        return 0 if w is None else 2 * rows * B * w.shape[1] * w.shape[2]

    per_step = (mm(R, weights.gen_w_hh) + mm(R, weights.gen_w_iu) + mm(R, weights.fac_w)
                + mm(R, weights.con_w_if) + mm(R, weights.con_w_hh) + mm(R, weights.co_w)
                + (mm(P, weights.msg_w) if P else 0))
    return T * (per_step + mm(R, weights.con_w_ie))  # con_w_ie: one GEMM over all T' steps


def to_list(fields: NamedTuple, like: Tensor) -> list[Tensor]:
    """A structure as the operators take it: field order, absent fields as empty tensors."""
    return [like.new_empty(0) if t is None else t for t in fields]


def from_list(cls, tensors) -> NamedTuple:
    """The inverse of ``to_list`` (empty tensors back to None)."""
    tensors = list(tensors)
    if len(tensors) != len(cls._fields):
        raise ValueError(f"{cls.__name__}: expected {len(cls._fields)} tensors "
                         f"({', '.join(cls._fields)}), got {len(tensors)}")
    return cls(*(t if t is not None and t.numel() else None for t in tensors))
