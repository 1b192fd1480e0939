"""Building blocks shared by the batched model and the region-by-region oracle.

The batched path keeps every per-region weight in one padded tensor with a region axis
(bmm layout: ``(R, in, out)``) and a 0/1 mask of the same shape; multiplying by the mask
in each forward keeps padding out of both the outputs and the gradients.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn import functional as F

VAR_FLOOR = 1e-4  # posterior std = sqrt(exp(logvar) + VAR_FLOOR) (docs/MODEL.md)
# Posterior log-variances are bounded above, smoothly: a posterior far wider than the prior
# (variance 0.1 at the start) explains nothing, while an unbounded one let a message's
# variance reach e^24 on sparse spikes before its KL weight had ramped up, and the
# unweighted KL then overflowed (docs/MODEL.md, "Numerical safeguards").
LOGVAR_MAX = 5.0


def bounded_logvar(logvar: torch.Tensor) -> torch.Tensor:
    """LOGVAR_MAX - softplus(LOGVAR_MAX - logvar): the identity well below the bound (within
    1e-3 at logvar <= -2), never above it, with a gradient that never vanishes."""
    return LOGVAR_MAX - F.softplus(LOGVAR_MAX - logvar)


def bounded_logvar_grad(logvar: torch.Tensor) -> torch.Tensor:
    """d bounded_logvar / d logvar = sigmoid(LOGVAR_MAX - logvar)."""
    return torch.sigmoid(LOGVAR_MAX - logvar)


def posterior_var(logvar: torch.Tensor) -> torch.Tensor:
    return torch.exp(bounded_logvar(logvar)) + VAR_FLOOR


def clipped_gru_cell(x, h, w_ih, w_hh, b_ih, b_hh, clip: float) -> torch.Tensor:
    """Reference GRU cell (torch's own kernel, weights ``(3H, in)``), clipped to +-clip."""
    return torch.clamp(torch.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh), -clip, clip)


def unit_columns(w: torch.Tensor, dim: int = -2) -> torch.Tensor:
    """Normalise each output unit's weights to unit L2 norm (the factor readouts' weights);
    zero stays zero."""
    return w / w.norm(dim=dim, keepdim=True).clamp_min(1e-12)


def block_mask(in_sizes: Sequence[int], in_max: int, out_sizes: Sequence[int], out_max: int,
               n_blocks: int = 1, in_offset: int = 0) -> torch.Tensor:
    """0/1 mask ``(R, in_offset + in_max, n_blocks * out_max)`` of each region's live block.

    Rows ``[0, in_offset)`` are shared-width inputs (always live); the next ``in_sizes[r]``
    rows are region r's own input. Each of the ``n_blocks`` output blocks (GRU gates,
    mean/logvar halves) keeps its first ``out_sizes[r]`` columns.
    """
    mask = torch.zeros(len(in_sizes), in_offset + in_max, n_blocks * out_max)
    for r, (n_in, n_out) in enumerate(zip(in_sizes, out_sizes)):
        for b in range(n_blocks):
            mask[r, : in_offset + n_in, b * out_max: b * out_max + n_out] = 1.0
    return mask


def block_columns(n_out: int, out_max: int, n_blocks: int) -> torch.Tensor:
    """Column indices of one region's live outputs in a padded ``n_blocks * out_max`` axis."""
    return torch.cat([torch.arange(b * out_max, b * out_max + n_out) for b in range(n_blocks)])


def init_stacked_(w: torch.Tensor, fan_in: Sequence[int] | int) -> None:
    """LFADS-style init N(0, 1/fan_in) per region (before masking)."""
    fans = [fan_in] * w.shape[0] if isinstance(fan_in, int) else list(fan_in)
    with torch.no_grad():
        for r, fan in enumerate(fans):
            w[r].normal_(0.0, 1.0 / math.sqrt(max(fan, 1)))


def init_gru_stacked_(w_hh: torch.Tensor, b_ih: torch.Tensor, hidden: Sequence[int],
                      h_max: int) -> None:
    """Uniform(+-1/sqrt(H)) recurrent weights like torch's GRU; update-gate bias +1 (remember)."""
    with torch.no_grad():
        for r, h in enumerate(hidden):
            bound = 1.0 / math.sqrt(h)
            w_hh[r].uniform_(-bound, bound)
            b_ih[r].zero_()
            b_ih[r, ..., h_max: 2 * h_max] = 1.0
