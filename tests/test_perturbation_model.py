"""The perturbation menu at the model level: channel cuts and silenced inferred inputs match
the region-by-region oracle (outputs and gradients), and invariants a person can check by
hand: a cut of a dead pathway changes nothing, cutting every pathway into a region equals
silencing every region that sends to it (for that region), all channels equal the full cut."""
from __future__ import annotations

import pytest
import torch

from mrlfads.config import RegionConfig
from mrlfads.model import InputError
from mrlfads.oracle import oracle_forward
from tests.test_model_oracle import TAU, T, assert_same_outputs, build, fast, run

pytestmark = pytest.mark.usefixtures("loop_impl")
EQUAL = tuple(RegionConfig(n, 3) for n in ("A", "B", "C"))


@pytest.mark.parametrize("sample", [False, True])
def test_channel_cut_and_silenced_inputs_match_oracle(sample):
    model, heldin, heldout, ext = build("gaussian")
    noise = model.draw_noise(2, T - TAU, heldin[0]) if sample else None
    kw = {"sample": sample, "noise": noise, "silence": {"A->C": (TAU + 1, TAU + 5, [1])},
          "silence_inputs": {"B": (TAU + 2, T, [0])}}
    out_f, _, grad_f = run(fast, model, heldin, heldout, ext, **kw)
    out_o, _, grad_o = run(oracle_forward, model, heldin, heldout, ext, **kw)
    assert_same_outputs(out_f, out_o)
    for name in grad_f:
        torch.testing.assert_close(grad_f[name], grad_o[name], rtol=1e-5, atol=1e-5, msg=name)
    out_f = _eval_view(out_f)
    p = out_f.pair_index("A", "C")
    assert float(out_f.msg_mean[:, 1:5, p, 1].abs().max()) == 0.0  # the cut channel
    assert float(out_f.msg_mean[:, 1:5, p, 0].abs().min()) > 0.0  # the other one flows
    assert float(out_f.inputs[1][:, 2:, 0].abs().max()) == 0.0  # B's input dim 0, bins 2..
    assert float(out_f.inputs[1][:, 2:, 1].abs().min()) > 0.0
    assert float(out_f.co_mean[1][:, 2:, 0].abs().min()) > 0.0  # the posterior is kept


def _eval_view(out):
    """The same output with every tensor detached (for float() checks)."""
    import dataclasses

    def det(v):
        if torch.is_tensor(v):
            return v.detach()
        if isinstance(v, list):
            return [det(x) for x in v]
        return v

    return dataclasses.replace(out, **{f.name: det(getattr(out, f.name))
                                       for f in dataclasses.fields(out)})


def _eval(model, heldin, ext, **kw):
    with torch.no_grad():
        return model.eval()(heldin, ext, sample=False, **kw)


def test_cutting_a_dead_pathway_changes_nothing():
    model, heldin, _, ext = build("poisson", regions=EQUAL)
    p = model.sizes.pairs.index((0, 2))  # A -> C
    with torch.no_grad():  # A -> C's message is exactly zero: weight and bias (mean half)
        model.msg_w[p] = 0.0
        model.msg_b[p, :, : model.cfg.com_dim] = 0.0
    base = _eval(model, heldin, ext)
    cut = _eval(model, heldin, ext, silence={"A->C": (0, T)})
    for r in range(3):
        assert torch.equal(base.readout[r], cut.readout[r])
    live = _eval(model, heldin, ext, silence={"B->C": (0, T)})
    assert float((live.readout[2] - base.readout[2]).abs().max()) > 1e-6  # a live one does


def test_cutting_every_pathway_into_a_region_equals_silencing_its_sources():
    model, heldin, _, ext = build("poisson", regions=EQUAL)
    window = (TAU + 2, T)
    cuts = _eval(model, heldin, ext, silence={"A->C": window, "B->C": window})
    sources = _eval(model, heldin, ext, silence={"A": window, "B": window})
    torch.testing.assert_close(cuts.readout[2], sources.readout[2], rtol=0, atol=0)
    # the sources themselves differ: silencing A also cuts A -> B
    assert float((cuts.readout[1] - sources.readout[1]).abs().max()) > 1e-6


def test_all_channels_equal_the_full_cut_and_one_channel_is_less():
    model, heldin, _, ext = build("poisson", regions=EQUAL)
    window = (TAU + 1, T)
    C = model.cfg.com_dim
    full = _eval(model, heldin, ext, silence={"A->B": window})
    every = _eval(model, heldin, ext, silence={"A->B": (*window, list(range(C)))})
    one = _eval(model, heldin, ext, silence={"A->B": (*window, [0])})
    base = _eval(model, heldin, ext)
    torch.testing.assert_close(full.readout[1], every.readout[1], rtol=0, atol=0)
    d_one = float((one.readout[1] - base.readout[1]).abs().max())
    d_full = float((full.readout[1] - base.readout[1]).abs().max())
    assert 0 < d_one and d_one != d_full


def test_silencing_inputs_changes_the_region_and_its_listeners_only_after_the_window():
    model, heldin, _, ext = build("poisson", regions=EQUAL)
    base = _eval(model, heldin, ext)
    quiet = _eval(model, heldin, ext, silence_inputs={"A": (TAU + 3, T)})
    for r in range(3):  # before the window nothing moves, to the bit (the same loop runs)
        torch.testing.assert_close(quiet.readout[r][:, :3], base.readout[r][:, :3], rtol=0,
                                   atol=0)
    assert float((quiet.readout[0] - base.readout[0]).abs().max()) > 1e-6
    assert float(quiet.inputs[0][:, 3:].abs().max()) == 0.0
    # all channels by name equal the whole input
    every = _eval(model, heldin, ext, silence_inputs={"A": (TAU + 3, T, [0, 1])})
    torch.testing.assert_close(every.readout[0], quiet.readout[0], rtol=0, atol=0)


def test_bad_perturbations_are_refused_naming_the_input():
    model, heldin, _, ext = build("poisson", regions=EQUAL)
    with pytest.raises(InputError, match=r"channels \[2\] must be a non-empty subset of 0..1"):
        _eval(model, heldin, ext, silence={"A->B": (TAU, T, [2])})
    with pytest.raises(InputError, match="unknown region 'Z'"):
        _eval(model, heldin, ext, silence_inputs={"Z": (TAU, T)})
    with pytest.raises(InputError, match=r"co_dim=2"):
        _eval(model, heldin, ext, silence_inputs={"A": (TAU, T, [5])})
    no_inputs, heldin, _, ext = build("no_inputs", regions=EQUAL)
    with pytest.raises(InputError, match="no inferred inputs"):
        _eval(no_inputs, heldin, ext, silence_inputs={"A": (TAU, T)})
