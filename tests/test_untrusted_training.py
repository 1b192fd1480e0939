"""Training, inference and perturbation check what they are given: shard values whose
checksum matches, a manifest's sizes, a checkpoint's state dict and numeric flags. Each bad
input is one line naming it and exit code 2, never a traceback, a NaN loss or a silent 0."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from mrlfads.data_loaders.testing import make_tiny_dataset, rewrite_shard
from mrlfads.training import checkpoint as ckpt
from mrlfads.training.cli import main

TAU, T = 4, 12  # make_tiny_dataset's ic_enc_seq_len and bins


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("untrusted")
    make_tiny_dataset(root / "data")
    assert main(["train", "--data", str(root / "data"), "--smoke-test", "--epochs", "2",
                 "--out", str(root / "run"), "--no-tracking", "--quiet"]) == 0
    return root


def _train(data, out, *extra):
    return main(["train", "--data", str(data), "--smoke-test", "--epochs", "2", "--out",
                 str(out), "--no-tracking", "--quiet", *extra])


def _poison_shard(root, index, col, row, value):
    """Set one entry of `col` in shard `index` and fix the manifest's checksum to match;
    returns the shard's path in the manifest and the poisoned trial's id."""
    trial = []

    def poison(table):
        x = table.column(col).chunks[0].to_numpy_ndarray().copy()
        x[row, 5, 1] = value
        arr = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(x))
        trial.append(int(table.column("trial_id")[row].as_py()))
        return table.set_column(table.schema.get_field_index(col), col, arr)

    shard = rewrite_shard(root, index, poison)
    return str(Path(shard).relative_to(root)), trial[0]


@pytest.mark.parametrize("value,what", [(np.nan, "NaN or infinite values"),
                                        (-1.0, "negative spike counts"),
                                        (1.5, "fractional spike counts")])
def test_bad_counts_in_a_checksummed_shard_exit_2_naming_shard_and_column(tmp_path, capsys,
                                                                          value, what):
    make_tiny_dataset(tmp_path / "d")
    path, tid = _poison_shard(tmp_path / "d", 0, "x/B", 2, value)
    assert _train(tmp_path / "d", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert f"{path}: column 'x/B' has {what}" in err
    assert f"trial_id {tid}, bin 5, neuron 1" in err
    assert "non-finite" not in err and not (tmp_path / "run" / "last.pt").exists()


def test_manifest_sizes_disagreeing_with_shards_fail_before_the_model_is_built(tmp_path, capsys,
                                                                               monkeypatch):
    make_tiny_dataset(tmp_path / "d")
    path = tmp_path / "d" / "dataset.json"
    data = json.loads(path.read_text())
    data["regions"][0].update(n_heldin=16000, neuron_ids=None)  # allowed size, wrong shards
    path.write_text(json.dumps(data))
    import mrlfads.training.loop as loop

    def no_model(*a, **k):
        raise AssertionError("model built before the shards were checked")
    monkeypatch.setattr(loop, "MRLFADS", no_model)
    assert _train(tmp_path / "d", tmp_path / "run") == 2
    assert "column 'x/A' has shape (12, 4) per trial" in capsys.readouterr().err


def test_huge_manifest_sizes_exit_2_not_memory_error(tmp_path, capsys):
    make_tiny_dataset(tmp_path / "d")
    path = tmp_path / "d" / "dataset.json"
    data = json.loads(path.read_text())
    data["regions"][0].update(n_heldin=1_000_000, neuron_ids=None)
    path.write_text(json.dumps(data))
    assert _train(tmp_path / "d", tmp_path / "run") == 2
    assert "declares 1000001 neurons" in capsys.readouterr().err


def _bad_checkpoint(trained, tmp_path, change):
    payload = torch.load(trained / "run" / "best.pt", weights_only=True)
    payload.pop("format")
    change(payload)
    return ckpt.save(payload, tmp_path / "bad.pt")


@pytest.mark.parametrize("change", [
    lambda p: p.update(model={}),
    lambda p: p["model"].pop(next(iter(p["model"]))),
    lambda p: p["model"].update({k: torch.zeros(1) for k in list(p["model"])[:1]}),
    lambda p: p.update(model="not a state dict"),
    lambda p: p.update(run_config=None),
], ids=["empty", "missing-key", "wrong-shape", "not-a-dict", "no-run-config"])
def test_infer_with_a_checkpoint_that_does_not_fit_exits_2(trained, tmp_path, capsys, change):
    bad = _bad_checkpoint(trained, tmp_path, change)
    assert main(["infer", "--model", str(bad), "--data", str(trained / "data"), "--out",
                 str(tmp_path / "inf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: checkpoint {bad}") and "\n" not in err


def test_resume_from_a_checkpoint_that_does_not_fit_exits_2(trained, tmp_path, capsys):
    import shutil

    shutil.copytree(trained / "run", tmp_path / "run")
    payload = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    payload.pop("format")
    payload["model"] = {}
    ckpt.save(payload, tmp_path / "run" / "last.pt")
    assert _train(trained / "data", tmp_path / "run", "--epochs", "3", "--resume") == 2
    assert "does not fit this model" in capsys.readouterr().err


@pytest.mark.parametrize("epochs", ["-1", "0"])
def test_epochs_below_one_exit_2(trained, tmp_path, epochs, capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", str(trained / "data"), "--epochs", epochs, "--out",
              str(tmp_path / "run"), "--no-tracking"])
    assert e.value.code == 2 and "need at least 1 epoch" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_resume_with_no_epochs_left_exits_2_instead_of_claiming_done(trained, tmp_path, capsys):
    import shutil

    shutil.copytree(trained / "run", tmp_path / "run")  # trained 2 epochs
    assert _train(trained / "data", tmp_path / "run", "--epochs", "2", "--resume") == 2
    assert "already trained 2 epochs; pass more than 2" in capsys.readouterr().err


@pytest.mark.parametrize("window", ["0:4", "2:8"])
def test_perturb_window_in_the_ic_encoder_bins_is_refused(trained, capsys, window):
    assert main(["perturb", "--model", str(trained / "run" / "best.pt"), "--data",
                 str(trained / "data"), "--silence", "A", "--window", window]) == 2
    err = capsys.readouterr().err
    assert f"--window '{window}'" in err and f"first bin a window may start at is {TAU}" in err


@pytest.mark.parametrize("window", ["a:b", "6", "6:8:10"])
def test_perturb_window_that_is_not_two_bins_is_refused(trained, capsys, window):
    assert main(["perturb", "--model", str(trained / "run" / "best.pt"), "--data",
                 str(trained / "data"), "--silence", "A", "--window", window]) == 2
    assert f"--window {window!r}: expected START:STOP in trial bins" in capsys.readouterr().err


def test_perturb_window_from_the_first_allowed_bin_runs(trained, tmp_path):
    out = tmp_path / "perturb"
    assert main(["perturb", "--model", str(trained / "run" / "best.pt"), "--data",
                 str(trained / "data"), "--silence", "A", "--window", f"{TAU}:{T}",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["mean_abs_rate_change"]["B"] > 0  # B listens to A
