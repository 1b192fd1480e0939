"""Effectomes that measure a pathway by its effect on the target: identified, unlike the RMS
of the messages, whose scale the target's input weights can absorb."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrlfads import metrics as M
from mrlfads.effectome import cut_effectome, drive_effectome, message_input_weights
from mrlfads.inference import posterior_means
from mrlfads.model import InputError
from tests.test_model_inference import TAU, T, chain_model


def _messages(model, x):
    res = posterior_means(model, x)
    return {tuple(k.split("/", 1)[1].split("->")): v for k, v in res.items()
            if k.startswith("messages/")}


def test_one_pathway_can_be_silenced_alone():
    model, x = chain_model()
    xt = [torch.as_tensor(v) for v in x]
    with torch.no_grad():
        base = model.eval()(xt, sample=False)
        cut = model(xt, sample=False, silence={"A->B": (TAU + 2, T)})
        both = model(xt, sample=False, silence={"A": (TAU + 2, T)})
    p_ab, p_ac = base.pair_index("A", "B"), base.pair_index("A", "C")
    assert float(cut.msg_mean[:, 2:, p_ab].abs().max()) == 0.0
    # the other pathway from A keeps its (here bias-only) message; silencing A cuts both
    torch.testing.assert_close(cut.msg_mean[:, :, p_ac], base.msg_mean[:, :, p_ac])
    torch.testing.assert_close(cut.readout[1], both.readout[1])
    # a pathway is named as in model.pathways: spaces around the names are allowed
    with torch.no_grad():
        spaced = model(xt, sample=False, silence={" A -> B ": (TAU + 2, T)})
    torch.testing.assert_close(spaced.msg_mean, cut.msg_mean)
    with pytest.raises(InputError, match="unknown pathway 'A->Z'"):
        model(xt, sample=False, silence={"A->Z": (0, T)})
    with pytest.raises(InputError, match="unknown pathway 'A->A'"):
        model(xt, sample=False, silence={"A->A": (0, T)})


def test_cut_effectome_is_zero_where_nothing_is_sent_and_positive_on_the_live_pathway():
    model, x = chain_model()
    E = cut_effectome(model, [torch.as_tensor(v) for v in x])
    names = ["A", "B", "C"]
    assert np.isnan(np.diag(E)).all()
    live = E[names.index("B"), names.index("A")]
    assert live > 0.0
    # every other pathway carries an all-zero message (no weights, zero mean bias): cut = 0
    others = [E[d, s] for d in range(3) for s in range(3) if d != s and (s, d) != (0, 1)]
    assert max(others) == 0.0


def test_cut_equals_the_readout_change_computed_by_hand():
    model, x = chain_model("gaussian")
    xt = [torch.as_tensor(v) for v in x]
    with torch.no_grad():
        base = model.eval()(xt, sample=False).readout[1]
        cut = model(xt, sample=False, silence={"A->B": (0, T)}).readout[1]
    E = cut_effectome(model, xt, batch_size=2)  # two chunks must pool to the same RMS
    assert E[1, 0] == pytest.approx(float(((cut - base) ** 2).mean().sqrt()), rel=1e-6)


def test_drive_and_cut_do_not_move_when_a_message_is_rescaled_but_its_norm_does():
    """m -> a m with the target's input weights W -> W / a is the same model: the RMS of
    the messages scales by a, the drive and the cut effectomes do not."""
    model, x = chain_model("gaussian")
    names = ["A", "B", "C"]
    xt = [torch.as_tensor(v) for v in x]
    before = (M.effectome(_messages(model, x), names),
              drive_effectome(_messages(model, x), message_input_weights(model), names),
              cut_effectome(model, xt))
    a, C, U = 3.0, model.cfg.com_dim, model.sizes.U
    with torch.no_grad():
        p = model.cfg.pairs.index((0, 1))
        model.msg_w[p, :, :C] *= a  # message mean a times larger (log-variance untouched:
        model.msg_b[p, :, :C] *= a  # posterior means are used, no sampling)
        slot = [s for s in range(3) if s != 1].index(0)
        model.gen_w_iu[1, U + slot * C: U + (slot + 1) * C] /= a
    after = (M.effectome(_messages(model, x), names),
             drive_effectome(_messages(model, x), message_input_weights(model), names),
             cut_effectome(model, xt))
    assert after[0][1, 0] == pytest.approx(a * before[0][1, 0], rel=1e-5)
    assert after[1][1, 0] == pytest.approx(before[1][1, 0], rel=1e-5)
    assert after[2][1, 0] == pytest.approx(before[2][1, 0], rel=1e-4, abs=1e-7)


def test_the_sparsity_penalty_reads_each_pathways_drive_and_ignores_its_scale():
    """``pathway_drive`` (the norm the pathway-sparsity penalty prices) of a posterior-mean
    forward is the drive effectome's RMS times sqrt(T' x the target's 3 G gate units), for
    every pathway (1e-8 under the root keeps its gradient finite at 0); rescaling a message (m -> a m, W -> W / a) leaves it unchanged."""
    from mrlfads.loss import pathway_drive

    model, x = chain_model("gaussian")
    names = ["A", "B", "C"]
    xt = [torch.as_tensor(v) for v in x]
    model.eval()  # no dropout: the posterior means the drive effectome reads
    with torch.no_grad():
        drive = pathway_drive(model(xt, sample=False))
    E = drive_effectome(_messages(model, x), message_input_weights(model), names)
    s = model.sizes
    assert drive.shape == (len(s.pairs),)
    for p, (src, dst) in enumerate(s.pairs):
        norm = math.sqrt((T - TAU) * 3 * s.G[dst]) * E[dst, src]
        assert float(drive[p]) == pytest.approx(math.sqrt(norm ** 2 + 1e-8), rel=1e-4)
    assert float(drive[s.pairs.index((0, 1))]) > 1.0  # the chain's live A -> B, not only zeros
    a, C, U = 3.0, model.cfg.com_dim, s.U
    with torch.no_grad():
        p = s.pairs.index((0, 1))
        model.msg_w[p, :, :C] *= a
        model.msg_b[p, :, :C] *= a
        model.gen_w_iu[1, U + 0 * C: U + 1 * C] /= a  # A is B's first other region
        rescaled = pathway_drive(model(xt, sample=False))
    assert float(rescaled[p]) == pytest.approx(float(drive[p]), rel=1e-4)


def test_drive_effectome_by_hand():
    W = {("A", "B"): np.array([[1.0, 0.0, 2.0]]), ("B", "A"): np.array([[0.0, 0.0, 0.0]])}
    m = {("A", "B"): np.full((2, 3, 1), 2.0), ("B", "A"): np.ones((2, 3, 1))}
    E = drive_effectome(m, W, ["A", "B"])
    # m W = [2, 0, 4] everywhere: RMS = sqrt((4 + 0 + 16) / 3)
    assert E[1, 0] == pytest.approx(np.sqrt(20 / 3)) and E[0, 1] == 0.0


def test_the_trainer_reports_the_cut_effectome_once_the_ramps_are_done(tmp_path):
    from mrlfads.data_loaders.testing import make_tiny_dataset
    from mrlfads.training.config import RunConfig
    from mrlfads.training.loop import Trainer

    ds = make_tiny_dataset(tmp_path / "d")
    cfg = RunConfig.for_dataset(ds.manifest, smoke_test=True, overrides={"train.epochs": 3})
    assert cfg.loss.ramps_end == 1  # smoke ramps
    trainer = Trainer(cfg, ds)
    first, second = trainer.run_epoch(), trainer.run_epoch()
    # before the ramps end the cut effectome is not computed, but its keys are there (NaN):
    # Tune's progress.csv takes its columns from the first report
    assert first["ramps_done"] == 0.0 and set(first) == set(second)
    assert all(math.isnan(v) for k, v in first.items()
               if k.startswith(("effectome_cut/", "valid/effectome_cut_")))
    assert second["ramps_done"] == 1.0
    assert set(k for k in second if k.startswith("effectome_cut/")) == {
        "effectome_cut/A_to_B", "effectome_cut/B_to_A"}
    # the logged values are the cut effectome of the validation trials, by hand
    valid = trainer.valid_data
    E = cut_effectome(trainer.model, valid.heldin, valid.ext)
    assert second["effectome_cut/A_to_B"] == pytest.approx(E[1, 0], rel=1e-5)
    # the tiny dataset's only true pathway is A -> B: both truth scores are reported
    assert "valid/effectome_cut_cosine" in second and "valid/effectome_cut_separation" in second
    sep = second["valid/effectome_cut_separation"]
    assert sep == pytest.approx(E[1, 0] / E[0, 1], rel=1e-5)


def test_a_simulation_scores_the_cut_effectome_against_the_networks_own(tmp_path):
    """On simulated data training logs the cosine of the cut effectome with the network's
    own (``manifest.cut_effects``), by hand; NaN, with the same keys, before the ramps; a
    manifest whose recorded matrix has the wrong shape is refused."""
    import dataclasses

    from mrlfads.data_loaders.errors import DatasetError
    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.data_loaders.simulate import simulate
    from mrlfads.training.config import RunConfig
    from mrlfads.training.loop import Trainer

    simulate("random", out=tmp_path / "d", seed=5, smoke_test=True, obs="poisson")
    ds = ArrowDataset.open(tmp_path / "d")
    truth = ds.manifest.cut_effects
    assert truth is not None and truth[np.asarray(ds.manifest.comm_matrix) > 0].min() > 0
    cfg = RunConfig.for_dataset(ds.manifest, smoke_test=True, overrides={"train.epochs": 2})
    trainer = Trainer(cfg, ds)
    first, second = trainer.run_epoch(), trainer.run_epoch()
    key = "valid/effectome_cut_effect_cosine"
    assert math.isnan(first[key]) and set(first) == set(second)
    valid = trainer.valid_data
    E = cut_effectome(trainer.model, valid.heldin, valid.ext)
    off = ~np.eye(len(E), dtype=bool)
    by_hand = E[off] @ truth[off] / np.linalg.norm(E[off]) / np.linalg.norm(truth[off])
    assert second[key] == pytest.approx(by_hand, rel=1e-5)
    assert second[key] != pytest.approx(second["valid/effectome_cut_cosine"], abs=1e-6)
    # infer scores each split's cut effectome the same way
    from mrlfads.training.api.models import load

    trainer.save_checkpoint(tmp_path / "m.pt")
    scores = load(tmp_path / "m.pt").infer(tmp_path / "d", samples=0, splits="valid").metrics
    assert scores[key] == pytest.approx(second[key], rel=1e-5)
    prov = {**ds.manifest.provenance, "network_cut_effects": {"matrix": [[0.0, 1.0]]}}
    with pytest.raises(DatasetError, match="network_cut_effects.matrix"):
        dataclasses.replace(ds.manifest, provenance=prov)


def test_the_cut_effectome_is_computed_only_where_an_epoch_can_be_read(tmp_path):
    """After the ramps: at a new best of the smoothed objective, every
    ``train.cut_effectome_every`` epochs, the last epoch and where the caller asks (a
    sweep's checkpoints); NaN elsewhere, with the same keys."""
    from mrlfads.data_loaders.testing import make_tiny_dataset
    from mrlfads.training.config import RunConfig
    from mrlfads.training.loop import Trainer

    ds = make_tiny_dataset(tmp_path / "d")
    cfg = RunConfig.for_dataset(ds.manifest, smoke_test=True, overrides={
        "train.epochs": 6, "train.cut_effectome_every": 4})
    trainer = Trainer(cfg, ds)
    cut = "effectome_cut/A_to_B"
    history = [trainer.run_epoch()]  # epoch 1: before the ramps end, never computed
    assert math.isnan(history[0][cut])
    trainer.best_objective = -math.inf  # from here no epoch improves the objective
    history += [trainer.run_epoch() for _ in range(2)]  # epochs 2, 3: nothing asks
    history.append(trainer.run_epoch())  # epoch 4: on the every-4 grid
    history.append(trainer.run_epoch(cut_effectome=True))  # epoch 5: asked for
    history.append(trainer.run_epoch())  # epoch 6: the last
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert [math.isfinite(h[cut]) for h in history] == [False, False, False, True, True, True]
    assert all(set(h) == set(history[0]) for h in history)
    valid = trainer.valid_data
    E = cut_effectome(trainer.model, valid.heldin, valid.ext)  # the last epoch's, by hand
    assert history[-1][cut] == pytest.approx(E[1, 0], rel=1e-5)
    # an epoch that improves the smoothed objective computes it wherever it falls
    trainer = Trainer(cfg.with_overrides({"train.cut_effectome_every": 100}), ds)
    trainer.run_epoch()
    second = trainer.run_epoch()  # the first selectable epoch: a new best by definition
    assert second["ramps_done"] == 1.0 and math.isfinite(second[cut])


def test_the_sweep_report_leads_with_the_cut_effectome():
    from mrlfads.training.sweep import SweepSummary, format_summary

    summary = SweepSummary("/x", "t1", best_metrics={"epoch": 5.0, "objective": 1.0},
                           effectome={"A_to_B": 0.5}, effectome_message_rms={"A_to_B": 2.0})
    text = format_summary(summary)
    cut, rms = text.index("effectome (cut"), text.index("effectome (RMS message")
    assert cut < rms and "A_to_B=0.5" in text[cut:rms] and "A_to_B=2" in text[rms:]
