"""Batches, the map-style dataset and the sharded stream (workers x ranks partition shards)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from mrlfads.data_loaders.testing import make_tiny_dataset
from mrlfads.data_loaders.torch_data import Batch, ShardStream, TrialDataset, make_loader


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    # 40 trials: 30 train in shards of 4 (8 shards: 7 x 4 + 2), 10 valid (3 shards).
    return make_tiny_dataset(tmp_path_factory.mktemp("t") / "d", n_trials=40, ext_dim=2,
                             rows_per_shard=4)


def _ids(batches):
    return [int(t) for b in batches for t in b.trial_id]


def test_batch_splits_heldin_and_heldout_as_in_manifest(ds):
    data = TrialDataset(ds, "train", with_truth=True)
    arr = ds.arrays("train")
    b = data.__getitems__([3, 0, 29])
    assert isinstance(b, Batch) and len(b) == 3
    np.testing.assert_array_equal(b.trial_id.numpy(), arr["trial_id"][[3, 0, 29]])
    for r in ("A", "B"):
        assert b.heldin[r].shape == (3, 12, 3) and b.heldout[r].shape == (3, 12, 1)
        np.testing.assert_array_equal(b.heldin[r].numpy(), arr[f"x/{r}"][[3, 0, 29], :, :3])
        np.testing.assert_array_equal(b.heldout[r].numpy(), arr[f"x/{r}"][[3, 0, 29], :, 3:])
        assert b.ext[r].shape == (3, 12, 2)
    assert b.truth["truth/messages/A->B"].shape == (3, 12, 2)
    assert b.condition == [str(c) for c in arr["condition"][[3, 0, 29]]]
    assert TrialDataset(ds, "train").__getitems__([0]).truth == {}  # truth only when asked


def test_batches_are_writable_copies_of_the_mapped_data(ds):
    data = TrialDataset(ds, "valid")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on non-writable numpy arrays
        b = data.all()
    b.heldin["A"].add_(1000)  # must not write through to the read-only mapped file
    assert ds.arrays("valid")["x/A"].max() < 1000
    moved = b.to("cpu")
    assert moved.heldin["A"].device.type == "cpu" and moved.trial_id.dtype == torch.int64


def test_map_loader_covers_each_trial_once_and_is_seeded(ds):
    def epoch(seed):
        return _ids(make_loader(ds, "train", 8, shuffle=True, seed=seed))
    a = epoch(0)
    assert sorted(a) == sorted(ds.arrays("train")["trial_id"].tolist()) and len(a) == 30
    assert a == epoch(0) and a != epoch(1)
    sizes = [len(b) for b in make_loader(ds, "train", 8, drop_last=True)]
    assert sizes == [8, 8, 8]


def test_stream_partitions_shards_across_ranks_and_workers(ds):
    train = sorted(ds.arrays("train")["trial_id"].tolist())
    seen = []
    for rank in range(2):
        loader = make_loader(ds, "train", 3, streaming=True, num_workers=2, rank=rank, world_size=2)
        seen += _ids(loader)
    assert sorted(seen) == train  # every trial exactly once across 2 ranks x 2 workers
    streams = [ShardStream(ds, "train", rank=r, world_size=3) for r in range(3)]
    owned = [{s.path for s in st.my_shards()} for st in streams]
    assert sum(len(o) for o in owned) == 8 and set.union(*owned) == {s.path for s in ds.manifest.shards_for("train")}
    assert [len(o) for o in owned] == [3, 3, 2]  # round robin: disjoint by construction
    assert not owned[0] & owned[1]


def test_stream_shuffles_by_seed_and_epoch(ds):
    stream = ShardStream(ds, "train", 5, seed=0)
    first = _ids(stream)
    assert _ids(ShardStream(ds, "train", 5, seed=0)) == first
    stream.set_epoch(1)
    second = _ids(stream)
    assert second != first and sorted(second) == sorted(first)
    ordered = _ids(ShardStream(ds, "train", 5, shuffle=False))
    assert ordered == ds.arrays("train")["trial_id"].tolist()
    assert [len(b) for b in ShardStream(ds, "train", 7, drop_last=True)] == [7] * 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning needs an accelerator")
def test_pin_memory_and_to_device(ds):
    b = next(iter(make_loader(ds, "train", 4, pin_memory=True)))
    assert b.heldin["A"].is_pinned()
    assert b.to("cuda").heldout["B"].device.type == "cuda"
