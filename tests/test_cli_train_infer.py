"""`mrlfads train | infer | perturb` end to end on a tiny dataset (no tracking)."""
import json
import os

import numpy as np
import pytest
import torch

from mrlfads.data_loaders.testing import make_tiny_dataset
from mrlfads.data_loaders.writer import write_dataset
from mrlfads.metrics import bits_per_spike
from mrlfads.training.cli import main
from mrlfads.training.infer_io import read_outputs


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    make_tiny_dataset(root / "data")
    code = main(["train", "--data", str(root / "data"), "--smoke-test", "--epochs", "2",
                 "--out", str(root / "run"), "--no-tracking", "--quiet"])
    assert code == 0
    return root


def test_train_writes_run_directory_and_resumes(trained, tmp_path):
    run = trained / "run"
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.jsonl", "last.pt", "best.pt"}
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1.0, 2.0]
    # a second start on the same directory must not silently overwrite it
    assert main(["train", "--data", str(trained / "data"), "--smoke-test", "--epochs", "2",
                 "--out", str(run), "--no-tracking", "--quiet"]) == 2
    # --resume continues from last.pt to the new epoch count, losing no epoch
    import shutil

    shutil.copytree(run, tmp_path / "run")
    assert main(["train", "--data", str(trained / "data"), "--smoke-test", "--epochs", "3",
                 "--out", str(tmp_path / "run"), "--no-tracking", "--quiet", "--resume"]) == 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1.0, 2.0, 3.0]


def test_train_rejects_bad_input_with_exit_code_2(trained, capsys):
    assert main(["train", "--data", str(trained / "nope"), "--no-tracking"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["train", "--data", str(trained / "data"), "--set", "train.lrr=1", "--no-tracking"]) == 2
    assert "lrr" in capsys.readouterr().err


def test_infer_writes_every_output_per_trial(trained, tmp_path, capsys):
    out = tmp_path / "infer"
    assert main(["infer", "--model", str(trained / "run" / "best.pt"), "--data",
                 str(trained / "data"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    cols = read_outputs(out)
    n_trials, t_prime = 24, 12 - 4  # make_tiny_dataset: 24 trials, T=12, tau=4
    assert cols["trial_id"].shape == (n_trials,)
    assert sorted(set(cols["split"])) == ["train", "valid"]
    assert cols["rates/A"].shape == (n_trials, t_prime, 3)
    assert cols["factors/B"].shape == (n_trials, t_prime, 3)
    assert cols["inputs/A"].shape == (n_trials, t_prime, 2)  # smoke co_dim
    assert cols["messages/A->B"].shape == (n_trials, t_prime, 2)  # smoke com_dim
    assert np.all(cols["rates/A"] > 0)  # Poisson rates
    assert "closed_pathways" not in json.loads((out / "outputs.json").read_text())
    eff = json.loads((out / "effectome.json").read_text())
    assert eff["regions"] == ["A", "B"] and eff["matrix"][0][0] is None
    rms = np.sqrt(np.mean(cols["messages/A->B"] ** 2))
    assert eff["message_rms"][1][0] == pytest.approx(rms, rel=1e-5)  # E[dst][src]
    # "matrix" is the cut effectome over every trial written (splits pooled)
    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.effectome import cut_effectome
    from mrlfads.training.checkpoint import load_model
    from mrlfads.training.data import load_split

    model, _, _ = load_model(trained / "run" / "best.pt")
    ds = ArrowDataset.open(trained / "data")
    splits = [load_split(ds, name, torch.device("cpu")) for name in ("train", "valid")]
    heldin = [torch.cat([sp.heldin[r] for sp in splits]) for r in range(2)]
    E = cut_effectome(model, heldin)
    assert eff["definition"].startswith("cut") and eff["matrix"][1][0] > 0
    assert eff["matrix"][1][0] == pytest.approx(E[1, 0], rel=1e-4)
    metrics = json.loads((out / "metrics.json").read_text())
    assert "valid/effectome_cosine" in metrics and "valid/message_r2" in metrics
    assert "valid/effectome_cut_cosine" in metrics and "valid/effectome_cut/A_to_B" in metrics
    # beside the model's held-out score, the smoothing baseline's: fitted on the training
    # split (18 trials) and scored on the others, never on the trials it was fitted on
    from mrlfads.baselines import fit_smoothing_baseline

    train, valid = splits
    b = fit_smoothing_baseline(torch.cat(train.heldin, -1).numpy(),
                               torch.cat(train.heldout, -1).numpy(), bin_width_s=0.01)
    pred = b.log_rates(torch.cat(valid.heldin, -1).numpy())[:, 4:]
    heldout = torch.cat(valid.heldout, -1).numpy()[:, 4:]
    assert metrics["valid/smoothing_co_bps"] == pytest.approx(bits_per_spike(heldout, pred))
    assert metrics["valid/smoothing_co_bps/B"] == pytest.approx(
        bits_per_spike(heldout[..., 1:], pred[..., 1:]))
    assert not any(k.startswith("train/smoothing") for k in metrics)
    info = json.loads((out / "outputs.json").read_text())["smoothing_baseline"]
    assert (info["all"]["width_s"], info["all"]["alpha"]) == (b.width_s, b.alpha)
    # a model no better than the baseline on held-out neurons is named so on the terminal
    assert ("does not beat smoothed held-in spikes" in printed) == (
        metrics["valid/co_bps"] <= metrics["valid/smoothing_co_bps"])
    assert f"valid/smoothing_co_bps = {metrics['valid/smoothing_co_bps']:.4f}" in printed
    # an existing output is not replaced without --overwrite
    assert main(["infer", "--model", str(trained / "run" / "best.pt"), "--data",
                 str(trained / "data"), "--out", str(out)]) == 2


def test_a_closed_pathway_trains_and_infers_as_carrying_nothing(trained, tmp_path):
    """`--set model.pathways=[A->B]` closes B->A: the run trains, its message is zero in
    every trial, its cut effect is exactly 0, and outputs.json names it; A->B still acts."""
    assert main(["train", "--data", str(trained / "data"), "--smoke-test", "--epochs", "2",
                 "--out", str(tmp_path / "run"), "--no-tracking", "--quiet",
                 "--set", "model.pathways=[A->B]"]) == 0
    out = tmp_path / "infer"
    assert main(["infer", "--model", str(tmp_path / "run" / "best.pt"), "--data",
                 str(trained / "data"), "--out", str(out)]) == 0
    cols = read_outputs(out)
    assert not cols["messages/B->A"].any() and cols["messages/A->B"].any()
    info = json.loads((out / "outputs.json").read_text())
    assert info["closed_pathways"] == ["B->A"]
    eff = json.loads((out / "effectome.json").read_text())
    assert eff["matrix"][0][1] == 0.0 and eff["matrix"][1][0] > 0  # [dst][src]


def test_perturb_reports_effects_and_rank_correlation(trained, tmp_path):
    rng = np.random.default_rng(1)
    n, T = 30, 12
    x = {r: rng.poisson(2.0, size=(n, T, 4)).astype(np.float32) for r in ("A", "B")}
    split = np.array(["train"] * 10 + ["valid"] * 10 + ["perturbed"] * 10)
    write_dataset(tmp_path / "pert", name="pert", regions=[("A", 3, 1), ("B", 3, 1)],
                  obs_model="poisson", bin_width_s=0.01, ic_enc_seq_len=4, x=x, split=split)
    out = tmp_path / "perturb"
    assert main(["perturb", "--model", str(trained / "run" / "best.pt"), "--data",
                 str(tmp_path / "pert"), "--silence", "A", "--window", "5:12",
                 "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["mean_abs_rate_change"]) == {"A", "B"}
    assert report["mean_abs_rate_change"]["B"] > 0  # B listens to A
    assert report["perturbed_trials"] == 10
    assert -1.0 <= report["rank_correlation"] <= 1.0
    assert main(["perturb", "--model", str(trained / "run" / "best.pt"), "--data",
                 str(tmp_path / "pert"), "--silence", "A", "--window", "9:5"]) == 2


def test_every_command_has_help_and_no_command_is_an_error(capsys):
    from mrlfads.training.cli import build_parser

    names = {"demo", "simulate", "ingest", "train", "sweep", "promote", "infer", "perturb",
             "export-nwb", "report", "compare-effectomes", "ui", "import-metrics"}
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == names
    for name in names:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert "usage: mrlfads " + name in capsys.readouterr().out
    assert main([]) == 2


def test_openmp_waits_passively_only_where_processes_share_cores(monkeypatch):
    from mrlfads.training.cli import set_openmp_wait_policy

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    set_openmp_wait_policy("train")  # one process on idle cores: OpenMP's default is faster
    assert "OMP_WAIT_POLICY" not in os.environ
    set_openmp_wait_policy("sweep")
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    set_openmp_wait_policy("demo")
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice wins


def test_train_reports_the_smoothing_baseline_beside_best_pt(tmp_path, mlflow_sqlite_uri,
                                                             experiment_name, capsys):
    """After training on spikes: smoothed held-in spikes' held-out co-bps on the validation
    split, printed beside best.pt's and logged to the run's MLflow metrics."""
    from mlflow.tracking import MlflowClient

    from mrlfads.training.fit import epochs_since_best
    from mrlfads.training.smoothing import smoothing_scores

    ds = make_tiny_dataset(tmp_path / "data")
    assert main(["train", "--data", str(tmp_path / "data"), "--smoke-test", "--epochs", "3",
                 "--out", str(tmp_path / "run"), "--tracking-uri", mlflow_sqlite_uri,
                 "--experiment", experiment_name, "--quiet"]) == 0
    printed = capsys.readouterr().out
    _, expected = smoothing_scores(ds, ["valid"])
    smoothed = expected["valid/smoothing_co_bps"]
    history = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    best_epoch, _ = epochs_since_best(history)
    model = next(m for m in history if m["epoch"] == best_epoch)["valid/co_bps"]
    line = next(x for x in printed.splitlines() if x.startswith("held-out co-bps on valid"))
    assert f"best.pt (epoch {best_epoch}) {model:.4f}, smoothed held-in spikes {smoothed:.4f}" in line
    assert line.endswith("does not beat it") == (model <= smoothed)
    client = MlflowClient(mlflow_sqlite_uri)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment_name).experiment_id])
    assert run.data.metrics["valid/smoothing_co_bps"] == pytest.approx(smoothed)
    assert run.data.metrics["valid/smoothing_co_bps/B"] == pytest.approx(
        expected["valid/smoothing_co_bps/B"])
    (logged,) = client.get_metric_history(run.info.run_id, "valid/smoothing_co_bps")
    assert logged.step == history[-1]["epoch"]


def test_smoothing_notes_name_each_split_the_model_does_not_beat():
    from mrlfads.training.commands.infer import smoothing_notes

    metrics = {"valid/co_bps": 0.05, "valid/smoothing_co_bps": 0.06,  # below: a note
               "train/co_bps": 0.08, "train/smoothing_co_bps": 0.06,  # above: none
               "test/co_bps": float("nan"), "test/smoothing_co_bps": 0.06,  # not scored
               "perturbed/co_bps": 0.02, "perturbed/smoothing_co_bps": 0.03}
    notes = smoothing_notes(metrics, ["train", "valid", "test", "perturbed", "other"])
    assert len(notes) == 2
    assert notes[0].startswith("note: on valid, the model's held-out co-bps (0.0500) does not "
                               "beat smoothed held-in spikes (0.0600)")
    # the model runs perturbed trials unperturbed: expected, and said so, not a verdict
    assert notes[1].startswith("note: on perturbed") and "as expected" in notes[1]
    assert "does not beat" not in notes[1]
