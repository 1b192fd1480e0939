"""Loss pieces on tensors small enough to work out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from mrlfads.config import LossConfig
from mrlfads.loss import (
    compute_loss,
    gaussian_nll,
    kl_ar1_inputs,
    kl_diag_gaussian,
    l2_weight_penalty,
    poisson_nll,
)
from mrlfads.outputs import ModelOutput

LOG01 = math.log(0.1)


def test_poisson_nll_of_known_counts():
    got = poisson_nll(torch.tensor([3.0, 0.0]), torch.tensor([math.log(2.0), 0.0]))
    expected = [2.0 - 3.0 * math.log(2.0) + math.log(6.0), 1.0]
    assert got.tolist() == pytest.approx(expected)


def test_gaussian_nll():
    # x = 1 under N(0, 1); x = 3 under N(1, 4): (3 - 1)^2 / 4 = 1
    assert float(gaussian_nll(torch.tensor(1.0), torch.tensor(0.0), torch.tensor(0.0))) == \
        pytest.approx(0.5 * (math.log(2 * math.pi) + 1.0))
    assert float(gaussian_nll(torch.tensor(3.0), torch.tensor(1.0), torch.tensor(math.log(4.0)))) \
        == pytest.approx(0.5 * (math.log(2 * math.pi) + math.log(4.0) + 1.0))


def test_kl_diagonal_gaussians():
    z = torch.zeros(3)
    assert kl_diag_gaussian(z, z + 1, z).tolist() == [0.0, 0.0, 0.0]  # N(0,1) || N(0,1)
    assert float(kl_diag_gaussian(torch.tensor(1.0), torch.tensor(1.0), torch.tensor(0.0))) == 0.5
    assert float(kl_diag_gaussian(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(LOG01))) == \
        pytest.approx(0.5 * (LOG01 + 10.0 - 1.0))
    assert float(kl_diag_gaussian(torch.tensor(0.0), torch.tensor(0.1), torch.tensor(LOG01))) == \
        pytest.approx(0.0, abs=1e-7)


def test_ar1_input_kl_by_hand():
    """Two bins, one dimension, prior variance 0.1 and tau 10 bins: bin 0 against the
    stationary N(0, 0.1), bin 1 against N(a u_0, 0.1 (1 - a^2)), a = exp(-1/10)."""
    mean, var = torch.tensor([[[0.3], [0.5]]]), torch.tensor([[[0.02], [0.05]]])
    used = torch.tensor([[[0.4], [-1.0]]])  # the last bin's value conditions nothing
    got = kl_ar1_inputs(mean, var, used, torch.tensor([LOG01]), torch.tensor([math.log(10.0)]))
    a = math.exp(-0.1)
    s1 = 0.1 * (1 - a * a)
    k0 = 0.5 * (LOG01 - math.log(0.02) + (0.02 + 0.09) / 0.1 - 1)
    k1 = 0.5 * (math.log(s1) - math.log(0.05) + (0.05 + (0.5 - a * 0.4) ** 2) / s1 - 1)
    assert got.shape == (1, 2, 1)
    assert got.flatten().tolist() == pytest.approx([k0, k1], rel=1e-5)


def test_ar1_input_kl_sums_to_the_sequence_kl_in_expectation():
    """For a posterior independent across bins, the mean over samples of the per-bin KLs
    (each against the prior given the sampled bin before) is KL(q || p) of the whole
    sequence, p the AR(1) process's joint Gaussian (covariance var * a^|i - j|)."""
    g = torch.Generator().manual_seed(0)
    T, var_p, tau = 6, 0.3, 4.0
    mean = torch.randn(T, generator=g, dtype=torch.float64)
    var = 0.05 + 0.2 * torch.rand(T, generator=g, dtype=torch.float64)
    a = math.exp(-1.0 / tau)
    idx = torch.arange(T, dtype=torch.float64)
    cov_p = var_p * a ** (idx[:, None] - idx[None, :]).abs()
    exact = torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(mean, torch.diag(var)),
        torch.distributions.MultivariateNormal(torch.zeros(T, dtype=torch.float64), cov_p))
    n = 200_000
    used = mean + var.sqrt() * torch.randn(n, T, generator=g, dtype=torch.float64)
    got = kl_ar1_inputs(mean.expand(n, T)[..., None], var.expand(n, T)[..., None], used[..., None],
                        torch.tensor([math.log(var_p)], dtype=torch.float64),
                        torch.tensor([math.log(tau)], dtype=torch.float64)).sum((1, 2))
    assert float(got.mean()) == pytest.approx(float(exact), rel=0.01)


def test_ar1_input_prior_charges_a_held_input_less_and_a_short_tau_as_white():
    """An input held at 1 for 50 bins costs a fraction under the AR(1) prior (only its
    onset is news) of what the white prior charges; with tau -> 0 the two are the same."""
    mean, var = torch.ones(1, 50, 1), torch.full((1, 50, 1), 0.01)
    white = kl_diag_gaussian(mean, var, torch.tensor([LOG01])).sum()
    held = kl_ar1_inputs(mean, var, mean, torch.tensor([LOG01]), torch.tensor([math.log(10.0)]))
    assert float(held.sum()) < 0.25 * float(white)
    short = kl_ar1_inputs(mean, var, mean, torch.tensor([LOG01]), torch.tensor([math.log(1e-3)]))
    assert float(short.sum()) == pytest.approx(float(white), rel=1e-6)


def test_l2_is_normalised_per_element():
    assert float(l2_weight_penalty([torch.ones(2, 3), 2 * torch.ones(4)])) == pytest.approx(0.5 + 2.0)


def hand_output(obs="poisson", heldout_width=0):
    """2 regions, 2 trials, T' = 2, 3 neurons, ic_dim 2, co_dim 1, com_dim 1."""
    B, Tp = 2, 2
    zeros = lambda *s: torch.zeros(*s)
    return ModelOutput(
        obs_model=obs, region_names=("A", "B"), pairs=((1, 0), (0, 1)),
        readout=[zeros(B, Tp, 3), zeros(B, Tp, 3)],
        obs_logvar=[zeros(B, Tp, 3), zeros(B, Tp, 3)] if obs == "gaussian" else None,
        heldout_readout=[torch.full((B, Tp, heldout_width), math.log(2.0)), zeros(B, Tp, 0)],
        heldout_logvar=None, factors=[zeros(B, Tp, 3)] * 2,
        ic_mean=[zeros(B, 2)] * 2, ic_var=[torch.full((B, 2), 0.1)] * 2,
        ic_prior_logvar=[torch.full((2,), LOG01)] * 2,
        co_mean=[torch.ones(B, Tp, 1)] * 2, co_var=[torch.full((B, Tp, 1), 0.1)] * 2,
        inputs=None, co_prior_logvar=[torch.full((1,), LOG01)] * 2,
        msg_mean=torch.full((B, Tp, 2, 1), 2.0), msg_var=torch.ones(B, Tp, 2, 1),
        messages=None, com_prior_logvar=torch.zeros(2, 1),
        l2=[torch.tensor(1e-3), torch.tensor(1e-3)])


def test_compute_loss_by_hand():
    out = hand_output(heldout_width=1)
    heldin = [torch.zeros(2, 5, 3), torch.zeros(2, 5, 3)]
    heldin[0][:, :3] = 5.0  # the first tau = 3 bins are not reconstructed
    heldout = [torch.full((2, 5, 1), 3.0), torch.zeros(2, 5, 0)]
    terms = compute_loss(out, heldin, heldout, LossConfig(), epoch=1000)
    # recon: T' * N * exp(0) = 6; KL(u): T' * 0.5 * 1^2 / 0.1 = 10; KL(m): T' * 0.5 * 2^2 = 4
    assert terms.recon == pytest.approx({"A": 6.0, "B": 6.0})
    assert terms.kl_ic == pytest.approx({"A": 0.0, "B": 0.0}, abs=1e-6)
    assert terms.kl_co == pytest.approx({"A": 10.0, "B": 10.0})
    assert terms.kl_com == pytest.approx({"A": 4.0, "B": 4.0})
    ho = 2 * (2.0 - 3.0 * math.log(2.0) + math.log(6.0))
    assert terms.heldout == pytest.approx({"A": ho, "B": 0.0})
    # total: per region 6 + 10 + 0.1 * 4 + 1e4 * 1e-3 (+ held-out)
    assert float(terms.total) == pytest.approx(2 * 26.4 + ho)
    assert float(terms.neg_elbo) == pytest.approx(2 * 20.0) and terms.elbo is terms.neg_elbo
    early = compute_loss(out, heldin, heldout, LossConfig(), epoch=0)  # every ramp at 0
    assert float(early.total) == pytest.approx(12.0 + ho)
    assert float(early.neg_elbo) == pytest.approx(40.0)
    assert early.scalars()["kl_com/B"] == pytest.approx(4.0)


def test_the_pathway_sparsity_penalty_by_hand():
    """Each pathway's drive norm (sqrt of the sum over bins and gate units of (m W)^2, mean
    over trials) goes to its target's ``sparsity`` term, priced at pathway_sparsity on the
    messages' ramp; the ELBO does not count it."""
    out = hand_output()
    # B -> A reads its message (2.0 everywhere) through [3, 4]; A -> B through zeros
    out.msg_weights = torch.tensor([[[3.0, 4.0]], [[0.0, 0.0]]])
    heldin = [torch.zeros(2, 5, 3), torch.zeros(2, 5, 3)]
    cfg = LossConfig(kl_co_scale=2.0, pathway_sparsity=0.25)
    terms = compute_loss(out, heldin, None, cfg, epoch=1000)
    # (2*3)^2 + (2*4)^2 = 100 per bin, 2 bins: sqrt(200) into A; 0 (+ the 1e-8 under the root) into B
    assert terms.sparsity == pytest.approx({"A": math.sqrt(200.0), "B": 1e-4})
    plain = compute_loss(out, heldin, None, LossConfig(kl_co_scale=2.0), epoch=1000)
    assert float(terms.total - plain.total) == pytest.approx(0.25 * (math.sqrt(200.0) + 1e-4))
    assert float(terms.neg_elbo) == pytest.approx(float(plain.neg_elbo))
    assert terms.weights["sparsity"] == pytest.approx(0.25)  # not scaled by b_u
    before = compute_loss(out, heldin, None, cfg, epoch=0)  # before the messages' ramp
    assert float(before.total) == pytest.approx(float(compute_loss(
        out, heldin, None, LossConfig(kl_co_scale=2.0), epoch=0).total))
    out.msg_weights = None  # a model without the weights (one region): no term
    assert compute_loss(out, heldin, None, cfg, epoch=1000).sparsity == {"A": 0.0, "B": 0.0}
    with pytest.raises(Exception, match="pathway_sparsity"):
        LossConfig(pathway_sparsity=-1.0)


def test_gaussian_recon_by_hand():
    out = hand_output("gaussian")
    heldin = [torch.zeros(2, 4, 3), torch.ones(2, 4, 3)]
    terms = compute_loss(out, heldin, None, LossConfig(), epoch=1000)
    c = 0.5 * math.log(2 * math.pi)
    assert terms.recon["A"] == pytest.approx(6 * c) and terms.recon["B"] == pytest.approx(6 * (c + 0.5))
