"""`mrlfads ingest a.nwb b.nwb ...` with different units: a session per file (pynwb files)."""
from __future__ import annotations

import numpy as np
import pytest

from mrlfads.data_loaders.errors import IngestError
from mrlfads.data_loaders.nwb import IngestOptions, ingest
from mrlfads.data_loaders.nwb.sessions import session_names
from mrlfads.data_loaders.nwb.testing import build_nwb
from mrlfads.data_loaders.reader import ArrowDataset
from tests.test_ingest import ALIGNED, GO, HAND, SPIKES, TRIALS, by_trial, make_session


def _shifted(path, dt, spikes, locations, quality):
    return make_session(path, spikes=[[t + dt for t in s] for s in spikes], locations=locations,
                        unit_columns={"quality": quality},
                        trials=[(s + dt, e + dt) for s, e in TRIALS],
                        trial_columns={"go_cue_time": [g + dt for g in GO],
                                       "photostim": [False] * 3, "condition": ["L"] * 3})


@pytest.fixture
def three(tmp_path):
    """a: ALM u0 u1, STR u2 (u3 is noise); b: three ALM units, no STR at all; c: one ALM
    unit and one STR unit that is noise. Times of b and c shifted by 10 s and 20 s."""
    a = make_session(tmp_path / "a.nwb")
    b = _shifted(tmp_path / "b.nwb", 10.0, [SPIKES[0], SPIKES[1], SPIKES[0]], ["ALM"] * 3,
                 ["good"] * 3)
    c = _shifted(tmp_path / "c.nwb", 20.0, [SPIKES[0], SPIKES[2]], ["ALM", "STR"], ["good", "noise"])
    return [a, b, c]


def test_files_with_different_units_become_sessions(three, tmp_path):
    o = IngestOptions(**ALIGNED, heldout=0, drop_quality=("noise",), valid_fraction=0.34)
    m = ingest(three, tmp_path / "ds", o)  # --sessions auto: counts differ -> separate
    assert m.session_names == ("a", "b", "c")
    assert [(r.name, r.n_heldin, r.n_heldout) for r in m.regions] == [("ALM", 6, 0), ("STR", 1, 0)]
    assert [s.units for s in m.sessions] == [{"ALM": (2, 0), "STR": (1, 0)},
                                             {"ALM": (3, 0), "STR": (0, 0)},
                                             {"ALM": (1, 0), "STR": (0, 0)}]
    assert m.sessions[0].missing == {}
    assert m.sessions[1].missing == {"STR": "not in file b.nwb"}
    assert m.sessions[2].missing == {"STR": "no units left after --drop-quality noise in c.nwb"}
    assert m.region("ALM").neuron_ids == ("a/0", "a/1", "b/0", "b/1", "b/2", "c/0")
    assert m.region("STR").neuron_ids == ("a/2",)
    ds = ArrowDataset.open(tmp_path / "ds")
    ds.validate()
    alm, strm, session = by_trial(ds, "x/ALM"), by_trial(ds, "x/STR"), by_trial(ds, "session")
    assert [session[t] for t in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # ids shifted per file
    zero = np.zeros(5)
    for t in range(3):  # hand counts in each session's own columns, zeros elsewhere
        want_a = [HAND[0][t], HAND[1][t], zero, zero, zero, zero]
        want_b = [zero, zero, HAND[0][t], HAND[1][t], HAND[0][t], zero]
        want_c = [zero] * 5 + [HAND[0][t]]
        for tid, want in ((t, want_a), (t + 3, want_b), (t + 6, want_c)):
            np.testing.assert_array_equal(alm[tid], np.array(want).T)
        np.testing.assert_array_equal(strm[t][:, 0], HAND[2][t])
        assert not strm[t + 3].any() and not strm[t + 6].any()
    split = by_trial(ds, "split")
    for k in range(3):  # each session split on its own: round(3 * 0.34) = 1 valid each
        assert [split[t] for t in range(3 * k, 3 * k + 3)].count("valid") == 1
    assert [s["unit_ids"] for s in m.provenance["sources"]] == [
        {"ALM": [0, 1], "STR": [2]}, {"ALM": [0, 1, 2], "STR": []}, {"ALM": [0], "STR": []}]


def test_drop_units_by_session_leave_one_file_alone(three, tmp_path, capsys):
    """Separately sorted sessions reuse ids: SESSION/ID leaves a unit out of its own file
    only, a plain id out of every file; a session or id that does not exist is refused."""
    from mrlfads.training.cli import main

    o = dict(ALIGNED, heldout=0, drop_quality=("noise",), sessions="separate")
    m = ingest(three, tmp_path / "ds", IngestOptions(**o, drop_units=("b/1", "a/1")))
    assert [s["unit_ids"] for s in m.provenance["sources"]] == [
        {"ALM": [0], "STR": [2]}, {"ALM": [0, 2], "STR": []}, {"ALM": [0], "STR": []}]
    assert m.region("ALM").neuron_ids == ("a/0", "b/0", "b/2", "c/0")
    m = ingest(three, tmp_path / "ds1", IngestOptions(**o, drop_units=(1,)))
    assert [s["unit_ids"]["ALM"] for s in m.provenance["sources"]] == [[0], [0, 2], [0]]
    # from the command line, a plain id and a session's id together
    args = ["ingest", *map(str, three), "--out", str(tmp_path / "cli"), "--bin-ms", "100",
            "--align", "go_cue_time", "--window=-0.2:0.3", "--ic-enc-seq-len", "2",
            "--heldout", "0", "--drop-quality", "noise", "--sessions", "separate",
            "--drop-units", "1,b/0"]
    assert main(args) == 0
    ds = ArrowDataset.open(tmp_path / "cli")
    assert [s["unit_ids"]["ALM"] for s in ds.manifest.provenance["sources"]] == [[0], [2], [0]]
    alm = by_trial(ds, "x/ALM")  # b's column holds its unit 2 (spikes of SPIKES[0])
    np.testing.assert_array_equal(alm[3][:, 1], HAND[0][0])
    with pytest.raises(IngestError, match=r"sessions \['d'\] are not among the files given, "
                                          r"whose session names are \['a', 'b', 'c'\]"):
        ingest(three, tmp_path / "bad", IngestOptions(**o, drop_units=("d/1",)))
    with pytest.raises(IngestError, match=r"\['c/2'\] name no unit of their session's Units"):
        ingest(three, tmp_path / "bad", IngestOptions(**o, drop_units=("c/2", "b/2")))
    assert not (tmp_path / "bad").exists()


def test_matching_files_stay_one_session_unless_asked(tmp_path):
    a = make_session(tmp_path / "a.nwb")
    b = _shifted(tmp_path / "b.nwb", 10.0, SPIKES, ["ALM", "ALM", "STR", "STR"], ["good"] * 4)
    o = IngestOptions(**ALIGNED, heldout=0, valid_fraction=0.0)
    m = ingest([a, b], tmp_path / "auto", o)
    assert m.sessions == () and [r.n_heldin for r in m.regions] == [2, 2]  # matched by position
    sep = ingest([a, b], tmp_path / "sep", IngestOptions(**ALIGNED, heldout=0, valid_fraction=0.0,
                                                         sessions="separate"))
    assert sep.session_names == ("a", "b") and [r.n_heldin for r in sep.regions] == [4, 4]
    alm = by_trial(ArrowDataset.open(tmp_path / "sep"), "x/ALM")
    np.testing.assert_array_equal(alm[3][:, 2:], alm[0][:, :2])  # b's own columns: same spikes
    assert not alm[3][:, :2].any() and not alm[0][:, 2:].any()


def test_heldout_chosen_per_session_and_laid_out_after_all_heldin(tmp_path):
    ten = build_nwb(tmp_path / "ten.nwb", spikes=[[0.1 + 0.01 * i] for i in range(10)],
                    locations=["A"] * 10, trials=[(0.0, 1.0), (1.0, 2.0)])
    five = build_nwb(tmp_path / "five.nwb", spikes=[[0.1 + 0.01 * i] for i in range(5)],
                     locations=["A"] * 5, trials=[(0.0, 1.0), (1.0, 2.0)])
    o = IngestOptions(bin_ms=100, ic_enc_seq_len=2, heldout=0.2, seed=3, valid_fraction=0.5)
    m = ingest([ten, five], tmp_path / "d", o)
    assert [s.units["A"] for s in m.sessions] == [(8, 2), (4, 1)]  # floor(0.2 n) each
    ids = m.region("A").neuron_ids
    assert [i.split("/")[0] for i in ids] == ["ten"] * 8 + ["five"] * 4 + ["ten"] * 2 + ["five"]
    assert sorted(int(i.split("/")[1]) for i in ids if i.startswith("ten/")) == list(range(10))
    assert m.splits == {"train": 2, "valid": 2}  # 2 trials per session: 1 valid each
    blocks = m.session_blocks("A")
    assert blocks[1].heldin == slice(8, 12) and blocks[1].heldout == slice(2, 3)


def test_min_neurons_reason_and_session_without_any_region(tmp_path):
    a = make_session(tmp_path / "a.nwb")
    b = _shifted(tmp_path / "b.nwb", 10.0, [SPIKES[0]], ["STR"], ["good"])
    o = IngestOptions(**ALIGNED, heldout=0, min_neurons=2, valid_fraction=0.0, sessions="separate")
    from mrlfads.data_loaders.errors import IngestError

    with pytest.raises(IngestError, match="b.nwb: none of the kept regions"):
        ingest([a, b], tmp_path / "d", o)
    c = _shifted(tmp_path / "c.nwb", 10.0, [SPIKES[0], SPIKES[1], SPIKES[2]], ["ALM", "ALM", "STR"],
                 ["good"] * 3)
    m = ingest([a, c], tmp_path / "d2", o)
    assert m.sessions[1].missing == {"STR": "1 units < --min-neurons 2 in c.nwb"}


def test_session_names_from_file_stems():
    assert session_names(["/x/sub-01_ses 2.nwb", "/y/sub-01_ses 2.nwb", "/z/.hidden.nwb",
                          "s3://b/k/r1.nwb?versionId=3"]) == [
        "sub-01_ses_2", "sub-01_ses_2-2", "s_hidden", "r1"]


def test_cli_sessions_flag_and_summary(three, tmp_path, capsys):
    from mrlfads.training.cli import main

    out = str(tmp_path / "ds")
    assert main(["ingest", *three, "--out", out, "--bin-ms", "100", "--align", "go_cue_time",
                 "--window=-0.2:0.3", "--ic-enc-seq-len", "2", "--drop-quality", "noise",
                 "--sessions", "separate"]) == 0
    text = capsys.readouterr().out
    assert "session b: no STR (not in file b.nwb)" in text and "2+0" in text
    assert main(["ingest", *three, "--out", out, "--sessions", "matched", "--overwrite",
                 "--bin-ms", "100", "--ic-enc-seq-len", "2"]) == 2
    assert "--sessions separate" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ingest", *three, "--out", out, "--sessions", "both"])
