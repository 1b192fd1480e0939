"""What a forward pass and the loss return: plain containers, one entry per region.

Time axes cover the reconstructed bins tau..T-1 only (length T' = T - tau).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass
class ModelOutput:
    """Posterior quantities of one batch; lists are in region order of the ModelConfig."""

    obs_model: str
    region_names: tuple[str, ...]
    pairs: tuple[tuple[int, int], ...]  # (src, dst) region indices, order of the P axis
    readout: list[Tensor]  # (B, T', N_r): log-rate (poisson) or mean (gaussian)
    obs_logvar: list[Tensor] | None  # (B, T', N_r) gaussian observation log-variance
    heldout_readout: list[Tensor]  # (B, T', H_r) from detached factors, same parameterisation
    heldout_logvar: list[Tensor] | None  # (B, T', H_r) gaussian only
    factors: list[Tensor]  # (B, T', F_r)
    ic_mean: list[Tensor]  # (B, ic_dim)
    ic_var: list[Tensor]  # (B, ic_dim)
    ic_prior_logvar: list[Tensor]  # (ic_dim,)
    co_mean: list[Tensor] | None  # (B, T', co_dim); None without inferred inputs
    co_var: list[Tensor] | None
    inputs: list[Tensor] | None  # (B, T', co_dim) the u_t actually used (sample or mean)
    co_prior_logvar: list[Tensor] | None  # (co_dim,): the prior's (stationary) variance
    msg_mean: Tensor | None  # (B, T', P, com_dim); None with a single region
    msg_var: Tensor | None
    messages: Tensor | None  # (B, T', P, com_dim) the m_t actually used (sample or mean)
    com_prior_logvar: Tensor | None  # (P, com_dim)
    l2: list[Tensor]  # scalar per region: 0.5 * sum(W_hh^2) / numel, summed over its RNNs
    # stitched models: per region, 1 over the neurons the batch's session recorded (N_r,) /
    # (H_r,); the likelihood counts only those. None: every neuron was recorded
    recorded: list[Tensor] | None = None
    recorded_heldout: list[Tensor] | None = None
    # per pair of ``pairs``: whether it may carry a message (ModelConfig.pathways); a closed
    # one's message is zero and its KL is not charged. None: every pathway is open
    open_pathways: tuple[bool, ...] | None = None
    # per region (co_dim,): log time constant (bins) of the inferred inputs' AR(1) prior
    # (ModelConfig.input_prior "ar1"). None: a white prior, independent in every bin
    co_prior_logtau: list[Tensor] | None = None
    # (P, com_dim, 3 Gm): each pathway's weights in its target generator's input (masked);
    # the pathway-sparsity penalty reads the messages through them. None with one region
    msg_weights: Tensor | None = None

    @property
    def rates(self) -> list[Tensor]:
        """Predicted rates (Poisson: exp(log-rate)) or means (Gaussian), (B, T', N_r)."""
        if self.obs_model == "poisson":
            return [torch.exp(x) for x in self.readout]
        return list(self.readout)

    def pair_index(self, src: int | str, dst: int | str) -> int:
        src = self.region_names.index(src) if isinstance(src, str) else src
        dst = self.region_names.index(dst) if isinstance(dst, str) else dst
        return self.pairs.index((src, dst))

    def message_mean(self, src: int | str, dst: int | str) -> Tensor:
        """Posterior mean of m^{src->dst}, (B, T', com_dim)."""
        assert self.msg_mean is not None
        return self.msg_mean[:, :, self.pair_index(src, dst)]


@dataclass
class LossTerms:
    """Per-region loss terms (mean over trials) and the two totals.

    ``total`` is the training loss (ramped, weighted KLs + L2 + held-out); ``neg_elbo`` is
    the true negative ELBO per trial (recon + unweighted KLs, no L2, no held-out).
    """

    recon: dict[str, Tensor]
    kl_ic: dict[str, Tensor]
    kl_co: dict[str, Tensor]
    kl_com: dict[str, Tensor]
    l2: dict[str, Tensor]
    heldout: dict[str, Tensor]
    sparsity: dict[str, Tensor]
    total: Tensor
    neg_elbo: Tensor
    weights: dict[str, float | Tensor]  # effective (ramp x scale) weights at this epoch

    @property
    def elbo(self) -> Tensor:
        """Alias of ``neg_elbo`` (the value logged as ``valid/elbo``; lower is better)."""
        return self.neg_elbo

    @property
    def recon_loss(self) -> Tensor:
        return sum(self.recon.values())

    @property
    def heldout_loss(self) -> Tensor:
        return sum(self.heldout.values())

    def scalar_tensors(self) -> dict[str, Tensor]:
        """``scalars()`` as detached 0-d tensors, in the same order: summed on the device
        without a host sync per step (training/step.py)."""
        out = {"loss": self.total, "elbo": self.neg_elbo, "recon_loss": self.recon_loss,
               "heldout_loss": self.heldout_loss}
        for term in ("recon", "kl_ic", "kl_co", "kl_com", "l2", "heldout", "sparsity"):
            for region, value in getattr(self, term).items():
                out[f"{term}/{region}"] = value
        like = self.total.detach()  # full_like, not new_tensor: no host copy while capturing
        return {k: (v.detach() if isinstance(v, Tensor) else torch.full_like(like, float(v)))
                for k, v in out.items()}

    def scalars(self) -> dict[str, float]:
        """Flat float dict: ``loss``, ``elbo``, ``recon_loss``, ``heldout_loss``, ``<term>/<region>``."""
        return {k: float(v) for k, v in self.scalar_tensors().items()}
