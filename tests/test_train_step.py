"""The training step object (training/step.py): on the CPU it runs the same body eagerly
that CUDA captures as a graph, so these tests hold that body to the plain step the Trainer
used to write out: the same numbers over 20 steps with the learning rate, the ramp weights,
dropout and the coordinated-dropout rate changed midway. The CUDA half (graph against eager)
is in tests/test_cuda.py and skips without a GPU."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from mrlfads.config_utils import ConfigError
from mrlfads.data_loaders.testing import make_tiny_dataset
from mrlfads.loss import compute_loss
from mrlfads.model import MRLFADS
from mrlfads.training import checkpoint as ckpt
from mrlfads.training.config import RunConfig
from mrlfads.training.data import load_split
from mrlfads.training.loop import NonFiniteLossError, Trainer
from mrlfads.training.masks import training_inputs
from mrlfads.training.step import WEIGHT_NAMES, TrainStep, wants_graph

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny")


def smoke(ds, **overrides):
    return RunConfig.for_dataset(ds.manifest, uri=ds.uri, smoke_test=True, overrides=overrides)


def plain_step(model, opt, cfg, heldin, heldout, ext, epoch, cd_rate):
    """The step as the Trainer wrote it out before it had a step object: float weights of
    the epoch, float lr in the param groups, the float cd rate; the reference here."""
    Tp = heldin[0].shape[1] - cfg.model.ic_enc_seq_len
    shown, weight = training_inputs(heldin, Tp, cd_rate, cfg.train.sv_rate, None)
    terms = compute_loss(model(shown, ext, sample=True), heldin, heldout, cfg.loss, epoch,
                         recon_weight=weight)
    opt.zero_grad(set_to_none=True)
    terms.total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    opt.step()
    return terms.scalars()


def _adamw(model, cfg):
    t = cfg.train
    return torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps,
                             weight_decay=t.weight_decay)


@pytest.mark.parametrize("price", [0.0, 0.5])
def test_the_step_object_equals_the_plain_step_over_20_steps_with_changes_midway(tiny, price):
    """With the pathway price at 0 the step skips the drive norms (its sparsity terms are
    0, every other number the same); priced, it computes them as the plain step does."""
    # ramps 0+3: the weights differ between epoch 0 (1/4) and epoch 2 (3/4)
    ramps = {f"loss.{k}.{f}": v for k in ("ic_ramp", "co_ramp", "com_ramp", "l2_ramp")
             for f, v in (("start", 0), ("length", 3))}
    cfg = smoke(tiny, **ramps, **{"train.cd_rate": 0.3, "model.dropout": 0.2,
                                  "train.weight_decay": 0.01, "loss.pathway_sparsity": price})
    data = load_split(tiny, "train", CPU)
    torch.manual_seed(0)
    ref = MRLFADS(cfg.model)
    ref.init_from_data(*data.neuron_stats(counts=cfg.model.obs_model == "poisson"))
    model = copy.deepcopy(ref)
    initial = {k: v.clone() for k, v in ref.state_dict().items()}
    ref_opt, opt = _adamw(ref, cfg), _adamw(model, cfg)
    step = TrainStep(model, opt, cfg, CPU, graph=False)
    step.set_cd_rate(0.3)
    n = data.n_trials
    # full batches of 8 and partial ones of 5 and 3, in a fixed order
    batches = [torch.arange(i, i + (8 if i % 3 else 5)) % n for i in range(20)]
    assert {len(b) for b in batches} == {5, 8}

    def change(lr_model, opt_or_step):  # at step 10: new lr, dropout; cd 0.3 -> 0.1
        lr_model.set_dropout(0.35)
        if isinstance(opt_or_step, TrainStep):
            opt_or_step.set_lr(3e-3)
            opt_or_step.set_cd_rate(0.1)
        else:
            for group in opt_or_step.param_groups:
                group["lr"] = 3e-3

    torch.manual_seed(123)
    ref.train()
    expected = []
    for i, idx in enumerate(batches):
        if i == 10:
            change(ref, ref_opt)
        epoch, cd = (0, 0.3) if i < 10 else (2, 0.1)
        heldin, heldout, ext = data.batch(idx)
        expected.append(plain_step(ref, ref_opt, cfg, heldin, heldout, ext, epoch, cd))

    torch.manual_seed(123)
    model.train()
    got = []
    for i, idx in enumerate(batches):
        if i == 10:
            change(model, step)
        step.set_epoch(0 if i < 10 else 2)
        step.start_epoch()
        step.run(data, idx, None)
        got.append(step.epoch_means())
    assert step.weights.tolist() != [0.0] * len(WEIGHT_NAMES)
    for i, (a, b) in enumerate(zip(expected, got)):
        assert a.keys() == b.keys()
        for key in a:
            if key.startswith("sparsity/"):
                assert a[key] > 0.0  # the plain step computes the drive norms either way
                if price == 0.0:
                    assert b[key] == 0.0, (i, key)
                    continue
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-5), (i, key)
    for (name, p), q in zip(ref.named_parameters(), model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    # and the runs did change the weights (the comparison is not of two untouched models)
    assert not torch.equal(model.gen_w_hh, initial["gen_w_hh"])


def test_the_ramp_weights_the_step_holds_are_the_epochs(tiny):
    cfg = smoke(tiny, **{"loss.com_ramp.start": 0, "loss.com_ramp.length": 3,
                         "loss.kl_co_scale": 1.0, "loss.kl_com_ratio": 2.0})
    trainer = Trainer(cfg, tiny)
    trainer.step.set_epoch(1)  # rho = (1 + 1 - 0) / (3 + 1) = 0.5; b_m = 1 / 2
    assert trainer.step.weights[WEIGHT_NAMES.index("kl_com")].item() == pytest.approx(0.25)


def test_the_plateau_schedule_and_pbt_write_the_one_lr_tensor(tiny, tmp_path):
    trainer = Trainer(smoke(tiny, **{"train.lr": 1e-2}), tiny)
    lr = trainer.step.lr
    assert all(g["lr"] is lr for g in trainer.optimizer.param_groups)
    trainer.scheduler._reduce_lr(0)  # what ReduceLROnPlateau does after `patience` epochs
    assert lr.item() == pytest.approx(1e-2 * trainer.cfg.train.plateau_factor)
    assert trainer.optimizer.param_groups[0]["lr"] is lr
    trainer.apply_hparams({"train.lr": 2e-4})
    assert lr.item() == pytest.approx(2e-4)

    trainer.run_epoch()
    trainer.save_checkpoint(tmp_path / "c.pt")
    saved = ckpt.load(tmp_path / "c.pt", map_location="cpu")
    # checkpoints keep a float lr (the format they always had)
    assert all(type(g["lr"]) is float for g in saved["optimizer"]["param_groups"])
    own = smoke(tiny, **{"train.lr": 7e-4})
    child = Trainer.from_checkpoint(tmp_path / "c.pt", tiny, run_cfg=own)
    assert all(g["lr"] is child.step.lr for g in child.optimizer.param_groups)
    assert child.step.lr.item() == pytest.approx(7e-4)
    resumed = Trainer.from_checkpoint(tmp_path / "c.pt", tiny)  # a plain resume keeps 2e-4
    assert resumed.step.lr.item() == pytest.approx(2e-4)


def test_lr_zero_leaves_the_weights_where_they_are(tiny):
    """The lr the step reads is the tensor: set to 0 in place, a step moves nothing."""
    trainer = Trainer(smoke(tiny), tiny)
    trainer.run_epoch()
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.step.set_lr(0.0)
    trainer.train_one_epoch()
    for a, p in zip(before, trainer.model.parameters()):
        assert torch.equal(a, p)


def test_a_non_finite_step_is_named_once_per_epoch_by_its_own_terms(tiny):
    # the weighted L2 term overflows float32 in the first step; every later step's terms
    # are NaN from the spoiled weights, and only the first step's are named
    trainer = Trainer(smoke(tiny, **{"loss.l2_scale": 1e39}), tiny)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1 \(non-finite terms: loss\)"):
        trainer.train_one_epoch()
    assert trainer.step.first_nonfinite() == ["loss"]
    means = trainer.step.epoch_means()
    # every term is NaN but the sparsity terms, which a step without a pathway price skips
    assert all(math.isnan(v) for k, v in means.items() if not k.startswith("sparsity/"))
    assert [means[k] for k in means if k.startswith("sparsity/")] == [0.0, 0.0]


def test_cuda_graph_setting(tiny):
    assert wants_graph("auto", torch.device("cuda")) and not wants_graph("auto", CPU)
    assert not wants_graph(False, torch.device("cuda")) and wants_graph(True, CPU)
    with pytest.raises(ConfigError, match="train.cuda_graph='maybe' must be auto, true or false"):
        smoke(tiny, **{"train.cuda_graph": "maybe"})
    cfg = smoke(tiny, **{"train.cuda_graph": True, "train.device": "cpu"})
    with pytest.raises(ConfigError, match="needs a CUDA device.*use auto"):
        Trainer(cfg, tiny)
    assert Trainer(smoke(tiny, **{"train.device": "cpu"}), tiny).step.graph is False


def test_a_checkpoint_from_a_graphed_cuda_run_resumes_on_the_cpu(tiny, tmp_path):
    """AdamW's param groups travel in the checkpoint with their ``capturable`` flag; a CUDA
    run's (True) would make the CPU's AdamW refuse to step. The loaded flag is replaced."""
    trainer = Trainer(smoke(tiny), tiny)
    trainer.run_epoch()
    state = trainer.state_dict()
    for group in state["optimizer"]["param_groups"]:
        group["capturable"] = True  # what a graphed CUDA run saves
    ckpt.save(state, tmp_path / "gpu.pt")
    resumed = Trainer.from_checkpoint(tmp_path / "gpu.pt", tiny, device="cpu")
    assert all(g["capturable"] is False for g in resumed.optimizer.param_groups)
    assert all(g["lr"] is resumed.step.lr for g in resumed.optimizer.param_groups)
    assert math.isfinite(resumed.run_epoch()["train/loss"])

