"""Model selection that a model copying its input cannot win: coordinated dropout, sample
validation, the objective each run ranks on, and the sweep's refusal of an unprotected one."""
import math
import warnings

import numpy as np
import pytest
import torch

from mrlfads.config_utils import ConfigError
from mrlfads.data_loaders.reader import ArrowDataset
from mrlfads.data_loaders.testing import make_tiny_dataset
from mrlfads.data_loaders.writer import write_dataset
from mrlfads.loss import compute_loss, observation_nll
from mrlfads.model import MRLFADS
from mrlfads.search_spaces.space import SearchSpace
from mrlfads.training import sweep
from mrlfads.training.config import RunConfig, TrainConfig
from mrlfads.training.evaluate import evaluate_split
from mrlfads.training.loop import Trainer, UnprotectedObjectiveWarning
from mrlfads.training.masks import sample_validation_hidden, training_inputs, validation_inputs
from mrlfads.training.objective import resolve_objective

NO_HELDOUT = (("A", 3, 0), ("B", 3, 0))


def _cfg(ds, path, **train):
    """The tiny datasets are spikes, whose defaults turn coordinated dropout on (docs/MODEL.md,
    "Defaults for spikes"): these configs start from none, unprotected."""
    overrides = {"train.cd_rate": 0.0, **{f"train.{k}": v for k, v in train.items()}}
    return RunConfig.for_dataset(ds.manifest, uri=str(path), smoke_test=True, overrides=overrides)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("protect")
    return {"heldout": (make_tiny_dataset(root / "h"), root / "h"),
            "none": (make_tiny_dataset(root / "n", regions=NO_HELDOUT), root / "n"),
            "root": root}


# ----------------------------------------------------------------------------- coordinated dropout
def test_cd_hides_a_fraction_zeroes_and_rescales_inputs_and_scores_only_the_hidden():
    g = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.full((64, 30, 20), 1.5), generator=g)
    torch.manual_seed(1)
    (shown,), (w,) = training_inputs([x], 25, cd_rate=0.3, sv_rate=0.0, sv_hidden=None)
    hidden = w > 0
    assert hidden.float().mean().item() == pytest.approx(0.3, abs=0.01)  # 32000 elements
    assert torch.equal(shown[:, :5], x[:, :5])  # the IC window's bins are never masked
    tail = x[:, 5:]
    assert torch.equal(shown[:, 5:][hidden], torch.zeros_like(tail[hidden]))
    assert torch.allclose(shown[:, 5:][~hidden], tail[~hidden] / 0.7)
    assert torch.allclose(w[hidden], torch.tensor(1 / 0.3)) and torch.all(w[~hidden] == 0)
    torch.manual_seed(1)
    (_,), (w2,) = training_inputs([x], 25, cd_rate=0.3, sv_rate=0.0, sv_hidden=None)
    assert torch.equal(w, w2)  # drawn from torch's seeded generator
    (same,), none = training_inputs([x], 25, cd_rate=0.0, sv_rate=0.0, sv_hidden=None)
    assert same is x and none is None  # off: the plain loss, untouched inputs


def test_weighted_reconstruction_equals_a_hand_computation():
    # rate 1 everywhere; counts [[0, 1], [2, 0]]; CD (rate 0.5) hid elements (0, 1) and (1, 0)
    readout = torch.zeros(1, 2, 2)
    counts = torch.tensor([[[0.0, 1.0], [2.0, 0.0]]])
    weight = torch.tensor([[[0.0, 2.0], [2.0, 0.0]]])
    # NLL at rate 1 is 1 + log k!: 2 * (1) + 2 * (1 + ln 2)
    got = observation_nll("poisson", readout, None, counts, weight)
    assert got.item() == pytest.approx(4 + 2 * math.log(2.0), rel=1e-6)
    assert observation_nll("poisson", readout, None, counts).item() == pytest.approx(
        4 + math.log(2.0), rel=1e-6)


def test_cd_loss_has_no_gradient_through_the_elements_the_encoders_saw(data):
    ds, path = data["heldout"]
    cfg = _cfg(ds, path, cd_rate=0.4)
    model = MRLFADS(cfg.model)
    g = torch.Generator().manual_seed(2)
    heldin = [torch.poisson(torch.full((4, 12, 3), 2.0), generator=g) for _ in range(2)]
    heldout = [torch.poisson(torch.full((4, 12, 1), 2.0), generator=g) for _ in range(2)]
    torch.manual_seed(3)
    shown, w = training_inputs(heldin, 8, 0.4, 0.0, None)
    out = model(shown, None, sample=False)
    terms = compute_loss(out, heldin, heldout, cfg.loss, 0, recon_weight=w)
    for r in range(2):
        k, lr = heldin[r][:, 4:], out.readout[r]
        hand = (w[r] * (torch.exp(lr) - k * lr + torch.lgamma(k + 1))).reshape(4, -1).sum(1).mean()
        assert terms.recon[("A", "B")[r]].item() == pytest.approx(hand.item(), rel=1e-6)
    grads = torch.autograd.grad(terms.recon_loss, out.readout)
    for r in range(2):
        assert torch.all(grads[r][w[r] == 0] == 0) and torch.any(grads[r][w[r] > 0] != 0)


# ----------------------------------------------------------------------------- sample validation
def test_sv_masks_are_fixed_per_trial_whatever_the_order_or_call():
    a = sample_validation_hidden(np.array([5, 9, 2]), [3, 4], 8, 0.25)
    b = sample_validation_hidden(np.array([2, 5, 9]), [3, 4], 8, 0.25)
    for r in range(2):
        assert torch.equal(a[r][0], b[r][1]) and torch.equal(a[r][2], b[r][0])
    big = sample_validation_hidden(np.arange(400), [10], 50, 0.2)[0]
    assert big.float().mean().item() == pytest.approx(0.2, abs=0.005)  # 200000 elements
    assert not torch.equal(big[0], big[1])  # trials differ
    shown, seen_w, sv_w = validation_inputs([torch.ones(3, 10, 3)], 0.25, [a[0]])
    assert torch.equal(shown[0][:, 2:] == 0, a[0])
    assert torch.allclose(seen_w[0], (~a[0]).float() / 0.75)
    assert torch.allclose(sv_w[0], a[0].float() / 0.25)


def _rewrite(ds, path, change=None):
    """Write ``ds`` again (no truth), applying ``change(region, x, trial_id)`` to x."""
    m = ds.manifest
    a = ds.arrays()
    x = {r.name: np.array(a[f"x/{r.name}"]) for r in m.regions}
    if change is not None:
        for r in m.regions:
            change(r, x[r.name], a["trial_id"])
    write_dataset(path, name=m.name, regions=[(r.name, r.n_heldin, r.n_heldout) for r in m.regions],
                  obs_model=m.obs_model, bin_width_s=m.bin_width_s,
                  ic_enc_seq_len=m.ic_enc_seq_len, x=x, split=a["split"],
                  trial_id=a["trial_id"], condition=a["condition"])
    return ArrowDataset.open(path)


@pytest.mark.parametrize("sv_rate", [0.3, 0.0])
def test_sv_elements_never_enter_the_training_loss(data, tmp_path, sv_rate):
    ds, _ = data["heldout"]
    tau, names = ds.manifest.ic_enc_seq_len, [r.name for r in ds.manifest.regions]
    T = ds.manifest.n_bins

    sizes = [r.n_heldin for r in ds.manifest.regions]

    def bump(region, x, trial_id):  # +3 counts on exactly the elements SV hides (at 0.3)
        r = names.index(region.name)
        hidden = sample_validation_hidden(trial_id, sizes, T - tau, 0.3)[r].numpy()
        x[:, tau:, : region.n_heldin][hidden] += 3.0

    same = _rewrite(ds, tmp_path / "same")
    bumped = _rewrite(ds, tmp_path / "bumped", bump)
    trainers = [Trainer(_cfg(d, p, sv_rate=sv_rate), d, device="cpu")
                for d, p in ((same, tmp_path / "same"), (bumped, tmp_path / "bumped"))]
    trainers[1].model.load_state_dict(trainers[0].model.state_dict())  # same start
    terms = []
    for t in trainers:
        torch.manual_seed(7)
        terms.append(t.train_one_epoch())
    params = [torch.cat([p.detach().reshape(-1) for p in t.model.parameters()]) for t in trainers]
    if sv_rate > 0:  # the bumped elements were never shown and never scored
        assert terms[0]["loss"] == terms[1]["loss"] and torch.equal(params[0], params[1])
        m = [evaluate_split(t.model, t.valid_data, t.cfg, 1, sv_hidden=t.sv_hidden(t.valid_data))
             for t in trainers]
        assert m[0]["valid/recon_loss"] == pytest.approx(m[1]["valid/recon_loss"], rel=1e-6)
        assert m[1]["valid/sv_recon_loss"] > m[0]["valid/sv_recon_loss"]  # scored only there
        assert {f"valid/sv_recon/{n}" for n in names} <= set(m[0])
    else:  # control: without SV the same change does reach the loss
        assert terms[0]["loss"] != terms[1]["loss"]


def test_sv_masks_stay_the_same_across_epochs(data):
    ds, path = data["none"]
    trainer = Trainer(_cfg(ds, path, sv_rate=0.2), ds, device="cpu")
    first = [m.clone() for m in trainer.sv_hidden(trainer.train_data)]
    trainer.run_epoch()
    m = trainer.run_epoch()
    assert all(torch.equal(a, b) for a, b in zip(first, trainer.sv_hidden(trainer.train_data)))
    assert m["objective_raw"] == m["valid/sv_recon_loss"]  # no held-out neurons: SV ranks


# ----------------------------------------------------------------------------- a model that copies
class Copier(MRLFADS):
    """Identity overfitting in its purest form: predicts each held-in element as what its
    encoders were shown (a floor of 1e-3 spikes/bin where they were shown nothing)."""

    def forward(self, heldin, ext=None, sample=True, silence=None, noise=None):
        out = super().forward(heldin, ext, sample=sample, silence=silence, noise=noise)
        tau = self.cfg.ic_enc_seq_len
        out.readout = [torch.log(x[:, tau:] + 1e-3) for x in heldin]
        return out


def test_a_copying_model_wins_plain_reconstruction_and_loses_the_protected_objective(data):
    ds, path = data["none"]
    plain_cfg, sv_cfg = _cfg(ds, path), _cfg(ds, path, sv_rate=0.2)
    with pytest.warns(UnprotectedObjectiveWarning, match="sv_rate"):
        honest = Trainer(plain_cfg, ds, device="cpu")  # readouts at the data's mean rates
    copier = Copier(plain_cfg.model)
    copier.load_state_dict(honest.model.state_dict())
    valid = honest.valid_data
    hidden = sample_validation_hidden(valid.trial_id, [3, 3], 8, 0.2)

    def scores(model, cfg, sv):
        return evaluate_split(model, valid, cfg, 10, sv_hidden=sv)

    plain = {name: scores(m, plain_cfg, None) for name, m in (("honest", honest.model),
                                                               ("copier", copier))}
    protected = {name: scores(m, sv_cfg, hidden) for name, m in (("honest", honest.model),
                                                                  ("copier", copier))}
    # unprotected: the copier looks far better; protected: it is far worse
    assert plain["copier"]["valid/recon_loss"] < 0.7 * plain["honest"]["valid/recon_loss"]
    assert resolve_objective(plain_cfg).protection is None
    key = resolve_objective(sv_cfg).metric
    assert key == "valid/sv_recon_loss"
    assert protected["copier"][key] > 2 * protected["honest"][key]
    # coordinated dropout: the training loss scores only what the encoders did not see
    batch = [x[:8] for x in valid.heldin]
    torch.manual_seed(0)
    shown, w = training_inputs(batch, 8, 0.3, 0.0, None)
    losses = {}
    for name, model in (("honest", honest.model), ("copier", copier)):
        model.eval()
        out = model(shown, None, sample=False)
        losses[name] = compute_loss(out, batch, None, sv_cfg.loss, 10, recon_weight=w).recon_loss
    assert losses["copier"] > 2 * losses["honest"]


# ----------------------------------------------------------------------------- the objective
def test_objective_resolution_and_config_checks(data):
    ds_h, p_h = data["heldout"]
    ds_n, p_n = data["none"]
    assert resolve_objective(_cfg(ds_h, p_h)).metric == "valid/heldout_loss"
    assert resolve_objective(_cfg(ds_h, p_h, sv_rate=0.1)).metric == "valid/heldout_loss"
    assert resolve_objective(_cfg(ds_h, p_h, objective="sv", sv_rate=0.1)).metric == \
        "valid/sv_recon_loss"
    assert resolve_objective(_cfg(ds_n, p_n, sv_rate=0.1)).metric == "valid/sv_recon_loss"
    cd = resolve_objective(_cfg(ds_n, p_n, cd_rate=0.2))
    assert (cd.metric, cd.protection) == ("valid/recon_loss", "coordinated dropout, train.cd_rate")
    assert resolve_objective(_cfg(ds_n, p_n)).protection is None
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnprotectedObjectiveWarning)  # protected: no warning
        Trainer(_cfg(ds_n, p_n, sv_rate=0.1), ds_n, device="cpu")
    with pytest.raises(ConfigError, match="train.sv_rate > 0"):
        TrainConfig(objective="sv")
    with pytest.raises(ConfigError, match=r"train.cd_rate=1.0 must be in \[0, 1\)"):
        TrainConfig(cd_rate=1.0)


def test_pbt_may_change_cd_rate_but_never_sv_rate(data):
    ds, path = data["heldout"]
    trainer = Trainer(_cfg(ds, path, sv_rate=0.1), ds, device="cpu")
    trainer.apply_hparams({"train.cd_rate": 0.25})
    assert trainer.cfg.train.cd_rate == 0.25
    with pytest.raises(ConfigError, match="cannot change during training"):
        trainer.apply_hparams({"train.sv_rate": 0.2})


# ----------------------------------------------------------------------------- the sweep
def _space(hps=None, metric="objective"):
    return SearchSpace.from_dict({"kind": "pbt", "scheduler": {"metric": metric},
                                  "hyperparameters": hps or {
                                      "train.lr": {"bounds": [1e-4, 1e-2], "scale": "log"}}})


def test_sweep_refuses_an_unprotected_objective_and_names_the_fix(data):
    _, p_n = data["none"]
    no_cd = {"train.cd_rate": 0.0}
    with pytest.raises(sweep.SweepError) as exc:
        sweep.plan_sweep(str(p_n), space=_space(), smoke_test=True, run_overrides=no_cd)
    msg = str(exc.value)
    assert "copy their input" in msg and "--heldout" in msg and "train.sv_rate" in msg
    plan = sweep.plan_sweep(str(p_n), space=_space(), smoke_test=True,
                            run_overrides={**no_cd, "train.sv_rate": 0.1})
    assert plan.run.train.sv_rate == 0.1
    # spikes start with coordinated dropout on (0.47): protected without asking
    plan = sweep.plan_sweep(str(p_n), space=_space(), smoke_test=True)
    assert plan.run.train.cd_rate == 0.47
    assert "coordinated dropout" in sweep._objective_text(plan)
    # the default space searches cd_rate above 0: every trial is protected by CD
    plan = sweep.plan_sweep(str(p_n), smoke_test=True)
    assert "coordinated dropout" in sweep._objective_text(plan)
    reaches_zero = _space({"train.cd_rate": {"bounds": [0.0, 0.5], "scale": "linear"}})
    with pytest.raises(sweep.SweepError, match="cd_rate range reaching 0.0"):
        sweep.plan_sweep(str(p_n), space=reaches_zero, smoke_test=True)


def test_sweep_refuses_ranking_on_reconstruction_even_with_heldout_neurons(data):
    _, p_h = data["heldout"]
    sweep.plan_sweep(str(p_h), space=_space(), smoke_test=True)
    with pytest.raises(sweep.SweepError, match="'valid/recon_loss', an unprotected"):
        sweep.plan_sweep(str(p_h), space=_space(metric="valid/recon_loss"), smoke_test=True,
                         run_overrides={"train.cd_rate": 0.0})


def test_sweep_refuses_pbt_on_what_cannot_change_mid_run(data):
    _, p_h = data["heldout"]
    space = _space({"train.sv_rate": {"bounds": [0.05, 0.2], "scale": "linear"}})
    with pytest.raises(sweep.SweepError, match=r"\['train.sv_rate'\].*`fixed:`"):
        sweep.plan_sweep(str(p_h), space=space, smoke_test=True)
