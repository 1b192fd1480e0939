"""A dataset folder is untrusted input: its manifest may name any path, its folder may hold
the user's own files or a killed run's leftovers. None of it may make mrlfads read, hash or
delete a file outside the dataset, or delete a file the dataset did not write."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pyarrow.fs as pafs
import pytest

from mrlfads.data_loaders import fs as dfs
from mrlfads.data_loaders.errors import DatasetError, IngestError
from mrlfads.data_loaders.nwb import IngestOptions, ingest
from mrlfads.data_loaders.nwb.testing import build_nwb
from mrlfads.data_loaders.reader import ArrowDataset
from mrlfads.data_loaders.testing import make_tiny_dataset
from mrlfads.data_loaders.writer import write_dataset
from mrlfads.training.cli import main


@pytest.fixture
def tiny(tmp_path):
    make_tiny_dataset(tmp_path / "d")
    return tmp_path / "d"


def _edit(root, fn):
    data = json.loads((root / "dataset.json").read_text())
    fn(data)
    (root / "dataset.json").write_text(json.dumps(data))


def _outside_copy_of_shard(tiny):
    """A valid shard file outside the dataset, and its sha256: the attacker's best case,
    a manifest whose checksum matches the file it points at."""
    outside = tiny.parent / "outside.arrow"
    outside.write_bytes((tiny / "shards" / "part-00000.arrow").read_bytes())
    return outside, hashlib.sha256(outside.read_bytes()).hexdigest()


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.arrow", "shards/../../outside.arrow",
                                  "shards/notes.txt", "dataset.json", "shards/part-1.arrow"])
def test_manifest_shard_path_outside_the_writer_pattern_is_refused(tiny, path):
    _, digest = _outside_copy_of_shard(tiny)

    def point(d):
        d["shards"][0].update(path=path, sha256=digest)
    _edit(tiny, point)
    with pytest.raises(DatasetError, match=r"key 'shards\[0\]\.path'.*not a shard name") as e:
        ArrowDataset.open(tiny)
    assert digest[:8] not in str(e.value)


@pytest.mark.parametrize("path", ["/etc/passwd", "../x", "extras/../../x", "extras/sub/x",
                                  "extras/.."])
def test_manifest_extra_path_outside_extras_is_refused(tmp_path, path):
    write_dataset(tmp_path / "e", name="e", regions=[("A", 2, 0)], obs_model="poisson",
                  bin_width_s=0.01, ic_enc_seq_len=1, x={"A": np.ones((2, 3, 2))}, split="train",
                  extra_files={"w.npz": b"weights"})
    _edit(tmp_path / "e", lambda d: d["extras"][0].update(path=path))
    with pytest.raises(DatasetError, match=r"key 'extras\[0\]\.path'"):
        ArrowDataset.open(tmp_path / "e")


def test_reader_refuses_a_shard_that_links_outside_the_dataset(tiny):
    """A name the manifest allows, but a symlink out: the reader's own check stops it
    before the file is opened or hashed, so no digest of it can appear anywhere."""
    outside, digest = _outside_copy_of_shard(tiny)
    shard = tiny / "shards" / "part-00000.arrow"
    shard.unlink()
    shard.symlink_to(outside)
    _edit(tiny, lambda d: d["shards"][0].update(sha256=digest))
    ds = ArrowDataset.open(tiny)
    with pytest.raises(DatasetError, match="outside the dataset directory") as e:
        ds.arrays("train")
    assert digest[:8] not in str(e.value)
    with pytest.raises(DatasetError, match="outside the dataset directory"):
        ds.validate()


def test_inside_check_for_object_store_paths():
    s3 = pafs.S3FileSystem(anonymous=True, region="us-east-1")
    assert dfs.inside(s3, "bucket/ds", "bucket/ds/shards/part-00000.parquet")
    assert not dfs.inside(s3, "bucket/ds", "bucket/ds/shards/../../other/part-00000.parquet")
    assert not dfs.inside(s3, "bucket/ds", "bucket/ds2/shards/part-00000.parquet")
    assert not dfs.inside(s3, "bucket/ds", "bucket/ds")


def test_checksum_error_never_prints_the_files_digest(tiny):
    shard = tiny / "shards" / "part-00000.arrow"
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    digest = hashlib.sha256(bytes(raw)).hexdigest()
    with pytest.raises(DatasetError, match="sha256 does not match") as e:
        ArrowDataset.open(tiny).validate()
    assert digest[:6] not in str(e.value)


def _users_folder(root):
    """A folder that was never a dataset but has the dataset's subfolder names."""
    (root / "shards").mkdir(parents=True)
    (root / "extras" / "photos").mkdir(parents=True)
    (root / "shards" / "my_notes.txt").write_text("mine")
    (root / "extras" / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_overwrite_refused_where_there_is_no_dataset_and_nothing_is_deleted(tmp_path):
    files = _users_folder(tmp_path / "u")
    with pytest.raises(DatasetError, match="holds no dataset") as e:
        make_tiny_dataset(tmp_path / "u", overwrite=True)
    assert "--overwrite" in str(e.value) and "overwrite=True" not in str(e.value)
    assert sorted(str(p.relative_to(tmp_path / "u")) for p in (tmp_path / "u").rglob("*")
                  if p.is_file()) == files


def test_overwrite_refused_where_dataset_json_is_not_valid(tiny):
    before = sorted(os.listdir(tiny / "shards"))
    (tiny / "dataset.json").write_text('{"shards": [{"path": "/etc/passwd"}]}')
    with pytest.raises(DatasetError, match="--overwrite refused.*nothing was deleted"):
        make_tiny_dataset(tiny, overwrite=True, seed=1)
    assert sorted(os.listdir(tiny / "shards")) == before


def test_overwrite_deletes_only_the_files_the_old_manifest_lists(tiny):
    (tiny / "shards" / "my_notes.txt").write_text("mine")
    (tiny / "extras" / "photos").mkdir(parents=True)
    (tiny / "extras" / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    new = make_tiny_dataset(tiny, overwrite=True, seed=1, n_trials=8)
    assert (tiny / "shards" / "my_notes.txt").read_text() == "mine"
    assert (tiny / "extras" / "photos" / "cat.jpg").exists()
    shards = {f"shards/{p}" for p in os.listdir(tiny / "shards")} - {"shards/my_notes.txt"}
    assert shards == {s.path for s in new.manifest.shards}  # old shards deleted
    new.validate()


def test_ingest_overwrite_into_a_users_folder_exits_2_and_keeps_its_files(tmp_path, capsys):
    path = build_nwb(tmp_path / "s.nwb", spikes=[[0.1, 0.5], [0.2, 1.5], [0.3]],
                     locations=["ALM", "ALM", "STR"], trials=[(0.0, 1.0), (1.0, 2.0)])
    files = _users_folder(tmp_path / "u")
    assert main(["ingest", path, "--out", str(tmp_path / "u"), "--overwrite", "--bin-ms", "100",
                 "--ic-enc-seq-len", "2"]) == 2
    err = capsys.readouterr().err
    assert "holds no dataset" in err and "overwrite=True" not in err
    assert sorted(str(p.relative_to(tmp_path / "u")) for p in (tmp_path / "u").rglob("*")
                  if p.is_file()) == files


def _leftovers(root):
    """What a write killed after its first shard leaves: a shard and a temporary file."""
    make_tiny_dataset(root)
    (root / "dataset.json").unlink()
    for name in os.listdir(root / "shards")[1:]:
        (root / "shards" / name).unlink()
    (root / "shards" / ".part-00001.arrow.tmp-4242-a1b2c3").write_bytes(b"partial")


def test_simulate_into_a_killed_runs_folder_says_so_before_any_work(tmp_path, monkeypatch,
                                                                     capsys):
    import mrlfads.data_loaders.simulate as sim

    _leftovers(tmp_path / "k")

    def never(*a, **k):
        raise AssertionError("simulated before checking --out")
    monkeypatch.setattr(sim, "generate", never)
    for extra in ([], ["--overwrite"]):
        assert main(["simulate", "memory-ring", "--smoke-test", "--out", str(tmp_path / "k"),
                     *extra]) == 2
        assert "write that never finished" in capsys.readouterr().err


def test_ingest_into_a_killed_runs_folder_says_so_before_reading_any_file(tmp_path):
    _leftovers(tmp_path / "k")
    with pytest.raises(IngestError, match="write that never finished"):
        ingest([str(tmp_path / "not-read-yet.nwb")], tmp_path / "k", IngestOptions())


def test_fractional_poisson_counts_are_refused_at_write_and_in_a_shard(tmp_path):
    counts = np.ones((3, 4, 2), np.float32)
    counts[1, 2, 0] = 0.5
    kw = {"name": "t", "regions": [("A", 2, 0)], "bin_width_s": 0.01, "ic_enc_seq_len": 1,
          "split": "train"}
    with pytest.raises(DatasetError, match=r"x\['A'\].*fractional spike counts.*trial_id 1, "
                                           r"bin 2, neuron 0"):
        write_dataset(tmp_path / "a", obs_model="poisson", x={"A": counts}, **kw)
    write_dataset(tmp_path / "g", obs_model="gaussian", x={"A": counts}, **kw)  # fine there


def test_manifest_sizes_beyond_any_model_are_refused_at_open(tiny):
    _edit(tiny, lambda d: d["regions"][0].update(n_heldin=1_000_000, neuron_ids=None))
    with pytest.raises(DatasetError, match=r"regions\[0\].*1000001 neurons.*16384"):
        ArrowDataset.open(tiny)
