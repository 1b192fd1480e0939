"""Arrow dataset format: round trips, manifest, split-selective and zero-copy reads, safe writes."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mrlfads.data_loaders import schema, writer
from mrlfads.data_loaders.errors import DatasetError
from mrlfads.data_loaders.manifest import DatasetManifest
from mrlfads.data_loaders.reader import ArrowDataset
from mrlfads.data_loaders.testing import MSG_DIM, make_tiny_dataset
from mrlfads.data_loaders.writer import make_split, write_dataset


def _inputs(n=10, T=6, seed=0):
    rng = np.random.default_rng(seed)
    x = {"V1": rng.poisson(2.0, (n, T, 5)).astype(np.float32),
         "M1": rng.poisson(1.0, (n, T, 3)).astype(np.float32)}
    kw = {"name": "t", "regions": [("V1", 4, 1), ("M1", 3, 0)], "obs_model": "poisson",
              "bin_width_s": 0.02, "ic_enc_seq_len": 2, "x": x,
              "split": np.where(np.arange(n) < 7, "train", "valid"), "trial_id": np.arange(100, 100 + n),
              "condition": [f"k{i % 3}" for i in range(n)]}
    return kw


def test_column_names_and_region_validation():
    assert schema.x_col("V1") == "x/V1"
    assert schema.ext_col("V1") == "ext/V1"
    assert schema.truth_rates_col("A") == "truth/rates/A"
    assert schema.truth_messages_col("A", "B") == "truth/messages/A->B"
    assert schema.parse_message_col("truth/messages/A->B") == ("A", "B")
    assert schema.truth_inputs_col("A") == "truth/inputs/A"
    assert schema.task_col("reach") == "task/reach"
    for bad in ("1A", "A-B", "", "A B", "é"):
        with pytest.raises(DatasetError, match="not a valid region name"):
            schema.x_col(bad)


def test_roundtrip_values_order_and_manifest(tmp_path):
    kw = _inputs()
    m = write_dataset(tmp_path / "d", rows_per_shard=3, task={"speed": np.arange(10.0)}, **kw)
    # 7 train -> 3 shards (3,3,1), 3 valid -> 1 shard; each shard holds one split.
    assert [(s.rows, s.splits) for s in m.shards] == [(3, ("train",)), (3, ("train",)),
                                                      (1, ("train",)), (3, ("valid",))]
    assert m.splits == {"train": 7, "valid": 3} and m.n_trials == 10
    assert m.comm_matrix is None and m.task == ("task/speed",)  # no message truth: unknown
    on_disk = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert on_disk["format_version"] == 1
    assert DatasetManifest.from_dict(on_disk) == m
    ds = ArrowDataset.open(tmp_path / "d")
    assert ds.manifest == m
    ds.validate()
    for split, rows in (("train", slice(0, 7)), ("valid", slice(7, 10))):
        a = ds.arrays(split)
        np.testing.assert_array_equal(a["x/V1"], kw["x"]["V1"][rows])
        np.testing.assert_array_equal(a["x/M1"], kw["x"]["M1"][rows])
        np.testing.assert_array_equal(a["trial_id"], np.arange(100, 110)[rows])
        assert list(a["condition"]) == kw["condition"][rows]
        np.testing.assert_array_equal(a["task/speed"], np.arange(10.0)[rows])
    everything = ds.arrays()
    assert everything["x/V1"].shape == (10, 6, 5)
    assert list(everything["split"]) == ["train"] * 7 + ["valid"] * 3


def test_single_shard_read_is_zero_copy_memory_map(tmp_path):
    ds = make_tiny_dataset(tmp_path / "d")  # valid: 6 trials in one shard
    a = ds.arrays("valid", ["x/A", "truth/messages/A->B"])
    assert list(a) == ["x/A", "truth/messages/A->B"]
    x = a["x/A"]
    assert x.shape == (6, 12, 4) and x.dtype == np.float32
    assert not x.flags.writeable and not x.flags.owndata  # a view of the mapped file
    assert a["truth/messages/A->B"].shape == (6, 12, MSG_DIM)
    assert ds.manifest.comm_matrix == ((0, 0), (MSG_DIM, 0))  # [dst][src]: A -> B only


def test_reader_skips_shards_of_other_splits(tmp_path):
    ds = make_tiny_dataset(tmp_path / "d")
    valid_shards = ds.manifest.shards_for("valid")
    assert len(valid_shards) == 1
    os.remove(tmp_path / "d" / valid_shards[0].path)
    assert ds.arrays("train", ["x/B"])["x/B"].shape == (18, 12, 4)  # never touched the valid shard
    with pytest.raises(DatasetError, match="missing"):
        ds.arrays("valid")


def test_parquet_shards_roundtrip_locally(tmp_path):
    kw = _inputs()
    m = write_dataset(tmp_path / "p", shard_format="parquet", **kw)
    assert all(s.path.endswith(".parquet") for s in m.shards)
    ds = ArrowDataset.open(tmp_path / "p")
    ds.validate()
    np.testing.assert_array_equal(ds.arrays("train", ["x/M1"])["x/M1"], kw["x"]["M1"][:7])


def test_make_split_is_deterministic():
    a, b = make_split(50, 0.2, seed=3), make_split(50, 0.2, seed=3)
    assert list(a) == list(b) and (a == "valid").sum() == 10
    assert list(make_split(50, 0.2, seed=4)) != list(a)


def test_extra_files_and_provenance(tmp_path):
    blob = b"\x00weights\x01" * 100
    m = write_dataset(tmp_path / "d", extra_files={"weights.npz": blob},
                      provenance={"generator": "test", "seed": 1}, **_inputs())
    ds = ArrowDataset.open(tmp_path / "d")
    assert ds.read_extra("weights.npz") == blob
    assert m.extras[0].path == "extras/weights.npz" and m.extras[0].bytes == len(blob)
    assert ds.manifest.provenance == {"generator": "test", "seed": 1}
    (tmp_path / "d" / "extras" / "weights.npz").write_bytes(b"tampered")
    with pytest.raises(DatasetError, match="sha256"):
        ds.read_extra("weights.npz")


def test_time_axis_counts_from_the_ingest_alignment_event(tmp_path):
    """`mrlfads ingest --align go_cue_time --window -1.0:1.0` records the window and the
    event: bin 0 starts 1 s before the cue. Binned from each trial's start, or simulated,
    bin 0 is the trial's start."""
    aligned = write_dataset(tmp_path / "a", provenance={
        "generator": "mrlfads ingest", "window_s": [-1.0, 1.0],
        "options": {"align": "go_cue_time", "window": [-1.0, 1.0]}}, **_inputs())
    assert aligned.time_axis == (-1.0, "go_cue_time")
    from_start = write_dataset(tmp_path / "s", provenance={
        "generator": "mrlfads ingest", "window_s": [0.0, 2.5], "options": {"align": None}},
        **_inputs())
    assert from_start.time_axis == (0.0, "trial start")
    assert write_dataset(tmp_path / "sim", **_inputs()).time_axis == (0.0, "trial start")


def test_refuses_to_overwrite_without_flag(tmp_path):
    make_tiny_dataset(tmp_path / "d")
    with pytest.raises(DatasetError, match="already exists.*pass --overwrite"):
        make_tiny_dataset(tmp_path / "d")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty"):
        make_tiny_dataset(tmp_path / "other")


def test_overwrite_replaces_and_then_removes_old_shards(tmp_path):
    old = make_tiny_dataset(tmp_path / "d", seed=0)
    old_paths = {s.path for s in old.manifest.shards}
    new = make_tiny_dataset(tmp_path / "d", seed=1, n_trials=8, overwrite=True)
    new_paths = {s.path for s in new.manifest.shards}
    assert not old_paths & new_paths  # new names never clobber the old dataset's shards
    on_disk = {f"shards/{p}" for p in os.listdir(tmp_path / "d" / "shards")}
    assert on_disk == new_paths  # old ones deleted once the new manifest was in place
    new.validate()
    assert new.manifest.n_trials == 8


def test_crash_during_overwrite_leaves_old_dataset_intact(tmp_path, monkeypatch):
    old = make_tiny_dataset(tmp_path / "d", seed=0)
    before = old.arrays("train")["x/A"].copy()
    real_put, calls = writer._put, []

    def crash_on_second_shard(fs, path, data):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        real_put(fs, path, data)

    monkeypatch.setattr(writer, "_put", crash_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        make_tiny_dataset(tmp_path / "d", seed=1, overwrite=True)
    again = ArrowDataset.open(tmp_path / "d")
    again.validate()
    np.testing.assert_array_equal(again.arrays("train")["x/A"], before)
    # the killed write's first shard and a temporary file are left beside the old dataset;
    # the next overwrite that finishes removes them with the old shards, and nothing else
    (tmp_path / "d" / "shards" / ".part-00009.arrow.tmp-4242-a1b2c3").write_bytes(b"partial")
    (tmp_path / "d" / "notes.txt").write_text("the user's")
    leftovers = set(os.listdir(tmp_path / "d" / "shards")) - {
        s.path.split("/")[1] for s in old.manifest.shards}
    assert len(leftovers) == 2
    monkeypatch.setattr(writer, "_put", real_put)
    new = make_tiny_dataset(tmp_path / "d", seed=1, overwrite=True)
    on_disk = {f"shards/{p}" for p in os.listdir(tmp_path / "d" / "shards")}
    assert on_disk == {s.path for s in new.manifest.shards}
    assert (tmp_path / "d" / "notes.txt").read_text() == "the user's"


def test_crash_before_manifest_leaves_no_dataset(tmp_path, monkeypatch):
    real_put = writer._put

    def crash_at_manifest(fs, path, data):
        if path.endswith("dataset.json"):
            raise KeyboardInterrupt("simulated crash")
        real_put(fs, path, data)

    monkeypatch.setattr(writer, "_put", crash_at_manifest)
    with pytest.raises(KeyboardInterrupt):
        make_tiny_dataset(tmp_path / "d")
    assert len(os.listdir(tmp_path / "d" / "shards")) == 4  # every shard written...
    with pytest.raises(DatasetError, match="not an mrlfads dataset"):
        ArrowDataset.open(tmp_path / "d")  # ...but without a manifest it is not a dataset


def test_size_one_axes_with_odd_strides_roundtrip(tmp_path):
    kw = _inputs()
    inputs = np.arange(10 * 6, dtype=np.float32).reshape(10, 1, 6).transpose(0, 2, 1)  # (10, 6, 1)
    odd = np.lib.stride_tricks.as_strided(inputs, strides=(24, 4, 999))  # numpy: still "contiguous"
    write_dataset(tmp_path / "d", truth={"truth/inputs/V1": odd}, **kw)
    got = ArrowDataset.open(tmp_path / "d").arrays(None, ["truth/inputs/V1"])["truth/inputs/V1"]
    np.testing.assert_array_equal(got, inputs)
