"""A stitched model (several sessions, each with its own neurons, on shared dynamics):
equal to the region-by-region oracle in every session, blind to the neurons a session did
not record, and a one-session stitched model is exactly the unstitched one."""
from __future__ import annotations

import pytest
import torch

from mrlfads.config import ModelConfig, RegionConfig, SessionConfig
from mrlfads.config_utils import ConfigError
from mrlfads.model import MRLFADS, InputError
from mrlfads.sessions import session_masks
from tests.test_model_oracle import (
    CASES,
    TAU,
    B,
    T,
    assert_matches_oracle,
    assert_same_outputs,
    build,
    fast,
    run,
)

pytestmark = pytest.mark.usefixtures("loop_impl")

# union counts: A 3 held-in + 1 held-out, B 2 + 0, C 4 + 2 (tests.test_model_oracle.UNEQUAL)
SESSIONS = (SessionConfig("s0", heldin=(2, 0, 1), heldout=(1, 0, 1)),  # B not recorded
            SessionConfig("s1", heldin=(1, 2, 3), heldout=(0, 0, 1)))


def stitched(case: str, sessions=SESSIONS):
    model, heldin, heldout, ext = build(case)
    cfg = ModelConfig(**{**model.cfg.__dict__, "sessions": sessions})
    stitched_model = MRLFADS(cfg).double()
    stitched_model.load_state_dict(model.state_dict())
    return stitched_model, heldin, heldout, ext


def test_session_masks_by_hand():
    cfg = ModelConfig(regions=(RegionConfig("A", 3, n_heldout=1), RegionConfig("B", 2)),
                      obs_model="poisson",
                      sessions=(SessionConfig("x", (2, 0), (1, 0)), SessionConfig("y", (1, 1)),
                                SessionConfig("z", (0, 1))))
    rec, rec_out = session_masks(cfg, 3, 1)
    assert rec.tolist() == [[[1, 1, 0], [0, 0, 0]], [[0, 0, 1], [1, 0, 0]],
                            [[0, 0, 0], [0, 1, 0]]]
    assert rec_out.tolist() == [[[1], [0]], [[0], [0]], [[0], [0]]]


@pytest.mark.parametrize("session", [0, 1])
@pytest.mark.parametrize("sample", [False, True])
@pytest.mark.parametrize("case", ["poisson", "gaussian", "factors", "no_inputs"])
def test_stitched_model_matches_oracle_in_every_session(case, sample, session):
    model, heldin, heldout, ext = stitched(case)
    noise = model.draw_noise(B, T - TAU, heldin[0]) if sample else None
    assert_matches_oracle(model, heldin, heldout, ext, sample=sample, noise=noise,
                          session=session)


@pytest.mark.parametrize("session", [0, 1])
def test_neurons_a_session_did_not_record_change_nothing(session):
    """Their inputs are not read and their likelihood is not counted (their rates are still
    predicted), so neither outputs nor the loss nor any gradient depends on them."""
    model, heldin, heldout, ext = stitched("poisson")
    rec, rec_out = model.recorded(session)
    noisy_in = [x + 7.0 * (1 - m) for x, m in zip(heldin, rec)]
    noisy_out = [y + 7.0 * (1 - m) for y, m in zip(heldout, rec_out)]
    a, loss_a, grad_a = run(fast, model, heldin, heldout, ext, sample=False, session=session)
    b, loss_b, grad_b = run(fast, model, noisy_in, noisy_out, ext, sample=False, session=session)
    assert_same_outputs(a, b)
    assert torch.equal(loss_a.total, loss_b.total)
    for name in grad_a:
        assert torch.equal(grad_a[name], grad_b[name]), name
    # the recon term, by hand over the recorded neurons only (bins tau..T-1)
    for r, name in enumerate(model.cfg.region_names):
        lr, x = a.readout[r], heldin[r][:, TAU:]
        nll = (lr.exp() - x * lr + torch.lgamma(x + 1)) * rec[r]
        torch.testing.assert_close(loss_a.recon[name], nll.sum((1, 2)).mean())
    # session 0 did not record region B: its recon is 0 there
    if session == 0:
        assert float(loss_a.recon["B"].detach()) == 0.0


@pytest.mark.parametrize("case", list(CASES))
def test_one_session_stitched_is_exactly_the_plain_model(case):
    model, heldin, heldout, ext = build(case)
    one = (SessionConfig("only", tuple(r.n_heldin for r in model.cfg.regions),
                         tuple(r.n_heldout for r in model.cfg.regions)),)
    single, *_ = stitched(case, one)
    a, loss_a, grad_a = run(fast, model, heldin, heldout, ext, sample=False)
    b, loss_b, grad_b = run(fast, single, heldin, heldout, ext, sample=False, session=0)
    assert_same_outputs(a, b)
    assert torch.equal(loss_a.total, loss_b.total)
    for name in grad_a:
        torch.testing.assert_close(grad_a[name], grad_b[name], rtol=0, atol=0, msg=name)


def test_session_argument_is_checked():
    model, heldin, _, ext = stitched("poisson")
    with pytest.raises(InputError, match=r"stitches 2 sessions \['s0', 's1'\]; pass session="):
        model(heldin, ext)
    with pytest.raises(InputError, match="2 is not a session index 0..1"):
        model(heldin, ext, session=2)
    with pytest.raises(InputError, match="one session"):
        model(heldin, ext, session=torch.tensor([0, 1]))
    out = model(heldin, ext, session=torch.tensor([1, 1]), sample=False)
    torch.testing.assert_close(out.readout[0], model(heldin, ext, session=1, sample=False).readout[0])
    plain, heldin, _, ext = build("poisson")
    with pytest.raises(InputError, match=r"1 is not a session index 0..0 \(the model has one"):
        plain(heldin, ext, session=1)


def test_session_counts_must_partition_the_regions():
    regions = (RegionConfig("A", 3, n_heldout=1), RegionConfig("B", 2))
    with pytest.raises(ConfigError, match=r"region 'A' has 3 held-in and 1 held-out neurons "
                                          r"but the sessions' counts sum to 2 and 1"):
        ModelConfig(regions=regions, obs_model="poisson",
                    sessions=(SessionConfig("x", (1, 2), (1, 0)), SessionConfig("y", (1, 0))))
    with pytest.raises(ConfigError, match="need one per region"):
        ModelConfig(regions=regions, obs_model="poisson", sessions=(SessionConfig("x", (3,)),))
    with pytest.raises(ConfigError, match="records no region"):
        SessionConfig("x", (0, 0))
    with pytest.raises(ConfigError, match="names must be unique"):
        ModelConfig(regions=regions, obs_model="poisson",
                    sessions=(SessionConfig("x", (2, 1), (1, 0)), SessionConfig("x", (1, 1))))


def test_readin_starts_in_one_latent_space_for_every_session():
    """Two sessions record different neurons, each a different linear mix of the same
    latent trajectories: after the PCA initialisation both sessions' read-ins map their
    own trial averages to the same trajectories (and a one-session model is untouched)."""
    torch.manual_seed(0)
    rows, k = 60, 3
    latent = torch.randn(rows, k).double()
    regions = (RegionConfig("A", 9),)
    cfg = ModelConfig(regions=regions, obs_model="gaussian",
                      sessions=(SessionConfig("a", (5,)), SessionConfig("b", (4,))))
    model = MRLFADS(cfg).double()
    mix_a, mix_b = torch.randn(k, 5).double(), torch.randn(k, 4).double()
    psth = torch.cat([latent @ mix_a, latent @ mix_b], 1)  # (rows, 9): a's 5 then b's 4
    model.init_readin_across_sessions([psth])
    w = model.readin[0].weight.detach()
    za = (psth[:, :5] - psth[:, :5].mean(0)) @ w[:, :5].T
    zb = (psth[:, 5:] - psth[:, 5:].mean(0)) @ w[:, 5:].T
    torch.testing.assert_close(za, zb, rtol=1e-3, atol=1e-3)
    assert float(w[k:].abs().max()) == 0.0  # only the shared components are read
    torch.testing.assert_close(za[:, :k].var(0, correction=0), torch.ones(k).double(),
                               rtol=1e-2, atol=1e-2)
    plain = MRLFADS(ModelConfig(regions=regions, obs_model="gaussian")).double()
    before = plain.readin[0].weight.clone()
    plain.init_readin_across_sessions([psth])
    assert torch.equal(plain.readin[0].weight, before)
