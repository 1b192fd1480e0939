"""The batched MR-LFADS model: shapes, sampling, dropout, configs and structural invariants."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from mrlfads.config import LossConfig, ModelConfig, RegionConfig
from mrlfads.config_utils import ConfigError, from_dict, to_dict, with_overrides
from mrlfads.loss import compute_loss
from mrlfads.model import MRLFADS, InputError

B, T, TAU = 3, 12, 4


def tiny_cfg(obs="poisson", **kw) -> ModelConfig:
    regions = kw.pop("regions", (RegionConfig("A", 3, n_heldout=1), RegionConfig("B", 3)))
    return ModelConfig(regions=regions, obs_model=obs, ic_enc_seq_len=TAU, ic_enc_dim=4,
                       ci_enc_dim=4, con_dim=5, co_dim=2, ic_dim=3, com_dim=2, **kw)


def batch(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    heldin = [torch.poisson(torch.full((B, T, r.n_heldin), 2.0), generator=g) for r in cfg.regions]
    heldout = [torch.poisson(torch.full((B, T, r.n_heldout), 2.0), generator=g) for r in cfg.regions]
    return heldin, heldout


@pytest.mark.parametrize("obs", ["poisson", "gaussian"])
def test_output_shapes(obs):
    torch.manual_seed(0)
    cfg = tiny_cfg(obs)
    out = MRLFADS(cfg)(batch(cfg)[0], sample=True)
    Tp = T - TAU
    assert [tuple(x.shape) for x in out.readout] == [(B, Tp, 3), (B, Tp, 3)]
    assert [tuple(x.shape) for x in out.factors] == [(B, Tp, 3), (B, Tp, 3)]
    assert [tuple(x.shape) for x in out.heldout_readout] == [(B, Tp, 1), (B, Tp, 0)]
    assert tuple(out.msg_mean.shape) == (B, Tp, 2, 2)
    assert out.pairs == ((1, 0), (0, 1))
    assert tuple(out.message_mean("A", "B").shape) == (B, Tp, 2)
    assert (out.obs_logvar is None) == (obs == "poisson")
    # factors are unit-norm projections: |f| <= |g| <= clip * sqrt(gen_dim)
    assert all(float(f.detach().abs().max()) <= 5.0 * 6 ** 0.5 for f in out.factors)


def test_means_are_deterministic_and_samples_are_not():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = MRLFADS(cfg).eval()
    x, _ = batch(cfg)
    a, b = model(x, sample=False), model(x, sample=False)
    assert torch.equal(a.readout[0], b.readout[0])
    assert torch.equal(a.inputs[0], a.co_mean[0])  # posterior mean used as u
    c = model(x, sample=True)
    assert not torch.equal(a.readout[0], c.readout[0])


def test_set_dropout_changes_training_noise():
    torch.manual_seed(0)
    cfg = tiny_cfg(dropout=0.5)
    model = MRLFADS(cfg).train()
    x, _ = batch(cfg)
    assert not torch.equal(model(x, sample=False).readout[0], model(x, sample=False).readout[0])
    model.set_dropout(0.0)
    assert torch.equal(model(x, sample=False).readout[0], model(x, sample=False).readout[0])
    with pytest.raises(ValueError, match="dropout"):
        model.set_dropout(1.5)


def test_heldout_loss_trains_only_the_predictor():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = MRLFADS(cfg)
    x, y = batch(cfg)
    out = model(x, sample=True)
    terms = compute_loss(out, x, y, LossConfig(), epoch=0)
    terms.heldout_loss.backward()
    for name, p in model.named_parameters():
        grad_is_zero = p.grad is None or float(p.grad.abs().sum()) == 0.0
        assert grad_is_zero == (not name.startswith("ho_")), name


def test_heldout_data_never_reaches_the_encoders():
    """Changing held-out data changes only the held-out term and the predictor's gradient."""
    torch.manual_seed(0)
    cfg = tiny_cfg(dropout=0.0)
    model = MRLFADS(cfg)
    x, y = batch(cfg)
    grads, noise = [], model.draw_noise(B, T - TAU, x[0])
    for y_try in (y, [v * 0 + 7.0 for v in y]):
        model.zero_grad()
        out = model(x, sample=True, noise=noise)
        terms = compute_loss(out, x, y_try, LossConfig(), epoch=500)
        terms.total.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for name in grads[0]:
        same = torch.allclose(grads[0][name], grads[1][name])
        assert same == (not name.startswith("ho_")), name


def test_padding_gets_no_gradient_and_stays_zero():
    torch.manual_seed(0)
    cfg = tiny_cfg(regions=(RegionConfig("A", 2, ext_dim=1), RegionConfig("B", 4, gen_dim=3)))
    model = MRLFADS(cfg)
    x = [torch.poisson(torch.ones(B, T, n)) for n in (2, 4)]
    out = model(x, [torch.randn(B, T, 1), None], sample=True)
    compute_loss(out, x, None, LossConfig(), epoch=500).total.backward()
    for name in model._masked_names:
        pad = 1 - getattr(model, name + "_mask")
        assert float((getattr(model, name) * pad).abs().sum().detach()) == 0.0, name
        assert float((getattr(model, name).grad * pad).abs().sum()) == 0.0, name


def test_first_message_depends_on_initial_factors():
    """m at t = tau is an affine map of the source's rates from f_0 = factors(g_0(z0))."""
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = MRLFADS(cfg).eval()
    x, _ = batch(cfg)
    base = model(x, sample=False).message_mean("A", "B")[:, 0]
    with torch.no_grad():
        model.ic_to_g0[0].bias += 1.0  # changes g_0 and f_0 of region A only
    moved = model(x, sample=False)
    assert not torch.allclose(base, moved.message_mean("A", "B")[:, 0])
    # region B's own initial state is untouched, so B -> A's first message is unchanged
    with torch.no_grad():
        model.ic_to_g0[0].bias -= 1.0
    assert torch.allclose(model(x, sample=False).message_mean("B", "A")[:, 0],
                          moved.message_mean("B", "A")[:, 0])


def test_zero_message_map_gives_exactly_zero_mean():
    torch.manual_seed(0)
    cfg = tiny_cfg()
    model = MRLFADS(cfg).eval()
    p = cfg.pairs.index((0, 1))
    with torch.no_grad():
        model.msg_w[p] = 0.0
        model.msg_b[p, :, : cfg.com_dim] = 0.0
    out = model(batch(cfg)[0], sample=False)
    assert float(out.message_mean("A", "B").abs().max()) == 0.0
    assert float(out.message_mean("B", "A").abs().max()) > 0.0


def test_inputs_are_validated_with_names():
    cfg = tiny_cfg(regions=(RegionConfig("A", 3, ext_dim=2), RegionConfig("B", 3)))
    model = MRLFADS(cfg)
    x, _ = batch(cfg)
    with pytest.raises(InputError, match="ext\\[0\\].*'A'"):
        model(x, None)
    with pytest.raises(InputError, match="heldin\\[1\\].*'B'"):
        model([x[0], x[1][..., :2]], [torch.zeros(B, T, 2), None])


def test_configs_round_trip_and_validate():
    cfg = tiny_cfg(message_source="factors", inferred_inputs=False)
    again = from_dict(ModelConfig, to_dict(cfg))
    assert again == cfg and MRLFADS(to_dict(cfg)).cfg == cfg
    assert cfg.regions[0].gen_size == 6 and cfg.regions[0].fac_size == 3
    with pytest.raises(ConfigError, match="kl_com_ratio"):
        LossConfig(kl_com_ratio=0.5)
    with pytest.raises(ConfigError, match="message_source"):
        tiny_cfg(message_source="spikes")
    with pytest.raises(ConfigError, match="controller_sees='some'"):
        tiny_cfg(controller_sees="some")
    with pytest.raises(ConfigError, match=r"input_prior='pink' must be one of \('white', 'ar1'\)"):
        tiny_cfg(input_prior="pink")
    with pytest.raises(ConfigError, match=r"input_prior_tau=0.0 must be > 0 \(bins\)"):
        tiny_cfg(input_prior_tau=0.0)
    with pytest.raises(ConfigError, match=r"pathway_dropout=1.0 must be in \[0, 1\)"):
        tiny_cfg(pathway_dropout=1.0)
    with pytest.raises(ConfigError, match="name"):
        RegionConfig("1bad", 3)
    loss = with_overrides(LossConfig(), {"kl_co_scale": 2.0, "kl_com_ratio": 4.0})
    assert loss.kl_com_scale == pytest.approx(0.5)
    assert from_dict(LossConfig, to_dict(loss)) == loss


@pytest.mark.parametrize("obs", ["poisson", "gaussian"])
def test_bfloat16_autocast_trains_with_gradients_close_to_float32(obs):
    """train.amp: the hand-written loops run in float32 inside autocast (they once mixed
    bfloat16 activations with float32 weights and failed in backward)."""
    torch.manual_seed(0)
    cfg = tiny_cfg(obs, dropout=0.0)
    model = MRLFADS(cfg)
    heldin, heldout = batch(cfg)
    noise = model.draw_noise(B, T - TAU, heldin[0])

    def grads(amp: bool) -> torch.Tensor:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(heldin, sample=True, noise=noise)
        loss = compute_loss(out, heldin, heldout, LossConfig(), epoch=1000).total
        loss.backward()
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    full, half = grads(False), grads(True)
    assert full.shape == half.shape and torch.isfinite(half).all()
    assert torch.nn.functional.cosine_similarity(full, half, dim=0) > 0.99
    assert not torch.equal(full, half)  # autocast really ran the encoders in bfloat16


@pytest.mark.parametrize("sees", ["own", "all"])
def test_controller_reads_other_regions_only_when_it_sees_all(sees):
    """Changing B's spikes from the first reconstructed bin on changes A's first inferred
    input only when A's controller encoder reads every region (at that bin A's message from
    B still comes from B's initial condition, which reads bins before it)."""
    torch.manual_seed(0)
    regions = (RegionConfig("A", 4), RegionConfig("B", 3))
    cfg = ModelConfig(regions=regions, obs_model="poisson", ic_enc_seq_len=3, ic_enc_dim=4,
                      ci_enc_dim=4, con_dim=5, co_dim=2, ic_dim=3, com_dim=2, dropout=0.0,
                      controller_sees=sees)
    model = MRLFADS(cfg).double().eval()
    g = torch.Generator().manual_seed(1)
    x = [torch.poisson(torch.full((2, 9, r.n_heldin), 1.0), generator=g).double() for r in regions]
    other = [x[0], x[1].clone()]
    other[1][:, 3:] += 5.0
    a, b = (model(xs, sample=False).co_mean[0][:, 0] for xs in (x, other))
    assert not torch.equal(a, b) if sees == "all" else torch.equal(a, b)


@pytest.mark.parametrize("ahead", [-2, -1, 0, 2])
def test_inferred_input_reads_spikes_up_to_lookahead_bins_ahead(ahead):
    """Spikes changed at reconstructed bin 5 reach the inferred input (posterior mean) of bin
    5 - controller_lookahead and no earlier one; with the default 0 the controller is
    causal, with -1 the input of bin t reads spikes up to bin t - 1 only. The last bins read
    the encoder's last state, so nothing is read past the trial; with a lag the first bins
    read its zero initial state."""
    torch.manual_seed(0)
    regions = (RegionConfig("A", 4), RegionConfig("B", 3))
    tau, T = 3, 12
    cfg = ModelConfig(regions=regions, obs_model="poisson", ic_enc_seq_len=tau, ic_enc_dim=4,
                      ci_enc_dim=4, con_dim=5, co_dim=2, ic_dim=3, com_dim=2, dropout=0.0,
                      controller_lookahead=ahead)
    model = MRLFADS(cfg).double().eval()
    g = torch.Generator().manual_seed(1)
    x = [torch.poisson(torch.full((2, T, r.n_heldin), 1.0), generator=g).double()
         for r in regions]
    other = [x[0].clone(), x[1]]
    other[0][:, tau + 5] += 5.0
    a, b = (model(xs, sample=False).co_mean[0] for xs in (x, other))  # (B, T', co_dim)
    first = 5 - ahead
    assert torch.equal(a[:, :first], b[:, :first])
    assert not torch.equal(a[:, first], b[:, first])
    e = model.encode(x)[2]  # (R, T', B, E)
    if ahead >= 0:  # the encodings of the last `ahead` bins are the encoder's final state
        assert torch.equal(e[:, -1], e[:, T - tau - 1 - ahead])
    else:  # the first -ahead bins get the zero initial state, then bin t the state at t + ahead
        causal = MRLFADS(dataclasses.replace(cfg, controller_lookahead=0)).double().eval()
        causal.load_state_dict(model.state_dict())
        e0 = causal.encode(x)[2]
        assert not e[:, :-ahead].any()
        assert torch.equal(e[:, -ahead:], e0[:, :ahead])


def test_pathway_dropout_cuts_whole_trials_in_training_only():
    """With pathway_dropout p, each (trial, pathway) message is zero over the whole trial with
    chance p (400 trials x 2 pathways: within 5 standard errors of 0.3); a trial with no
    cut is that of a model without dropout (no rescaling); in evaluation nothing is cut."""
    torch.manual_seed(0)
    cfg = tiny_cfg(pathway_dropout=0.3, dropout=0.0)
    model = MRLFADS(cfg)
    plain = MRLFADS(tiny_cfg(dropout=0.0))
    plain.load_state_dict(model.state_dict())
    heldin, _ = batch(cfg)
    heldin = [x.repeat(134, 1, 1)[:400] for x in heldin]
    with torch.no_grad():
        cut = model.train()(heldin, sample=False).messages  # (B, T', P, C)
        full = plain.train()(heldin, sample=False).messages
        evaluated = model.eval()(heldin, sample=False).messages
    silent = cut.abs().sum((1, 3)) == 0
    assert abs(float(silent.float().mean()) - 0.3) < 5 * (0.3 * 0.7 / silent.numel()) ** 0.5
    whole = ~silent.any(1)  # trials with every pathway kept (a cut changes its target's
    assert 0 < int(whole.sum()) < len(whole)  # later messages, so only these match)
    torch.testing.assert_close(cut[whole], full[whole], rtol=0, atol=1e-7)
    torch.testing.assert_close(evaluated, full, rtol=0, atol=1e-7)


@pytest.mark.parametrize("source", ["rates", "generator"])
def test_detached_message_source_gets_no_gradient_from_its_target(source):
    """With detach_message_source, what region B's outputs ask of A reaches A's message
    map and stops there: A's IC encoder, controller, generator and readout get exactly no
    gradient from a function of B's outputs alone, while without it they do (the messages
    A -> B carry it)."""
    def grads(detach):
        torch.manual_seed(0)
        cfg = tiny_cfg(dropout=0.0, message_source=source, detach_message_source=detach)
        model = MRLFADS(cfg).double()
        heldin, _ = batch(cfg)
        model(heldin=[x.double() for x in heldin], sample=False).readout[1].sum().backward()
        g = {"ic_enc": model.ic_enc[0].weight_hh_l0.grad.abs().sum(),
             "controller": model.con_w_hh.grad[0].abs().sum(),
             "generator": model.gen_w_hh.grad[0].abs().sum(),
             "map A->B": model.msg_w.grad[cfg.pairs.index((0, 1))].abs().sum()}
        if source == "rates":  # messages that read the generator never see the readout
            g["readout"] = model.ro_w.grad[0].abs().sum()
        return g

    joint, detached = grads(False), grads(True)
    assert all(float(v) > 0 for v in joint.values()), joint
    assert float(detached.pop("map A->B")) > 0
    assert all(float(v) == 0.0 for v in detached.values()), detached


def test_the_ar1_input_prior_learns_its_time_constants_and_the_white_model_has_none():
    """input_prior="ar1" adds one learnt time constant per region and input dimension,
    starting at input_prior_tau bins, which the loss trains; the white model's parameters
    (and so its checkpoints) are what they were."""
    torch.manual_seed(0)
    white = MRLFADS(tiny_cfg("poisson"))
    assert "co_prior_logtau" not in white.state_dict()
    assert white(batch(white.cfg)[0], sample=True).co_prior_logtau is None
    model = MRLFADS(tiny_cfg("poisson", input_prior="ar1", input_prior_tau=7.0))
    assert model.co_prior_logtau.shape == (2, model.cfg.co_dim)
    assert torch.allclose(model.co_prior_logtau.exp(), torch.tensor(7.0))
    heldin, heldout = batch(model.cfg)
    out = model(heldin, sample=True)
    compute_loss(out, heldin, heldout, LossConfig(), epoch=1000).total.backward()
    assert model.co_prior_logtau.grad is not None and model.co_prior_logtau.grad.abs().min() > 0
