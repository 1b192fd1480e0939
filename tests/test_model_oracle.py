"""The batched model equals the region-by-region oracle: outputs and gradients, float64,
with the compiled CPU loop and with the Python loop (``loop_impl``)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mrlfads.config import LossConfig, ModelConfig, RegionConfig
from mrlfads.config_utils import ConfigError
from mrlfads.loss import compute_loss
from mrlfads.model import MRLFADS
from mrlfads.oracle import oracle_forward

pytestmark = pytest.mark.usefixtures("loop_impl")

B, T, TAU = 2, 12, 3
UNEQUAL = (RegionConfig("A", 3, n_heldout=1, ext_dim=2),
           RegionConfig("B", 2, gen_dim=3, fac_dim=4),
           RegionConfig("C", 4, n_heldout=2, ext_dim=1, gen_dim=5))
CASES = {
    "poisson": dict(obs_model="poisson"),
    "gaussian": dict(obs_model="gaussian"),
    "factors": dict(obs_model="gaussian", message_source="factors"),
    "generator": dict(obs_model="poisson", message_source="generator"),
    "no_inputs": dict(obs_model="poisson", inferred_inputs=False),
    "controller_sees_all": dict(obs_model="poisson", controller_sees="all"),
    "controller_lookahead": dict(obs_model="poisson", controller_lookahead=2),
    "controller_lag": dict(obs_model="gaussian", controller_lookahead=-1),
    "input_prior_ar1": dict(obs_model="poisson", input_prior="ar1"),
    "pathway_dropout": dict(obs_model="poisson", pathway_dropout=0.5),
    "closed_pathways": dict(obs_model="poisson", pathways=("A->B", "C->A", "B->C")),
    "closed_pathways_gaussian": dict(obs_model="gaussian", pathways=("B->A", "A->C")),
    "detach_message_source": dict(obs_model="poisson", detach_message_source=True),
    "detach_generator_source": dict(obs_model="gaussian", message_source="generator",
                                    detach_message_source=True),
    "no_inputs_gaussian_gen": dict(obs_model="gaussian", inferred_inputs=False,
                                   message_source="generator"),
}


def build(case: str, regions=UNEQUAL, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(regions=regions, ic_enc_seq_len=TAU, ic_enc_dim=3, ci_enc_dim=3,
                      con_dim=4, co_dim=2, ic_dim=3, com_dim=2, dropout=0.0, **CASES[case])
    model = MRLFADS(cfg).double()
    with torch.no_grad():  # random, non-default weights everywhere (biases included)
        for name, p in model.named_parameters():
            p.add_(0.3 * torch.randn_like(p))
            if name in model._masked_names:
                p.mul_(getattr(model, name + "_mask"))
        # non-neutral data statistics: both paths must standardise inputs and centre the
        # message sources the same way
        model.input_mean.add_(torch.rand_like(model.input_mean))
        model.input_scale.mul_(0.5 + torch.rand_like(model.input_scale))
        model.source_baseline.add_(torch.randn_like(model.source_baseline))
    g = torch.Generator().manual_seed(seed + 1)
    heldin = [torch.poisson(torch.full((B, T, r.n_heldin), 1.5), generator=g).double()
              for r in regions]
    heldout = [torch.poisson(torch.full((B, T, r.n_heldout), 1.5), generator=g).double()
               for r in regions]
    ext = [torch.randn(B, T, r.ext_dim, generator=g).double() if r.ext_dim else None
           for r in regions]
    return model, heldin, heldout, ext


def run(fn, model, heldin, heldout, ext, **kw):
    model.zero_grad()
    torch.manual_seed(3)  # the same pathway-dropout draws in both paths
    out = fn(model, heldin, ext, **kw)
    loss = compute_loss(out, heldin, heldout, LossConfig(), epoch=1000)
    loss.total.backward()
    grads = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
             for n, p in model.named_parameters()}
    return out, loss, grads


def fast(model, heldin, ext, **kw):
    return model(heldin, ext, **kw)


def assert_same_outputs(a, b):
    for field in ("readout", "obs_logvar", "heldout_readout", "heldout_logvar", "factors",
                  "ic_mean", "ic_var", "co_mean", "co_var", "inputs", "l2"):
        xa, xb = getattr(a, field), getattr(b, field)
        assert (xa is None) == (xb is None), field
        for r, (u, v) in enumerate(zip(xa or [], xb or [])):
            torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5, msg=f"{field}[{r}]")
    for field in ("msg_mean", "msg_var", "messages"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), rtol=1e-5, atol=1e-5)


def assert_matches_oracle(model, heldin, heldout, ext, **kw):
    """The batched model and the oracle on the same inputs give the same outputs, loss and
    gradients; returns the batched model's output."""
    out_f, loss_f, grad_f = run(fast, model, heldin, heldout, ext, **kw)
    out_o, loss_o, grad_o = run(oracle_forward, model, heldin, heldout, ext, **kw)
    assert_same_outputs(out_f, out_o)
    torch.testing.assert_close(loss_f.total, loss_o.total, rtol=1e-7, atol=1e-7)
    for name in grad_f:
        torch.testing.assert_close(grad_f[name], grad_o[name], rtol=1e-5, atol=1e-5, msg=name)
    return out_f


@pytest.mark.parametrize("sample", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_fast_path_matches_oracle(case, sample):
    model, heldin, heldout, ext = build(case)
    noise = model.draw_noise(B, T - TAU, heldin[0]) if sample else None
    out_f, loss_f, grad_f = run(fast, model, heldin, heldout, ext, sample=sample, noise=noise)
    out_o, loss_o, grad_o = run(oracle_forward, model, heldin, heldout, ext, sample=sample,
                                noise=noise)
    assert_same_outputs(out_f, out_o)
    torch.testing.assert_close(loss_f.total, loss_o.total, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(loss_f.neg_elbo, loss_o.neg_elbo, rtol=1e-7, atol=1e-7)
    for name in grad_f:
        torch.testing.assert_close(grad_f[name], grad_o[name], rtol=1e-5, atol=1e-5, msg=name)
    assert sum(float(g.abs().sum()) for g in grad_f.values()) > 0


def test_silenced_fast_path_matches_oracle():
    model, heldin, heldout, ext = build("gaussian")
    silence = {"B": (TAU + 2, TAU + 6)}
    out_f, _, grad_f = run(fast, model, heldin, heldout, ext, sample=False, silence=silence)
    out_o, _, grad_o = run(oracle_forward, model, heldin, heldout, ext, sample=False,
                           silence=silence)
    assert_same_outputs(out_f, out_o)
    for name in grad_f:
        torch.testing.assert_close(grad_f[name], grad_o[name], rtol=1e-5, atol=1e-5, msg=name)
    b_out = [p for p, (src, _) in enumerate(out_f.pairs) if src == 1]
    assert float(out_f.msg_mean[:, 2:6, b_out].abs().max()) == 0.0
    assert float(out_f.msg_mean[:, 6:, b_out].abs().min()) > 0.0


@pytest.mark.parametrize("sample", [False, True])
def test_recorded_interventions_silence_each_trials_own_window_in_both_paths(sample):
    """``silenced`` (B, T, R) zeroes the messages a region sends in that trial's silenced
    bins only: trial 0 silences B over bins TAU+1..TAU+4, trial 1 silences C from TAU+6 on
    and A in one bin before TAU (which the loop never reaches); outputs and gradients equal
    the oracle's, and equal ``silence=`` where the two describe the same thing."""
    model, heldin, heldout, ext = build("poisson")
    silenced = torch.zeros(B, T, 3, dtype=torch.float64)
    silenced[0, TAU + 1:TAU + 5, 1] = 1
    silenced[1, TAU + 6:, 2] = 1
    silenced[1, TAU - 1, 0] = 1
    noise = model.draw_noise(B, T - TAU, heldin[0]) if sample else None
    out_f = assert_matches_oracle(model, heldin, heldout, ext, sample=sample, noise=noise,
                                  silenced=silenced)
    zero = out_f.msg_mean.abs().sum(-1) == 0  # (B, T', P)
    src = torch.tensor([a for a, _ in out_f.pairs])
    want = torch.zeros_like(zero)
    want[0, 1:5] = src == 1
    want[1, 6:] = src == 2
    assert torch.equal(zero, want)
    # trial 0 alone, silenced as the perturbation argument does it: the same outputs
    one = [x[:1] for x in heldin], [x[:1] if x is not None else None for x in ext]
    a = model(*one, sample=False, silenced=silenced[:1])
    b = model(*one, sample=False, silence={"B": (TAU + 1, TAU + 5)})
    torch.testing.assert_close(a.msg_mean, b.msg_mean)
    torch.testing.assert_close(a.readout[0], b.readout[0])


def test_recorded_interventions_of_the_wrong_shape_are_refused():
    model, heldin, _, ext = build("gaussian")
    with pytest.raises(Exception, match=r"silenced: shape \(2, 12, 2\), expected \(2, 12, 3\)"):
        model(heldin, ext, sample=False, silenced=torch.zeros(B, T, 2, dtype=torch.float64))


def test_pathway_dropout_cuts_the_same_whole_trials_in_both_paths():
    """In training, pathway dropout zeroes whole trials' messages, means included, and both
    paths cut the same (trial, pathway) pairs from the same seed (the "pathway_dropout"
    case above compares every output and gradient); some pairs are kept."""
    model, heldin, heldout, ext = build("pathway_dropout")
    silent = []
    for fn in (fast, oracle_forward):
        out = run(fn, model, heldin, heldout, ext, sample=False)[0]
        silent.append(out.messages.abs().sum((1, 3)) == 0)  # (B, P): zero all trial long
        assert torch.equal(silent[-1], out.msg_mean.abs().sum((1, 3)) == 0)
    assert torch.equal(*silent) and 0 < int(silent[0].sum()) < silent[0].numel()


@pytest.mark.parametrize("sample", [False, True])
def test_closed_pathways_carry_nothing_and_cost_no_kl(sample):
    """``pathways`` keeps only the pathways it names: a closed one's message is zero in every
    bin of every trial, sampled or not, and its KL is left out of its target's kl_com; the
    readouts are the open model's with the closed pathways silenced all trial long."""
    model, heldin, heldout, ext = build("closed_pathways")
    noise = model.draw_noise(B, T - TAU, heldin[0]) if sample else None
    out = model(heldin, ext, sample=sample, noise=noise)
    open_ = torch.tensor(out.open_pathways)
    assert out.open_pathways == model.cfg.open_pathways and int(open_.sum()) == 3
    assert float(out.messages[:, :, ~open_].detach().abs().max()) == 0.0
    assert float(out.messages[:, :, open_].detach().abs().min()) > 0.0
    loss = compute_loss(out, heldin, heldout, LossConfig(), epoch=1000)
    from mrlfads.loss import kl_diag_gaussian

    kl = kl_diag_gaussian(out.msg_mean, out.msg_var, out.com_prior_logvar).sum((1, 3)).mean(0)
    for r, name in enumerate(model.cfg.region_names):  # one open pathway into each region
        (p,) = [p for p, (_, dst) in enumerate(out.pairs) if dst == r and out.open_pathways[p]]
        torch.testing.assert_close(loss.kl_com[name], kl[p])
    everything = MRLFADS(replace(model.cfg, pathways=())).double()
    everything.load_state_dict(model.state_dict())
    names = model.cfg.region_names
    closed = {f"{names[a]}->{names[b]}": (0, T)
              for (a, b), o in zip(out.pairs, out.open_pathways) if not o}
    ref = everything(heldin, ext, sample=sample, noise=noise, silence=closed)
    for r in range(3):
        torch.testing.assert_close(out.readout[r], ref.readout[r])


def test_pathways_that_name_no_ordered_pair_of_regions_are_refused():
    regions = (RegionConfig("A", 2), RegionConfig("B", 2))
    for bad, what in ((("A->C",), "'A->C' is not 'SRC->DST'"), (("A-B",), "'A-B' is not"),
                      (("A->A",), "'A->A' is not"), (("A->B", "A -> B"), "names a pathway twice"),
                      ((1,), "must be strings")):
        with pytest.raises(ConfigError, match=what):
            ModelConfig(regions=regions, obs_model="poisson", pathways=bad)
    cfg = ModelConfig(regions=regions, obs_model="poisson", pathways=["B->A"])
    assert cfg.pathways == ("B->A",) and cfg.open_pathways == (True, False)  # pairs: B->A, A->B


def test_two_equal_regions_match_oracle():
    regions = (RegionConfig("A", 3), RegionConfig("B", 3))
    model, heldin, heldout, ext = build("poisson", regions=regions)
    noise = model.draw_noise(B, T - TAU, heldin[0])
    out_f, _, grad_f = run(fast, model, heldin, heldout, ext, sample=True, noise=noise)
    out_o, _, grad_o = run(oracle_forward, model, heldin, heldout, ext, sample=True, noise=noise)
    assert_same_outputs(out_f, out_o)
    for name in grad_f:
        torch.testing.assert_close(grad_f[name], grad_o[name], rtol=1e-5, atol=1e-5, msg=name)
