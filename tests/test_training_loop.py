"""The training loop: exact resume, the trial's own hyperparameters, NaN, config vs data."""
import json
import math

import pytest
import torch

from mrlfads.config_utils import ConfigError
from mrlfads.data_loaders.testing import make_tiny_dataset
from mrlfads.training import checkpoint as ckpt
from mrlfads.training.config import RunConfig
from mrlfads.training.fit import fit
from mrlfads.training.loop import NonFiniteLossError, Trainer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny"
    return make_tiny_dataset(path)


def smoke_cfg(ds, **overrides):
    return RunConfig.for_dataset(ds.manifest, uri=ds.uri, smoke_test=True, overrides=overrides)


def test_resume_equals_no_stop(tiny, tmp_path):
    cfg = smoke_cfg(tiny)
    straight = Trainer(cfg, tiny)
    losses = [straight.run_epoch() for _ in range(4)]

    first = Trainer(cfg, tiny)
    resumed = [first.run_epoch() for _ in range(2)]
    first.save_checkpoint(tmp_path / "c.pt")
    del first
    second = Trainer.from_checkpoint(tmp_path / "c.pt", tiny)
    assert second.epoch == 2
    resumed += [second.run_epoch() for _ in range(2)]
    for a, b in zip(losses, resumed):
        assert a["train/loss"] == b["train/loss"]
        assert a["objective"] == b["objective"]
        assert a["lr"] == b["lr"]
    assert [h["epoch"] for h in second.history] == [1.0, 2.0, 3.0, 4.0]


def test_restore_applies_own_lr_and_keeps_adam_moments(tiny, tmp_path):
    donor = Trainer(smoke_cfg(tiny, **{"train.lr": 1e-2}), tiny)
    donor.run_epoch()
    donor.save_checkpoint(tmp_path / "donor.pt")
    moments = {k: v["exp_avg"].clone() for k, v in donor.optimizer.state_dict()["state"].items()}

    own = smoke_cfg(tiny, **{"train.lr": 3e-4, "model.dropout": 0.2})
    child = Trainer.from_checkpoint(tmp_path / "donor.pt", tiny, run_cfg=own)
    assert all(float(g["lr"]) == pytest.approx(3e-4, rel=1e-7)
               for g in child.optimizer.param_groups)
    assert child.model.dropout_p == 0.2
    state = child.optimizer.state_dict()["state"]
    for k, v in moments.items():
        assert torch.equal(state[k]["exp_avg"], v)
    metrics = child.run_epoch()
    assert metrics["lr"] == pytest.approx(3e-4)


def test_apply_hparams_writes_everywhere_and_rejects_fixed_fields(tiny):
    trainer = Trainer(smoke_cfg(tiny), tiny)
    trainer.apply_hparams({"train.lr": 5e-4, "loss.kl_ic_scale": 0.25, "model.dropout": 0.1})
    assert trainer.lr == 5e-4
    assert trainer.cfg.loss.kl_ic_scale == 0.25
    assert trainer.model.dropout_p == 0.1
    metrics = trainer.run_epoch()
    assert metrics["hp/loss.kl_ic_scale"] == 0.25
    with pytest.raises(ConfigError, match="model.com_dim"):
        trainer.apply_hparams({"model.com_dim": 3})
    with pytest.raises(ConfigError, match="kl_com_ratio"):
        trainer.apply_hparams({"loss.kl_com_ratio": 0.5})


def test_nan_stops_with_message_and_keeps_last_good_checkpoint(tiny, tmp_path):
    trainer = Trainer(smoke_cfg(tiny), tiny)
    fit(trainer, tmp_path, epochs=1, progress=False)
    good = ckpt.load(tmp_path / "last.pt")
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="epoch 1.*last.pt"):
        fit(trainer, tmp_path, epochs=2, progress=False)
    after = ckpt.load(tmp_path / "last.pt")
    assert after["epoch"] == good["epoch"] == 1
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and math.isfinite(json.loads(lines[0])["objective"])


def test_config_that_disagrees_with_data_names_both_sides(tiny):
    with pytest.raises(ConfigError, match=r"region 'C'.*\['A', 'B'\]"):
        RunConfig.for_dataset(tiny.manifest, user={"model": {"regions": [{"name": "C", "n_heldin": 3}]}})
    with pytest.raises(ConfigError, match="region A: config has 5 held-in"):
        RunConfig.for_dataset(tiny.manifest, user={"model": {"regions": [{"name": "A", "n_heldin": 5}]}})
    with pytest.raises(ConfigError, match="T=12 bins, fewer than the IC window"):
        RunConfig.for_dataset(tiny.manifest, overrides={"model.ic_enc_seq_len": 12})
    with pytest.raises(ConfigError, match="config path 'train.learning_rate': no field"):
        RunConfig.for_dataset(tiny.manifest, user={"train": {"learning_rate": 1e-3}})


class NotAWeight:
    """A pickled class instance: what weights_only=True must refuse to load."""


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    path = tmp_path / "c.pt"
    ckpt.save({"x": torch.ones(2)}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="bad.pt"):
        ckpt.load(tmp_path / "bad.pt")
    # an arbitrary pickled object must not be loadable
    torch.save({"format": ckpt.CHECKPOINT_FORMAT, "obj": NotAWeight()}, tmp_path / "evil.pt")
    with pytest.raises(ckpt.CheckpointError, match="evil.pt"):
        ckpt.load(tmp_path / "evil.pt")
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load(tmp_path / "missing.pt")


def test_fixed_message_prior_stays_at_prior_var_while_the_learnt_one_moves(tiny):
    """model.learn_message_prior=false keeps every message prior's log-variance at
    log(prior_var) through training; with the default the same epochs move it."""
    moved = {}
    for learn in (True, False):
        trainer = Trainer(smoke_cfg(tiny, **{"model.learn_message_prior": learn}), tiny)
        start = trainer.model.com_prior_logvar.detach().clone()
        for _ in range(3):
            trainer.run_epoch()
        moved[learn] = float((trainer.model.com_prior_logvar.detach() - start).abs().max())
        assert start.flatten().tolist() == pytest.approx(
            [math.log(trainer.cfg.model.prior_var)] * start.numel())
    assert moved[True] > 1e-4
    assert moved[False] == 0.0


def test_output_that_is_not_a_terminal_gets_plain_epoch_lines(tiny, tmp_path, capsys, monkeypatch):
    """A log file shows nothing of a live bar until the run ends: it gets the first epoch's
    line at once, then at most one line per interval, and always the last epoch's."""
    import functools

    import mrlfads.training.fit as fit_module

    clock = iter([0.0, 1.0, 2.0, 40.0, 41.0, 42.0]).__next__  # start, then one per epoch
    monkeypatch.setattr(fit_module, "_LogLines",
                        functools.partial(fit_module._LogLines, clock=clock))
    fit(Trainer(smoke_cfg(tiny), tiny), tmp_path, epochs=5, progress=True)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch ")]
    # epoch 1 at 1 s; 2 at 2 s is within 30 s of it; 3 at 40 s is not; 4 is within 30 s
    # of 3; 5 is the last
    assert [ln.split(" (")[0] for ln in lines] == ["epoch 1/5", "epoch 3/5", "epoch 5/5"]
    assert lines[1].startswith("epoch 3/5 (0:40): loss ")
    assert "objective" in lines[2]
    # which epoch best.pt holds: none until the ramps end, then the best epoch after them
    from mrlfads.training.fit import epochs_since_best

    history = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for line, n in zip(lines, (1, 3, 5)):
        best = epochs_since_best(history[:n])[0]
        assert line.endswith("best.pt: none before the ramps end" if best is None
                             else f"best.pt: epoch {best}")

    fit(Trainer(smoke_cfg(tiny), tiny), tmp_path / "quiet", epochs=2, progress=False)
    assert "epoch " not in capsys.readouterr().out
