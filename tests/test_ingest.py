"""NWB -> Arrow ingest end to end: tiny pynwb files, bin counts checked against hand counts."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mrlfads.data_loaders.errors import IngestError
from mrlfads.data_loaders.nwb import IngestOptions, ingest
from mrlfads.data_loaders.nwb.binning import bin_spikes, bin_timeseries, window_edges
from mrlfads.data_loaders.nwb.export import write_nwb_from_arrays
from mrlfads.data_loaders.nwb.read import sha256_file
from mrlfads.data_loaders.nwb.testing import build_nwb
from mrlfads.data_loaders.reader import ArrowDataset

# Three 1 s trials; go cues at 0.5, 1.4, 2.6 s. With --align go_cue_time --window -0.2:0.3
# and 100 ms bins the windows are [0.3,0.8), [1.2,1.7), [2.4,2.9), 5 bins each.
TRIALS = [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]
GO = [0.5, 1.4, 2.6]
SPIKES = [
    [0.05, 0.31, 0.35, 0.79, 1.25, 1.69, 2.45, 2.95],  # ALM u0
    [0.55, 0.65, 0.66, 1.45, 2.85],                     # ALM u1
    [0.10, 1.31, 1.35, 2.52],                           # STR u2
    [0.42],                                             # STR u3 (noise)
]
# Hand counts, (trial, bin) per unit, for the aligned window above.
HAND = {
    0: [[2, 0, 0, 0, 1], [1, 0, 0, 0, 1], [1, 0, 0, 0, 0]],
    1: [[0, 0, 1, 2, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 1]],
    2: [[0, 0, 0, 0, 0], [0, 2, 0, 0, 0], [0, 1, 0, 0, 0]],
    3: [[0, 1, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]],
}
ALIGNED = {"bin_ms": 100, "align": "go_cue_time", "window": (-0.2, 0.3), "ic_enc_seq_len": 2}


def make_session(path, **overrides):
    kw = {"spikes": SPIKES, "locations": ["ALM", "ALM", "STR", "STR"],
              "unit_columns": {"quality": ["good", "good", "good", "noise"]}, "trials": TRIALS,
              "trial_columns": {"go_cue_time": GO, "photostim": [False, True, False],
                             "condition": ["L", "R", "L"], "laser_mw": [0.0, 2.5, 0.0]}}
    kw.update(overrides)
    return build_nwb(path, **kw)


def by_trial(ds, col):
    """{trial_id: row} of a column, whatever order the writer stored rows in."""
    a = ds.arrays(columns=["trial_id", col])
    return {int(t): a[col][i] for i, t in enumerate(a["trial_id"])}


@pytest.fixture
def nwb(tmp_path):
    return make_session(tmp_path / "s1.nwb")


def test_counts_match_hand_counts_with_alignment_and_perturbed_split(nwb, tmp_path):
    o = IngestOptions(**ALIGNED, perturb_column="photostim", valid_fraction=0.0)
    m = ingest([nwb], tmp_path / "ds", o)
    assert m.n_bins == 5 and m.bin_width_s == pytest.approx(0.1)
    assert [(r.name, r.n_heldin, r.n_heldout) for r in m.regions] == [("ALM", 2, 0), ("STR", 2, 0)]
    assert m.splits == {"train": 2, "perturbed": 1}  # the photostim trial is never trained on
    # figures and perturb count time from the cue: bin 0 starts 0.2 s before it
    assert ArrowDataset.open(tmp_path / "ds").manifest.time_axis == (-0.2, "go_cue_time")
    ds = ArrowDataset.open(tmp_path / "ds")
    alm, strm = by_trial(ds, "x/ALM"), by_trial(ds, "x/STR")
    for t in range(3):
        np.testing.assert_array_equal(alm[t], np.array([HAND[0][t], HAND[1][t]]).T)
        np.testing.assert_array_equal(strm[t], np.array([HAND[2][t], HAND[3][t]]).T)
    split = by_trial(ds, "split")
    assert (split[0], split[1], split[2]) == ("train", "perturbed", "train")
    assert by_trial(ds, "condition") == {0: "L", 1: "R", 2: "L"}


@pytest.mark.parametrize("values, kind", [
    (["N/A", "1.2000", "N/A"], "text"),      # an onset column as NWB conversions write it
    ([" none", "ALM", ""], "text"),           # the stimulated site, or nothing
    (["false", "true", "0"], "text"),
    ([np.nan, 0.8, np.nan], "NaN"),          # an onset in seconds, NaN where none
    ([0, 3, 0], None),
])
def test_perturb_column_reads_text_and_nan_as_onsets_are_written(tmp_path, values, kind):
    """Trial 1 is the perturbed one in every spelling; text and NaN are read by rule, so
    how is a warning in the manifest."""
    nwb = make_session(tmp_path / "s.nwb", trial_columns={"go_cue_time": GO, "stim": values})
    m = ingest([nwb], tmp_path / "ds", IngestOptions(**ALIGNED, perturb_column="stim",
                                                     valid_fraction=0.0))
    assert m.splits == {"train": 2, "perturbed": 1}
    assert by_trial(ArrowDataset.open(tmp_path / "ds"), "split")[1] == "perturbed"
    said = [w for w in m.provenance["warnings"] if "--perturb-column 'stim'" in w]
    if kind == "text":
        (w,) = said
        words = [str(v).strip() for v in values]
        off = ", ".join(repr(v) for v in sorted(set(words) - {words[1]}))
        assert f"1 trials read as perturbed ({words[1]!r}), 2 as not ({off})" in w
    elif kind == "NaN":
        assert said == [("s.nwb: --perturb-column 'stim' is NaN on 2 trials, read as not "
                         "perturbed (no onset)")]
    else:
        assert said == []


def test_a_time_column_written_as_text_reads_as_numbers_and_n_a_as_missing(tmp_path):
    nwb = make_session(tmp_path / "s.nwb",
                       trial_columns={"go_cue_time": [" 0.5", "N/A", "2.6"]})
    with pytest.raises(IngestError, match=r"alignment event 'go_cue_time' \(--align\) is "
                                          r"missing \(NaN\) for 1 trials"):
        ingest([nwb], tmp_path / "ds", IngestOptions(**ALIGNED))
    m = ingest([nwb], tmp_path / "ds", IngestOptions(**ALIGNED, unfit_trials="drop"))
    alm = by_trial(ArrowDataset.open(tmp_path / "ds"), "x/ALM")
    assert sorted(alm) == [0, 2] and m.provenance["sources"][0]["n_trials"] == 2
    for t in (0, 2):  # the same counts as with the go cues stored as floats
        np.testing.assert_array_equal(alm[t], np.array([HAND[0][t], HAND[1][t]]).T)
    bad = make_session(tmp_path / "b.nwb", trial_columns={"go_cue_time": ["0.5", "soon", "x"]})
    with pytest.raises(IngestError, match=r"'go_cue_time' \(--align\) must hold numbers .* but "
                                          r"2 trials hold other text: 'soon', 'x'"):
        ingest([bad], tmp_path / "bad", IngestOptions(**ALIGNED))
    assert not (tmp_path / "bad").exists()


def test_default_window_is_trial_start_to_shortest_trial(nwb, tmp_path):
    m = ingest([nwb], tmp_path / "ds", IngestOptions(bin_ms=250, ic_enc_seq_len=1))
    assert m.n_bins == 4 and m.provenance["window_s"] == [0.0, 1.0]
    alm = by_trial(ArrowDataset.open(tmp_path / "ds"), "x/ALM")
    # unit 0, trial 0 = [0,1): 0.05 | 0.31 0.35 | - | 0.79 ; trial 2 = [2,3): 2.45 | - | - | 2.95
    np.testing.assert_array_equal(alm[0][:, 0], [1, 2, 0, 1])
    np.testing.assert_array_equal(alm[2][:, 0], [0, 1, 0, 1])


def test_back_to_back_trials_whose_bins_meet_by_float_rounding(tmp_path):
    # trials of 0.3 s end to end, 100 ms bins: trial 0's last edge is 3 x 0.1 =
    # 0.30000000000000004, a hair past trial 1's start; a spike at 0.3 s is trial 1's
    spikes = [[0.0, 0.29, 0.3, 0.6, 0.89]]
    path = build_nwb(tmp_path / "s.nwb", spikes=spikes, locations=["ALM"],
                     trials=[(0.0, 0.3), (0.3, 0.6), (0.6, 0.9)])
    m = ingest([path], tmp_path / "ds", IngestOptions(bin_ms=100, ic_enc_seq_len=1,
                                                      valid_fraction=0.0, heldout=0.0))
    assert m.n_bins == 3
    alm = by_trial(ArrowDataset.open(tmp_path / "ds"), "x/ALM")
    assert [alm[t][:, 0].tolist() for t in range(3)] == [[1, 0, 1], [1, 0, 0], [1, 0, 1]]


def test_unfit_trials_drop_leaves_out_a_window_past_its_trial_and_a_missing_event(tmp_path):
    # trial 1 has no go cue; trial 2's cue at 2.9 s puts its window [2.7, 3.2) past its stop
    path = make_session(tmp_path / "s.nwb", trial_columns={
        "go_cue_time": [0.5, np.nan, 2.9], "photostim": [False, True, False],
        "condition": ["L", "R", "L"], "laser_mw": [0.0, 2.5, 0.0]})
    with pytest.raises(IngestError, match="--unfit-trials drop"):
        ingest([path], tmp_path / "refused", IngestOptions(**ALIGNED))
    m = ingest([path], tmp_path / "ds", IngestOptions(**ALIGNED, unfit_trials="drop",
                                                      valid_fraction=0.0))
    assert m.splits == {"train": 1}
    alm, strm = (by_trial(ArrowDataset.open(tmp_path / "ds"), f"x/{r}") for r in ("ALM", "STR"))
    assert list(alm) == [0]  # trial 0's counts as in the hand-counted table
    np.testing.assert_array_equal(alm[0], np.array([HAND[0][0], HAND[1][0]]).T)
    np.testing.assert_array_equal(strm[0], np.array([HAND[2][0], HAND[3][0]]).T)
    src = m.provenance["sources"][0]
    assert src["trial_ids"] == [0]
    assert src["dropped_trials"] == {
        "no 'go_cue_time' event (NaN)": [1],
        "the window -0.2:0.3 s falls outside the trial's start_time..stop_time": [2]}
    warnings = m.provenance["warnings"]
    assert sum("dropped 1 of 3 trials" in w and "ids 1" in w for w in warnings) == 1
    assert sum("dropped 1 of 2 trials" in w and "ids 2" in w for w in warnings) == 1
    assert IngestOptions(**json.loads(json.dumps(m.provenance["options"]))).unfit_trials == "drop"


def test_window_beyond_trial_bins_spikes_between_trials_and_never_twice(tmp_path):
    # unit 0 also fires at 0.97 s (in trial 0's bounds) and 3.02 s (after every trial)
    spikes = [sorted(SPIKES[0] + [0.97, 3.02]), *SPIKES[1:]]
    path = make_session(tmp_path / "s.nwb", spikes=spikes)
    # -0.45:0.45 around cues 0.5, 1.4, 2.6: [0.05, 0.95), [0.95, 1.85), [2.15, 3.05); the
    # last two reach past their trials (1.0-2.0 starts after 0.95; 2.0-3.0 ends before 3.05)
    o = dict(ALIGNED, window=(-0.45, 0.45))
    with pytest.raises(IngestError, match="in 2 trials the window -0.45:0.45 s falls outside"):
        ingest([path], tmp_path / "refused", IngestOptions(**o))
    m = ingest([path], tmp_path / "ds", IngestOptions(**o, window_beyond_trial=True))
    assert m.n_bins == 9
    alm = by_trial(ArrowDataset.open(tmp_path / "ds"), "x/ALM")
    for t, start in enumerate((0.05, 0.95, 2.15)):
        edges = start + 0.1 * np.arange(10)
        for u in (0, 1):
            hand, _ = np.histogram(spikes[u], bins=edges)
            np.testing.assert_array_equal(alm[t][:, u], hand)
    # the spikes outside their window's trial: 0.97 s in trial 1's first bin [0.95, 1.05),
    # 3.02 s with 2.95 s in trial 2's last [2.95, 3.05); trial 0 counts neither
    assert (alm[1][0, 0], alm[2][-1, 0], alm[0][:, 0].sum()) == (1, 2, 4)
    # -0.5:0.5: trial 1's window [0.9, 1.9) overlaps trial 0's [0.0, 1.0)
    o = dict(ALIGNED, window=(-0.5, 0.5), window_beyond_trial=True)
    with pytest.raises(IngestError, match="overlaps an earlier trial's"):
        ingest([path], tmp_path / "overlap", IngestOptions(**o))
    m = ingest([path], tmp_path / "ds2", IngestOptions(**o, unfit_trials="drop"))
    assert m.provenance["sources"][0]["trial_ids"] == [0, 2]


def test_overlapping_trials_ingest_while_their_windows_do_not_overlap(tmp_path):
    # trial 1 starts at 0.9 s, inside trial 0 (0.0-1.2 s); the aligned windows [0.3, 0.8),
    # [1.2, 1.7), [2.4, 2.9) are still clear of each other, so the counts are HAND's
    path = make_session(tmp_path / "s.nwb", trials=[(0.0, 1.2), (0.9, 2.0), (2.0, 3.0)])
    ingest([path], tmp_path / "ds", IngestOptions(**ALIGNED, valid_fraction=0.0))
    alm = by_trial(ArrowDataset.open(tmp_path / "ds"), "x/ALM")
    for t in range(3):
        np.testing.assert_array_equal(alm[t], np.array([HAND[0][t], HAND[1][t]]).T)
    # -0.5:0.5: [0.0, 1.0), [0.9, 1.9), [2.1, 3.1): trial 1's window overlaps trial 0's
    # (both inside their trials) and trial 2's ends after its trial
    o = dict(ALIGNED, window=(-0.5, 0.5))
    with pytest.raises(IngestError, match="falls outside"):
        ingest([path], tmp_path / "refused", IngestOptions(**o))
    m = ingest([path], tmp_path / "ds2", IngestOptions(**o, unfit_trials="drop"))
    assert m.provenance["sources"][0]["trial_ids"] == [0]
    assert m.provenance["sources"][0]["dropped_trials"] == {
        "the window -0.5:0.5 s falls outside the trial's start_time..stop_time": [2],
        "the window -0.5:0.5 s overlaps an earlier trial's or starts before the session": [1]}


def test_trials_where_a_unit_was_not_recorded_are_refused_or_dropped(tmp_path):
    # windows [0.3, 0.8), [1.2, 1.7), [2.4, 2.9); unit 2 recorded until 1.5 s, so not over
    # trials 1 and 2; unit 3 (noise, dropped) only until 0.5 s, which must not count
    path = make_session(tmp_path / "s.nwb", obs_intervals=[
        [(0.0, 3.5)], [(1.0, 3.5), (0.0, 1.0)], [(0.0, 1.5)], [(0.0, 0.5)]])
    o = dict(ALIGNED, drop_quality=("noise",))
    with pytest.raises(IngestError) as e:
        ingest([path], tmp_path / "refused", IngestOptions(**o))
    msg = str(e.value)
    assert "in 2 of 3 trials" in msg and "2 (2 trials)" in msg and "--unfit-trials drop" in msg
    assert "3 (" not in msg  # the noise unit is not binned
    assert "--drop-units" in msg
    m = ingest([path], tmp_path / "ds", IngestOptions(**o, unfit_trials="drop"))
    assert m.provenance["sources"][0]["dropped_trials"] == {
        "a unit was not recorded over the whole window (Units obs_intervals)": [1, 2]}
    assert m.provenance["sources"][0]["trial_ids"] == [0]
    # without unit 2 every trial is covered, also trial 1's window [0.95, 1.85) across the
    # two abutting intervals unit 1 was recorded in
    o = dict(ALIGNED, regions=("ALM",), window=(-0.45, 0.45), window_beyond_trial=True)
    m = ingest([path], tmp_path / "ds2", IngestOptions(**o))
    assert m.provenance["sources"][0]["trial_ids"] == [0, 1, 2]
    # or, as the error says, by leaving units 2 and 3 out by their ids (STR has no other)
    m = ingest([path], tmp_path / "ds3", IngestOptions(**ALIGNED, drop_units=(2, 3)))
    assert m.provenance["sources"][0]["trial_ids"] == [0, 1, 2]
    assert m.provenance["sources"][0]["unit_ids"] == {"ALM": [0, 1]}
    assert any("dropped 2 units by id (--drop-units)" in w for w in m.provenance["warnings"])


@pytest.mark.parametrize("window", [["--window", "-0.2:0.3"], ["--window=-0.2:0.3"],
                                    ["--window", "-.2:.3"]])
def test_drop_units_takes_ids_from_the_cli_and_refuses_an_id_no_file_has(nwb, tmp_path, window):
    """The README's spelling of a window before the event, ``--window -1.0:1.0``, parses
    (argparse alone reads "-1.0:1.0" as an option)."""
    from mrlfads.training.cli import main

    out = tmp_path / "ds"
    assert main(["ingest", str(nwb), "--out", str(out), "--bin-ms", "100", "--align",
                 "go_cue_time", *window, "--ic-enc-seq-len", "2", "--heldout", "0",
                 "--drop-units", "0,3"]) == 0
    assert ArrowDataset.open(out).manifest.provenance["window_s"] == [-0.2, 0.3]
    ds = ArrowDataset.open(out)
    assert ds.manifest.provenance["sources"][0]["unit_ids"] == {"ALM": [1], "STR": [2]}
    alm = by_trial(ds, "x/ALM")
    for t in range(3):
        np.testing.assert_array_equal(alm[t][:, 0], HAND[1][t])
    with pytest.raises(IngestError, match=r"--drop-units: unit ids \[7\] are in no file's "
                                          r"Units table \(its ids run 0..3\)"):
        ingest([nwb], tmp_path / "bad", IngestOptions(**ALIGNED, drop_units=(3, 7)))
    assert not (tmp_path / "bad").exists()
    for bad in ("a", "s/x", "/3", 1.5, True):
        with pytest.raises(IngestError, match="--drop-units: give Units ids as integers"):
            IngestOptions(drop_units=(bad,))
    assert IngestOptions(drop_units=(" 4", "s/5")).drop_units == (4, "s/5")
    with pytest.raises(SystemExit):
        main(["ingest", str(nwb), "--out", str(tmp_path / "x"), "--drop-units", "0,s/x"])


def test_units_without_a_spike_in_any_window_are_named_in_a_warning(tmp_path):
    # unit 1 fires only between the windows (0.3-0.8, 1.2-1.7, 2.4-2.9 s), unit 2 never
    spikes = [SPIKES[0], [0.1, 1.0, 2.0], [], SPIKES[2]]
    m = ingest([make_session(tmp_path / "s.nwb", spikes=spikes)], tmp_path / "ds",
               IngestOptions(**ALIGNED))
    (w,) = [w for w in m.provenance["warnings"] if "no spike" in w]
    assert w.startswith("2 units fire no spike") and "ALM:1, STR:2" in w and "--drop-units" in w


def test_a_short_trial_setting_the_default_window_is_named_with_the_fix(tmp_path):
    path = make_session(tmp_path / "s.nwb", trials=[(0.0, 1.0), (1.0, 2.0), (2.0, 2.3)])
    m = ingest([path], tmp_path / "ds", IngestOptions(bin_ms=100, ic_enc_seq_len=1))
    assert m.provenance["window_s"] == [0.0, pytest.approx(0.3)] and m.n_bins == 3
    (warning,) = [w for w in m.provenance["warnings"] if "cut to" in w]
    assert "trial 2" in warning and "--window 0:1.000 --unfit-trials drop" in warning
    m = ingest([path], tmp_path / "ds2", IngestOptions(bin_ms=100, ic_enc_seq_len=1,
                                                       window=(0.0, 1.0), unfit_trials="drop"))
    assert m.n_bins == 10 and m.provenance["sources"][0]["trial_ids"] == [0, 1]
    # trials of equal length: no warning
    m = ingest([make_session(tmp_path / "e.nwb")], tmp_path / "ds3",
               IngestOptions(bin_ms=100, ic_enc_seq_len=1))
    assert not [w for w in m.provenance["warnings"] if "cut to" in w]


def test_quality_filter_and_min_neurons_drop_region_with_warning(nwb, tmp_path):
    o = IngestOptions(**ALIGNED, drop_quality=("noise",), min_neurons=2)
    m = ingest([nwb], tmp_path / "ds", o)
    assert m.region_names == ("ALM",)  # STR kept 1 unit after dropping the noise unit
    warnings = " ".join(m.provenance["warnings"])
    assert "'STR'" in warnings and "--min-neurons" in warnings and "noise" in warnings


def test_units_without_a_known_region_are_named_in_warnings(tmp_path):
    # pynwb refuses an electrode without a location; a Units column may hold an empty one
    path = make_session(tmp_path / "s.nwb", locations=None,
                        unit_columns={"area": ["ALM", "ALM", "unknown", ""]})
    m = ingest([path], tmp_path / "ds", IngestOptions(**ALIGNED, region_column="area"))
    assert m.region_names == ("ALM", "unknown")  # kept as the file says, but named:
    warnings = m.provenance["warnings"]
    assert [w for w in warnings if "left out 1 units with an empty region label" in w]
    assert [w for w in warnings if "1 units are labelled 'unknown'" in w and "--regions" in w]
    m = ingest([path], tmp_path / "ds2", IngestOptions(**ALIGNED, region_column="area",
                                                       regions=("ALM",)))
    assert not [w for w in m.provenance["warnings"] if "'unknown'" in w]


def test_region_map_merges_fine_labels_and_null_drops(tmp_path):
    path = make_session(tmp_path / "s.nwb", locations=["ALM_l1", "ALM_l5", "CPu", "fiber"])
    (tmp_path / "map.yaml").write_text("ALM_l1: ALM\nALM_l5: ALM\nCPu: STR\nfiber: null\n")
    o = IngestOptions(**ALIGNED, region_map=str(tmp_path / "map.yaml"))
    m = ingest([path], tmp_path / "ds", o)
    assert [(r.name, r.n_neurons) for r in m.regions] == [("ALM", 2), ("STR", 1)]
    assert m.provenance["region_map"]["fiber"] is None


def test_region_column_without_electrodes(tmp_path):
    path = make_session(tmp_path / "s.nwb", locations=None,
                        unit_columns={"area": ["M1", "M1", "M1", "S1"]})
    m = ingest([path], tmp_path / "ds", IngestOptions(**ALIGNED, region_column="area"))
    assert [(r.name, r.n_neurons) for r in m.regions] == [("M1", 3), ("S1", 1)]


def test_heldout_count_and_fraction_are_seeded_and_held_in_first(nwb, tmp_path):
    many = build_nwb(tmp_path / "many.nwb", spikes=[[0.1 + 0.01 * i] for i in range(10)],
                     locations=["A"] * 10, trials=[(0.0, 1.0), (1.0, 2.0)])
    o = IngestOptions(bin_ms=100, ic_enc_seq_len=2, heldout=0.3, seed=3, valid_fraction=0.0)
    m1 = ingest([many], tmp_path / "d1", o)
    m2 = ingest([many], tmp_path / "d2", o)
    assert (m1.regions[0].n_heldin, m1.regions[0].n_heldout) == (7, 3)  # floor(0.3 * 10)
    assert m1.regions[0].neuron_ids == m2.regions[0].neuron_ids  # same seed, same choice
    ids = [int(i) for i in m1.regions[0].neuron_ids]
    assert sorted(ids[:7]) == ids[:7] and sorted(ids[7:]) == ids[7:] and sorted(ids) == list(range(10))
    # Unit i spikes once at 0.1 + 0.01 i in trial 0, bin 1: column j holds unit ids[j].
    x = by_trial(ArrowDataset.open(tmp_path / "d1"), "x/A")[0]
    np.testing.assert_array_equal(x.sum(axis=0), np.ones(10))
    m3 = ingest([nwb], tmp_path / "d3", IngestOptions(**ALIGNED, heldout=1))
    assert [(r.n_heldin, r.n_heldout) for r in m3.regions] == [(1, 1), (1, 1)]


def test_default_holds_out_a_tenth_at_least_one_per_region_of_five_units(tmp_path):
    # A: 10 units -> floor(0.1 * 10) = 1; B: 4 units (< 5) -> none; C: 6 units -> at least 1
    locations = ["A"] * 10 + ["B"] * 4 + ["C"] * 6
    path = build_nwb(tmp_path / "r.nwb", spikes=[[0.1 + 0.01 * i] for i in range(20)],
                     locations=locations, trials=[(0.0, 1.0), (1.0, 2.0)])
    m = ingest([path], tmp_path / "d", IngestOptions(bin_ms=100, ic_enc_seq_len=2,
                                                     valid_fraction=0.0))
    assert [(r.name, r.n_heldin, r.n_heldout) for r in m.regions] == [
        ("A", 9, 1), ("B", 4, 0), ("C", 5, 1)]
    assert m.provenance["options"]["heldout"] == 0.1  # the resolved value: repeatable
    none = ingest([path], tmp_path / "d0", IngestOptions(bin_ms=100, ic_enc_seq_len=2,
                                                         valid_fraction=0.0, heldout=0))
    assert [r.n_heldout for r in none.regions] == [0, 0, 0]
    assert IngestOptions(heldout_column="heldout").heldout == 0.0  # the column decides


def test_two_sessions_become_one_dataset(tmp_path):
    a = make_session(tmp_path / "a.nwb")
    shifted = [[t + 10.0 for t in s] for s in SPIKES]
    b = make_session(tmp_path / "b.nwb", spikes=shifted, trials=[(s + 10, e + 10) for s, e in TRIALS],
                     trial_columns={"go_cue_time": [g + 10 for g in GO],
                                    "photostim": [False] * 3, "condition": ["L"] * 3})
    m = ingest([a, b], tmp_path / "ds", IngestOptions(**ALIGNED, valid_fraction=0.0))
    assert m.n_trials == 6 and len(m.provenance["sources"]) == 2
    alm = by_trial(ArrowDataset.open(tmp_path / "ds"), "x/ALM")
    assert sorted(alm) == [0, 1, 2, 3, 4, 5]  # ids of session b shifted by 3
    for t in range(3):
        np.testing.assert_array_equal(alm[t], alm[t + 3])
        np.testing.assert_array_equal(alm[t][:, 0], HAND[0][t])


def test_manifest_records_sources_and_options_to_repeat_exactly(nwb, tmp_path):
    o = IngestOptions(**ALIGNED, heldout=1, seed=7, perturb_column="photostim")
    m = ingest([nwb], tmp_path / "d1", o)
    src = m.provenance["sources"][0]
    assert src["sha256"] == sha256_file(nwb) and src["trial_ids"] == [0, 1, 2]
    assert (src["name"], src["size"]) == ("s1.nwb", os.path.getsize(nwb)) and "path" not in src
    again = IngestOptions(**json.loads(json.dumps(m.provenance["options"])))
    assert again == o
    m2 = ingest([tmp_path / src["name"]], tmp_path / "d2", again)
    a1, a2 = ArrowDataset.open(tmp_path / "d1").arrays(), ArrowDataset.open(tmp_path / "d2").arrays()
    assert m2.regions == m.regions and m2.splits == m.splits
    for col in a1:
        np.testing.assert_array_equal(a1[col], a2[col])


def test_ext_from_trials_column_and_timeseries(nwb, tmp_path):
    m = ingest([nwb], tmp_path / "d1", IngestOptions(**ALIGNED, ext_column="laser_mw"))
    assert m.ext_dims == {"ALM": 1, "STR": 1}
    ext = by_trial(ArrowDataset.open(tmp_path / "d1"), "ext/STR")
    np.testing.assert_array_equal(ext[1], np.full((5, 1), 2.5))
    # A TimeSeries sampled every 50 ms with value = sample index: bins of 100 ms average
    # two samples; the window of trial 0 starts at 0.3 s, before sample 6 -> means 6.5, 8.5, ...
    times = np.arange(0, 3.0, 0.05) + 0.01  # off the bin edges
    ts = make_session(tmp_path / "ts.nwb", timeseries={"laser": (times, np.arange(len(times)) * 1.0)})
    ingest([ts], tmp_path / "d2", IngestOptions(**ALIGNED, ext_timeseries="laser"))
    ext = by_trial(ArrowDataset.open(tmp_path / "d2"), "ext/ALM")
    np.testing.assert_allclose(ext[0][:, 0], [6.5, 8.5, 10.5, 12.5, 14.5], atol=1e-5)


@pytest.mark.parametrize("bin_s, gap_s", [(0.02, 0.1), (0.01, 0.0), (0.1, 0.0)])
def test_export_then_ingest_gives_back_the_same_counts(tmp_path, bin_s, gap_s):
    # gap 0: trials end to end, each window ending where the next trial starts
    rng = np.random.default_rng(0)
    counts = {"A": rng.poisson(1.5, (6, 12, 4)), "B": rng.poisson(0.5, (6, 12, 3))}
    perturbed = np.array([False, False, True, False, False, True])
    path = write_nwb_from_arrays(tmp_path / "x.nwb", counts=counts, bin_width_s=bin_s,
                                 n_heldout={"A": 1}, perturbed=perturbed,
                                 condition=np.array(list("abcabc")), trial_gap_s=gap_s)
    o = IngestOptions(bin_ms=bin_s * 1000, heldout_column="heldout", perturb_column="perturbed",
                      valid_fraction=0.25)
    m = ingest([path], tmp_path / "ds", o)
    assert [(r.name, r.n_heldin, r.n_heldout) for r in m.regions] == [("A", 3, 1), ("B", 3, 0)]
    assert m.n_bins == 12 and m.splits == {"train": 3, "valid": 1, "perturbed": 2}
    ds = ArrowDataset.open(tmp_path / "ds")
    for r in ("A", "B"):
        x = by_trial(ds, f"x/{r}")
        np.testing.assert_array_equal(np.stack([x[t] for t in range(6)]), counts[r])
    assert by_trial(ds, "condition")[4] == "b"


def test_dataset_to_nwb_round_trip(tmp_path):
    from mrlfads.data_loaders.nwb import dataset_to_nwb
    from mrlfads.data_loaders.writer import write_dataset

    rng = np.random.default_rng(1)
    x = {"A": rng.poisson(2.0, (5, 15, 3)).astype(np.float32), "B": rng.poisson(1.0, (5, 15, 2))}
    split = np.array(["train", "train", "valid", "train", "perturbed"], dtype=object)
    write_dataset(tmp_path / "src", name="sim", regions=[("A", 2, 1), ("B", 2, 0)],
                  obs_model="poisson", bin_width_s=0.01, ic_enc_seq_len=3, x=x, split=split,
                  trial_id=np.arange(10, 15))
    path = dataset_to_nwb(ArrowDataset.open(tmp_path / "src"), tmp_path / "sim.nwb")
    o = IngestOptions(bin_ms=10, ic_enc_seq_len=3, heldout_column="heldout",
                      perturb_column="perturbed")
    m = ingest([path], tmp_path / "back", o)
    assert m.splits["perturbed"] == 1 and [r.n_heldout for r in m.regions] == [1, 0]
    src, back = ArrowDataset.open(tmp_path / "src"), ArrowDataset.open(tmp_path / "back")
    for r in ("A", "B"):
        a, b = by_trial(src, f"x/{r}"), by_trial(back, f"x/{r}")
        assert sorted(a) == sorted(b) == list(range(10, 15))
        for t in a:
            np.testing.assert_array_equal(a[t], b[t])


def test_unsorted_spike_times_are_binned_as_sorted_with_a_warning(tmp_path):
    path = build_nwb(tmp_path / "s.nwb", spikes=[[0.1, 0.5], [1.9, 0.2, 1.2], [0.3]],
                     locations=["ALM", "ALM", "STR"], trials=[(0.0, 1.0), (1.0, 2.0)])
    m = ingest([path], tmp_path / "ds", IngestOptions(bin_ms=100, ic_enc_seq_len=2, heldout=0,
                                                      valid_fraction=0))
    (w,) = [w for w in m.provenance["warnings"] if "ascending" in w]
    assert "s.nwb" in w and "1 units" in w and "unit 1: spike 1 at 0.200000 s after 1.900000 s" in w
    a = ArrowDataset.open(tmp_path / "ds").arrays(columns=["trial_id", "x/ALM"])
    counts = {int(t): a["x/ALM"][i][:, 1].sum() for i, t in enumerate(a["trial_id"])}
    assert counts == {0: 1, 1: 2}  # 0.2 | 1.2, 1.9


def test_bin_spikes_matches_histogram_per_trial():
    rng = np.random.default_rng(0)
    spikes = np.sort(rng.uniform(0, 20, 5000))
    t0 = np.array([0.5, 3.0, 3.0 + 0.7 * 5, 11.0])  # third window touches the second
    edges = window_edges(t0, 7, 0.1)
    got = bin_spikes(spikes, edges)
    want = np.stack([np.histogram(spikes[(spikes >= e[0]) & (spikes < e[-1])], e)[0] for e in edges])
    np.testing.assert_array_equal(got, want)


def test_bin_spikes_counts_each_spike_once_in_back_to_back_windows():
    # 0.3 s windows end to end in 0.1 s bins: many last edges land a hair past the next start
    starts = np.arange(200) * 0.3
    edges = window_edges(starts, 3, 0.1)
    assert (edges[:-1, -1] > starts[1:]).any()
    got = bin_spikes(starts, edges)  # one spike at each window's start
    np.testing.assert_array_equal(got, np.tile([1, 0, 0], (200, 1)))


def test_bin_timeseries_holds_last_sample_in_empty_bins():
    edges = window_edges(np.array([0.0]), 4, 1.0)
    times = np.array([-0.5, 0.2, 0.4, 2.5])
    values = np.array([[9.0], [1.0], [3.0], [5.0]])
    np.testing.assert_allclose(bin_timeseries(times, values, edges)[0, :, 0], [2.0, 3.0, 5.0, 5.0])


def test_cli_ingest_prints_summary(nwb, tmp_path, capsys):
    from mrlfads.training.cli import main

    out = tmp_path / "ds"
    rc = main(["ingest", str(nwb), "--out", str(out), "--bin-ms", "100", "--align", "go_cue_time",
               "--window=-0.2:0.3", "--ic-enc-seq-len", "2", "--perturb-column", "photostim",
               "--drop-quality", "noise", "--min-neurons", "2"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "ALM" in text and "perturbed" in text and "STR" in text  # STR named in the warning
    m = ArrowDataset.open(out).manifest
    assert m.splits["perturbed"] == 1
    # headings are whole lines, however long the path (a table title wrapped them)
    assert f"{m.name}: 5 bins of 100 ms -> {out}" in text.splitlines()
    assert "trials per split" in text.splitlines()
    assert main(["ingest", str(nwb), "--out", str(out)]) == 2  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    # -0.2:0.5 puts trial 2's window [2.4, 3.1) past its stop: refused, then dropped, then
    # kept by binning past the trial
    args = ["ingest", str(nwb), "--bin-ms", "100", "--align", "go_cue_time", "--window=-0.2:0.5",
            "--ic-enc-seq-len", "2"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 2
    assert "--unfit-trials drop" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "b"), "--unfit-trials", "drop"]) == 0
    assert "dropped 1 of 3 trials" in capsys.readouterr().out.replace("\n", " ")
    assert main([*args, "--out", str(tmp_path / "c"), "--window-beyond-trial"]) == 0
    assert ArrowDataset.open(tmp_path / "c").manifest.provenance["sources"][0]["n_trials"] == 3


def test_importing_ingest_does_not_import_pynwb():
    import subprocess
    import sys

    code = "import sys, mrlfads.data_loaders.nwb; assert 'pynwb' not in sys.modules, 'pynwb imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_spike_times_in_milliseconds_are_refused_naming_the_fix(tmp_path):
    """Spike times written in ms (or samples) bin as near silence on the trials' clock in
    seconds; the ingest says what they look like instead of writing that dataset. A long
    recording after short trials, in seconds, is not mistaken for it."""
    rng = np.random.default_rng(0)
    trials = [(2.0 * k, 2.0 * k + 1.5) for k in range(20)]  # 40 s of trials
    seconds = [np.sort(rng.uniform(0, 6000, 30000)) for _ in range(6)]  # 5 Hz for 100 min
    ms = build_nwb(tmp_path / "ms.nwb", spikes=[s[s < 40] * 1000 for s in seconds],
                   locations=["A"] * 6, trials=trials)
    with pytest.raises(IngestError) as err:
        ingest([ms], tmp_path / "d", IngestOptions(bin_ms=10))
    text = str(err.value)
    assert "ms.nwb" in text and "6 of 6 units" in text and "look like milliseconds" in text
    assert "divide by 1000" in text and not (tmp_path / "d").exists()
    long = build_nwb(tmp_path / "long.nwb", spikes=seconds, locations=["A"] * 6, trials=trials)
    m = ingest([long], tmp_path / "ok", IngestOptions(bin_ms=10))  # 150x past, at 5 Hz
    assert m.n_trials == 20
