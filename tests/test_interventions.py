"""Recorded interventions (docs/MODEL.md, "Recorded interventions"): trials in which an
experiment silenced every message a region sends are trained on with the model's messages
from that region silenced over the same bins. Stored as ``silenced/<region>`` columns,
written by the simulator (--intervention-trials) and by ingest (--silence-region-column)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mrlfads.data_loaders.errors import DatasetError, IngestError
from mrlfads.data_loaders.nwb import IngestOptions, ingest
from mrlfads.data_loaders.nwb.testing import build_nwb
from mrlfads.data_loaders.reader import ArrowDataset
from mrlfads.data_loaders.simulate import SimInterventions, generate
from mrlfads.data_loaders.testing import make_tiny_dataset
from mrlfads.loss import compute_loss
from mrlfads.model import MRLFADS
from mrlfads.training.cli import main
from mrlfads.training.config import RunConfig
from mrlfads.training.data import load_split
from mrlfads.training.evaluate import collect_outputs
from mrlfads.training.masks import training_inputs
from mrlfads.training.step import TrainStep

CPU = torch.device("cpu")
N, T, TAU = 24, 12, 4  # make_tiny_dataset's trials, bins and ic_enc_seq_len


def _silenced_a() -> np.ndarray:
    """Trials 1, 2, 3 (train) and 4 (valid) silence A: 1 over bins 5..8, 2 over 4..11, 3
    over 0..5 (partly before the first inferred bin), 4 over 6..7."""
    a = np.zeros((N, T), np.float32)
    a[1, 5:9], a[2, 4:], a[3, :6], a[4, 6:8] = 1, 1, 1, 1
    return a


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data") / "tiny",
                             silenced={"A": _silenced_a()})


def test_the_manifest_lists_silenced_regions_and_a_plain_dataset_has_no_key(tiny, tmp_path):
    assert tiny.manifest.silenced == ("A",)
    assert "silenced/A" in tiny.manifest.tensor_columns()
    on_disk = json.loads((Path(tiny.uri) / "dataset.json").read_text())
    assert on_disk["silenced"] == ["A"]
    plain = make_tiny_dataset(tmp_path / "plain")
    assert plain.manifest.silenced == () and "silenced" not in json.loads(plain.manifest.to_json())
    rows = dict(zip(*[tiny.arrays(columns=["trial_id", "silenced/A"])[k]
                      for k in ("trial_id", "silenced/A")]))
    np.testing.assert_array_equal(np.stack([rows[i] for i in range(N)]), _silenced_a())


@pytest.mark.parametrize("silenced, match", [
    ({"A": np.full((N, T), 2.0)}, r"silenced\['A'\]: values must be 0 or 1"),
    ({"A": np.zeros((N, T - 1))}, r"silenced\['A'\]: shape \(24, 11\), expected \(24, 12\)"),
    ({"C": np.zeros((N, T))}, r"silenced: key 'C' is not a region \(\['A', 'B'\]\)"),
])
def test_bad_silenced_arrays_are_refused_before_anything_is_written(tmp_path, silenced, match):
    with pytest.raises(DatasetError, match=match):
        make_tiny_dataset(tmp_path / "bad", silenced=silenced)
    assert not (tmp_path / "bad").exists()


def test_a_shard_whose_silenced_column_is_not_0_or_1_is_refused_when_read(tmp_path):
    """The reader checks the recorded interventions once per shard, as it checks counts:
    a shard rewritten with a 2 (its checksum fixed) fails in load_split and the loader."""
    import pyarrow as pa

    from mrlfads.data_loaders.testing import rewrite_shard
    from mrlfads.data_loaders.torch_data import make_loader

    ds = make_tiny_dataset(tmp_path / "t", silenced={"A": _silenced_a()})

    def two(table: pa.Table) -> pa.Table:
        i = table.schema.get_field_index("silenced/A")
        col = table.column(i).combine_chunks()
        values = col.storage.flatten().to_numpy(zero_copy_only=False).copy()
        values[3] = 2.0
        arr = pa.FixedSizeListArray.from_arrays(pa.array(values), T)
        return table.set_column(i, table.field(i), pa.ExtensionArray.from_storage(col.type, arr))

    rewrite_shard(tmp_path / "t", 0, two)
    ds = ArrowDataset.open(tmp_path / "t")
    first = int(ds.arrays("train", ["trial_id"])["trial_id"][0])
    with pytest.raises(DatasetError, match=r"values must be 0 or 1 .*column 'silenced/A' holds "
                                           rf"2 at trial_id {first}, bin 3"):
        load_split(ds, "train", CPU)
    with pytest.raises(DatasetError, match="values must be 0 or 1"):
        next(iter(make_loader(ArrowDataset.open(tmp_path / "t"), "train", batch_size=4)))


def test_a_manifest_silencing_an_unknown_region_is_refused(tiny):
    d = json.loads(tiny.manifest.to_json())
    d["silenced"] = ["Z"]
    from mrlfads.data_loaders.manifest import DatasetManifest
    with pytest.raises(DatasetError, match=r"key 'silenced': 'Z' is not a region"):
        DatasetManifest.from_dict(d)


def test_splits_carry_each_trials_silenced_bins_in_model_region_order(tiny):
    train, valid = load_split(tiny, "train", CPU), load_split(tiny, "valid", CPU)
    a = _silenced_a()
    for data in (train, valid):
        assert data.silenced.shape == (data.n_trials, T, 2)
        assert float(data.silenced[:, :, 1].abs().sum()) == 0  # B is never silenced
        np.testing.assert_array_equal(data.silenced[:, :, 0].numpy(), a[data.trial_id])
    # a plain dataset's splits have none
    assert load_split(make_tiny_dataset(tiny.uri + "-plain"), "train", CPU).silenced is None


def test_the_torch_loader_batches_carry_the_silenced_bins(tiny):
    from mrlfads.data_loaders.torch_data import make_loader

    seen = {}
    for batch in make_loader(tiny, "train", batch_size=5, shuffle=False):
        assert set(batch.silenced) == {"A"} and batch.silenced["A"].shape == (len(batch), T)
        seen.update({int(t): row.numpy() for t, row in zip(batch.trial_id, batch.silenced["A"])})
    a = _silenced_a()
    assert seen.keys() == {i for i in range(N) if i % 4}  # every training trial once
    for t, row in seen.items():
        np.testing.assert_array_equal(row, a[t])


def _cfg(ds):
    return RunConfig.for_dataset(ds.manifest, uri=ds.uri, smoke_test=True,
                                 overrides={"model.dropout": 0.0})


def test_evaluation_silences_the_recorded_bins_and_only_those(tiny):
    cfg = _cfg(tiny)
    torch.manual_seed(0)
    model = MRLFADS(cfg.model)
    data = load_split(tiny, "train", CPU)
    out, _ = collect_outputs(model, data, cfg, epoch=0)
    msg = np.abs(out["messages/A->B"]).sum(-1)  # (trials, T - TAU)
    silent = _silenced_a()[data.trial_id][:, TAU:] > 0
    assert silent.sum() == 4 + 8 + 2  # trial 1: bins 5-8, trial 2: 4-11, trial 3: 4-5
    assert (msg[silent] == 0).all() and (msg[~silent] > 0).all()
    back = np.abs(out["messages/B->A"]).sum(-1)
    assert (back > 0).all()  # B's messages are never silenced


def test_the_training_step_trains_with_the_batch_s_recorded_interventions(tiny):
    """One eager step equals the plain step with ``silenced`` given to the model, and
    differs from it without (so the comparison can fail)."""
    cfg = _cfg(tiny)
    data = load_split(tiny, "train", CPU)
    idx = torch.arange(0, 6)
    assert float(data.silenced[idx].sum()) > 0
    torch.manual_seed(0)
    model = MRLFADS(cfg.model)
    model.train()

    def plain(silenced) -> float:
        m = copy.deepcopy(model)
        heldin, heldout, ext = data.batch(idx)
        shown, weight = training_inputs(heldin, T - TAU, 0.0, 0.0, None)
        torch.manual_seed(7)
        kw = {} if silenced is None else {"silenced": silenced}
        with torch.no_grad():
            return float(compute_loss(m(shown, ext, sample=True, **kw), heldin, heldout,
                                      cfg.loss, 0, recon_weight=weight).total)

    step_model = copy.deepcopy(model)
    opt = torch.optim.AdamW(step_model.parameters(), lr=0.0)
    step = TrainStep(step_model, opt, RunConfig.from_dict({**cfg.to_dict(), "train": {
        **cfg.to_dict()["train"], "cd_rate": 0.0}}), CPU, graph=False)
    step.set_epoch(0)
    step.start_epoch()
    torch.manual_seed(7)
    step.run(data, idx, None)
    got = step.epoch_means()["loss"]
    assert got == pytest.approx(plain(data.silenced[idx]), rel=1e-5)
    assert got != pytest.approx(plain(None), rel=1e-5)


# -- the simulator ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def relay():
    kw = {"seed": 3, "smoke_test": True, "obs": "poisson", "trials": 40, "bin_ms": 10}
    return tuple(generate("relay-decision", **kw, interventions=extra) for extra in (
        None, SimInterventions(12), SimInterventions(12, control=True)))


def test_simulated_interventions_are_extra_training_trials_the_others_unchanged(relay):
    plain, inter, control = relay
    for d in (inter, control):
        assert list(d.split[:40]) == list(plain.split)
        assert list(d.split[40:]) == ["train"] * 12
        for key, a in plain.x.items():
            np.testing.assert_array_equal(d.x[key][:40], a)
        assert d.provenance["interventions"]["trials"] == 12
    assert not plain.silenced and not control.silenced
    # the control draws the same extra trials with nothing silenced: outside the silenced
    # windows the downstream messages differ only through what the silencing changed
    msg = "truth/messages/upstream->downstream"
    silent = inter.silenced["upstream"][40:] > 0
    assert silent.any() and (inter.truth[msg][40:][silent] == 0).all()
    assert (np.abs(control.truth[msg][40:]).sum(-1)[silent] > 0).all()
    np.testing.assert_array_equal(control.truth["truth/inputs/upstream"][40:],
                                  inter.truth["truth/inputs/upstream"][40:])


def test_each_simulated_intervention_silences_one_region_s_messages_in_its_marked_bins(relay):
    _, d, _ = relay
    tau, T_ = d.ic_enc_seq_len, d.x["upstream"].shape[1]
    length = (T_ - tau) // 4 // 2 * 2  # a quarter of the inferred bins, whole 20 ms steps
    # every region may be silenced, downstream too, though it sends nothing
    assert set(d.silenced) == {"upstream", "downstream"}
    assert (d.silenced["upstream"][:40] == 0).all() and (d.silenced["downstream"][:40] == 0).all()
    msg = np.abs(d.truth["truth/messages/upstream->downstream"]).sum(-1)
    for i in range(40, 52):
        marked = [r for r in d.silenced if d.silenced[r][i].any()]
        assert len(marked) == 1  # one region per trial
        on = np.flatnonzero(d.silenced[marked[0]][i])
        assert len(on) == length and on[0] >= tau and on[0] % 2 == 0
        np.testing.assert_array_equal(on, np.arange(on[0], on[0] + length))
        if marked[0] == "upstream":  # its message is zero there and only there
            assert (msg[i, on] == 0).all() and (np.delete(msg[i], on) > 0).all()
        else:  # silencing downstream zeroes nothing
            assert (msg[i] > 0).all()


def test_simulate_cli_writes_intervention_trials_and_train_reads_them(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["simulate", "relay-decision", "--smoke-test", "--obs", "poisson", "--trials",
                 "16", "--intervention-trials", "6", "--out", str(out)]) == 0
    assert "intervention trials (trained on): 6" in capsys.readouterr().out
    ds = ArrowDataset.open(out)
    assert set(ds.manifest.silenced) <= {"upstream", "downstream"} and ds.manifest.silenced
    assert ds.manifest.splits["train"] >= 6
    assert main(["train", "--data", str(out), "--smoke-test", "--epochs", "2",
                 "--out", str(tmp_path / "run"), "--no-tracking", "--quiet"]) == 0


# -- ingest ----------------------------------------------------------------------------------
TRIALS = [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]
SPIKES = [[0.05, 1.31, 2.45, 3.2], [0.55, 1.45, 2.85, 3.5], [0.10, 1.35, 2.52, 3.9],
          [0.42, 1.9, 2.1, 3.3]]


def _session(path, region=("", "ALM", "M1", ""), start=(np.nan, 1.35, 2.0, np.nan),
             stop=(np.nan, 1.55, 2.5, np.nan)):
    return build_nwb(path, spikes=SPIKES, locations=["ALM", "ALM", "STR", "STR"],
                     trials=TRIALS, trial_columns={
                         "photostim": [False, True, True, False], "stim_region": list(region),
                         "stim_on": list(start), "stim_off": list(stop)})


OPTS = {"bin_ms": 100, "window": (0.0, 0.5), "ic_enc_seq_len": 1, "heldout": 0,
        "valid_fraction": 0.0, "perturb_column": "photostim",
        "silence_region_column": "stim_region", "silence_time_columns": ("stim_on", "stim_off")}


def test_ingest_trains_on_labelled_interventions_with_their_bins(tmp_path):
    """Trial 1 silences ALM over 1.35-1.55 s: of its bins [1.0, 1.1), ..., [1.4, 1.5) the
    centres 1.35 and 1.45 fall inside, bins 3 and 4. Trial 2 silences M1, which the dataset
    does not have: it goes to the perturbed split with a warning."""
    m = ingest([_session(tmp_path / "s.nwb")], tmp_path / "ds", IngestOptions(**OPTS))
    assert m.silenced == ("ALM",)
    assert m.splits == {"train": 3, "perturbed": 1}
    ds = ArrowDataset.open(tmp_path / "ds")
    a = ds.arrays(columns=["trial_id", "split", "silenced/ALM"])
    rows = {int(t): i for i, t in enumerate(a["trial_id"])}
    np.testing.assert_array_equal(a["silenced/ALM"][rows[1]], [0, 0, 0, 1, 1])
    for t in (0, 2, 3):
        assert a["silenced/ALM"][rows[t]].sum() == 0
    assert a["split"][rows[1]] == "train" and a["split"][rows[2]] == "perturbed"
    assert any("silence regions ['M1']" in w for w in m.provenance["warnings"])


def test_ingest_maps_silenced_labels_like_unit_labels(tmp_path):
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"ALM": "motor", "STR": "striatum", "M1": None}))
    m = ingest([_session(tmp_path / "s.nwb")], tmp_path / "ds",
               IngestOptions(**OPTS, region_map=str(mapping)))
    assert m.silenced == ("motor",) and m.splits == {"train": 3, "perturbed": 1}


@pytest.mark.parametrize("changes, session, match", [
    ({"silence_time_columns": None}, {}, "give both"),
    ({}, {"stop": (np.nan, 1.30, 2.5, np.nan)}, r"trials \[1\] silenced a region but"),
    ({"silence_region_column": "laser"}, {}, "trials table has no column 'laser'"),
])
def test_ingest_refuses_incomplete_interventions(tmp_path, changes, session, match):
    with pytest.raises(IngestError, match=match):
        ingest([_session(tmp_path / "s.nwb", **session)], tmp_path / "ds",
               IngestOptions(**{**OPTS, **changes}))
    assert not (tmp_path / "ds").exists()


def _dandi_session(path, duration=("N/A", "0.2000", "0.3000", "N/A")):
    """Photoinhibition as DANDI conversions store it: text onsets from each trial's
    start_time and durations, "N/A" where there was none; the site is not in the table."""
    return build_nwb(path, spikes=SPIKES, locations=["ALM", "ALM", "STR", "STR"],
                     trials=TRIALS, trial_columns={
                         "photostim_onset": ["N/A", "0.35", "0.1", "N/A"],
                         "photostim_duration": list(duration)})


def test_ingest_reads_one_silenced_site_with_onsets_and_durations_from_the_cli(tmp_path):
    """Trial 1 (start 1.0 s) silences ALM over 1.35-1.55 s: bin centres 1.35 and 1.45, bins
    3 and 4; trial 2 (start 2.0 s) over 2.1-2.4 s: centres 2.15, 2.25, 2.35, bins 1-3.
    Both are trained on; nothing is left for the perturbed split."""
    nwb = _dandi_session(tmp_path / "s.nwb")
    assert main(["ingest", str(nwb), "--out", str(tmp_path / "ds"), "--bin-ms", "100",
                 "--window=0:0.5", "--ic-enc-seq-len", "1", "--heldout", "0",
                 "--valid-fraction", "0", "--perturb-column", "photostim_onset",
                 "--silence-region", "ALM", "--silence-time-columns",
                 "photostim_onset,photostim_duration", "--silence-times", "onset-duration"]) == 0
    ds = ArrowDataset.open(tmp_path / "ds")
    assert ds.manifest.silenced == ("ALM",) and ds.manifest.splits == {"train": 4}
    a = ds.arrays(columns=["trial_id", "silenced/ALM"])
    rows = {int(t): i for i, t in enumerate(a["trial_id"])}
    np.testing.assert_array_equal(a["silenced/ALM"][rows[1]], [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(a["silenced/ALM"][rows[2]], [0, 1, 1, 1, 0])
    for t in (0, 3):
        assert a["silenced/ALM"][rows[t]].sum() == 0


@pytest.mark.parametrize("changes, duration, match", [
    ({"perturb_column": None}, None, "--silence-region: needs --perturb-column"),
    ({"silence_region_column": "photostim_onset"}, None, "give one of them"),
    ({"silence_times": "relative"}, None, "'relative' is not one of"),
    ({}, ("N/A", "0.2000", "N/A", "N/A"), r"trials \[2\] silenced a region but .* not an onset"),
])
def test_ingest_refuses_a_silenced_site_given_incompletely(tmp_path, changes, duration, match):
    opts = {**OPTS, "perturb_column": "photostim_onset", "silence_region_column": None,
            "silence_region": "ALM", "silence_times": "onset-duration",
            "silence_time_columns": ("photostim_onset", "photostim_duration"), **changes}
    nwb = _dandi_session(tmp_path / "s.nwb", **({"duration": duration} if duration else {}))
    with pytest.raises(IngestError, match=match):
        ingest([nwb], tmp_path / "ds", IngestOptions(**opts))
    assert not (tmp_path / "ds").exists()


def test_interventions_survive_nwb_export_and_ingest(tmp_path):
    """A simulated dataset with interventions -> NWB -> ingest with the README's photostim
    flags gives every trial its silenced bins back (the split is drawn anew)."""
    from mrlfads.data_loaders.nwb.export import dataset_to_nwb

    assert main(["simulate", "relay-decision", "--smoke-test", "--obs", "poisson", "--trials",
                 "16", "--intervention-trials", "8", "--out", str(tmp_path / "sim")]) == 0
    sim = ArrowDataset.open(tmp_path / "sim")
    nwb = dataset_to_nwb(sim, tmp_path / "sim.nwb")
    m = ingest([nwb], tmp_path / "back", IngestOptions(
        bin_ms=sim.manifest.bin_width_s * 1000, ic_enc_seq_len=sim.manifest.ic_enc_seq_len,
        heldout_column="heldout", perturb_column="perturbed",
        silence_region_column="silenced_region",
        silence_time_columns=("silence_start_time", "silence_stop_time")))
    assert set(m.silenced) == set(sim.manifest.silenced)
    assert m.splits["train"] >= 8

    def by_trial(ds):
        cols = ["trial_id"] + [f"silenced/{r}" for r in ds.manifest.silenced]
        a = ds.arrays(columns=cols)
        order = np.argsort(a["trial_id"])
        return {k: v[order] for k, v in a.items()}

    a, b = by_trial(sim), by_trial(ArrowDataset.open(tmp_path / "back"))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert sum(int(a[f"silenced/{r}"].any(1).sum()) for r in sim.manifest.silenced) == 8


def test_export_refuses_a_trial_silencing_two_regions(tmp_path):
    from mrlfads.data_loaders.nwb.export import write_nwb_from_arrays

    counts = {"A": np.ones((2, 4, 2)), "B": np.ones((2, 4, 2))}
    two = {"A": np.array([[0, 1, 1, 0], [0, 0, 0, 0]]), "B": np.array([[0, 0, 1, 0], [0] * 4])}
    with pytest.raises(IngestError, match="trial 0 silences two regions"):
        write_nwb_from_arrays(tmp_path / "x.nwb", counts=counts, bin_width_s=0.1, silenced=two)
    gap = {"A": np.array([[1, 0, 1, 0], [0, 0, 0, 0]])}
    with pytest.raises(IngestError, match="trial 0 silences A in separate runs of bins"):
        write_nwb_from_arrays(tmp_path / "y.nwb", counts=counts, bin_width_s=0.1, silenced=gap)
