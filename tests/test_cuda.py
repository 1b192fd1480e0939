"""The model and the training loop on CUDA: the same numbers as on the CPU, and checkpoints
that move between devices. Skipped where no GPU is visible (CI); run by hand on a GPU
machine with ``pytest tests/test_cuda.py`` (docs/PERFORMANCE.md records the last run)."""
from __future__ import annotations

import math

import pytest
import torch

from mrlfads.config import LossConfig
from mrlfads.data_loaders.testing import make_tiny_dataset
from mrlfads.loss import compute_loss
from mrlfads.oracle import oracle_forward
from mrlfads.training import checkpoint as ckpt
from mrlfads.training.config import RunConfig
from mrlfads.training.loop import Trainer
from tests.test_model_oracle import TAU, B, assert_same_outputs, build, fast, run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _to(model, heldin, heldout, ext, device):
    move = (lambda xs: [x.to(device) if x is not None else None for x in xs])
    return model.to(device), move(heldin), move(heldout), move(ext)


@pytest.mark.parametrize("case", ["poisson", "gaussian", "generator", "no_inputs"])
def test_cuda_fast_path_matches_cpu_and_the_oracle_in_float64(case):
    model, heldin, heldout, ext = build(case)
    T = heldin[0].shape[1]
    noise = model.draw_noise(B, T - TAU, heldin[0])
    _, loss_cpu, grad_cpu = run(fast, model, heldin, heldout, ext, sample=True, noise=noise)

    model, heldin, heldout, ext = _to(model, heldin, heldout, ext, "cuda")
    noise = {k: v.to("cuda") for k, v in noise.items()}
    out_gpu, loss_gpu, grad_gpu = run(fast, model, heldin, heldout, ext, sample=True, noise=noise)
    out_orc, _, grad_orc = run(oracle_forward, model, heldin, heldout, ext, sample=True,
                               noise=noise)
    assert_same_outputs(out_gpu, out_orc)
    torch.testing.assert_close(loss_gpu.total.cpu(), loss_cpu.total, rtol=1e-9, atol=1e-9)
    for name in grad_cpu:
        torch.testing.assert_close(grad_gpu[name].cpu(), grad_cpu[name], rtol=1e-7, atol=1e-7,
                                   msg=name)
        torch.testing.assert_close(grad_gpu[name], grad_orc[name], rtol=1e-5, atol=1e-5, msg=name)


def test_bfloat16_autocast_trains_with_a_loss_close_to_float32():
    model, heldin, heldout, ext = _to(*build("gaussian"), "cuda")
    model, heldin, heldout = model.float(), [x.float() for x in heldin], [x.float() for x in heldout]
    ext = [x.float() if x is not None else None for x in ext]
    ref = compute_loss(model(heldin, ext, sample=False), heldin, heldout, LossConfig(),
                       epoch=1000).total
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(heldin, ext, sample=False)
    amp = compute_loss(out, heldin, heldout, LossConfig(), epoch=1000).total
    assert math.isfinite(float(amp)) and amp.dtype == torch.float32
    assert abs(float(amp) - float(ref)) <= 0.05 * abs(float(ref))
    amp.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_training_on_cuda_then_the_checkpoint_loads_on_the_cpu_with_the_same_outputs(tmp_path):
    ds = make_tiny_dataset(tmp_path / "tiny")
    cfg = RunConfig.for_dataset(ds.manifest, uri=ds.uri, smoke_test=True)
    trainer = Trainer(cfg, ds, device="cuda")
    assert next(trainer.model.parameters()).is_cuda
    metrics = [trainer.run_epoch() for _ in range(3)]
    assert all(math.isfinite(m["train/loss"]) and math.isfinite(m["objective"]) for m in metrics)
    trainer.save_checkpoint(tmp_path / "c.pt")

    model, _, _ = ckpt.load_model(tmp_path / "c.pt")  # map_location cpu, weights_only
    assert not next(model.parameters()).is_cuda
    heldin = trainer.valid_data.heldin
    trainer.model.eval()
    with torch.no_grad():
        gpu = trainer.model(heldin, sample=False)
        cpu = model([x.cpu() for x in heldin], sample=False)
    for a, b in zip(gpu.readout, cpu.readout):
        # float32 on two devices, through 8 recurrent steps: rounding, not a bug, above 1e-4
        torch.testing.assert_close(a.cpu(), b, rtol=1e-3, atol=1e-3)

    resumed = Trainer.from_checkpoint(tmp_path / "c.pt", ds, device="cuda")
    assert resumed.epoch == 3 and math.isfinite(resumed.run_epoch()["train/loss"])


# ------------------------------------------------------------------ the captured step
def _graph_pair(tmp_path, **overrides):
    """Two Trainers alike but for train.cuda_graph: the same seed, so the same weights."""
    ds = make_tiny_dataset(tmp_path / "tiny")
    settings = {"train.cd_rate": 0.2, "model.dropout": 0.1, "train.device": "cuda", **overrides}
    make = lambda graph: Trainer(RunConfig.for_dataset(
        ds.manifest, uri=ds.uri, smoke_test=True,
        overrides={**settings, "train.cuda_graph": graph}), ds)
    return make(False), make(True)


def _run_50_steps(trainer, tmp_path, name):
    """17 epochs of 3 steps (batches of 8, 8 and 2): at epoch 6 a PBT-style restore of its
    own epoch-4 checkpoint, then a new lr, dropout and cd rate; the ramps move throughout."""
    torch.manual_seed(11)
    for epoch in range(17):
        if epoch == 4:
            trainer.save_checkpoint(tmp_path / f"{name}.pt")
        if epoch == 6:
            trainer.load_state_dict(ckpt.load(tmp_path / f"{name}.pt", map_location="cuda"))
            trainer.apply_hparams({"train.lr": 2e-3, "model.dropout": 0.3, "train.cd_rate": 0.1})
        trainer.run_epoch()
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_the_graphed_step_matches_the_eager_one_within_1e5_over_50_steps(tmp_path):
    eager, graph = _graph_pair(tmp_path)
    assert eager.step.graph is False and graph.step.graph is True
    want = _run_50_steps(eager, tmp_path, "eager")
    got = _run_50_steps(graph, tmp_path, "graph")
    # each shape (8 and 2) captured after 3 eager steps, again after the restore
    assert graph.step.captures == 4
    for (name, _), a, b in zip(eager.model.named_parameters(), want, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5, msg=name)
    for a, b in zip(eager.history, graph.history):
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-5)


def test_an_lr_set_after_capture_is_what_the_replayed_step_uses(tmp_path):
    _, graph = _graph_pair(tmp_path, **{"train.cd_rate": 0.0})
    for _ in range(5):
        graph.run_epoch()
    assert graph.step.captures == 2
    before = [p.detach().clone() for p in graph.model.parameters()]
    graph.apply_hparams({"train.lr": 1e-30})  # written in place: the graphs stay
    graph.train_one_epoch()
    assert graph.step.captures == 2
    for a, p in zip(before, graph.model.parameters()):
        torch.testing.assert_close(p.detach(), a, rtol=0, atol=1e-20)


def test_a_cpu_checkpoint_resumes_in_a_graphed_cuda_run(tmp_path):
    """The CPU run's AdamW is not capturable and keeps its step counts on the CPU; the
    graphed run takes the flag and the counts over (TrainStep.adopt_loaded_optimizer)."""
    ds = make_tiny_dataset(tmp_path / "tiny")
    cfg = RunConfig.for_dataset(ds.manifest, uri=ds.uri, smoke_test=True)
    cpu = Trainer(cfg, ds, device="cpu")
    cpu.run_epoch()
    cpu.save_checkpoint(tmp_path / "c.pt")
    gpu = Trainer.from_checkpoint(tmp_path / "c.pt", ds, device="cuda")
    assert gpu.step.graph and all(g["capturable"] for g in gpu.optimizer.param_groups)
    metrics = [gpu.run_epoch() for _ in range(5)]
    assert gpu.step.captures >= 1
    assert all(math.isfinite(m["train/loss"]) for m in metrics)


def test_loop_operators_pass_opcheck_on_cuda():
    """On CUDA the registered loop operators run the Python loop: their fake shapes,
    autograd registration and AOT tracing agree with it there too."""
    from mrlfads import loop_ops
    from mrlfads.loop_io import to_list
    from tests.test_recurrence import loop_inputs

    spec, inputs, weights = loop_inputs(False, True, True, True)
    move = lambda nt: type(nt)(*(None if t is None else t.detach().cuda().requires_grad_(
        t.requires_grad) for t in nt))
    inputs, weights = move(inputs), move(weights)
    torch.library.opcheck(loop_ops.recurrence_op,
                          (to_list(inputs, inputs.g0), to_list(weights, inputs.g0)),
                          spec.scalars())
