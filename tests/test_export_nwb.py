"""`mrlfads export-nwb` round trip: simulate -> NWB -> ingest -> train -> infer -> export-nwb,
then read the result with plain pynwb and compare it with the infer output and the source."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mrlfads.data_loaders.nwb.export import dataset_to_nwb
from mrlfads.training.cli import main
from mrlfads.training.infer_io import read_outputs

BIN_S, WINDOW_START = 0.02, 0.1  # the ingest cuts bins from start_time + 0.1 s


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    assert main(["simulate", "memory-ring", "--out", str(root / "sim"), "--smoke-test",
                 "--obs", "poisson", "--trials", "24"]) == 0
    dataset_to_nwb(str(root / "sim"), str(root / "session.nwb"))
    assert main(["ingest", str(root / "session.nwb"), "--out", str(root / "data"),
                 "--bin-ms", "20", "--ic-enc-seq-len", "5", "--heldout-column", "heldout",
                 "--align", "start_time", "--window", f"{WINDOW_START}:0.7"]) == 0
    assert main(["train", "--data", str(root / "data"), "--smoke-test", "--epochs", "2",
                 "--out", str(root / "run"), "--no-tracking", "--quiet"]) == 0
    assert main(["infer", "--model", str(root / "run" / "best.pt"), "--data",
                 str(root / "data"), "--out", str(root / "infer")]) == 0
    assert main(["export-nwb", "--infer", str(root / "infer"), "--nwb",
                 str(root / "session.nwb"), "--out", str(root / "result.nwb")]) == 0
    return root


def test_results_read_back_with_pynwb_equal_the_infer_output(exported):
    import pynwb

    cols = read_outputs(exported / "infer")
    info = json.loads((exported / "infer" / "outputs.json").read_text())
    eff = json.loads((exported / "infer" / "effectome.json").read_text())
    tau, T = info["bins"]
    with pynwb.NWBHDF5IO(str(exported / "session.nwb"), "r") as io:
        src = io.read()
        src_id, src_trials = src.identifier, src.trials.to_dataframe()
        src_units = src.units.to_dataframe()
    with pynwb.NWBHDF5IO(str(exported / "result.nwb"), "r") as io:
        nwb = io.read()
        assert nwb.identifier != src_id and src_id in nwb.notes
        mod = nwb.processing["mrlfads"]
        prov = mod["provenance"].to_dataframe().iloc[0]
        assert prov["nwb_file"] == "session.nwb" and prov["first_bin"] == tau
        # trials and units kept: same ids, columns and spike times
        trials = nwb.trials.to_dataframe()
        assert list(trials.index) == list(src_trials.index)
        assert list(trials["condition"]) == list(src_trials["condition"])
        units = nwb.units.to_dataframe()
        assert len(units) == len(src_units) == 24  # 3 regions x 8 units
        for u in (0, 23):
            np.testing.assert_array_equal(units["spike_times"].iloc[u],
                                          src_units["spike_times"].iloc[u])
        rt = mod["result_trials"].to_dataframe()
        assert len(rt) == len(cols["trial_id"]) == 24  # every trial, once
        assert sorted(rt["trial_id"]) == sorted(cols["trial_id"].tolist())
        row_of = {int(t): i for i, t in enumerate(cols["trial_id"])}
        regions = info["regions"]
        series = mod["series"].to_dataframe()
        assert sorted(set(series["region"])) == sorted(regions) == ["A0", "A1", "A2"]
        for r in regions:
            for kind in ("rates", "heldout_rates", "factors", "inputs"):
                ts = mod[f"{kind}_{r}"]
                assert ts.data.shape == (24 * (T - tau), cols[f"{kind}/{r}"].shape[-1])
                for _, row in rt.iterrows():  # each trial's rows are its infer output
                    k, lo = row_of[int(row["trial_id"])], int(row["first_sample"])
                    np.testing.assert_array_equal(ts.data[lo:lo + T - tau], cols[f"{kind}/{r}"][k])
        for pair in info["pairs"]:
            s, d = pair.split("->")
            ts = mod[f"messages_{s}_to_{d}"]
            k = row_of[int(rt["trial_id"].iloc[3])]
            np.testing.assert_array_equal(ts.data[3 * (T - tau):4 * (T - tau)], cols[f"messages/{pair}"][k])
            assert series.set_index("series").loc[f"messages_{s}_to_{d}", "source"] == s
        # timestamps: bin centres after the window start, inside each trial, increasing
        stamps = mod["rates_A0"].timestamps[:]
        assert np.all(np.diff(stamps) > 0)
        for _, row in rt.iterrows():
            start = trials.loc[int(row["trial_id"]), "start_time"]
            lo = int(row["first_sample"])
            want = start + WINDOW_START + (tau + np.arange(T - tau) + 0.5) * BIN_S
            np.testing.assert_allclose(stamps[lo:lo + T - tau], want, rtol=0, atol=1e-9)
            assert trials.loc[int(row["trial_id"]), "stop_time"] > stamps[lo + T - tau - 1]
        assert mod["rates_A1"].timestamps[:].shape == stamps.shape  # linked, not copied
        # each rates column is a unit of that region
        neurons = mod["neurons"].to_dataframe()
        loc = nwb.electrodes.to_dataframe()["location"]
        for _, n in neurons.iterrows():
            electrodes = units.loc[int(n["unit_id"]), "electrodes"]
            assert set(loc.loc[list(electrodes.index)]) == {n["region"]}
        assert len(neurons) == 24 and int(neurons["heldout"].sum()) == 3
        # effectome: the infer output's matrices, by region name
        e = mod["effectome"].to_dataframe()
        for _, row in e.iterrows():
            dst, src = regions.index(row["target"]), regions.index(row["source"])
            assert row["cut"] == pytest.approx(eff["matrix"][dst][src])
            assert row["message_rms"] == pytest.approx(eff["message_rms"][dst][src])
        assert len(e) == 6
        ie = mod["input_effectome"].to_dataframe()
        assert list(ie["region"]) == regions
        np.testing.assert_allclose(ie["cut"], eff["inputs"]["cut"])
    assert pynwb.validate(path=str(exported / "result.nwb")) == []  # valid NWB, core types only


def test_export_refuses_the_wrong_inputs(exported, tmp_path, capsys):
    root = exported

    def export(infer, nwb, out, *extra):
        return main(["export-nwb", "--infer", str(infer), "--nwb", str(nwb), "--out", str(out),
                     *extra])

    # another NWB file (same trials, other spike jitter): not the ingested one
    other = dataset_to_nwb(str(root / "sim"), str(tmp_path / "other.nwb"), seed=9)
    assert export(root / "infer", other, tmp_path / "r.nwb") == 2
    err = capsys.readouterr().err
    assert "is not a source of dataset" in err and "session.nwb" in err
    # --out exists
    assert export(root / "infer", root / "session.nwb", root / "result.nwb") == 2
    assert "--overwrite" in capsys.readouterr().err
    # an infer output of a dataset not ingested from NWB
    assert main(["infer", "--model", str(root / "run" / "best.pt"), "--data",
                 str(root / "data"), "--out", str(tmp_path / "sim_infer")]) == 0
    manifest = json.loads((tmp_path / "sim_infer" / "source_dataset.json").read_text())
    manifest["provenance"] = {"generator": "mrlfads simulate"}
    (tmp_path / "sim_infer" / "source_dataset.json").write_text(json.dumps(manifest))
    assert export(tmp_path / "sim_infer", root / "session.nwb", tmp_path / "r.nwb") == 2
    assert "was not ingested from NWB" in capsys.readouterr().err
    # an infer output without the dataset's manifest
    (tmp_path / "sim_infer" / "source_dataset.json").unlink()
    assert export(tmp_path / "sim_infer", root / "session.nwb", tmp_path / "r.nwb") == 2
    assert "re-run `mrlfads infer`" in capsys.readouterr().err
    assert export(tmp_path / "nothing", root / "session.nwb", tmp_path / "r.nwb") == 2
    assert "no such directory" in capsys.readouterr().err
    assert not (tmp_path / "r.nwb").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r.nwb")]  # no leftovers
    # --overwrite replaces the file atomically
    shutil.copy(root / "result.nwb", tmp_path / "again.nwb")
    assert export(root / "infer", root / "session.nwb", tmp_path / "again.nwb", "--overwrite") == 0


def test_session_tables_copy_plain_columns_and_name_the_ones_left_out(tmp_path):
    import datetime as dt

    import pynwb
    from pynwb.file import Subject

    from mrlfads.data_loaders.nwb.copy_tables import copy_session_tables, new_file_from

    t0 = dt.datetime(2021, 5, 6, tzinfo=dt.timezone.utc)
    src = pynwb.NWBFile(session_description="s", identifier="src-id", session_start_time=t0,
                        experimenter=["Ada"], lab="lab", subject=Subject(subject_id="m1",
                                                                         species="Mus musculus"))
    dev = src.create_device(name="probe")
    group = src.create_electrode_group(name="shank0", description="d", location="CA1", device=dev)
    src.add_electrode_column(name="depth", description="um")
    for k in range(2):
        src.add_electrode(group=group, location=["CA1", "CA3"][k], depth=10.0 * k, id=5 + k)
    src.add_unit_column(name="quality", description="label")
    src.add_unit_column(name="peaks", description="ragged", index=True)
    src.add_unit(spike_times=[0.1, 0.2], electrodes=[1], quality="good", peaks=[1.0, 2.0], id=7)
    src.add_unit(spike_times=[0.3], electrodes=[0], quality="noise", peaks=[3.0], id=9)
    ts = pynwb.TimeSeries(name="lick", data=[1.0, 2.0], unit="a.u.", timestamps=[0.0, 1.0])
    src.add_acquisition(ts)
    src.add_trial_column(name="choice", description="left/right")
    src.add_trial(start_time=0.0, stop_time=1.0, choice="left", tags=["a", "b"], timeseries=[ts],
                  id=3)
    src.add_trial(start_time=1.0, stop_time=2.0, choice="right", tags=["c"], timeseries=[ts], id=4)
    with pynwb.NWBHDF5IO(str(tmp_path / "src.nwb"), "w") as io:
        io.write(src)
    with pynwb.NWBHDF5IO(str(tmp_path / "src.nwb"), "r") as io:
        read = io.read()
        dst = new_file_from(read, identifier="new", session_description="r", notes="n",
                            generated_by=[("mrlfads", "0")])
        skipped = copy_session_tables(read, dst)
        with pynwb.NWBHDF5IO(str(tmp_path / "dst.nwb"), "w") as out:
            out.write(dst)
    assert skipped == ["trials.timeseries"]  # a reference to acquisition, which is not copied
    with pynwb.NWBHDF5IO(str(tmp_path / "dst.nwb"), "r") as io:
        f = io.read()
        assert f.session_start_time == t0 and f.subject.subject_id == "m1"
        assert list(f.experimenter) == ["Ada"] and len(f.acquisition) == 0
        units = f.units.to_dataframe()
        assert list(units.index) == [7, 9] and list(units["quality"]) == ["good", "noise"]
        np.testing.assert_array_equal(units.loc[7, "peaks"], [1.0, 2.0])
        np.testing.assert_array_equal(units.loc[9, "spike_times"], [0.3])
        assert list(units.loc[7, "electrodes"]["location"]) == ["CA3"]  # row 1 kept its place
        el = f.electrodes.to_dataframe()
        assert list(el.index) == [5, 6] and list(el["depth"]) == [0.0, 10.0]
        trials = f.trials.to_dataframe()
        assert list(trials.index) == [3, 4] and list(trials["choice"]) == ["left", "right"]
        assert list(trials.loc[3, "tags"]) == ["a", "b"]


def test_trials_of_a_later_session_get_their_own_ids_back():
    from mrlfads.training.commands.export_nwb import source_trial_ids

    # ingest shifts file k's ids by the sum over earlier files of (max id + 1): 0..2 -> +0,
    # then 5, 9 -> +3 (8, 12 in the dataset)
    sources = [{"trial_ids": [0, 1, 2]}, {"trial_ids": [5, 9]}]
    assert source_trial_ids(sources, 0) == (0, {0, 1, 2})
    assert source_trial_ids(sources, 1) == (3, {5, 9})
    assert source_trial_ids(sources[1:], 0) == (0, {5, 9})  # one file: ids unchanged


def test_a_session_of_several_gets_its_own_units_back(tmp_path):
    """Two NWB sessions with different units (ingest makes a session per file): exporting
    the second writes its trials and its own units' columns, named by its unit ids."""
    import pynwb

    from mrlfads.data_loaders.reader import ArrowDataset

    for name, units in (("a", "6"), ("b", "4")):
        assert main(["simulate", "memory-ring", "--out", str(tmp_path / f"sim_{name}"),
                     "--smoke-test", "--obs", "poisson", "--trials", "12", "--units", units,
                     "--seed", "1" if name == "b" else "0"]) == 0
        dataset_to_nwb(str(tmp_path / f"sim_{name}"), str(tmp_path / f"{name}.nwb"))
    assert main(["ingest", str(tmp_path / "a.nwb"), str(tmp_path / "b.nwb"), "--out",
                 str(tmp_path / "data"), "--bin-ms", "20", "--ic-enc-seq-len", "5",
                 "--heldout", "0.2", "--align", "start_time", "--window", "0.1:0.7"]) == 0
    m = ArrowDataset.open(tmp_path / "data").manifest
    assert m.session_names == ("a", "b")
    assert main(["train", "--data", str(tmp_path / "data"), "--smoke-test", "--epochs", "2",
                 "--out", str(tmp_path / "run"), "--no-tracking", "--quiet"]) == 0
    assert main(["infer", "--model", str(tmp_path / "run" / "best.pt"), "--data",
                 str(tmp_path / "data"), "--out", str(tmp_path / "infer")]) == 0
    assert main(["export-nwb", "--infer", str(tmp_path / "infer"), "--nwb",
                 str(tmp_path / "b.nwb"), "--out", str(tmp_path / "result.nwb")]) == 0
    from mrlfads.training.commands.export_nwb import source_trial_ids

    cols = read_outputs(tmp_path / "infer")
    b_trials = [i for i, s in enumerate(cols["session"]) if s == "b"]
    source_b = m.provenance["sources"][1]
    offset, _ = source_trial_ids(m.provenance["sources"], 1)
    with pynwb.NWBHDF5IO(str(tmp_path / "result.nwb"), "r") as io:
        mod = io.read().processing["mrlfads"]
        rt = mod["result_trials"].to_dataframe()
        assert len(rt) == len(b_trials)
        neurons = mod["neurons"].to_dataframe()
        for r in m.region_names:
            n_in, n_out = m.sessions[1].units[r]
            block = m.session_blocks(r)[1]
            rates = mod[f"rates_{r}"].data[:]
            assert rates.shape[-1] == n_in
            first = rates[: m.n_bins - 5]  # the first exported trial, its own columns
            row = list(cols["trial_id"]).index(int(rt["trial_id"].iloc[0]) + offset)
            np.testing.assert_array_equal(first, cols[f"rates/{r}"][row][:, block.heldin])
            ids = neurons[neurons["series"] == f"rates_{r}"]["unit_id"].tolist()
            assert ids == source_b["unit_ids"][r][:n_in]
            if n_out:
                ids = neurons[neurons["series"] == f"heldout_rates_{r}"]["unit_id"].tolist()
                assert ids == source_b["unit_ids"][r][n_in:n_in + n_out]
