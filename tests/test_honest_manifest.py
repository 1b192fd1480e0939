"""Recorded data has no known communication matrix: dataset.json says null (not zeros), old
all-zero manifests read as unknown, and no truth metric is computed against it."""
from __future__ import annotations

import json

import pytest

from mrlfads.data_loaders.manifest import DatasetManifest
from mrlfads.data_loaders.nwb import IngestOptions, ingest
from mrlfads.data_loaders.reader import ArrowDataset
from mrlfads.data_loaders.testing import MSG_DIM, make_tiny_dataset
from mrlfads.tracking.tune_callback import known_comm
from mrlfads.training.config import RunConfig
from mrlfads.training.loop import Trainer
from tests.test_ingest import ALIGNED, make_session


def _one_epoch(ds) -> dict[str, float]:
    cfg = RunConfig.for_dataset(ds.manifest, smoke_test=True, overrides={"train.epochs": 2})
    return Trainer(cfg, ds).run_epoch()


@pytest.mark.filterwarnings("ignore:the objective")  # no held-out neurons: not this test's
def test_ingest_writes_null_and_a_run_on_it_logs_no_effectome_cosine(tmp_path):
    out = tmp_path / "ds"
    m = ingest([make_session(tmp_path / "s.nwb")], out,
               IngestOptions(**ALIGNED, valid_fraction=0.4))
    assert m.comm_matrix is None
    on_disk = json.loads((out / "dataset.json").read_text())
    assert "comm_matrix" in on_disk and on_disk["comm_matrix"] is None
    ds = ArrowDataset.open(out)
    ds.validate()
    metrics = _one_epoch(ds)
    assert "effectome/ALM_to_STR" in metrics  # the model's effectome is still reported
    assert not any(k in metrics for k in ("valid/effectome_cosine", "valid/message_r2",
                                          "valid/effectome_cut_effect_cosine"))


def test_old_all_zero_manifest_loads_as_unknown_and_simulations_keep_theirs(tmp_path):
    ds = make_tiny_dataset(tmp_path / "sim")
    assert ds.manifest.comm_matrix == ((0, 0), (MSG_DIM, 0))
    assert "valid/effectome_cosine" in _one_epoch(ds)

    ds = make_tiny_dataset(tmp_path / "old", with_truth=False)
    path = tmp_path / "old" / "dataset.json"
    old = json.loads(path.read_text())
    old["comm_matrix"] = [[0, 0], [0, 0]]  # what ingests wrote before null existed
    path.write_text(json.dumps(old))
    ds = ArrowDataset.open(tmp_path / "old")
    ds.validate()
    assert ds.manifest.comm_matrix is None and ds.manifest.to_dict()["comm_matrix"] is None
    assert "valid/effectome_cosine" not in _one_epoch(ds)
    assert DatasetManifest.from_dict(ds.manifest.to_dict()) == ds.manifest


def test_tracking_reads_null_and_zeros_as_unknown():
    assert known_comm({"comm_matrix": None}) is None and known_comm({}) is None
    assert known_comm({"comm_matrix": [[0, 0], [0, 0]]}) is None
    assert known_comm({"comm_matrix": [[0, 0], [2, 0]]}) == [[0, 0], [2, 0]]
