"""Multi-session datasets: manifest layout and validation, writer refusals, per-session
splits, and loaders whose batches each hold one session."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from mrlfads.data_loaders import schema
from mrlfads.data_loaders.errors import DatasetError
from mrlfads.data_loaders.manifest import DatasetManifest, SessionSpec
from mrlfads.data_loaders.reader import ArrowDataset
from mrlfads.data_loaders.testing import make_tiny_dataset, make_tiny_sessions_dataset
from mrlfads.data_loaders.torch_data import (
    SessionBatchSampler,
    ShardStream,
    TrialDataset,
    make_loader,
)
from mrlfads.data_loaders.writer import make_split, write_dataset

# TINY_SESSIONS: A = s0 (2 in, 1 out) + s1 (1 in, 1 out); B = s0 (2 in) + s2 (3 in, 1 out).
# Columns of x/A: [s0 in, s0 in, s1 in, s0 out, s1 out]; of x/B: [s0, s0, s2, s2, s2, s2 out].


@pytest.fixture(scope="module")
def sds(tmp_path_factory):
    return make_tiny_sessions_dataset(tmp_path_factory.mktemp("s") / "d", rows_per_shard=4)


def _manifest_dict(sds) -> dict:
    return json.loads(sds.manifest.to_json())


def test_layout_counts_blocks_and_masks(sds):
    m = sds.manifest
    assert [(r.name, r.n_heldin, r.n_heldout) for r in m.regions] == [("A", 3, 2), ("B", 5, 1)]
    assert m.session_names == ("s0", "s1", "s2") and m.n_sessions == 3
    assert [(b.heldin, b.heldout) for b in m.session_blocks("A")] == [
        (slice(0, 2), slice(0, 1)), (slice(2, 3), slice(1, 2)), (slice(3, 3), slice(2, 2))]
    np.testing.assert_array_equal(m.session_columns("A", 1), [2, 4])
    np.testing.assert_array_equal(m.session_columns("B", 2), [2, 3, 4, 5])
    masks = m.session_masks()
    np.testing.assert_array_equal(masks["A"], [[1, 1, 0, 1, 0], [0, 0, 1, 0, 1], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(masks["B"], [[1, 1, 0, 0, 0, 0], [0] * 6, [0, 0, 1, 1, 1, 1]])
    assert m.sessions[1].missing == {"B": "not recorded in s1"}
    assert m.region("A").neuron_ids == ("s0/A0", "s0/A1", "s1/A0", "s0/A2", "s1/A1")


def test_single_session_dataset_has_one_implicit_session(tmp_path):
    m = make_tiny_dataset(tmp_path / "d").manifest
    assert m.sessions == () and m.session_names == ("all",) and m.n_sessions == 1
    assert {r: mk.shape for r, mk in m.session_masks().items()} == {"A": (1, 4), "B": (1, 4)}
    assert all(mk.all() for mk in m.session_masks().values())
    assert m.session_blocks("A") == [(slice(0, 3), slice(0, 1))]
    raw = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert "sessions" not in raw  # unchanged on disk
    assert DatasetManifest.from_dict(raw) == m


def test_json_round_trip_keeps_sessions(sds):
    d = _manifest_dict(sds)
    assert d["sessions"][2] == {"name": "s2", "units": {"A": [0, 0], "B": [3, 1]},
                                "missing": {"A": "not recorded in s2"}, "provenance": {"index": 2}}
    again = DatasetManifest.from_json(json.dumps(d))
    assert again == sds.manifest and again.to_json() == sds.manifest.to_json()
    assert again.sessions[0].units["A"] == (2, 1)


def _broken(sds, fn) -> str:
    d = _manifest_dict(sds)
    fn(d)
    with pytest.raises(DatasetError) as e:
        DatasetManifest.from_dict(d)
    return str(e.value)


@pytest.mark.parametrize("change, must_say", [
    (lambda d: d["sessions"][0]["units"].update(A=[1, 1]),
     ["key 'sessions'", "region 'A'", "3 held-in + 2", "sum to 2 + 2"]),
    (lambda d: d["sessions"][1]["units"].pop("B"),
     ["key 'sessions[1].units'", "['A']", "[0, 0] where not recorded"]),
    (lambda d: d["sessions"][1].update(missing={}),
     ["key 'sessions[1].missing'", "['B']", "give a reason"]),
    (lambda d: d["sessions"][0]["missing"].update(A="why"),
     ["key 'sessions[0].missing'", "names ['A']", "are []"]),
    (lambda d: d["sessions"][2].update(name="s0"),
     ["key 'sessions[2].name'", "duplicate session name 's0'"]),
    (lambda d: d["sessions"][2].update(name="bad name"),
     ["key 'sessions[2].name'", "'bad name'", "letters, digits"]),
    (lambda d: d["sessions"][1]["units"].update(A=[0, 2]) or d["sessions"][0]["units"].update(A=[3, 0]),
     ["key 'sessions[1].units'", "held-out but no held-in", "['A']"]),
    (lambda d: d["sessions"][0]["units"].update(A=[3, 1], B=[0, 0]) or d["sessions"][0].update(
        missing={"B": "gone"}) or d["sessions"][1]["units"].update(A=[0, 0]) or d["sessions"][1].update(
        missing={"A": "x", "B": "y"}) or d["regions"][1].update(n_heldin=3, neuron_ids=None),
     ["key 'sessions[1].units'", "no held-in neuron in any region", "drop the session"]),
    (lambda d: d["sessions"][0]["units"].update(B=[0, 0]) or d["sessions"][0].update(
        missing={"B": "gone"}) or d["sessions"][2]["units"].update(B=[0, 1]) or d["regions"][1].update(
        n_heldin=0, neuron_ids=None),
     ["region 'B' has 0 held-in neurons", "no held-in neuron in any region"]),
    (lambda d: d["regions"][0].update(neuron_ids=["u"] * 5),
     ["neuron_ids", "unique across sessions", "prefix"]),
    (lambda d: d["sessions"][0].update(color="red"), ["unknown key(s) ['color']"]),
])
def test_manifest_session_errors_name_the_problem(sds, change, must_say):
    msg = _broken(sds, change)
    for text in must_say:
        assert text in msg, msg


# -- writer ----------------------------------------------------------------------------------
def _two_session_args(n=4, T=6):
    sessions = [SessionSpec("a", {"A": (1, 0)}), SessionSpec("b", {"A": (1, 1)})]
    session = np.array([0, 0, 1, 1])[:n]
    x = np.zeros((n, T, 3), np.float32)
    x[session == 0, :, 0] = 1  # a's neuron: column 0
    x[np.ix_(np.flatnonzero(session == 1), np.arange(T), [1, 2])] = 2  # b's: columns 1, 2
    return {"name": "t", "regions": [("A", 2, 1)], "obs_model": "poisson", "bin_width_s": 0.01,
            "ic_enc_seq_len": 2, "x": {"A": x}, "split": ["train", "valid", "train", "valid"],
            "sessions": sessions, "session": session}


def test_writer_writes_session_column_and_reads_it_back(tmp_path):
    m = write_dataset(tmp_path / "d", **_two_session_args())
    assert m.session_names == ("a", "b")
    ds = ArrowDataset.open(tmp_path / "d")
    ds.validate()
    a = ds.arrays(columns=[schema.TRIAL_ID, schema.SESSION])
    assert a[schema.SESSION].dtype == np.int32
    assert dict(zip(a[schema.TRIAL_ID].tolist(), a[schema.SESSION].tolist())) == {0: 0, 1: 0, 2: 1, 3: 1}
    assert schema.SESSION in ds.columns()


@pytest.mark.parametrize("change, must_say", [
    (lambda kw: kw.update(session=np.array([0, 0, 1, 2])), ["session:", "value 2", "0..1"]),
    (lambda kw: kw.update(session=None), ["session:", "without the per-trial", "session=array"]),
    (lambda kw: kw.update(sessions=None), ["session:", "without sessions=", "sessions=["]),
    (lambda kw: kw["x"]["A"].__setitem__((0, 3, 1), 5.0),
     ["x", "'x/A'", "trial_id 0, bin 3, neuron 1", "session 'b'", "session 'a'", "exactly 0"]),
    (lambda kw: kw.update(sessions=[SessionSpec("a", {"A": (1, 0)}), SessionSpec("b", {"A": (1, 0)})]),
     ["region 'A' has 2 held-in + 1 held-out", "sum to 2 + 0"]),
])
def test_writer_refusals_name_the_argument(tmp_path, change, must_say):
    kw = _two_session_args()
    change(kw)
    with pytest.raises(DatasetError) as e:
        write_dataset(tmp_path / "d", **kw)
    for text in must_say:
        assert text in str(e.value), str(e.value)
    assert not (tmp_path / "d" / "dataset.json").exists()


def test_unrecorded_entries_are_zero_in_the_written_dataset(sds):
    a = sds.arrays()
    masks = sds.manifest.session_masks()
    for r in ("A", "B"):
        off = ~masks[r][a[schema.SESSION]]  # (trials, N): columns outside each trial's session
        assert (a[f"x/{r}"].transpose(0, 2, 1)[off] == 0).all()
        assert (a[f"truth/rates/{r}"] > 0).all()  # truth in every column


def test_split_is_per_session_with_valid_trials_in_each(sds):
    a = sds.arrays(columns=[schema.SESSION, schema.SPLIT])
    for s, n in enumerate((10, 6, 3)):
        labels = a[schema.SPLIT][a[schema.SESSION] == s]
        assert len(labels) == n
        # round(n * 0.25) with at least 1: 10 -> 2 (round half to even), 6 -> 2, 3 -> 1
        assert (labels == "valid").sum() == {10: 2, 6: 2, 3: 1}[n]
    labels = make_split(5, 0.2, seed=1, session=np.array([0, 0, 1, 2, 2]))
    # 2 trials -> 1 valid (at least one), 1 trial -> 0, 2 trials -> 1
    assert [labels[[0, 1]].tolist().count("valid"), labels[2], labels[[3, 4]].tolist().count("valid")] \
        == [1, "train", 1]
    np.testing.assert_array_equal(make_split(10, 0.3, 4), make_split(10, 0.3, 4))  # unchanged path


# -- loaders ---------------------------------------------------------------------------------
def _check_epoch(batches, data_ids, data_sessions, batch_size):
    ids = [int(t) for b in batches for t in b.trial_id]
    assert sorted(ids) == sorted(data_ids)  # every trial exactly once
    for b in batches:
        assert len(set(b.session.tolist())) == 1 and 1 <= len(b) <= batch_size
        for t, s in zip(b.trial_id.tolist(), b.session.tolist()):
            assert data_sessions[t] == s


def test_map_loader_batches_within_one_session(sds):
    a = sds.arrays("train", [schema.TRIAL_ID, schema.SESSION])
    truth = dict(zip(a[schema.TRIAL_ID].tolist(), a[schema.SESSION].tolist()))
    loader = make_loader(sds, "train", 3, seed=5)  # by_session is the default with 3 sessions
    assert isinstance(loader.batch_sampler, SessionBatchSampler)
    first = list(loader)
    _check_epoch(first, a[schema.TRIAL_ID].tolist(), truth, 3)
    # train trials per session: 8, 4, 2 -> batches of 3: 3 + 2 + 1 = 6
    assert len(first) == len(loader) == 6
    assert len({tuple(b.session.tolist()) for b in first[:3]}) > 1 or len(first) < 3
    second = list(loader)  # the next epoch: another order
    assert [b.trial_id.tolist() for b in first] != [b.trial_id.tolist() for b in second]
    again = make_loader(sds, "train", 3, seed=5)
    assert [b.trial_id.tolist() for b in again] == [b.trial_id.tolist() for b in first]
    loader.batch_sampler.set_epoch(0)
    assert [b.trial_id.tolist() for b in loader] == [b.trial_id.tolist() for b in first]
    assert all(b.session.dtype == torch.int64 for b in first)


def test_sampler_drop_last_and_order_without_shuffle():
    s = np.array([1, 0, 1, 1, 0, 1, 2])
    sampler = SessionBatchSampler(s, 2, shuffle=False)
    assert list(sampler) == [[1, 4], [0, 2], [3, 5], [6]] and len(sampler) == 4
    drop = SessionBatchSampler(s, 2, shuffle=False, drop_last=True)
    assert list(drop) == [[1, 4], [0, 2], [3, 5]] and len(drop) == 3


def test_streaming_loader_batches_within_one_session_across_workers_and_ranks(sds):
    a = sds.arrays("train", [schema.TRIAL_ID, schema.SESSION])
    truth = dict(zip(a[schema.TRIAL_ID].tolist(), a[schema.SESSION].tolist()))
    batches = list(make_loader(sds, "train", 3, streaming=True, seed=2))
    _check_epoch(batches, a[schema.TRIAL_ID].tolist(), truth, 3)
    ranks = [list(ShardStream(sds, "train", 3, rank=r, world_size=2, by_session=True))
             for r in range(2)]
    _check_epoch(ranks[0] + ranks[1], a[schema.TRIAL_ID].tolist(), truth, 3)
    loader = make_loader(sds, "train", 2, streaming=True, num_workers=2)
    _check_epoch(list(loader), a[schema.TRIAL_ID].tolist(), truth, 2)
    for streaming in (False, True):  # opting out mixes sessions (one batch of all 14 trials)
        (b,) = make_loader(sds, "train", 14, streaming=streaming, by_session=False)
        assert sorted(set(b.session.tolist())) == [0, 1, 2]


def test_streaming_batches_mix_sessions_across_shards(tmp_path):
    """Shards of 10 trials in session order (30 train trials per session, batches of 2):
    batches leaving as they fill come in runs of one session per shard; the pool
    (mix_trials) mixes them, keeping each batch in one session and every trial once."""
    ds = make_tiny_sessions_dataset(tmp_path / "d", trials=(40, 40, 40), rows_per_shard=10)
    a = ds.arrays("train", [schema.TRIAL_ID, schema.SESSION])
    truth = dict(zip(a[schema.TRIAL_ID].tolist(), a[schema.SESSION].tolist()))

    def switches(batches):
        first = [int(b.session[0]) for b in batches]
        return sum(x != y for x, y in itertools.pairwise(first))

    runs = list(ShardStream(ds, "train", 2, by_session=True, seed=1, mix_trials=0))
    mixed = list(ShardStream(ds, "train", 2, by_session=True, seed=1))
    for batches in (runs, mixed):
        _check_epoch(batches, a[schema.TRIAL_ID].tolist(), truth, 2)
    n_shards = len(ds.manifest.shards_for("train"))
    assert len(mixed) == 45 and switches(runs) <= n_shards + 2  # the remainders' switches
    assert switches(mixed) > 2 * switches(runs)
    with pytest.raises(DatasetError, match="mix_trials: must be >= 0"):
        ShardStream(ds, "train", 2, mix_trials=-1)


def test_single_session_batches_carry_session_zero(tmp_path):
    ds = make_tiny_dataset(tmp_path / "d")
    for loader in (make_loader(ds, "train", 5), make_loader(ds, "train", 5, streaming=True)):
        b = next(iter(loader))
        assert b.session.tolist() == [0] * len(b) and b.session.dtype == torch.int64
    assert TrialDataset(ds, "valid").session.tolist() == [0] * 6
    assert not isinstance(make_loader(ds, "train", 5).batch_sampler, SessionBatchSampler)


def test_reader_validate_catches_a_shard_with_data_outside_its_session(tmp_path):
    import pyarrow as pa

    from mrlfads.data_loaders.testing import rewrite_shard

    make_tiny_sessions_dataset(tmp_path / "d")

    def poke(table: pa.Table) -> pa.Table:
        x = table.column("x/A").combine_chunks().to_numpy_ndarray().copy()
        sess = table.column("session").to_numpy()
        x[0, 0, 2 if sess[0] == 0 else 0] = 1.0  # a column of another session
        i = table.schema.get_field_index("x/A")
        return table.set_column(i, "x/A", pa.FixedShapeTensorArray.from_numpy_ndarray(x))

    rewrite_shard(tmp_path / "d", 0, poke)
    with pytest.raises(DatasetError, match="exactly 0"):
        ArrowDataset.open(tmp_path / "d").validate()
    with pytest.raises(DatasetError, match="did not record"):
        list(make_loader(ArrowDataset.open(tmp_path / "d"), "train", 4))


def test_numpy_counts_are_stored_as_json_integers(tmp_path):
    kw = _two_session_args()
    kw["sessions"] = [SessionSpec("a", {"A": (np.int64(1), np.int64(0))}),
                      {"name": "b", "units": {"A": [1, 1]}, "provenance": {"file": "b.nwb"}}]
    m = write_dataset(tmp_path / "d", **kw)
    raw = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert raw["sessions"][0]["units"] == {"A": [1, 0]} and m.sessions[1].provenance == {"file": "b.nwb"}
    kw["sessions"] = [SessionSpec("a", {"A": (1, 0)}, provenance={"seed": object()}), kw["sessions"][1]]
    with pytest.raises(DatasetError, match="sessions: .*JSON-serialisable"):
        write_dataset(tmp_path / "e", **kw)
