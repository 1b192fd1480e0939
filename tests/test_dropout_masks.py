"""Dropout masks from the compiled generator (mrlfads/native/dropout.cpp): F.dropout's law,
reproducible from torch's seed, independent of the thread count, and used by the model."""
from __future__ import annotations

import math

import pytest
import torch

from mrlfads.config import ModelConfig, RegionConfig
from mrlfads.model import MRLFADS
from tests.conftest import require_native_loop

N = 1_000_003  # odd, so the two threads' ranges differ in length


@pytest.fixture(scope="module")
def ops():
    return require_native_loop()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", [0.05, 0.3, 0.8])
def test_mask_follows_dropouts_law(ops, dtype, p):
    mask = ops.dropout_mask([N], p, 12345, dtype)
    assert mask.dtype == dtype and mask.shape == (N,)
    scale = torch.tensor(1.0, dtype=dtype) / torch.tensor(1.0 - p, dtype=dtype)
    assert set(mask.unique().tolist()) == {0.0, scale.item()}  # dropped or scaled, nothing else
    kept = (mask > 0).double().mean().item()
    assert abs(kept - (1 - p)) < 5 * math.sqrt(p * (1 - p) / N)  # Bernoulli(1 - p), 5 sigma
    assert abs(mask.double().mean().item() - 1.0) < 5 * math.sqrt(p / (1 - p) / N)  # E = 1


def test_no_dropout_keeps_everything(ops):
    assert torch.equal(ops.dropout_mask([4097], 0.0, 3, torch.float32), torch.ones(4097))


def test_neighbouring_draws_are_uncorrelated(ops):
    """Element k and k+1 (one stream, adjacent counters), and two seeds, show no correlation."""
    a = ops.dropout_mask([N], 0.5, 1, torch.float64)
    b = ops.dropout_mask([N], 0.5, 2, torch.float64)
    bound = 5 / math.sqrt(N)
    assert abs(torch.corrcoef(torch.stack([a[:-1], a[1:]]))[0, 1].item()) < bound
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < bound


def test_same_seed_same_mask_any_thread_count(ops):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.dropout_mask([N], 0.3, 77, torch.float32)
        torch.set_num_threads(2)
        two = ops.dropout_mask([N], 0.3, 77, torch.float32)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    assert not torch.equal(one, ops.dropout_mask([N], 0.3, 78, torch.float32))


def test_rejects_p_of_one(ops):
    with pytest.raises(RuntimeError, match=r"p=1.*\[0, 1\)"):
        ops.dropout_mask([8], 1.0, 0, torch.float32)


def test_model_masks_follow_torch_seed(ops):
    """The model draws its masks here, seeded from torch's generator: manual_seed (and so a
    checkpoint's RNG state) reproduces them, and the seed advances between draws."""
    cfg = ModelConfig(regions=(RegionConfig("A", 4),), obs_model="poisson", ic_enc_seq_len=2,
                      dropout=0.25)
    model = MRLFADS(cfg).train()
    like = torch.zeros(1)
    torch.manual_seed(5)
    first, second = model._drop_masks((64, 32), like), model._drop_masks((64, 32), like)
    torch.manual_seed(5)
    assert torch.equal(model._drop_masks((64, 32), like), first)
    assert not torch.equal(first, second)
    torch.manual_seed(5)
    seed = int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64))
    assert torch.equal(ops.dropout_mask([64, 32], 0.25, seed, torch.float32), first)
