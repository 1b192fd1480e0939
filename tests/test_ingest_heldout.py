"""Held-out units that fire (data_loaders/nwb/heldout.py): a unit silent in every trial's
window never stays held out while a firing held-in unit can take its place."""
from __future__ import annotations

import collections

import numpy as np

from mrlfads.data_loaders.nwb import IngestOptions, ingest
from mrlfads.data_loaders.nwb.heldout import groups, swap_silent
from mrlfads.data_loaders.nwb.sessions import RegionLayout
from mrlfads.data_loaders.nwb.testing import build_nwb
from mrlfads.data_loaders.reader import ArrowDataset

# Two 1 s trials, 100 ms bins. Unit i < 6 spikes once in trial 0, in bin i (a fingerprint of
# its column); units 6..9 spike only between trials or not at all: silent in every window.
FIRING = 6
SPIKES = [[0.05 + 0.1 * i] for i in range(FIRING)] + [[1.5], [], [1.6], []]
TRIALS = [(0.0, 1.0), (2.0, 3.0)]


def _first_draw(seed: int, n: int = 10, n_out: int = 3) -> list[int]:
    """The held-out positions ingest draws before reading spikes (nwb/ingest.py, _layout)."""
    return np.sort(np.random.default_rng(seed).choice(n, size=n_out, replace=False)).tolist()


def test_silent_held_out_units_are_swapped_for_firing_ones(tmp_path):
    path = build_nwb(tmp_path / "s.nwb", spikes=SPIKES, locations=["A"] * 10, trials=TRIALS)
    swapped = unchanged = 0
    for seed in range(8):
        m = ingest([path], tmp_path / f"d{seed}", IngestOptions(bin_ms=100, ic_enc_seq_len=2,
                                                               heldout=3, seed=seed))
        ids = [int(i) for i in m.region("A").neuron_ids]
        held_in, held_out = ids[:7], ids[7:]
        assert sorted(held_in) == held_in and sorted(held_out) == held_out
        assert all(u < FIRING for u in held_out)  # 6 firing units: room for all 3
        drawn = _first_draw(seed)
        notes = [w for w in m.provenance["warnings"] if "swapped" in w]
        if all(u < FIRING for u in drawn):  # nothing to swap: exactly the first draw
            assert held_out == drawn and not notes
            unchanged += 1
        else:
            silent = [u for u in drawn if u >= FIRING]
            assert set(drawn) - set(silent) <= set(held_out)  # firing draws stay held out
            assert notes == [(f"region 'A': held-out units {silent} fire no spike in any "
                              "trial's window, so they were swapped for held-in units "
                              f"{sorted(set(held_out) - set(drawn))}, drawn at random among "
                              "those that fire")]
            swapped += 1
        # column j holds unit ids[j]: its fingerprint spike is in bin ids[j] of trial 0
        a = ArrowDataset.open(tmp_path / f"d{seed}").arrays(columns=["trial_id", "x/A"])
        x0 = a["x/A"][list(a["trial_id"]).index(0)]
        for j, u in enumerate(ids):
            expected = np.zeros(10)
            if u < FIRING:
                expected[u] = 1
            np.testing.assert_array_equal(x0[:, j], expected)
    assert swapped and unchanged  # both cases were exercised


def test_every_firing_unit_is_as_likely_to_be_held_out():
    """The swap treats firing units alike: over many draws each of the 6 firing units of 10 is
    held out in 3/6 of them, the silent ones never (2000 draws: sd of a share 0.011)."""
    x = {"A": np.zeros((2, 4, 10), dtype=np.float32)}
    x["A"][0, 0, :FIRING] = 1
    counts = collections.Counter()
    n = 2000
    for seed in range(n):
        out = _first_draw(seed)
        rows = np.concatenate([np.setdiff1d(np.arange(10), out), out])
        layout = RegionLayout("A", 7, 3, (rows,), (np.arange(10),))
        xs = {"A": x["A"][:, :, rows].copy()}
        (new,), _ = swap_silent(xs, [layout], {"A": groups(layout, [slice(0, 2)])},
                                [np.arange(10)], seed)
        counts.update(new.rows[0][7:].tolist())
        np.testing.assert_array_equal(xs["A"], x["A"][:, :, new.rows[0]])  # columns follow rows
    shares = np.array([counts[u] / n for u in range(10)])
    np.testing.assert_allclose(shares[:FIRING], 0.5, atol=0.04)
    assert not shares[FIRING:].any()


def test_a_held_in_firing_unit_is_always_kept():
    """Only 2 of 10 units fire and both are held out, or one is: the encoders keep one."""
    x = {"A": np.zeros((1, 1, 10), dtype=np.float32)}
    x["A"][0, 0, [0, 1]] = 1
    rows = np.array([0, 2, 3, 4, 5, 6, 7, 1, 8, 9])  # held out: units 1, 8, 9
    layout = RegionLayout("A", 7, 3, (rows,), (np.arange(10),))
    (new,), notes = swap_silent({"A": x["A"][:, :, rows].copy()}, [layout],
                                {"A": groups(layout, [slice(0, 1)])}, [np.arange(10)], 0)
    assert new.rows[0].tolist() == rows.tolist() and notes == []


def test_separate_sessions_swap_within_their_own_units(tmp_path):
    """A session per file: each swaps among its own units, over its own trials."""
    a = build_nwb(tmp_path / "a.nwb", spikes=SPIKES, locations=["A"] * 10, trials=TRIALS)
    b = build_nwb(tmp_path / "b.nwb", spikes=[[0.05 + 0.1 * i] for i in range(5)],
                  locations=["A"] * 5, trials=TRIALS)
    seed = next(s for s in range(50) if any(u >= FIRING for u in _first_draw(s)))
    o = IngestOptions(bin_ms=100, ic_enc_seq_len=2, heldout=3, seed=seed, sessions="separate")
    m = ingest([a, b], tmp_path / "ds", o)
    ids = m.region("A").neuron_ids  # held-in of a, of b, then held-out of a, of b
    assert len(ids) == 15 and m.region("A").n_heldout == 6
    out_a = [int(i.split("/")[1]) for i in ids[9:] if i.startswith("a/")]
    assert len(out_a) == 3 and all(u < FIRING for u in out_a)
    assert next(w for w in m.provenance["warnings"] if "swapped" in w).startswith(
        "region 'A' in session a: held-out units")
    src = m.provenance["sources"]
    assert sorted(src[0]["unit_ids"]["A"]) == list(range(10)) and src[0]["unit_ids"]["A"][7:] == out_a
    assert sorted(src[1]["unit_ids"]["A"]) == list(range(5))
