"""Loss pieces on tensors small enough to work out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from mrlfads.config import LossConfig
from mrlfads.loss import (
    compute_loss,
    gaussian_nll,
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


def test_gaussian_recon_by_hand():
    out = hand_output("gaussian")
    heldin = [torch.zeros(2, 4, 3), torch.ones(2, 4, 3)]
    terms = compute_loss(out, heldin, None, LossConfig(), epoch=1000)
    c = 0.5 * math.log(2 * math.pi)
    assert terms.recon["A"] == pytest.approx(6 * c) and terms.recon["B"] == pytest.approx(6 * (c + 0.5))
