"""The training benchmark still runs (benchmarks are run by hand; this keeps them from
rotting): smoke sizes, every CPU code path, results as JSON lines."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _machine():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import machine_info
    finally:
        sys.path.pop(0)
    return machine_info


def test_the_machine_line_names_the_cpu_cores_and_memory(monkeypatch):
    m = _machine()
    monkeypatch.setattr(m.os, "cpu_count", lambda: 7)
    monkeypatch.setattr(m, "cpu_model", lambda: "Some CPU 9000")
    monkeypatch.setattr(m.os, "sysconf", {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 3 * 2 ** 18}.get)
    assert m.describe() == "Some CPU 9000, 7 cores, 3 GiB RAM"
    assert m.describe(versions=True).startswith("Some CPU 9000, 7 cores, 3 GiB RAM, Python 3.")


def test_bench_cut_effectome_times_the_cut_against_the_epoch():
    done = subprocess.run([sys.executable, "benchmarks/bench_cut_effectome.py", "--regions", "2",
                           "3", "--units", "4", "--trials", "16", "--bins", "14", "--reps", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    assert [(r["regions"], r["pathways"], r["train_trials"]) for r in rows] == [(2, 2, 12),
                                                                              (3, 6, 12)]
    for r in rows:
        assert r["epoch_s"] > 0 and r["cut_s"] > 0
        assert r["cut_share"] == pytest.approx(r["cut_s"] / (r["epoch_s"] + r["validation_s"]),
                                               rel=0.01)


def test_bench_validate_times_each_part_of_the_check(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/bench_validate.py", "--trials", "24",
                           "--bins", "14", "--units", "4", "--rows-per-shard", "8", "--repeat", "1",
                           "--workdir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "3 shards" in done.stdout  # 24 trials in shards of 8
    assert done.stdout.startswith(_machine().describe())  # the machine, named as everywhere
    rows = [r.split("|")[1:3] for r in done.stdout.splitlines() if r.startswith("| ")][1:]
    assert [n.strip() for n, _ in rows] == [
        "read shards (no checks)", "sha256 of every shard", "value checks, Poisson counts",
        "value checks, Gaussian values", "validate() in all"]
    assert all(float(s) >= 0 for _, s in rows)


def test_bench_smoothing_times_one_size_and_names_the_machine():
    done = subprocess.run([sys.executable, "benchmarks/bench_smoothing.py", "--trials", "40",
                           "--bins", "30", "--heldin", "12", "--heldout", "3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith(_machine().describe())
    (row,) = [x for x in lines if x.startswith("trials ")]
    assert row.startswith("trials 40, bins 30, held-in 12, held-out 3: ") and " s, kernel " in row
    assert float(row.split(": ")[1].split(" s,")[0]) > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_train_smoke_writes_fast_oracle_paired_and_packing_results(tmp_path):
    out = tmp_path / "bench.jsonl"
    common = [sys.executable, "benchmarks/bench_train.py", "--smoke", "--batches", "4",
              "--threads", "1", "--out", str(out)]
    for extra in (["--steps", "2", "--paired"],
                  ["--pack", "2", "--pack-warmup", "20", "--pack-seconds", "1"]):
        done = subprocess.run(common + extra, cwd=ROOT, capture_output=True, text=True,
                              timeout=240, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    paired = [r for r in rows if r.get("impl") == "paired"]
    single = {r["impl"]: r for r in rows if r.get("mode") == "eager" and "pack" not in r}
    packed = [r for r in rows if "pack" in r]
    assert len(paired) == 1 and paired[0]["speedup"] > 0
    assert set(single) == {"fast", "oracle"}
    for r in single.values():
        assert r["steps"] == 2 and r["trials_per_s"] > 0 and r["flops_per_step"] > 0
        assert 0 < r["fraction_of_matmul"] < 1 and r["peak_rss_mb"] > 0
    # the oracle does the same math region by region: within 15% of the fast path's FLOPs
    assert single["oracle"]["flops_per_step"] == pytest.approx(single["fast"]["flops_per_step"], rel=0.15)
    assert len(packed) == 1 and len(packed[0]["trials_per_s_each"]) == 2
    assert packed[0]["trials_per_s_total"] == pytest.approx(sum(packed[0]["trials_per_s_each"]))


def test_spiking_grid_scores_a_saved_model_and_the_data_ceilings(tmp_path):
    """benchmarks/science/spiking_grid.py's pieces on a tiny dataset: the ceilings are
    finite and bounded, and a saved model scores with the keys the table reads."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "science"))
    try:
        import spiking_grid as grid
    finally:
        sys.path.pop(0)
    import numpy as np

    from mrlfads.data_loaders.testing import make_tiny_dataset
    from mrlfads.training.config import RunConfig
    from mrlfads.training.fit import BEST, fit
    from mrlfads.training.loop import Trainer

    ds = make_tiny_dataset(tmp_path / "d", n_trials=40, n_bins=16)
    ceil = grid.ceilings(tmp_path / "d")
    assert ceil["true_rates_co_bps"] < 1.0 and ceil["decoder_message_r2"] <= 1.0
    cfg = RunConfig.for_dataset(ds.manifest, smoke_test=True, overrides={"train.epochs": 3})
    fit(Trainer(cfg, ds), tmp_path / "run", progress=False)
    scores = grid.score(str(tmp_path / "run" / BEST), tmp_path / "d")
    assert set(scores) == set(grid.COLUMNS)
    assert -1.0 <= scores["effectome_cut_cosine"] <= 1.0 and scores["effectome_cut_separation"] > 0
    row = {"dataset": "random-0", "arm": "defaults", "metrics": scores, "ceilings": ceil}
    line = next(x for x in grid.table([row]).splitlines() if x.startswith("| random-0"))
    # one run: its values, no spread
    assert line.startswith("| random-0 | defaults | 1 | ") and "±" not in line
    assert f"| {scores['effectome_cut_cosine']:.3f} |" in line
    # what the data allows, last: smoothed spikes' co-bps (fitted on the 30 training
    # trials), the message decoder's R^2, the true rates' co-bps and the network's own cut
    # cosine, which a dataset not simulated by mrlfads has not got
    assert np.isfinite(ceil["smoothing_co_bps"]) and "network_cut_cosine" not in ceil
    assert line.endswith(f"| {ceil['smoothing_co_bps']:.3f} | {ceil['decoder_message_r2']:.3f} "
                         f"| {ceil['true_rates_co_bps']:.3f} | nan |")
    two = grid.table([row, {**row, "metrics": {**scores, "co_bps": scores["co_bps"] + 0.02}}])
    assert f"{scores['co_bps'] + 0.01:.3f} ± 0.010" in two  # mean and std over the runs
    info = _science("fit_diagnostics").score_fit(str(tmp_path / "run" / BEST),
                                                 str(tmp_path / "d"), lags=[-2, 0, 1])
    assert info["cut_cosine"] == pytest.approx(scores["effectome_cut_cosine"], abs=1e-3)
    assert -1.0 <= info["information_cosine"] <= 1.0 and info["information_separation"] > 0
    import numpy as np

    from mrlfads import metrics as M

    E = np.array(info["information_effectome"], dtype=float)  # a KL: >= 0 off the diagonal
    off = ~np.eye(len(E), dtype=bool)
    assert np.isnan(E[~off]).all() and (E[off] >= 0).all()
    assert M.effectome_cosine(E, ds.manifest.comm_matrix) == pytest.approx(
        info["information_cosine"], abs=2e-3)  # the printed matrix is the one scored
    lagged = info["lagged_message_r2"]
    assert lagged and all(sorted(v) == [-2, 0, 1] for v in lagged.values())


def test_fit_diagnostics_scores_a_stitched_model_session_by_session(tmp_path):
    """A stitched checkpoint runs one session per batch: score_fit's cut effectome is the
    library's with each trial's session (it used to stop on the model's session error)."""
    import numpy as np
    import torch

    from mrlfads.data_loaders.testing import make_tiny_sessions_dataset
    from mrlfads.effectome import cut_effectome
    from mrlfads.training.checkpoint import load_model
    from mrlfads.training.config import RunConfig
    from mrlfads.training.data import load_split
    from mrlfads.training.fit import BEST, fit
    from mrlfads.training.loop import Trainer

    ds = make_tiny_sessions_dataset(tmp_path / "d")
    cfg = RunConfig.for_dataset(ds.manifest, uri=ds.uri, smoke_test=True,
                                overrides={"train.epochs": 2})
    fit(Trainer(cfg, ds), tmp_path / "run", progress=False)
    info = _science("fit_diagnostics").score_fit(str(tmp_path / "run" / BEST), str(tmp_path / "d"))
    model, _, _ = load_model(str(tmp_path / "run" / BEST))
    valid = load_split(ds, "valid", torch.device("cpu"))
    want = cut_effectome(model, valid.heldin, valid.ext, sessions=valid.session)
    got = np.array(info["cut_effectome"], dtype=float)
    np.testing.assert_allclose(got, np.round(want, 4), equal_nan=True)
    assert np.isfinite(got[~np.eye(2, dtype=bool)]).all()
    like = np.array(info["likelihood_effectome"], dtype=float)  # each session's own neurons
    assert np.isfinite(like[~np.eye(2, dtype=bool)]).all()


def test_likelihood_effectome_is_the_bits_per_spike_a_cut_costs_the_target(tmp_path):
    """fit_diagnostics' likelihood effectome: per pathway, the target's bits per spike
    (held-in and held-out neurons) with the pathway minus without it, which is what
    metrics.bits_per_spike gives for the two passes (its null cancels); exactly 0 for a
    pathway whose target reads none of its message."""
    import numpy as np
    import torch

    from mrlfads import metrics as M
    from mrlfads.data_loaders.testing import make_tiny_dataset
    from mrlfads.inference import _run
    from mrlfads.training.checkpoint import load_model
    from mrlfads.training.config import RunConfig
    from mrlfads.training.data import load_split
    from mrlfads.training.fit import BEST, fit
    from mrlfads.training.loop import Trainer

    ds = make_tiny_dataset(tmp_path / "d", regions=(("A", 4, 2), ("B", 3, 1), ("C", 3, 2)),
                           n_trials=32, n_bins=16)
    cfg = RunConfig.for_dataset(ds.manifest, smoke_test=True, overrides={"train.epochs": 2})
    fit(Trainer(cfg, ds), tmp_path / "run", progress=False)
    model, _, _ = load_model(str(tmp_path / "run" / BEST))
    s, C = model.sizes, model.cfg.com_dim
    with torch.no_grad():  # target B (1) reads nothing from C (2): zero its input rows
        slot = [a for a in range(s.R) if a != 1].index(2)
        model.gen_w_iu[1, s.U + slot * C: s.U + (slot + 1) * C] = 0
    valid = load_split(ds, "valid", torch.device("cpu"))
    base = _run(model, valid.heldin, valid.ext, 256)
    E = _science("fit_diagnostics").likelihood_effectome(model, valid, base)
    assert E[1, 2] == 0.0
    names, T = model.cfg.region_names, valid.heldin[0].shape[1]

    def bps(outs, r):
        Tp = outs[0].readout[r].shape[1]
        k = torch.cat([valid.heldin[r], valid.heldout[r]], -1)[:, -Tp:]
        lr = torch.cat([torch.cat([o.readout[r], o.heldout_readout[r]], -1) for o in outs])
        return M.bits_per_spike(k.numpy(), lr.double().numpy())

    for src, dst in s.pairs:
        cut = _run(model, valid.heldin, valid.ext, 256,
                   silence={f"{names[src]}->{names[dst]}": (0, T)})
        assert E[dst, src] == pytest.approx(bps(base, dst) - bps(cut, dst), abs=1e-9)
    assert np.count_nonzero(E[~np.eye(3, dtype=bool)]) >= 5  # the others do change


def test_mean_cut_effectome_is_the_change_when_a_message_is_held_at_its_mean(tmp_path):
    """fit_diagnostics' mean-ablation cut: per pathway, the target's readout change when its
    message is the constant mean over the validation trials and bins, which is what a
    message map with no weights and that mean as its bias gives; the model is left as it
    was."""
    import torch

    from mrlfads.data_loaders.testing import make_tiny_dataset
    from mrlfads.effectome import _rms_change
    from mrlfads.inference import _run
    from mrlfads.training.checkpoint import load_model
    from mrlfads.training.config import RunConfig
    from mrlfads.training.data import load_split
    from mrlfads.training.fit import BEST, fit
    from mrlfads.training.loop import Trainer

    ds = make_tiny_dataset(tmp_path / "d", regions=(("A", 4, 2), ("B", 3, 1), ("C", 3, 2)),
                           n_trials=32, n_bins=16)
    cfg = RunConfig.for_dataset(ds.manifest, smoke_test=True, overrides={"train.epochs": 2})
    fit(Trainer(cfg, ds), tmp_path / "run", progress=False)
    model, _, _ = load_model(str(tmp_path / "run" / BEST))
    valid = load_split(ds, "valid", torch.device("cpu"))
    base = _run(model, valid.heldin, valid.ext, 256)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    E = _science("fit_diagnostics").mean_cut_effectome(model, valid, base)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    C = model.cfg.com_dim
    means = torch.cat([o.msg_mean for o in base]).mean((0, 1))  # (P, C)
    assert means.abs().min() > 0  # not zero: the mean differs from the zero-cut
    for p, (src, dst) in enumerate(model.sizes.pairs):
        held = load_model(str(tmp_path / "run" / BEST))[0]
        with torch.no_grad():
            held.msg_w[p] = 0.0
            held.msg_b[p, 0, :C] = means[p]
        outs = _run(held, valid.heldin, valid.ext, 256)
        assert E[dst, src] == pytest.approx(_rms_change(base, outs, dst), rel=1e-4, abs=1e-7)


def test_fit_diagnostics_score_a_closed_pathway_as_carrying_nothing(tmp_path):
    """A pathway closed by ``model.pathways`` has no message: 0 in the cut, information and
    likelihood effectomes alike, while the open one is scored."""
    from mrlfads.data_loaders.testing import make_tiny_dataset
    from mrlfads.training.config import RunConfig
    from mrlfads.training.fit import BEST, fit
    from mrlfads.training.loop import Trainer

    ds = make_tiny_dataset(tmp_path / "d", n_trials=32, n_bins=16)
    cfg = RunConfig.for_dataset(ds.manifest, smoke_test=True, overrides={
        "train.epochs": 2, "model.pathways": ["A->B"]})
    fit(Trainer(cfg, ds), tmp_path / "run", progress=False)
    info = _science("fit_diagnostics").score_fit(str(tmp_path / "run" / BEST), str(tmp_path / "d"))
    for key in ("cut_effectome", "information_effectome", "likelihood_effectome"):
        assert info[key][0][1] == 0.0, key  # [dst][src]: B -> A is closed
    assert info["cut_effectome"][1][0] > 0 and info["information_effectome"][1][0] > 0


def test_spiking_grid_run_names_stay_within_the_file_name_limit():
    """Short ``--set`` lists stay readable in the run directory's name; long ones (a
    pathway list) become a digest, distinct per list, under the 255-byte limit."""
    name = _science("spiking_grid").run_name
    assert name("random-2-5hz-10ms", 0, ["a=1"]) == "random-2-5hz-10ms-s0-a=1"
    r72 = [f"loss.ic_ramp.start={i}" for i in range(8)]
    long_a = name("random-2-5hz-10ms", 0, [*r72, "model.pathways=[A1->A0, A0->A1, A2->A1]"])
    long_b = name("random-2-5hz-10ms", 0, [*r72, "model.pathways=[A1->A0, A0->A1]"])
    assert long_a != long_b and max(len(long_a), len(long_b)) < 255
    assert long_a.startswith("random-2-5hz-10ms-s0-set-")
    # a run of other than the default epochs gets its own folder, a default one keeps its name
    assert name("random-2-5hz-10ms", 1, ["a=1"], 350) == "random-2-5hz-10ms-s1-e350-a=1"
    assert name("random-2-5hz-10ms", 1, [], 100) == "random-2-5hz-10ms-s1"
    assert name("random-2-5hz-10ms", 0, [*r72, "model.pathways=[A1->A0, A0->A1]"], 350).startswith(
        "random-2-5hz-10ms-s0-e350-set-")


def test_decoder_ceiling_recovers_a_message_the_spikes_hold_and_not_one_they_do_not(tmp_path):
    """The spiking grid's per-pathway decoder: a message that is the source's spikes one bin
    back scores R^2 near 1, independent noise no better than chance (at most ~0), and the
    ceilings (the spiking grid's, the stitching table's) average the pathways."""
    import numpy as np

    from mrlfads.data_loaders import schema
    from mrlfads.data_loaders.writer import write_dataset

    rng = np.random.default_rng(0)
    n, t = 80, 30
    x = {r: rng.poisson(1.0, size=(n, t, 5)).astype(np.float32) for r in ("A", "B")}
    held = np.zeros_like(x["A"][..., :2])
    held[:, 1:] = x["A"][:, :-1, :2] @ np.array([[1.0, 0.5], [0.0, 2.0]], dtype=np.float32)
    truth = {schema.truth_rates_col(r): np.ones_like(x[r]) for r in x}
    truth[schema.truth_messages_col("A", "B")] = held
    truth[schema.truth_messages_col("B", "A")] = rng.normal(size=(n, t, 1)).astype(np.float32)
    write_dataset(tmp_path / "d", name="dec", regions=[("A", 4, 1), ("B", 4, 1)],
                  obs_model="poisson", bin_width_s=0.01, ic_enc_seq_len=4, x=x,
                  split=np.array(["valid"] * n), condition=np.array(["c"] * n), truth=truth)
    grid = _science("spiking_grid")
    r2 = grid.decoder_r2(tmp_path / "d")
    assert set(r2) == {"A->B", "B->A"}
    assert r2["A->B"] > 0.98 and r2["B->A"] < 0.05
    ceil = grid.ceilings(tmp_path / "d")
    assert ceil["decoder_message_r2"] == pytest.approx((r2["A->B"] + r2["B->A"]) / 2)
    assert ceil["decoder_message_r2/A->B"] == r2["A->B"]
    assert np.isnan(ceil["smoothing_co_bps"])  # no training split to fit the baseline on
    # the stitching table's ceiling: the pathways' mean, averaged over sessions
    stitching = _science("stitching")
    mean = (r2["A->B"] + r2["B->A"]) / 2
    assert stitching.decoder_ceiling(tmp_path / "d") == pytest.approx(mean)
    assert stitching.decoder_ceiling(tmp_path / "x", [tmp_path / "d"] * 2) == pytest.approx(mean)
    row = {"arm": "stitched", "trials": n, "decoder_message_r2": mean,
           "metrics": {c: 0.5 for c in stitching.COLUMNS}}
    assert stitching.table([row]).splitlines()[-1].endswith(f" | nan | {mean:.3f} |")
    row["smoothing_co_bps"] = 0.0625  # the smoothing baseline, before the decoder
    assert stitching.table([row]).splitlines()[-1].endswith(f" | 0.062 | {mean:.3f} |")
    # a row written before the cosine against the network's own cut effects: its cell is nan
    key = "effectome_cut_effect_cosine"
    old = {**row, "metrics": {c: 0.5 for c in stitching.COLUMNS if c != key}}
    cells = stitching.table([old]).splitlines()[-1].split(" | ")
    assert cells[3 + stitching.COLUMNS.index(key)] == "nan" and cells[3] == "0.500"
    assert np.isnan(stitching.smoothing_ceiling(tmp_path / "d"))  # no training split


def _science(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks" / "science"))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def test_lagged_message_r2_peaks_at_the_lag_the_messages_trail_by():
    """Inferred messages that are the truth three bins late score 1 at lag -3, and every
    lag is scored over the same bins."""
    import numpy as np

    rng = np.random.default_rng(0)
    true = rng.standard_normal((40, 30, 2))
    inferred = np.zeros((40, 30, 1, 2))
    inferred[:, 3:, 0] = true[:, :-3] @ np.array([[1.0, 0.5], [0.0, 2.0]])  # invertible map
    r2 = _science("fit_diagnostics").lagged_message_r2(
        inferred, [(0, 1)], {"truth/messages/A->B": true}, ["A", "B"], [-3, 0, 2])
    scores = r2["truth/messages/A->B"]
    assert scores[-3] == pytest.approx(1.0) and scores[0] < 0.1 and scores[2] < 0.1


def test_message_contents_tell_a_source_copy_from_an_echo_of_the_target():
    """A->B is a linear map of A's log-rates; B->A is A's own log-rates 4 bins late (an echo
    of its target); B has inputs and A none. Each scores about 1 where it came from and
    near 0 elsewhere."""
    import numpy as np

    rng = np.random.default_rng(0)
    n, T, past = 60, 40, 4
    log_a, log_b = rng.standard_normal((2, n, T, 3))
    messages = np.zeros((n, T, 2, 3))
    messages[:, :, 0] = log_a @ rng.standard_normal((3, 3))
    messages[:, past:, 1] = log_a[:, :-past]
    truth = {"truth/rates/A": np.exp(log_a), "truth/rates/B": np.exp(log_b),
             "truth/inputs/B": rng.standard_normal((n, T, 2))}
    got = _science("fit_diagnostics").message_contents(
        messages, [(0, 1), (1, 0)], truth, ["A", "B"], past)
    assert set(got["A->B"]) == {"source", "target_past"}  # A has no inputs
    assert got["A->B"]["source"] == pytest.approx(1.0, abs=1e-3)
    assert got["A->B"]["target_past"] < 0.1
    assert got["B->A"]["target_past"] == pytest.approx(1.0, abs=1e-3)
    assert got["B->A"]["source"] < 0.1 and got["B->A"]["source_inputs"] < 0.1


def test_reference_cosines_are_those_of_ranked_and_sqrt_dimension_effectomes():
    """random-1's truth (dimensions 2, 1, 1, 4 over 6 ordered pairs): equal present entries
    give 8 / (sqrt(4) sqrt(22)); square roots of the dimensions give
    sum(d^1.5) / (sqrt(sum d) sqrt(sum d^2))."""
    refs = _science("fit_diagnostics").reference_cosines([[0, 0, 2], [0, 0, 1], [1, 4, 0]])
    assert refs["ranked"] == pytest.approx(8 / (2 * 22 ** 0.5))
    d = [2, 1, 1, 4]
    assert refs["sqrt"] == pytest.approx(sum(x ** 1.5 for x in d)
                                         / (sum(d) ** 0.5 * sum(x * x for x in d) ** 0.5))
    assert "network_cut" not in refs  # only where the dataset records the network's own
    # the network's own cut effects (A2->A0, A2->A1, A0->A2, A1->A2): 0.6, 0.2, 0.2, 0.5
    effects = [[0, 0, 0.6], [0, 0, 0.2], [0.2, 0.5, 0]]
    refs = _science("fit_diagnostics").reference_cosines([[0, 0, 2], [0, 0, 1], [1, 4, 0]],
                                                         effects)
    assert refs["network_cut"] == pytest.approx((1.2 + 0.2 + 0.2 + 2.0)
                                                / (0.69 ** 0.5 * 22 ** 0.5))


def test_stitching_benchmark_cuts_a_session_out_as_its_own_dataset(tmp_path):
    """benchmarks/science/stitching.py's `alone` arm: a session's own dataset holds exactly
    its trials and its neurons' columns (held-in, then held-out), with the same splits."""
    import numpy as np

    from mrlfads.data_loaders import schema
    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.data_loaders.testing import make_tiny_sessions_dataset

    sys.path.insert(0, str(ROOT / "benchmarks" / "science"))
    try:
        import stitching
    finally:
        sys.path.pop(0)
    sessions = {"s0": {"A": (2, 1), "B": (1, 0)}, "s1": {"A": (1, 0), "B": (2, 1)}}
    src = make_tiny_sessions_dataset(tmp_path / "st", sessions=sessions, trials=(8, 6))
    alone = ArrowDataset.open(stitching.session_alone(tmp_path / "st", 1))
    assert [(r.name, r.n_heldin, r.n_heldout) for r in alone.manifest.regions] == [
        ("A", 1, 0), ("B", 2, 1)]
    a = src.arrays(None, [schema.x_col("B"), schema.SESSION, schema.SPLIT])
    rows = np.flatnonzero(a[schema.SESSION] == 1)
    cols = src.manifest.session_columns("B", 1)  # x/B: held-in s0's 0, s1's 1-2; held-out s1's 3
    assert list(cols) == [1, 2, 3]
    b = alone.arrays(None, [schema.x_col("B"), schema.SPLIT])
    np.testing.assert_array_equal(b[schema.x_col("B")], a[schema.x_col("B")][rows][:, :, cols])
    assert list(b[schema.SPLIT]) == list(a[schema.SPLIT][rows])


def test_subset_sees_one_region_through_fewer_neurons(tmp_path):
    """benchmarks/science/subset.py: B keeps its first 2 held-in and its first held-out
    neuron (columns 0, 1 and 4 of x/B and of B's true rates), A and every trial stay whole,
    other truth and the splits unchanged; asking for more neurons than a region has is
    refused with the counts, and a second cut onto the same path leaves the first alone."""
    import numpy as np

    from mrlfads.data_loaders import schema
    from mrlfads.data_loaders.errors import DatasetError
    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.data_loaders.testing import make_tiny_dataset

    src = make_tiny_dataset(tmp_path / "d", regions=(("A", 3, 1), ("B", 4, 2)))
    subset = _science("subset")
    out = ArrowDataset.open(subset.fewer_neurons(tmp_path / "d", tmp_path / "s", "B", 2, 1))
    assert [(r.name, r.n_heldin, r.n_heldout) for r in out.manifest.regions] == [
        ("A", 3, 1), ("B", 2, 1)]
    cols = [schema.x_col("A"), schema.x_col("B"), schema.truth_rates_col("B"),
            "truth/inputs/B", schema.SPLIT]
    a, b = src.arrays(None, cols), out.arrays(None, cols)
    np.testing.assert_array_equal(b[schema.x_col("A")], a[schema.x_col("A")])
    for col in (schema.x_col("B"), schema.truth_rates_col("B")):
        np.testing.assert_array_equal(b[col], a[col][:, :, [0, 1, 4]])
    np.testing.assert_array_equal(b["truth/inputs/B"], a["truth/inputs/B"])
    assert list(b[schema.SPLIT]) == list(a[schema.SPLIT])
    assert out.manifest.comm_matrix == src.manifest.comm_matrix
    with pytest.raises(SystemExit, match="region B has 4 held-in and 2 held-out"):
        subset.fewer_neurons(tmp_path / "d", tmp_path / "t", "B", 5, 0)
    before = out.arrays(None, [schema.x_col("B")])[schema.x_col("B")].copy()
    with pytest.raises(DatasetError, match="a dataset already exists here"):
        subset.fewer_neurons(tmp_path / "d", tmp_path / "s", "B", 1, 0)
    np.testing.assert_array_equal(
        ArrowDataset.open(tmp_path / "s").arrays(None, [schema.x_col("B")])[schema.x_col("B")],
        before)


@pytest.mark.timeout(300)
def test_perturbation_benchmark_scores_a_fit_against_the_true_effects(tmp_path):
    """benchmarks/science/perturbation.py's score on a simulated relay with upstream
    silenced: the truth has no effect on upstream (nothing comes back to it), and every
    score is a correlation or a cosine."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "science"))
    try:
        import perturbation as bench
    finally:
        sys.path.pop(0)
    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.training.api import simulate
    from mrlfads.training.config import RunConfig
    from mrlfads.training.fit import BEST, fit
    from mrlfads.training.loop import Trainer

    simulate("relay-decision", tmp_path / "d", smoke_test=True, obs="poisson", trials=48,
             silence="upstream", window="10:30")
    ds = ArrowDataset.open(tmp_path / "d")
    cfg = RunConfig.for_dataset(ds.manifest, smoke_test=True, overrides={"train.epochs": 3})
    fit(Trainer(cfg, ds), tmp_path / "run", progress=False)
    got = bench.score(tmp_path / "run" / BEST, tmp_path / "d", "upstream", "10:30")
    assert set(bench.COLUMNS) <= set(got)
    assert got["true_effect_by_region"]["upstream"] == 0.0
    assert got["true_effect_by_region"]["downstream"] > 0.0
    assert all(-1.0 <= got[c] <= 1.0 for c in bench.COLUMNS), got
    line = next(x for x in bench.table([{"dataset": "relay-decision", "silenced": "upstream",
                                         "seed": 0, **got}]).splitlines()
                if x.startswith("| relay-decision"))
    assert f"| {got['rho_true']:.2f} |" in line


def test_lds_generator_writes_its_wiring_and_a_condition_locked_input(tmp_path):
    """benchmarks/science/lds_spikes.py: the manifest's communication matrix is the wiring
    ([target][source] = message dimension), R0's unrecorded input is the same in every
    trial of a condition and zero outside the bins it drives (11-20), and a message at
    bin 0 (no bin before it to read) is zero."""
    import numpy as np

    from mrlfads.data_loaders.reader import ArrowDataset

    sys.path.insert(0, str(ROOT / "benchmarks" / "science"))
    try:
        import lds_spikes
    finally:
        sys.path.pop(0)
    path = lds_spikes.make(tmp_path / "fan", "fan", units=6, trials=40, bins=30)
    ds = ArrowDataset.open(path)
    expected = np.zeros((4, 4), int)
    for src, dst, dim in lds_spikes.TOPOLOGIES["fan"]:
        expected[dst][src] = dim
    np.testing.assert_array_equal(np.array(ds.manifest.comm_matrix), expected)
    a = ds.arrays(None, ["condition", "truth/inputs/R0", "truth/messages/R0->R2", "x/R1"])
    u = a["truth/inputs/R0"]
    assert np.abs(u[:, :11]).max() == 0 and np.abs(u[:, 21:]).max() == 0
    assert np.abs(u[:, 11:21]).min(axis=(0, 2)).all()  # ... and nonzero in every one of them
    for c in np.unique(a["condition"]):
        same = u[a["condition"] == c]
        np.testing.assert_array_equal(same, np.broadcast_to(same[0], same.shape))
    assert np.abs(a["truth/messages/R0->R2"][:, 0]).max() == 0
    assert a["truth/messages/R0->R2"][:, 1:].std() > 0.05
    assert a["x/R1"].shape == (40, 30, 6) and np.all(a["x/R1"] == np.round(a["x/R1"]))


def test_lds_arms_share_their_trials_and_only_the_intervention_arm_silences(tmp_path):
    """lds_spikes.make(extra=N, arm=...): every arm holds the same first trials (so the same
    validation trials); observational drops the N extra, more-trials keeps them as drawn,
    interventions zeroes each extra trial's messages from one region over its marked bins
    (a quarter of the bins after the first 10) and nowhere else."""
    import numpy as np

    from mrlfads.data_loaders.reader import ArrowDataset

    sys.path.insert(0, str(ROOT / "benchmarks" / "science"))
    try:
        import lds_spikes
    finally:
        sys.path.pop(0)
    kw = {"units": 6, "trials": 30, "bins": 30, "extra": 12}
    ds = {arm: ArrowDataset.open(lds_spikes.make(tmp_path / arm, "chain", arm=arm, **kw))
          for arm in lds_spikes.ARMS}
    assert ds["observational"].manifest.splits == {"train": 24, "valid": 6}
    assert ds["more-trials"].manifest.splits == {"train": 36, "valid": 6}
    assert ds["more-trials"].manifest.silenced == ()
    cols = ["trial_id", "x/R1", "truth/messages/R0->R1", "truth/messages/R1->R2"]
    a = {}
    for arm, d in ds.items():  # rows are stored train first: back to trial order
        rows = d.arrays(None, cols + [f"silenced/{r}" for r in d.manifest.silenced])
        order = np.argsort(rows["trial_id"])
        a[arm] = {k: v[order] for k, v in rows.items()}
    for arm in ("more-trials", "interventions"):
        np.testing.assert_array_equal(a[arm]["x/R1"][:30], a["observational"]["x/R1"])
    inter, plain = a["interventions"], a["more-trials"]
    marked = 0
    for r, msg in (("R0", "truth/messages/R0->R1"), ("R1", "truth/messages/R1->R2")):
        on = inter.get(f"silenced/{r}", np.zeros((42, 30)))[30:] > 0  # (12, T)
        marked += int(on.any(1).sum())
        assert all(row.sum() in (0, 5) for row in on)  # (30 - 10) // 4 bins, or none
        assert (inter[msg][30:][on] == 0).all() and (np.abs(plain[msg][30:][on]) > 0).all()
        assert (inter[msg][:30] == plain[msg][:30]).all()
    assert 0 < marked <= 12  # R2 (sends nothing) takes the rest


def _trials_column(nwb: str, column: str) -> list:
    import h5py

    with h5py.File(nwb, "r") as f:
        return [v.decode() if isinstance(v, bytes) else v
                for v in f["intervals/trials"][column][:]]


def test_dandi_session_ingests_with_the_recipe_and_scores_against_its_wiring(tmp_path, capsys):
    """benchmarks/science/dandi_session.py: a few trials through the README's photoinhibition
    recipe (real pynwb file, text onsets read as interventions on ALM), and the score of a
    hand-made effectome against the wiring Thal -> ALM -> Str."""
    import json

    import numpy as np

    from mrlfads.data_loaders.nwb import IngestOptions, ingest

    session = _science("dandi_session")
    nwb = str(tmp_path / "s.nwb")
    session.write(nwb, seed=1, n_trials=20)  # 3 of them photoinhibited
    with open(nwb + ".truth.json") as fh:
        truth = json.load(fh)
    assert truth == {"regions": ["ALM", "Thal", "Str"],
                     "comm": [[0, 3, 0], [0, 0, 0], [3, 0, 0]]}  # [dst][src]
    o = IngestOptions(bin_ms=20, align="go_cue_time", window=(-1.0, 1.0), min_neurons=10,
                      drop_quality=["noise"], perturb_column="photostim_onset",
                      unfit_trials="drop", silence_region="ALM",
                      silence_time_columns=("photostim_onset", "photostim_duration"),
                      silence_times="onset-duration", valid_fraction=0.25)
    m = ingest([nwb], tmp_path / "d", o)
    assert sorted(r.name for r in m.regions) == ["ALM", "Str", "Thal"]  # 'root' dropped
    assert sum(r.n_heldin + r.n_heldout for r in m.regions) == 45 + 18 + 70
    stimulated = sum(float(v) > 0 for v in _trials_column(nwb, "photostim_onset") if v != "N/A")
    assert stimulated > 0 and m.silenced == ("ALM",)  # the text onsets became interventions
    # a second session of the same network: 3 fewer units per region, one stitched dataset
    second = str(tmp_path / "s1.nwb")
    session.write(second, seed=1, n_trials=20, session=1)
    with open(second + ".truth.json") as fh:
        assert json.load(fh) == truth
    m2 = ingest([nwb, second], tmp_path / "d2", o)
    assert [sum(sum(v) for v in s.units.values()) for s in m2.sessions] == [133, 124]
    capsys.readouterr()
    # ALM -> Thal (the echo) above Thal -> ALM: separation 0.2 / 0.3; cosine by hand:
    # present (0.2, 0.4), absent (0.1, 0.3, 0.05, 0.05) against (3, 3, 0, 0, 0, 0)
    regions = ["Str", "ALM", "Thal"]  # infer's order need not be the truth's
    matrix = [[None, 0.4, 0.05], [0.1, None, 0.2], [0.05, 0.3, None]]  # [dst][src]
    out = tmp_path / "infer"
    out.mkdir()
    (out / "effectome.json").write_text(json.dumps(
        {"regions": regions, "matrix": matrix, "message_rms": matrix}))
    session.score(nwb, str(out))
    got = capsys.readouterr().out.splitlines()[0]
    cosine = (0.2 + 0.4) * 3 / (np.sqrt(0.2**2 + 0.4**2 + 0.1**2 + 0.3**2 + 2 * 0.05**2)
                                * np.sqrt(18))
    assert got == f"matrix: cosine {cosine:.3f}, separation {0.2 / 0.3:.3f}"
