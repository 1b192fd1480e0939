"""Bad NWB input: each case raises IngestError naming the file and the fix, and writes nothing."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from mrlfads.data_loaders.errors import IngestError
from mrlfads.data_loaders.nwb import IngestOptions, ingest
from mrlfads.data_loaders.nwb.testing import build_nwb

TRIALS = [(0.0, 1.0), (1.0, 2.0)]
GOOD = {"spikes": [[0.1, 0.5], [0.2, 1.5], [0.3]], "locations": ["ALM", "ALM", "STR"],
            "trials": TRIALS, "trial_columns": {"go_cue_time": [0.5, 1.5]}}
OPTS = {"bin_ms": 100, "ic_enc_seq_len": 2}


def fails(tmp_path, files, options=None, *must_say, **kw):
    """Ingest must raise IngestError whose message says each of `must_say`; no output left."""
    out = tmp_path / "out"
    with pytest.raises(IngestError) as e:
        ingest([str(f) for f in files], out, options or IngestOptions(**OPTS), **kw)
    msg = str(e.value)
    for text in must_say:
        assert text in msg, msg
    assert not out.exists(), "a failed ingest must leave no dataset behind"
    return msg


def nwb(tmp_path, name="s.nwb", **changes):
    return build_nwb(tmp_path / name, **{**GOOD, **changes})


def test_no_units_table(tmp_path):
    fails(tmp_path, [nwb(tmp_path, spikes=[], locations=None)], None,
          "s.nwb", "no Units table", "add_unit")


def test_units_without_electrodes_and_no_region_column(tmp_path):
    fails(tmp_path, [nwb(tmp_path, locations=None)], None, "s.nwb", "'electrodes'", "--region-column")


def test_missing_region_column(tmp_path):
    fails(tmp_path, [nwb(tmp_path)], IngestOptions(**OPTS, region_column="area"),
          "s.nwb", "'area'", "--region-column")


def test_requested_region_absent(tmp_path):
    fails(tmp_path, [nwb(tmp_path)], IngestOptions(**OPTS, regions=("ALM", "PFC")),
          "s.nwb", "['PFC']", "--regions", "'ALM', 'STR'")


def test_empty_trials_table(tmp_path):
    fails(tmp_path, [nwb(tmp_path, trials=None)], None, "s.nwb", "trials table", "add_trial")


def test_overlapping_windows_of_overlapping_trials(tmp_path):
    # default window 0:1.2 s from each start (the shortest trial): [0, 1.2) and [0.5, 1.7)
    fails(tmp_path, [nwb(tmp_path, trials=[(0.0, 1.2), (0.5, 2.0)])], None,
          "s.nwb", "in 1 trials the window 0:1.2 s overlaps an earlier trial's",
          "trial 1: window 0.500-1.700 s", "the trials overlap in time", "--window",
          "--unfit-trials drop")


def test_alignment_event_missing_for_some_trials(tmp_path):
    path = nwb(tmp_path, trial_columns={"go_cue_time": [0.5, np.nan]})
    fails(tmp_path, [path], IngestOptions(**OPTS, align="go_cue_time", window=(-0.2, 0.3)),
          "s.nwb", "'go_cue_time'", "ids [1]", "align to an event every trial has")


def test_dropping_every_trial_is_refused(tmp_path):
    path = nwb(tmp_path, trial_columns={"go_cue_time": [0.9, 1.95]})  # windows past each stop
    fails(tmp_path, [path], IngestOptions(**OPTS, align="go_cue_time", window=(-0.2, 0.3),
                                          unfit_trials="drop"),
          "s.nwb", "every trial (2) would be dropped", "falls outside", "--window")


def test_alignment_column_absent(tmp_path):
    fails(tmp_path, [nwb(tmp_path)], IngestOptions(**OPTS, align="cue", window=(-0.2, 0.3)),
          "s.nwb", "no column 'cue'", "go_cue_time")


def test_window_outside_a_trial(tmp_path):
    o = IngestOptions(**OPTS, align="go_cue_time", window=(-0.2, 0.8))
    fails(tmp_path, [nwb(tmp_path)], o, "s.nwb", "in 2 trials the window -0.2:0.8 s falls outside", "shrink --window",
          "--window-beyond-trial", "--unfit-trials drop")


def test_file_that_is_not_nwb(tmp_path):
    text = tmp_path / "notes.nwb"
    text.write_text("this is not HDF5")
    fails(tmp_path, [text], None, "notes.nwb", "not an NWB file")
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.arange(3)
    fails(tmp_path, [plain], None, "plain.h5", "not an NWB file")
    fails(tmp_path, [tmp_path / "missing.nwb"], None, "missing.nwb", "no such file")


def test_sessions_with_different_regions(tmp_path):
    a = nwb(tmp_path, "a.nwb")
    b = nwb(tmp_path, "b.nwb", locations=["ALM", "ALM", "PFC"])
    matched = IngestOptions(**OPTS, sessions="matched")
    fails(tmp_path, [a, b], matched, "a.nwb", "b.nwb", "'STR'", "'PFC'", "--regions",
          "--sessions separate")


def test_sessions_with_different_unit_counts(tmp_path):
    a = nwb(tmp_path, "a.nwb")
    b = nwb(tmp_path, "b.nwb", locations=["ALM", "STR", "STR"])
    matched = IngestOptions(**OPTS, sessions="matched")
    fails(tmp_path, [a, b], matched, "a.nwb", "b.nwb", "region 'ALM'",
          "ingest the sessions separately", "--sessions separate")


def test_region_label_that_is_not_a_valid_name(tmp_path):
    path = nwb(tmp_path, locations=["VISp2/3", "VISp2/3", "STR"])
    fails(tmp_path, [path], None, "'VISp2/3'", "--region-map")


def test_label_missing_from_region_map(tmp_path):
    (tmp_path / "map.json").write_text('{"ALM": "ALM"}')
    o = IngestOptions(**OPTS, region_map=str(tmp_path / "map.json"))
    fails(tmp_path, [nwb(tmp_path)], o, "s.nwb", "['STR']", "map.json", "null")


def test_drop_quality_without_quality_column(tmp_path):
    fails(tmp_path, [nwb(tmp_path)], IngestOptions(**OPTS, drop_quality=("noise",)),
          "s.nwb", "'quality'", "--drop-quality")


def test_too_few_bins_for_the_ic_encoder(tmp_path):
    fails(tmp_path, [nwb(tmp_path)], IngestOptions(bin_ms=250, ic_enc_seq_len=10),
          "4 bins", "ic_enc_seq_len", "--bin-ms")


def test_no_bins_for_the_ic_encoder_is_refused_before_ingest(tmp_path):
    # the model needs >= 1 encoder bin: a dataset with 0 would ingest, then fail to train
    with pytest.raises(IngestError, match=r"--ic-enc-seq-len: must be an integer >= 1.*got 0"):
        IngestOptions(bin_ms=100, ic_enc_seq_len=0)


def test_heldout_leaves_no_held_in_neuron(tmp_path):
    fails(tmp_path, [nwb(tmp_path)], IngestOptions(**OPTS, heldout=1), "region 'STR'", "--heldout")


def test_existing_dataset_is_kept_without_overwrite(tmp_path):
    path = nwb(tmp_path)
    m = ingest([path], tmp_path / "out", IngestOptions(**OPTS))
    with pytest.raises(IngestError, match="--overwrite"):
        ingest([path], tmp_path / "out", IngestOptions(**OPTS))
    m2 = ingest([path], tmp_path / "out", IngestOptions(**OPTS, seed=1), overwrite=True)
    assert m2.n_trials == m.n_trials


def test_options_report_every_problem_at_once():
    with pytest.raises(IngestError) as e:
        IngestOptions(bin_ms=-1, align="go", heldout=2.5, valid_fraction=1.0, regions=("1x",))
    msg = str(e.value)
    for flag in ("--bin-ms", "--window", "--heldout", "--valid-fraction", "--regions"):
        assert flag in msg, msg


def test_cli_reports_bad_input_as_one_line_exit_2(tmp_path, capsys):
    from mrlfads.training.cli import main

    path = nwb(tmp_path, spikes=[[0.1, 0.5], [0.9, np.nan], [0.3]])
    assert main(["ingest", str(path), "--out", str(tmp_path / "out"), "--bin-ms", "100",
                 "--ic-enc-seq-len", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "s.nwb" in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_nan_spike_times(tmp_path):
    path = nwb(tmp_path, spikes=[[0.1, 0.5], [0.2, np.nan], [0.3]])
    fails(tmp_path, [path], None, "s.nwb", "unit 1", "NaN")
