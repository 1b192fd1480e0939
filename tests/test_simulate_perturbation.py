"""`mrlfads simulate --silence REGION --window START:STOP`: perturbed trials with known
effects, the simulated counterpart of a photoinhibition experiment."""
from __future__ import annotations

import json

import numpy as np
import pytest

from mrlfads.data_loaders.simulate import SimPerturbation, generate
from mrlfads.data_loaders.simulate.network import load_npz
from mrlfads.training.cli import main

TAU = 5  # the smoke preset's ic_enc_seq_len


def _effects(data) -> dict[str, np.ndarray]:
    return load_npz(data.extra_files["perturbation.npz"])


@pytest.fixture(scope="module")
def relay():
    """The relay (upstream -> downstream, nothing back) as 10 ms spikes: 40 trials, and the
    same with 12 perturbed trials silencing upstream over bins 20:40 (steps 10:20)."""
    kw = {"seed": 3, "smoke_test": True, "obs": "poisson", "trials": 40, "bin_ms": 10}
    plain = generate("relay-decision", **kw)
    pert = generate("relay-decision", **kw,
                    perturbation=SimPerturbation("upstream", (20, 40), 12))
    return plain, pert


def test_the_other_trials_are_the_same_bytes(relay):
    plain, pert = relay
    assert list(pert.split[:40]) == list(plain.split)
    assert list(pert.split[40:]) == ["perturbed"] * 12
    np.testing.assert_array_equal(pert.trial_id, np.arange(52))
    for key, a in plain.x.items():
        np.testing.assert_array_equal(pert.x[key][:40], a)
    for key, a in plain.truth.items():
        np.testing.assert_array_equal(pert.truth[key][:40], a, err_msg=key)
    assert list(pert.condition[:40]) == list(plain.condition)
    # the same network (compared as arrays: np.savez stamps the zip entries with the time)
    net = [load_npz(d.extra_files["network.npz"]) for d in (plain, pert)]
    assert net[0].keys() == net[1].keys()
    for key in net[0]:
        np.testing.assert_array_equal(net[0][key], net[1][key], err_msg=key)
    assert "perturbation.npz" not in plain.extra_files


def test_silenced_messages_are_zero_in_the_window_and_only_there(relay):
    _, pert = relay
    m = pert.truth["truth/messages/upstream->downstream"][40:]  # (12, 80 bins, dim)
    assert (m[:, 20:40] == 0).all()
    assert (m[:, :20] != 0).any(axis=(1, 2)).all() and (m[:, 40:] != 0).any(axis=(1, 2)).all()
    assert pert.provenance["perturbation"] == {
        "kind": "silence", "target": "upstream", "window": [20, 40], "window_steps": [10, 20],
        "trials": 12, "messages_zeroed": ["upstream->downstream"],
        "true_effects": pert.provenance["perturbation"]["true_effects"]}


def test_true_effects_are_causal_and_follow_the_pathway(relay):
    _, pert = relay
    eff = _effects(pert)
    assert str(eff["region"]) == "upstream" and list(eff["window"]) == [20, 40]
    n_bins = pert.x["upstream"].shape[1]
    # upstream hears nothing back: silencing what it sends leaves it exactly as it was
    for key in ("delta", "abs_delta", "effect"):
        assert (eff[f"{key}/upstream"] == 0).all()
    # downstream: untouched before the window, moved after it
    d = eff["abs_delta/downstream"]
    assert d.shape == (n_bins - TAU, pert.x["downstream"].shape[2])
    assert (d[: 20 - TAU] == 0).all() and (d[20 - TAU:] > 0).any()
    # effect = mean |delta| from the window's start, never below |trial-mean delta| there
    np.testing.assert_allclose(eff["effect/downstream"], d[20 - TAU:].mean(0))
    assert (np.abs(eff["delta/downstream"]) <= d + 1e-12).all()
    assert (eff["effect/downstream"] > 0).all()


def test_true_effects_are_perturbed_minus_unperturbed_twins(relay):
    """Silencing downstream, which sends nothing, draws the same 12 extra trials with nothing
    changed: they are the twins, so the stored rates' difference is the stored delta."""
    _, pert = relay
    twins = generate("relay-decision", seed=3, smoke_test=True, obs="poisson", trials=40,
                     bin_ms=10, perturbation=SimPerturbation("downstream", (20, 40), 12))
    eff = _effects(pert)
    for r in ("upstream", "downstream"):
        a = pert.truth[f"truth/rates/{r}"][40:, TAU:].astype(np.float64)
        b = twins.truth[f"truth/rates/{r}"][40:, TAU:].astype(np.float64)
        np.testing.assert_allclose(eff[f"delta/{r}"], (a - b).mean(0), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(eff[f"abs_delta/{r}"], np.abs(a - b).mean(0), rtol=1e-5,
                                   atol=1e-9)
    assert np.abs(eff["delta/downstream"]).max() > 0


def test_a_region_that_sends_nothing_has_no_effect():
    data = generate("relay-decision", seed=3, smoke_test=True, obs="gaussian", trials=8,
                    perturbation=SimPerturbation("downstream", (10, 30), 4))
    eff = _effects(data)
    assert data.provenance["perturbation"]["messages_zeroed"] == []
    for key, a in eff.items():
        if key.startswith(("delta/", "abs_delta/", "effect/")):
            assert (a == 0).all(), key


@pytest.mark.parametrize("flags, message", [
    (["--silence", "A9", "--window", "20:40"],
     "--silence 'A9': not a region of this network; choose from ['upstream', 'downstream']"),
    (["--silence", "upstream", "--window", "20:99"], "the trial has 80 bins; need STOP <= 80"),
    (["--silence", "upstream", "--window", "21:40"], "START and STOP must be multiples of 2"),
    (["--silence", "upstream", "--window", "40:20"], "need 0 <= START < STOP"),
    (["--silence", "upstream", "--window", "a:b"], "expected START:STOP in trial bins"),
    (["--silence", "upstream"], "give the bins to silence it over with --window"),
    (["--window", "20:40"], "name the region to silence with --silence REGION"),
    (["--silence", "upstream", "--window", "20:40", "--sessions", "2"],
     "simulated perturbations are written for one session only"),
])
def test_bad_perturbations_name_the_flag_and_write_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "sim"
    code = main(["simulate", "relay-decision", "--smoke-test", "--obs", "poisson", "--bin-ms",
                 "10", "--out", str(out), *flags])
    assert code != 0
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_perturb_scores_a_fit_against_the_simulated_perturbation(tmp_path, capsys):
    """simulate --silence -> train -> perturb --silence: the report compares the prediction
    with the recorded perturbed trials, neuron by neuron, and with the truth file's keys."""
    data = tmp_path / "data"
    assert main(["simulate", "random", "--smoke-test", "--obs", "poisson", "--trials", "48",
                 "--silence", "A0", "--window", "10:30", "--perturbed-trials", "16",
                 "--out", str(data)]) == 0
    printed = capsys.readouterr().out
    assert "perturbed trials: 16, A0 silenced over bins 10:30" in printed
    manifest = json.loads((data / "dataset.json").read_text())
    assert manifest["splits"]["perturbed"] == 16
    assert main(["train", "--data", str(data), "--smoke-test", "--epochs", "2", "--out",
                 str(tmp_path / "run"), "--no-tracking", "--quiet"]) == 0
    out = tmp_path / "pert"
    assert main(["perturb", "--model", str(tmp_path / "run" / "best.pt"), "--data", str(data),
                 "--silence", "A0", "--window", "10:30", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["perturbed_trials"] == 16 and -1 <= report["rank_correlation"] <= 1
    with np.load(out / "effects.npz") as z, np.load(data / "extras" / "perturbation.npz") as t:
        for r in manifest["provenance"]["units"]:
            # the model's prediction and the truth share keys and shapes
            for key in ("effect", "delta", "abs_delta"):
                assert z[f"{key}/{r}"].shape == t[f"{key}/{r}"].shape, (key, r)
