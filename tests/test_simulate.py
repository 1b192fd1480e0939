"""Simulated benchmarks: ground truth is what the stored network really did, and reproducible."""
from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mrlfads.data_loaders.reader import ArrowDataset
from mrlfads.data_loaders.simulate import generate, memory_ring, preset, random_nets, simulate
from mrlfads.data_loaders.simulate.network import MultiRegionRNN, load_npz, trial_noise
from mrlfads.data_loaders.simulate.observe import heldout_order


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "ring"
    simulate("memory-ring", out=out, seed=3, smoke_test=True)
    return ArrowDataset.open(out)


@pytest.fixture(scope="module")
def rand_net(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "random"
    simulate("random", out=out, seed=5, smoke_test=True)
    return ArrowDataset.open(out)


def _stored_network(ds):
    """(npz dict, hidden per region in NETWORK unit order (n, T, N_r), all arrays sorted by id)."""
    net = load_npz(ds.read_extra("network.npz"))
    arr = ds.arrays()
    order = np.argsort(arr["trial_id"])
    arr = {k: v[order] for k, v in arr.items()}
    hidden = {}
    for r in ds.manifest.regions:
        ids = np.array([int(i) for i in r.neuron_ids])
        h = np.empty_like(arr[f"truth/rates/{r.name}"], dtype=np.float64)
        h[..., ids] = arr[f"truth/rates/{r.name}"]
        hidden[r.name] = h
    return net, hidden, arr


def _replay_parts(ds) -> SimpleNamespace:
    """The stored network, what it did and its replayed noise, in the pieces a numpy replay
    needs: region and pathway names, unit and message offsets, h_init, eps_h and xi."""
    net, hidden, arr = _stored_network(ds)
    sizes = [int(n) for n in net["n_units"]]
    n_tot, d_tot = sum(sizes), int(net["pathway_dims"].sum())
    T = ds.manifest.n_bins
    noise = [trial_noise(int(net["noise_seed"]), tid, T, n_tot, d_tot) for tid in arr["trial_id"]]
    return SimpleNamespace(
        net=net, hidden=hidden, arr=arr, T=T,
        names=[str(n) for n in net["region_names"]], paths=[str(p) for p in net["pathways"]],
        alpha=float(net["alpha"]), sh=float(net["hidden_noise"]), sc=float(net["channel_noise"]),
        starts=np.concatenate([[0], np.cumsum(sizes)]),
        mstarts=np.concatenate([[0], np.cumsum(net["pathway_dims"])]),
        h_init=np.tanh(float(net["init_scale"]) * np.stack([z for z, _, _ in noise])),
        eps_h=np.stack([e for _, e, _ in noise]), xi=np.stack([c for _, _, c in noise]))


def _replay(ds, teacher_forced: bool):
    """Feed the stored messages and inputs through the stored weights, region by region
    (numpy, float64, independent of the generator's torch code), with the replayed noise."""
    x = _replay_parts(ds)
    net, hidden, arr, names, paths, T = x.net, x.hidden, x.arr, x.names, x.paths, x.T
    alpha, sh, sc, starts, mstarts = x.alpha, x.sh, x.sc, x.starts, x.mstarts
    h_init, eps_h, xi = x.h_init, x.eps_h, x.xi
    err_h, err_m = 0.0, 0.0
    for k, p in enumerate(paths):  # messages are the sender's linear readout + channel noise
        src = names.index(p.split("->")[0])
        prev = np.concatenate([h_init[:, None, starts[src]:starts[src + 1]], hidden[names[src]][:, :-1]], 1)
        m = prev @ net[f"C/{p}"].T + sc * xi[..., mstarts[k]:mstarts[k + 1]]
        err_m = max(err_m, np.abs(m - arr[f"truth/messages/{p}"]).max())
    for i, r in enumerate(names):
        sl = slice(starts[i], starts[i + 1])
        drive = net[f"b/{r}"] + sh * eps_h[..., sl]
        if f"truth/inputs/{r}" in arr:
            drive = drive + arr[f"truth/inputs/{r}"] @ net[f"U/{r}"].T
        for p in paths:
            if p.endswith(f"->{r}"):
                drive = drive + arr[f"truth/messages/{p}"] @ net[f"B/{p}"].T
        h = h_init[:, sl]
        for t in range(T):
            h = (1 - alpha) * h + alpha * np.tanh(h @ net[f"W/{r}"].T + drive[:, t])
            err_h = max(err_h, np.abs(h - hidden[r][:, t]).max())
            if teacher_forced:
                h = hidden[r][:, t]
    return err_h, err_m


def test_memory_ring_defaults_match_spec():
    cfg = preset("memory-ring")
    assert (cfg.n_trials, cfg.n_bins, cfg.n_units, cfg.ic_enc_seq_len) == (2048, 200, 64, 10)
    spec = memory_ring.make_spec(cfg.n_units)
    assert spec.region_names == ("A0", "A1", "A2") and spec.n_units == (64, 64, 64)
    assert spec.input_dims == (2, 3, 4)
    assert (spec.hidden_noise, spec.channel_noise) == (0.05, 0.01)
    # only A0->A1->A2->A0; each message is the sender's stimulus: dim = its rank
    assert spec.comm_matrix() == [[0, 0, 4], [2, 0, 0], [0, 3, 0]]
    # remember 5 steps of [incoming message, own stimulus]
    assert spec.output_dims == (5 * (4 + 2), 5 * (2 + 3), 5 * (3 + 4))


def test_ring_dataset_layout(ring):
    m = ring.manifest
    assert m.region_names == ("A0", "A1", "A2")
    assert m.comm_matrix == ((0, 0, 4), (2, 0, 0), (0, 3, 0))
    assert m.splits == {"train": 51, "valid": 13}  # round(0.2 * 64) valid
    assert (m.n_bins, m.ic_enc_seq_len, m.obs_model, m.bin_width_s) == (40, 5, "gaussian", 0.02)
    msgs = sorted(c for c in m.truth if c.startswith("truth/messages/"))
    assert msgs == ["truth/messages/A0->A1", "truth/messages/A1->A2", "truth/messages/A2->A0"]
    for r in m.regions:  # 1 of 8 units held out, placed last; ids are a permutation
        assert (r.n_heldin, r.n_heldout) == (7, 1)
        ids = [int(i) for i in r.neuron_ids]
        assert sorted(ids) == list(range(8)) and ids[:7] == sorted(ids[:7])
    prov = m.provenance
    assert prov["kind"] == "memory-ring" and prov["seed"] == 3
    assert 0 <= prov["training"]["task_loss_generated"] < 10
    # what the seed's network depends on besides the seed (another CPU can train another)
    assert prov["trained_on"]["torch"] == torch.__version__ and prov["trained_on"]["cpu"]
    ring.validate()


def test_comm_matrix_matches_pathways_and_absent_messages_not_stored(rand_net):
    m = rand_net.manifest
    names = m.region_names
    net = load_npz(rand_net.read_extra("network.npz"))
    stored = {tuple(c[len("truth/messages/"):].split("->")) for c in m.truth if "messages" in c}
    arr = rand_net.arrays(columns=[f"truth/messages/{s}->{d}" for s, d in stored])
    for d, row in enumerate(m.comm_matrix):
        for s, dim in enumerate(row):
            key = f"{names[s]}->{names[d]}"
            assert ((names[s], names[d]) in stored) == (dim > 0) == (f"C/{key}" in net)
            if dim:
                assert arr[f"truth/messages/{key}"].shape[-1] == dim == net[f"C/{key}"].shape[0]


@pytest.mark.parametrize("kind", ["memory-ring", "random"])
def test_absent_pathways_carry_exactly_zero(kind):
    """Kicking a region changes another region's next state iff the pathway is present."""
    cfg = preset(kind, smoke_test=True)
    family = {"memory-ring": memory_ring, "random": random_nets}[kind].build(
        cfg, np.random.default_rng(11))
    spec = family.spec
    net = MultiRegionRNN(spec, np.random.default_rng(0))
    n_tot, d_tot, i_tot = sum(spec.n_units), sum(p.dim for p in spec.pathways), sum(spec.input_dims)
    h0 = torch.rand(1, n_tot) - 0.5
    args = (torch.zeros(1, 1, i_tot), torch.zeros(1, 1, n_tot), torch.zeros(1, 1, d_tot))
    base = net(h0, *args)[0][0, 0]
    present = {(p.src, p.dst) for p in spec.pathways}
    us = spec.unit_slices()
    for s in range(len(us)):
        kicked = h0.clone()
        kicked[0, us[s]] += 0.3
        moved = net(kicked, *args)[0][0, 0]
        for r in range(len(us)):
            if r != s:
                changed = not torch.equal(moved[us[r]], base[us[r]])
                assert changed == ((s, r) in present), (s, r)
    w = net.weights()
    for k, p in enumerate(spec.pathways):  # a message reads only its source's units
        others = torch.ones(n_tot, dtype=torch.bool)
        others[us[p.src]] = False
        assert torch.all(w["C"][spec.msg_slices()[k]][:, others] == 0)


@pytest.mark.parametrize("fixture", ["ring", "rand_net"])
def test_stored_messages_through_stored_network_reproduce_activity(fixture, request):
    ds = request.getfixturevalue(fixture)
    err_h, err_m = _replay(ds, teacher_forced=True)
    assert err_m < 1e-5 and err_h < 1e-5
    err_h, _ = _replay(ds, teacher_forced=False)  # free run per region, given only messages
    assert err_h < 1e-3


def _free_run(ds, cut: str | None = None, first: int = 0, hold: np.ndarray | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every region's hidden units (n, T, N_r), network order, and every pathway's messages
    (n, T, dim), from the stored network run freely (numpy, float64) on the stored inputs
    and replayed noise; ``cut``'s messages are ``hold`` from step ``first`` on."""
    x = _replay_parts(ds)  # one network step a bin in the smoke preset
    net, arr, names, paths, T = x.net, x.arr, x.names, x.paths, x.T
    alpha, sh, sc, starts, mstarts = x.alpha, x.sh, x.sc, x.starts, x.mstarts
    eps_h, xi = x.eps_h, x.xi
    h = [x.h_init[:, starts[i]:starts[i + 1]] for i in range(len(names))]
    out, sent = {r: [] for r in names}, {p: [] for p in paths}
    for t in range(T):
        msgs = {}
        for k, p in enumerate(paths):
            src = names.index(p.split("->")[0])
            msgs[p] = h[src] @ net[f"C/{p}"].T + sc * xi[:, t, mstarts[k]:mstarts[k + 1]]
            if p == cut and t >= first:
                msgs[p] = np.zeros_like(msgs[p]) + hold
            sent[p].append(msgs[p])
        new = []
        for i, r in enumerate(names):
            a = h[i] @ net[f"W/{r}"].T + net[f"b/{r}"] + sh * eps_h[:, t, starts[i]:starts[i + 1]]
            if f"truth/inputs/{r}" in arr:
                a = a + arr[f"truth/inputs/{r}"][:, t] @ net[f"U/{r}"].T
            for p in paths:
                if p.endswith(f"->{r}"):
                    a = a + msgs[p] @ net[f"B/{p}"].T
            new.append((1 - alpha) * h[i] + alpha * np.tanh(a))
        h = new
        for r, hr in zip(names, h):
            out[r].append(hr)
    return ({r: np.stack(v, 1) for r, v in out.items()},
            {p: np.stack(v, 1) for p, v in sent.items()})


def test_the_networks_own_cut_effects_hold_each_pathway_at_its_mean(rand_net):
    """The manifest's ``cut_effects`` (what a perfect fit's cut effectome would be): for
    every present pathway the RMS change of the target's units over the bins from
    ic_enc_seq_len on when its messages are held from there at their mean over those bins,
    recomputed here from the stored network by hand; 0 where no pathway exists."""
    m = rand_net.manifest
    E, tau, names = m.cut_effects, m.ic_enc_seq_len, m.region_names
    assert E.shape == (len(names), len(names))
    assert m.provenance["network_cut_effects"]["trials"] == m.n_trials  # all 64 trials
    base, sent = _free_run(rand_net)
    _, hidden, _ = _stored_network(rand_net)
    assert max(np.abs(base[r] - hidden[r]).max() for r in names) < 1e-4  # the replay holds
    for d, row in enumerate(m.comm_matrix):
        for s, dim in enumerate(row):
            if not dim:
                assert E[d, s] == 0.0
                continue
            pathway = f"{names[s]}->{names[d]}"
            mean = sent[pathway][:, tau:].mean((0, 1))
            cut = _free_run(rand_net, pathway, tau, mean)[0][names[d]]
            change = cut[:, tau:] - base[names[d]][:, tau:]
            assert E[d, s] > 0
            assert E[d, s] == pytest.approx(np.sqrt(np.mean(change ** 2)), rel=1e-4)
            zeroed = _free_run(rand_net, pathway, tau, 0 * mean)[0][names[d]]
            assert E[d, s] != pytest.approx(  # not zeroed: the message's mean is kept
                np.sqrt(np.mean((zeroed[:, tau:] - base[names[d]][:, tau:]) ** 2)), rel=1e-3)


def test_same_seed_same_files_other_seed_differs(tmp_path):
    runs = [simulate("relay-decision", out=tmp_path / name, seed=seed, smoke_test=True)
            for name, seed in (("a", 7), ("b", 7), ("c", 8))]
    sums = [([s.sha256 for s in m.shards], [e.sha256 for e in m.extras]) for m in runs]
    assert sums[0] == sums[1]
    assert (tmp_path / "a/dataset.json").read_bytes() == (tmp_path / "b/dataset.json").read_bytes()
    assert sums[0][0] != sums[2][0] and sums[0][1] != sums[2][1]
    split = [ArrowDataset.open(tmp_path / n).arrays(columns=["trial_id", "split"]) for n in "ab"]
    assert np.array_equal(split[0]["trial_id"], split[1]["trial_id"])
    assert list(split[0]["split"]) == list(split[1]["split"])


def test_poisson_counts_are_spikes_from_the_same_hidden_units():
    gauss = generate("relay-decision", seed=2, smoke_test=True, obs="gaussian")
    pois = generate("relay-decision", seed=2, smoke_test=True, obs="poisson", rate_hz=8.0,
                    bin_ms=10)
    assert [r.neuron_ids for r in gauss.regions] == [r.neuron_ids for r in pois.regions]
    assert pois.bin_width_s == pytest.approx(0.01)
    cfg = preset("relay-decision", smoke_test=True)
    npz = np.load(io.BytesIO(pois.extra_files["network.npz"]))
    base = npz["poisson_base_hz"]  # one rate per network unit
    assert base.shape == (sum(npz["n_units"]),) and np.all(base > 0)
    rates = []
    for r in gauss.regions:
        x = pois.x[r.name]
        assert x.min() >= 0 and np.array_equal(x, np.round(x)) and x.sum() > 0
        # the network steps every 20 ms: a 10 ms bin holds its step's rate (two bins a step)
        h = np.repeat(gauss.truth[f"truth/rates/{r.name}"], 2, axis=1)
        assert x.shape[1] == 2 * gauss.x[r.name].shape[1] == 80  # the same 0.8 s trial
        offset = 0 if r.name == "upstream" else npz["n_units"][0]  # network unit order
        unit = np.array([int(i) for i in r.neuron_ids]) + offset
        expected = base[unit] * 0.01 * np.exp(cfg.poisson_gain * h.astype(np.float64))
        np.testing.assert_allclose(pois.truth[f"truth/rates/{r.name}"], expected, rtol=1e-5)
        rates.append(pois.truth[f"truth/rates/{r.name}"].reshape(-1, x.shape[-1]))
    # the mean over units, trials and bins is the asked-for 8 Hz: 0.08 spikes per 10 ms bin
    assert np.concatenate(rates, 1).mean() == pytest.approx(0.08, rel=1e-4)
    # units differ in base rate (log-normal spread), as recorded units do
    assert base.max() / base.min() > 1.5


def test_rate_and_bin_flags_reach_the_dataset(tmp_path, capsys):
    from mrlfads.training.cli import main

    out = str(tmp_path / "spikes")
    assert main(["simulate", "relay-decision", "--out", out, "--smoke-test", "--obs", "poisson",
                 "--rate-hz", "2", "--bin-ms", "5"]) == 0
    assert "spikes: mean rate 2 Hz (0.01 per bin)" in capsys.readouterr().out
    m = ArrowDataset.open(out).manifest
    assert m.bin_width_s == pytest.approx(0.005) and m.n_bins == 160  # 40 steps of 20 ms
    # bins pool whole steps too; a width that does neither is refused, naming the fix
    assert main(["simulate", "relay-decision", "--out", out, "--smoke-test", "--bin-ms", "40",
                 "--overwrite"]) == 0
    assert ArrowDataset.open(out).manifest.n_bins == 20
    assert main(["simulate", "relay-decision", "--out", out, "--smoke-test", "--bin-ms", "15",
                 "--overwrite"]) == 2
    assert "must divide the networks' 20 ms step" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # argparse refuses it, naming the flag
        main(["simulate", "relay-decision", "--out", out, "--smoke-test", "--obs", "poisson",
              "--rate-hz", "0", "--overwrite"])
    assert stop.value.code == 2 and "--rate-hz: must be > 0" in capsys.readouterr().err


def test_heldout_order_and_split_are_seeded():
    order, n_out = heldout_order(64, 0.1, np.random.default_rng(1))
    assert n_out == 6 and sorted(order) == list(range(64))
    assert list(order[:58]) == sorted(order[:58]) and list(order[58:]) == sorted(order[58:])
    again, _ = heldout_order(64, 0.1, np.random.default_rng(1))
    assert np.array_equal(order, again)


def test_random_network_is_drawn_by_the_seed():
    cfg = preset("random", smoke_test=True)
    specs = [random_nets.draw_network(cfg, np.random.default_rng(s))[0] for s in (0, 0, 1, 2, 3)]
    assert specs[0] == specs[1]
    assert len({(s.n_units, s.pathways) for s in specs}) > 2
    for s in specs:
        assert 3 <= len(s.region_names) <= 4 and sum(s.output_dims) == 1


def test_cli_writes_and_refuses_to_clobber(tmp_path, capsys):
    from mrlfads.training.cli import main

    out = str(tmp_path / "relay")
    assert main(["simulate", "relay-decision", "--out", out, "--smoke-test", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "upstream->downstream (dim 1)" in text and "train 51, valid 13" in text
    assert main(["simulate", "relay-decision", "--out", out, "--smoke-test"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["simulate", "relay-decision", "--out", out, "--smoke-test", "--overwrite",
                 "--obs", "poisson"]) == 0
    assert ArrowDataset.open(out).manifest.obs_model == "poisson"


@pytest.mark.slow
def test_default_memory_ring(tmp_path):
    """The default-size memory ring (docs/MODEL.md, "The simulated benchmark"): shapes, a
    trained network, and the stored truth replays."""
    simulate("memory-ring", out=tmp_path / "ring", seed=0)
    ds = ArrowDataset.open(tmp_path / "ring")
    arr = ds.arrays(columns=["x/A0", "truth/messages/A2->A0", "truth/inputs/A2"])
    assert arr["x/A0"].shape == (2048, 200, 64) and ds.manifest.splits == {"train": 1638, "valid": 410}
    assert arr["truth/messages/A2->A0"].shape == (2048, 200, 4)
    assert arr["truth/inputs/A2"].shape == (2048, 200, 4)
    assert [(r.n_heldin, r.n_heldout) for r in ds.manifest.regions] == [(58, 6)] * 3
    assert ds.manifest.provenance["training"]["task_loss_generated"] < 0.2
    err_h, err_m = _replay(ds, teacher_forced=True)
    assert err_m < 1e-5 and err_h < 1e-5


def test_steps_to_bins_splits_or_pools_by_hand():
    from mrlfads.data_loaders.simulate.observe import steps_to_bins

    a = np.arange(12, dtype=np.float32).reshape(1, 6, 2)  # (trials, steps, units)
    split = steps_to_bins(a, 0.5)  # 10 ms bins: every step held over two bins
    assert split.shape == (1, 12, 2)
    assert np.array_equal(split[0, :4], [[0, 1], [0, 1], [2, 3], [2, 3]])
    pooled = steps_to_bins(a, 3.0)  # 60 ms bins: the mean of three steps
    assert pooled.shape == (1, 2, 2) and np.array_equal(pooled[0], [[2, 3], [8, 9]])
    assert steps_to_bins(a, 1.0) is a
