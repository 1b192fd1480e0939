"""All of MR-LFADS's parameters, per-region modules plus padded in-loop stacks.

Encoders run once over the whole sequence, so each region keeps its own torch modules
(one fused C++/cuDNN call per region and encoder; packing regions into one call would need
block-diagonal weights and R times the FLOPs). Everything used inside the time-step loop is
stacked over regions (or ordered pairs) and padded to the largest region, in bmm layout
``(R, in, out)``, with a 0/1 mask; ``masked()`` returns the weights times their masks.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from mrlfads.config import ModelConfig
from mrlfads.layers import block_mask, init_gru_stacked_, init_stacked_
from mrlfads.sessions import session_masks


def _init_linear_(layer: nn.Linear) -> None:
    nn.init.normal_(layer.weight, 0.0, 1.0 / math.sqrt(layer.in_features))
    nn.init.zeros_(layer.bias)


class Sizes:
    """Per-region and padded sizes derived from a ModelConfig."""

    def __init__(self, cfg: ModelConfig) -> None:
        regs = cfg.regions
        self.R = len(regs)
        self.N = [r.n_heldin for r in regs]
        self.H = [r.n_heldout for r in regs]
        self.G = [r.gen_size for r in regs]
        self.F = [r.fac_size for r in regs]
        self.D = [r.ext_dim for r in regs]
        self.Nm, self.Hm, self.Gm = max(self.N), max(self.H), max(self.G)
        self.Fm, self.Dm = max(self.F), max(self.D)
        self.K = 2 if cfg.obs_model == "gaussian" else 1  # readout blocks: mean (+ logvar)
        self.pairs = cfg.pairs
        self.P = len(self.pairs)
        self.src = {"rates": self.N, "factors": self.F, "generator": self.G}[cfg.message_source]
        self.Sm = max(self.src)
        self.U = cfg.co_dim if cfg.inferred_inputs else 0
        self.gen_in = self.U + (self.R - 1) * cfg.com_dim  # [u, messages from each s != r]


class ModelParams(nn.Module):
    """Parameter container shared by the batched model and the oracle."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        s = self.sizes = Sizes(cfg)
        Eic, Eci, Cn, U, Z, C = (cfg.ic_enc_dim, cfg.ci_enc_dim, cfg.con_dim, cfg.co_dim,
                                 cfg.ic_dim, cfg.com_dim)
        self.readin = nn.ModuleList(nn.Linear(n, n) for n in s.N)
        # Data statistics the model reads its inputs and its messages against, set by
        # ``init_from_data`` (neutral until then, and for checkpoints that predate them):
        # each held-in neuron's mean and scale (the encoders see (x - mean) / scale), and the
        # baseline of each neuron's readout (rate-based messages read readout - baseline).
        for name, value in (("input_mean", 0.0), ("input_scale", 1.0), ("source_baseline", 0.0)):
            self.register_buffer(name, torch.full((s.R, s.Nm), value))
        # which neurons each session recorded (mrlfads/sessions.py); derived from the config
        for name, mask in zip(("session_recorded", "session_recorded_heldout"),
                              session_masks(cfg, s.Nm, s.Hm)):
            self.register_buffer(name, mask, persistent=False)
        self.ic_enc = nn.ModuleList(nn.GRU(n, Eic, batch_first=True, bidirectional=True)
                                    for n in s.N)
        self.ic_head = nn.ModuleList(nn.Linear(2 * Eic, 2 * Z) for _ in s.N)
        self.ic_to_g0 = nn.ModuleList(nn.Linear(Z, g) for g in s.G)
        for group in (self.readin, self.ic_head, self.ic_to_g0):
            for layer in group:
                _init_linear_(layer)
        self._masked_names: list[str] = []
        zeros = [0] * s.R
        cn = [Cn] * s.R
        if cfg.inferred_inputs:
            ci_in = [sum(s.N)] * s.R if cfg.controller_sees == "all" else s.N
            self.ci_enc = nn.ModuleList(nn.GRU(n, Eci, batch_first=True) for n in ci_in)
            self._add("con_w_ie", block_mask(zeros, 0, cn, Cn, 3, in_offset=Eci), fan=[Eci + f for f in s.F])
            self._add("con_w_if", block_mask(s.F, s.Fm, cn, Cn, 3), fan=[Eci + f for f in s.F])
            self._add("con_w_hh", block_mask(zeros, 0, cn, Cn, 3, in_offset=Cn))
            self._add("con_b_ih", torch.ones(s.R, 1, 3 * Cn))
            self._add("con_b_hh", torch.ones(s.R, 1, 3 * Cn))
            init_gru_stacked_(self.con_w_hh, self.con_b_ih, [Cn] * s.R, Cn)
            self._add("co_w", torch.ones(s.R, Cn, 2 * U), fan=Cn)
            self._add("co_b", torch.ones(s.R, 1, 2 * U))
            self.co_prior_logvar = nn.Parameter(torch.full((s.R, U), math.log(cfg.prior_var)))
            if cfg.input_prior == "ar1":  # the AR(1) prior's time constant, in bins
                self.co_prior_logtau = nn.Parameter(
                    torch.full((s.R, U), math.log(cfg.input_prior_tau)))
        gen_fan = [s.gen_in + d for d in s.D]
        if s.gen_in:
            self._add("gen_w_iu", block_mask(zeros, 0, s.G, s.Gm, 3, in_offset=s.gen_in), fan=gen_fan)
        if s.Dm:
            self._add("gen_w_ie", block_mask(s.D, s.Dm, s.G, s.Gm, 3), fan=gen_fan)
        self._add("gen_w_hh", block_mask(s.G, s.Gm, s.G, s.Gm, 3))
        self._add("gen_b_ih", block_mask(zeros, 0, s.G, s.Gm, 3, in_offset=1))
        self._add("gen_b_hh", block_mask(zeros, 0, s.G, s.Gm, 3, in_offset=1))
        init_gru_stacked_(self.gen_w_hh, self.gen_b_ih, s.G, s.Gm)
        self._add("fac_w", block_mask(s.G, s.Gm, s.F, s.Fm), fan=s.G)
        self._add("ro_w", block_mask(s.F, s.Fm, s.N, s.Nm, s.K), fan=s.F)
        self._add("ro_b", block_mask(zeros, 0, s.N, s.Nm, s.K, in_offset=1))
        if s.Hm:
            self._add("ho_w", block_mask(s.F, s.Fm, s.H, s.Hm, s.K), fan=s.F)
            self._add("ho_b", block_mask(zeros, 0, s.H, s.Hm, s.K, in_offset=1))
        self.ic_prior_logvar = nn.Parameter(torch.full((s.R, Z), math.log(cfg.prior_var)))
        # per pair: may it carry a message (cfg.pathways); read by every forward pass
        self.open_pathways = cfg.open_pathways
        if s.P:
            src_sizes = [s.src[a] for a, _ in s.pairs]
            self._add("msg_w", block_mask(src_sizes, s.Sm, [2 * C] * s.P, 2 * C), fan=src_sizes)
            self._add("msg_b", torch.ones(s.P, 1, 2 * C))
            self.com_prior_logvar = nn.Parameter(torch.full((s.P, C), math.log(cfg.prior_var)),
                                                 requires_grad=cfg.learn_message_prior)
            self.register_buffer("src_index", torch.tensor([a for a, _ in s.pairs]), persistent=False)
            if not all(self.open_pathways):  # (1, P, 1, 1): 0 on every closed pathway
                self.register_buffer("open_keep", torch.tensor(
                    self.open_pathways, dtype=torch.float32).view(1, s.P, 1, 1), persistent=False)
        with torch.no_grad():  # posterior variances start at the prior's
            logv = math.log(cfg.prior_var)
            for head in self.ic_head:
                head.bias[Z:] = logv
            if cfg.inferred_inputs:
                self.co_b[..., U:] = logv
            if s.P:
                self.msg_b[..., C:] = logv
            for name in self._masked_names:
                getattr(self, name).mul_(getattr(self, name + "_mask"))

    @torch.no_grad()
    def init_from_data(self, heldin: list[tuple[torch.Tensor, torch.Tensor]],
                       heldout: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Fit the model's scales to the data's (docs/MODEL.md, "Initialisation from the data").

        ``heldin[r]`` / ``heldout[r]`` are ``(mean, var)`` of region r's neurons over trials
        and bins. Three things follow from them:

        - readout biases: Poisson log-rate = log(mean count per bin); gaussian mean = the mean,
          log-variance = log(var). With zero biases a neuron firing 0.05 spikes per bin starts
          at 1 spike per bin, and the first updates drove factors and log-rates to extremes.
        - the encoders read standardised inputs, (x - mean) / scale, so their first layer sees
          the same scale at 1 Hz or 20 Hz, in 5 or 20 ms bins.
        - rate-based messages read each source neuron's readout minus its starting value.
          Log-rates of sparse spikes sit near -4; uncentred, every weight of a message map
          received a gradient of the same sign, and Adam moved a 300-input map's output by
          ~5 per step: message means reached +-40 in the first epoch.
        """
        s, gauss = self.sizes, self.cfg.obs_model == "gaussian"

        def readout_bias(bias: torch.Tensor, stats, widths, width_max: int) -> None:
            for r, ((mean, var), n) in enumerate(zip(stats, widths)):
                if n == 0:
                    continue
                mean, var = mean.to(bias), var.to(bias)
                if gauss:
                    bias[r, 0, :n] = mean
                    bias[r, 0, width_max: width_max + n] = torch.log(var.clamp_min(1e-6))
                else:
                    bias[r, 0, :n] = torch.log(mean.clamp_min(1e-8))

        readout_bias(self.ro_b, heldin, s.N, s.Nm)
        if s.Hm:
            readout_bias(self.ho_b, heldout, s.H, s.Hm)
        for r, (mean, var) in enumerate(heldin):
            n = s.N[r]
            mean, std = mean.to(self.input_mean), var.to(self.input_mean).sqrt()
            # a neuron that never varies in training must not blow up on a spike later:
            # counts are floored at their Poisson scale, continuous data at 1e-3 of the
            # region's typical scale
            floor = mean.clamp_min(0).sqrt() if not gauss else 1e-3 * std.mean() + 1e-8
            self.input_mean[r, :n] = mean
            self.input_scale[r, :n] = torch.maximum(std, torch.as_tensor(floor).to(std))
            self.source_baseline[r, :n] = self.ro_b[r, 0, :n]

    @torch.no_grad()
    def init_readin_across_sessions(self, psth: list[torch.Tensor], ridge: float = 1e-3) -> None:
        """Start every session's read-in in one shared latent space (stitched LFADS's
        initialisation; docs/MODEL.md, "Several sessions").

        ``psth[r]`` (rows, N_r): region r's trial-averaged held-in data, rows = (condition,
        bin) pairs aligned across sessions, each neuron's column from its own session's
        trials; standardised here as the encoders read it (after ``init_from_data``). The union's principal components give shared scores Z (rows, k);
        each session's read-in columns are the ridge regression of Z on its own neurons'
        columns, scaled so every component reads with unit variance. Output dims beyond k
        start at 0. A model of one session keeps its random read-in."""
        if len(self.cfg.sessions) < 2:
            return
        s = self.sizes
        for r in range(s.R):
            n = s.N[r]
            if psth[r].shape[1] != n:
                raise ValueError(f"psth[{r}]: {psth[r].shape[1]} columns, region has {n} neurons")
            X = ((psth[r] - self.input_mean[r, :n]) / self.input_scale[r, :n]).double()
            X = X - X.mean(0)
            U, S, _ = torch.linalg.svd(X, full_matrices=False)
            k = min(int((S > 1e-6 * S[0]).sum()) if S.numel() else 0, n)
            if k == 0:
                continue
            Z = U[:, :k] * (X.shape[0] ** 0.5)  # unit-variance scores (rows, k)
            weight = torch.zeros(n, n, dtype=torch.float64)
            for sess in range(len(self.cfg.sessions)):
                cols = self.session_recorded[sess, r, :n].bool()
                if not cols.any():
                    continue
                Xs = X[:, cols]
                gram = Xs.T @ Xs + ridge * torch.eye(Xs.shape[1], dtype=X.dtype) * Xs.shape[0]
                weight[:k, cols] = torch.linalg.solve(gram, Xs.T @ Z).T
            self.readin[r].weight.copy_(weight.to(self.readin[r].weight))
            self.readin[r].bias.zero_()

    def read_in(self, r: int, x: torch.Tensor, session: int = 0) -> torch.Tensor:
        """Region r's read-in layer on its standardised held-in data (B, T, N_r); with
        several sessions, the neurons ``session`` did not record read as 0."""
        n = self.sizes.N[r]
        z = (x - self.input_mean[r, :n]) / self.input_scale[r, :n]
        if self.cfg.sessions:
            z = z * self.session_recorded[session, r, :n]
        return self.readin[r](z)

    def controller_reads(self, read: list[torch.Tensor]) -> list[torch.Tensor]:
        """What each region's controller-input encoder reads, from the regions' read-in
        outputs ``read`` (B, T', N_r): its own, or all of them side by side
        (``controller_sees``; the encoders' input sizes are set from the same rule)."""
        if self.cfg.controller_sees == "own":
            return list(read)
        every = torch.cat(list(read), -1)
        return [every] * len(read)

    def controller_ahead(self, enc: torch.Tensor) -> torch.Tensor:
        """Controller-input encodings (time on axis 1) shifted so that bin t gets the
        encoder's state at bin t + ``controller_lookahead``: the last state where that is
        past the trial, the encoder's zero initial state where it is before the first bin.
        u_t then reads spikes up to that many bins after t, or, for a negative value (a
        lag), only up to that many bins before t."""
        T = enc.shape[1]
        ahead = max(min(self.cfg.controller_lookahead, T - 1), -T)
        if ahead == 0:
            return enc
        if ahead < 0:
            head = enc.new_zeros(enc.shape[0], -ahead, *enc.shape[2:])
            return torch.cat([head, enc[:, :T + ahead]], 1)
        tail = enc[:, T - 1:].expand(-1, ahead, *enc.shape[2:])
        return torch.cat([enc[:, ahead:], tail], 1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints written before the data statistics existed load with neutral ones
        (mean 0, scale 1, baseline 0): exactly the model they were trained as."""
        for name, value in (("input_mean", 0.0), ("input_scale", 1.0), ("source_baseline", 0.0)):
            state_dict.setdefault(prefix + name, torch.full_like(getattr(self, name), value))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _add(self, name: str, mask: torch.Tensor, fan=None) -> None:
        """Register a padded parameter (zeros, or N(0, 1/fan) when ``fan``) and its mask."""
        param = nn.Parameter(torch.zeros_like(mask))
        if fan is not None:
            init_stacked_(param, fan)
        self.register_parameter(name, param)
        self.register_buffer(name + "_mask", mask, persistent=False)
        self._masked_names.append(name)

    def masked(self) -> dict[str, torch.Tensor]:
        """Padded weights with padding forced to zero (so it gets zero gradient too)."""
        return {n: getattr(self, n) * getattr(self, n + "_mask") for n in self._masked_names}

    def input_prior_logtau(self) -> list[torch.Tensor] | None:
        """Per region, the log time constants (co_dim,) of the inferred inputs' AR(1)
        prior; None for the white prior (or without inferred inputs)."""
        logtau = getattr(self, "co_prior_logtau", None)
        return None if logtau is None else list(logtau)

    def l2_terms(self) -> list[torch.Tensor]:
        """Per region: sum over its recurrent matrices of 0.5 * ||W_hh||^2 / numel."""
        s, cfg = self.sizes, self.cfg
        out = []
        for r in range(s.R):
            w = self.gen_w_hh[r] * self.gen_w_hh_mask[r]
            total = 0.5 * w.pow(2).sum() / (3 * s.G[r] ** 2)
            mats = [self.ic_enc[r].weight_hh_l0, self.ic_enc[r].weight_hh_l0_reverse]
            if cfg.inferred_inputs:
                mats += [self.con_w_hh[r], self.ci_enc[r].weight_hh_l0]
            for m in mats:
                total = total + 0.5 * m.pow(2).sum() / m.numel()
            out.append(total)
        return out
