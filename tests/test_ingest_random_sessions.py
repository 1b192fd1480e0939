"""Ingest of randomly shaped sessions: back-to-back trials of lengths that do not divide
evenly in float (1.2 s, 2.37 s), odd session offsets, 10-100 ms bins. Every count must
equal the spikes placed in that bin, or the ingest must stop with an IngestError; never
any other exception."""
from __future__ import annotations

import numpy as np
import pytest

from mrlfads.data_loaders.errors import IngestError
from mrlfads.data_loaders.nwb import IngestOptions, ingest
from mrlfads.data_loaders.nwb.testing import build_nwb
from mrlfads.data_loaders.reader import ArrowDataset


def random_session(path, rng):
    """An NWB file of back-to-back trials, each unit firing in a few known bins of each
    trial (times inside a bin, away from its edges) and at the first instant of some trials;
    returns (path, per-unit spike times, trial starts, go cue times, bin width)."""
    bw = float(rng.choice([0.01, 0.02, 0.1]))
    length = float(rng.choice([0.3, 0.7, 1.2, 2.37]))
    offset = float(rng.choice([-5.0, 0.0, 3.14159, 10.0]))  # NWB times may precede 0
    n_trials = int(rng.integers(8, 16))
    starts = offset + np.cumsum(np.r_[0.0, np.full(n_trials - 1, length)])  # float-summed
    go = starts + rng.uniform(0.1, 0.4, n_trials) * length
    n_bins = int(np.floor(length / bw + 1e-9))
    spikes = []
    for _ in range(int(rng.integers(6, 12))):
        times = [s + (k + rng.uniform(0.1, 0.9)) * bw for s in starts
                 for k in rng.choice(n_bins, size=3, replace=False)]
        times += [s for s in starts if rng.random() < 0.3]  # exactly at a trial's start
        spikes.append(sorted(times))
    locations = ["A" if i % 2 else "B" for i in range(len(spikes))]
    trials = [(float(s), float(s + length)) for s in starts]
    build_nwb(path, spikes=spikes, locations=locations, trials=trials,
              trial_columns={"go_cue_time": go.tolist()})
    return spikes, starts, go, bw


def counts_by_unit(ds, manifest):
    """{unit id: (trials, bins) counts}, trials in time order."""
    a = ds.arrays(columns=["trial_id"] + [f"x/{r.name}" for r in manifest.regions])
    order = np.argsort(a["trial_id"])
    ids = manifest.provenance["sources"][0]["unit_ids"]
    return {u: a[f"x/{r}"][order][:, :, j] for r in ids for j, u in enumerate(ids[r])}


@pytest.mark.parametrize("seed", range(6))
def test_random_back_to_back_sessions_bin_every_spike_where_it_was_placed(tmp_path, seed):
    rng = np.random.default_rng(seed)
    spikes, starts, go, bw = random_session(tmp_path / "s.nwb", rng)
    cases = {"default": (None, None), "aligned": ("go_cue_time", (-0.05, 0.1))}
    for name, (align, window) in cases.items():
        o = IngestOptions(bin_ms=bw * 1000, align=align, window=window, heldout=0.0,
                          valid_fraction=0.0, ic_enc_seq_len=1)
        try:
            m = ingest([str(tmp_path / "s.nwb")], tmp_path / name, o)
        except IngestError:  # an aligned window that does not fit may be refused
            assert align is not None, "the default window always fits back-to-back trials"
            continue
        t0 = (starts if align is None else go) + m.provenance["window_s"][0]
        got = counts_by_unit(ArrowDataset.open(tmp_path / name), m)
        for u, times in enumerate(spikes):
            want = np.zeros((len(t0), m.n_bins), dtype=np.int64)
            for t in times:
                i = int(np.searchsorted(t0, t, side="right")) - 1
                k = int(np.floor((t - t0[i]) / bw + 1e-9)) if i >= 0 else -1
                if 0 <= k < m.n_bins:
                    want[i, k] += 1
            np.testing.assert_array_equal(got[u], want, err_msg=f"{name}, unit {u}")
