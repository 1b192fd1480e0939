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
