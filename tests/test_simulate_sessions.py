"""`mrlfads simulate --sessions S`: sessions of one network, each recording its own units."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mrlfads.data_loaders.reader import ArrowDataset
from mrlfads.data_loaders.simulate import generate, simulate


@pytest.fixture(scope="module")
def pair():
    """3 sessions x 6 trials, and the same network's 18 trials as one session (same seed:
    the same network, trials and spikes, since each randomness stream is separate)."""
    multi = generate("relay-decision", seed=2, smoke_test=True, obs="poisson", trials=6, sessions=3)
    single = generate("relay-decision", seed=2, smoke_test=True, obs="poisson", trials=18)
    return multi, single


def _units(spec, region):
    return np.asarray(spec.provenance["units"][region])


def test_counts_and_layout(pair):
    multi, _ = pair
    assert [s.name for s in multi.sessions] == ["s0", "s1", "s2"]
    np.testing.assert_array_equal(multi.session, np.repeat([0, 1, 2], 6))
    for r in multi.regions:
        # 8 units per region (smoke), F = 1/3: round(8/3) = 3 per session, 1 held out
        # (heldout_frac 0.1 of 3 rounds to 0, at least 1)
        assert all(s.units[r.name] == (2, 1) for s in multi.sessions)
        assert (r.n_heldin, r.n_heldout) == (6, 3)
        assert multi.x[r.name].shape == (18, 40, 9)
        assert r.neuron_ids[:2] == tuple(f"s0/{u}" for u in _units(multi.sessions[0], r.name)[:2])
    assert multi.provenance["sessions"]["n_sessions"] == 3
    assert multi.provenance["n_trials"] == 18 and multi.name.endswith("-3sessions")
    for k in range(3):  # each session's trials are split on their own
        labels = multi.split[multi.session == k]
        assert (labels == "valid").sum() == 1  # round(0.2 * 6) = 1


def test_each_column_is_its_unit_in_its_session_and_zero_elsewhere(pair):
    multi, single = pair
    from mrlfads.data_loaders.sessions import columns

    for r in multi.regions:
        ids = [int(i) for i in next(q for q in single.regions if q.name == r.name).neuron_ids]
        where = {u: j for j, u in enumerate(ids)}  # unit -> column of the single-session data
        for k, s in enumerate(multi.sessions):
            cols, units = columns(multi.sessions, r.name, k), _units(s, r.name)
            src = [where[int(u)] for u in units]
            rows = multi.session == k
            np.testing.assert_array_equal(multi.x[r.name][rows][..., cols],
                                          single.x[r.name][rows][..., src])
            others = np.setdiff1d(np.arange(r.n_neurons), cols)
            assert (multi.x[r.name][rows][..., others] == 0).all()
            # truth: the unit's true rate in every trial, other sessions' trials too
            np.testing.assert_array_equal(multi.truth[f"truth/rates/{r.name}"][..., cols],
                                          single.truth[f"truth/rates/{r.name}"][..., src])
    for col in single.truth:  # messages and inputs are per trial: unchanged
        if not col.startswith("truth/rates/"):
            np.testing.assert_array_equal(multi.truth[col], single.truth[col])


def test_sessions_record_different_subsets(pair):
    multi, _ = pair
    subsets = {(s.name, r.name): tuple(sorted(_units(s, r.name))) for s in multi.sessions
               for r in multi.regions}
    for r in multi.regions:
        assert len({subsets[(s.name, r.name)] for s in multi.sessions}) > 1


def test_same_seed_same_data_other_seed_other_units(pair):
    multi, _ = pair
    again = generate("relay-decision", seed=2, smoke_test=True, obs="poisson", trials=6, sessions=3)
    assert again.sessions == multi.sessions
    for r in multi.regions:
        np.testing.assert_array_equal(again.x[r.name], multi.x[r.name])
    other = generate("relay-decision", seed=3, smoke_test=True, obs="poisson", trials=6, sessions=3)
    assert other.sessions != multi.sessions


def test_gaussian_random_network_with_session_frac(tmp_path):
    m = simulate("random", out=tmp_path / "d", seed=1, smoke_test=True, trials=4, sessions=2,
                 session_frac=0.5)
    ds = ArrowDataset.open(tmp_path / "d")
    ds.validate()  # zeros outside each trial's session, indices in range
    per_region = json.loads((tmp_path / "d" / "dataset.json").read_text())["provenance"]["units"]
    for r in m.regions:
        n = per_region[r.name]
        assert r.n_neurons == 2 * max(1, round(0.5 * n))
        assert all(sum(s.units[r.name]) == max(1, round(0.5 * n)) for s in m.sessions)
    a = ds.arrays()
    masks = m.session_masks()
    for r in m.regions:  # gaussian: the observation is the hidden unit itself, the truth too
        own = masks[r.name][a["session"]][:, None, :]  # (trials, 1, N)
        np.testing.assert_array_equal(np.where(own, a[f"truth/rates/{r.name}"], 0), a[f"x/{r.name}"])


def test_one_session_is_todays_dataset(tmp_path):
    data = generate("relay-decision", seed=2, smoke_test=True, trials=6, sessions=1)
    assert data.sessions == () and "sessions" not in data.writer_kwargs()
    m = simulate("relay-decision", out=tmp_path / "d", seed=2, smoke_test=True, trials=6)
    assert "sessions" not in json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert m.sessions == () and "session" not in ArrowDataset.open(tmp_path / "d").columns()


def test_cli_sessions_flags(tmp_path, capsys):
    from mrlfads.training.cli import main

    out = str(tmp_path / "d")
    assert main(["simulate", "relay-decision", "--out", out, "--smoke-test", "--trials", "4",
                 "--sessions", "2", "--session-frac", "0.25", "--obs", "poisson"]) == 0
    assert "sessions: 2" in capsys.readouterr().out
    m = ArrowDataset.open(out).manifest
    assert m.session_names == ("s0", "s1") and m.splits == {"train": 6, "valid": 2}
    # 0.25 * 8 = 2 units per region; heldout_frac 0.1 holds out at least 1
    assert all(s.units[r] == (1, 1) for s in m.sessions for r in m.region_names)
    with pytest.raises(SystemExit):
        main(["simulate", "relay-decision", "--out", out, "--smoke-test", "--session-frac", "0"])
    assert "--session-frac: must be a fraction in (0, 1]" in capsys.readouterr().err
