"""Every user-facing dataset error: names the file (and column/key) and says what to do."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from mrlfads.data_loaders.errors import DatasetError, IngestError
from mrlfads.data_loaders.reader import ArrowDataset
from mrlfads.data_loaders.testing import make_tiny_dataset, rewrite_shard
from mrlfads.data_loaders.torch_data import TrialDataset
from mrlfads.data_loaders.writer import write_dataset


@pytest.fixture
def tiny(tmp_path):
    make_tiny_dataset(tmp_path / "d")
    return tmp_path / "d"


def _edit_manifest(root, fn):
    path = root / "dataset.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _tensor(arr):
    return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(arr, dtype=np.float32))


def test_error_classes_are_value_errors():
    assert issubclass(DatasetError, ValueError) and issubclass(IngestError, ValueError)


def test_missing_manifest_says_not_a_dataset_and_how_to_make_one(tmp_path):
    with pytest.raises(DatasetError) as e:
        ArrowDataset.open(tmp_path)
    msg = str(e.value)
    assert "dataset.json" in msg and "not an mrlfads dataset" in msg
    assert "mrlfads simulate" in msg and "mrlfads ingest" in msg


def test_unknown_format_version_names_both_versions(tiny):
    _edit_manifest(tiny, lambda d: d.update(format_version=7))
    with pytest.raises(DatasetError, match=r"dataset.json: key 'format_version' is 7.*\[1\]"):
        ArrowDataset.open(tiny)


def test_malformed_manifest_keys_are_named(tiny):
    _edit_manifest(tiny, lambda d: (d.pop("n_bins"), d.update(colour="red")))
    with pytest.raises(DatasetError, match=r"dataset.json.*unknown key 'colour'.*missing key 'n_bins'"):
        ArrowDataset.open(tiny)
    (tiny / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        ArrowDataset.open(tiny)


def test_missing_shard_names_the_file(tiny):
    ds = ArrowDataset.open(tiny)
    victim = ds.manifest.shards_for("train")[1]
    (tiny / victim.path).unlink()
    with pytest.raises(DatasetError, match=rf"{victim.path}: shard listed in dataset.json is missing"):
        ds.arrays("train")


def test_checksum_mismatch_names_the_file(tiny):
    ds = ArrowDataset.open(tiny)
    shard = ds.manifest.shards[0]
    raw = bytearray((tiny / shard.path).read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # flip one byte in the data
    (tiny / shard.path).write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match=rf"{shard.path}: sha256 does not match dataset.json"):
        ds.arrays("train")
    with pytest.raises(DatasetError, match="sha256"):
        ArrowDataset.open(tiny, verify_checksums=False).validate()  # validate always checks


def test_shard_missing_a_column(tiny):
    path = rewrite_shard(tiny, 0, lambda t: t.drop_columns(["x/B"]))
    with pytest.raises(DatasetError, match=rf"{path}: column 'x/B' is missing"):
        ArrowDataset.open(tiny).arrays("train", ["x/B"])


def test_shard_with_wrong_tensor_shape(tiny):
    def widen(t):
        x = t.column("x/A").chunks[0].to_numpy_ndarray()  # (8, 12, 4)
        i = t.schema.get_field_index("x/A")
        return t.set_column(i, "x/A", _tensor(np.concatenate([x, x[..., :1]], axis=-1)))
    path = rewrite_shard(tiny, 0, widen)
    with pytest.raises(DatasetError, match=rf"{path}: column 'x/A' has shape \(12, 5\).*\(12, 4\)"):
        ArrowDataset.open(tiny).arrays("train")


def test_row_count_disagreeing_with_manifest(tiny):
    def edit(d):
        d["shards"][0]["rows"] -= 1
        d["shards"][1]["rows"] += 1
    _edit_manifest(tiny, edit)
    with pytest.raises(DatasetError, match=r"part-00000.arrow: has 8 rows but dataset.json says 7"):
        ArrowDataset.open(tiny).arrays("train")


@pytest.mark.parametrize("bad,what", [(np.nan, "NaN"), (-1.0, "negative spike counts")])
def test_bad_poisson_counts_in_a_shard(tiny, bad, what):
    def poison(t):
        x = t.column("x/B").chunks[0].to_numpy_ndarray().copy()
        x[2, 5, 1] = bad
        return t.set_column(t.schema.get_field_index("x/B"), "x/B", _tensor(x))
    path = rewrite_shard(tiny, 0, poison)
    ds = ArrowDataset.open(tiny)
    with pa.memory_map(path) as src:
        trial = int(pa.ipc.open_file(src).read_all().column("trial_id")[2].as_py())
    with pytest.raises(DatasetError, match=rf"{path}: column 'x/B' has {what}.*trial_id {trial}, bin 5, neuron 1"):
        ds.validate()
    with pytest.raises(DatasetError, match=what):
        TrialDataset(ds, "train")


def test_bad_values_refused_at_write(tmp_path):
    kw = {"name": "t", "regions": [("A", 2, 0)], "bin_width_s": 0.01, "ic_enc_seq_len": 1, "split": "train"}
    counts = np.ones((3, 4, 2), np.float32)
    counts[1, 0, 0] = -2
    with pytest.raises(DatasetError, match=r"x\['A'\].*negative spike counts"):
        write_dataset(tmp_path / "a", obs_model="poisson", x={"A": counts}, **kw)
    counts[1, 0, 0] = np.nan
    with pytest.raises(DatasetError, match=r"x\['A'\].*NaN.*finite"):
        write_dataset(tmp_path / "b", obs_model="gaussian", x={"A": counts}, **kw)
    counts[1, 0, 0] = -2  # negative is fine for gaussian data
    write_dataset(tmp_path / "c", obs_model="gaussian", x={"A": counts}, **kw)
    assert not (tmp_path / "a").exists()  # nothing written before the inputs were checked


def test_nan_in_gaussian_shard(tmp_path):
    make_tiny_dataset(tmp_path / "g", obs_model="gaussian")
    def poison(t):
        x = t.column("x/A").chunks[0].to_numpy_ndarray().copy()
        x[0, 0, 0] = np.nan
        return t.set_column(t.schema.get_field_index("x/A"), "x/A", _tensor(x))
    path = rewrite_shard(tmp_path / "g", 3, poison)
    with pytest.raises(DatasetError, match=rf"{path}: column 'x/A' has NaN"):
        ArrowDataset.open(tmp_path / "g").validate()


def test_region_with_zero_heldin_neurons(tmp_path, tiny):
    with pytest.raises(DatasetError, match=r"regions\[1\].n_heldin.*'B' has 0 held-in"):
        make_tiny_dataset(tmp_path / "z", regions=(("A", 3, 1), ("B", 0, 2)))
    _edit_manifest(tiny, lambda d: d["regions"][0].update(n_heldin=0, n_heldout=4))
    with pytest.raises(DatasetError, match=rf"{tiny}/dataset.json.*n_heldin.*at least 1"):
        ArrowDataset.open(tiny)


def test_too_few_bins_for_ic_encoder(tmp_path):
    with pytest.raises(DatasetError, match=r"'n_bins': 4 bins but ic_enc_seq_len is 4.*\+ 1"):
        make_tiny_dataset(tmp_path / "s", n_bins=4, ic_enc_seq_len=4)
    make_tiny_dataset(tmp_path / "ok", n_bins=5, ic_enc_seq_len=4)  # tau + 1 bins is enough
    with pytest.raises(DatasetError, match=r"'ic_enc_seq_len': must be an integer >= 1.*got 0"):
        make_tiny_dataset(tmp_path / "zero", ic_enc_seq_len=0)  # the model could not train on it
    assert not (tmp_path / "zero").exists()


@pytest.mark.parametrize("change,match", [
    ({"x": {"A": np.zeros((5, 6, 4)), "B": np.zeros((5, 6, 3))}}, r"x\['B'\]: shape \(5, 6, 3\), expected \(5, 6, 4\)"),
    ({"x": {"A": np.zeros((5, 6, 4)), "B": np.full((5, 6, 4), "s")}}, r"x\['B'\]: dtype <U1 is not numeric"),
    ({"x": {"A": np.zeros((5, 6, 4))}}, r"x: keys \['A'\] must be exactly the region names"),
    ({"split": ["train"] * 4 + ["tset"]}, r"split: unknown labels \['tset'\]"),
    ({"trial_id": [1, 1, 2, 3, 4]}, "trial_id: values must be unique"),
    ({"ext": {"C": np.zeros((5, 6, 1))}}, "ext: key 'C' is not a region"),
    ({"truth": {"truth/rates/A": np.zeros((5, 6, 2))}}, r"truth\['truth/rates/A'\]: shape"),
    ({"truth": {"rates_A": np.zeros((5, 6, 4))}}, "truth: key 'rates_A' is not a truth column"),
])
def test_input_shape_and_dtype_errors(tmp_path, change, match):
    kw = {"name": "t", "regions": [("A", 3, 1), ("B", 3, 1)], "obs_model": "poisson",
              "bin_width_s": 0.01, "ic_enc_seq_len": 2, "split": "train",
              "x": {"A": np.zeros((5, 6, 4)), "B": np.zeros((5, 6, 4))}}
    with pytest.raises(DatasetError, match=match):
        write_dataset(tmp_path / "d", **{**kw, **change})
