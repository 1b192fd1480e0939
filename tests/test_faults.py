"""Fault injection (training/faults.py): the MRLFADS_FAULT grammar, its errors, and the
epoch hook's counting. Fast: no Ray, no training; the faults in real sweeps are in
tests/test_sweep_faults.py."""
from __future__ import annotations

import pytest

from mrlfads.training import faults
from mrlfads.training.faults import EpochSignal, FaultError, KillDriver


def test_unset_or_empty_means_no_fault(monkeypatch, tmp_path):
    monkeypatch.delenv(faults.ENV, raising=False)
    assert faults.active() == [] and faults.worker_env() == {}
    assert faults.epoch_hook(tmp_path, "abc_00001") is None and faults.driver_callbacks() == []
    monkeypatch.setenv(faults.ENV, " ")
    assert faults.active() == [] and faults.worker_env() == {}


def test_the_grammar():
    assert faults.parse("signal-epoch:epoch=4") == [EpochSignal(4, "KILL", None, 1)]
    assert faults.parse("signal-epoch:epoch=3,signal=sigterm,trial=00002,times=2; "
                        "kill-driver:checkpoints=6") == [EpochSignal(3, "TERM", "00002", 2),
                                                         KillDriver(6)]
    assert faults.parse("kill-driver:checkpoints=4,signal=term") == [KillDriver(4, "TERM")]


@pytest.mark.parametrize("text, says", [
    ("boom", "unknown fault 'boom'"),
    ("signal-epoch:signal=KILL", "needs epoch="),
    ("signal-epoch:epoch=0", "epoch='0' must be a whole number >= 1"),
    ("signal-epoch:epoch=2,signal=STOP", "signal='STOP' is not one of"),
    ("signal-epoch:epoch=2,trial=1", "trial='1' must be Tune's 5-digit trial number"),
    ("signal-epoch:epoch=2,when=now", "takes only signal=, trial=, times="),
    ("kill-driver:checkpoints=x", "checkpoints='x' must be a whole number"),
    ("kill-driver:epoch=3", "needs checkpoints= and takes only signal="),
    ("kill-driver:checkpoints=3,signal=STOP", "signal='STOP' is not one of"),
    ("kill-driver:checkpoints", "is not KEY=VALUE"),
])
def test_a_bad_value_names_the_variable_and_the_grammar(text, says):
    with pytest.raises(FaultError, match="MRLFADS_FAULT") as err:
        faults.parse(text)
    assert says in str(err.value)


def test_a_bad_value_exits_2_before_the_command_runs(monkeypatch, tmp_path, capsys):
    from mrlfads.training.cli import main

    monkeypatch.setenv(faults.ENV, "signal-epoch:epoch=-1")
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "MRLFADS_FAULT" in err and "epoch='-1'" in err
    assert not (tmp_path / "r").exists()  # nothing ran


def test_the_hook_fires_at_its_epoch_only_for_its_trial_and_only_times_times(monkeypatch, tmp_path,
                                                                             request):
    import signal
    import tempfile

    # SIGINT, so that the signal lands here as a KeyboardInterrupt instead of ending pytest;
    # Python's own handler, whatever an earlier test (Ray, Tune, the CLI) installed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    monkeypatch.setenv(faults.ENV, "signal-epoch:epoch=3,signal=INT,trial=00001,times=2")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert faults.epoch_hook(tmp_path, "abc_00002") is None  # another trial
    assert faults.epoch_hook(tmp_path, None) is None  # `train`: no trial id
    hook = faults.epoch_hook(tmp_path, "abc_00001")
    for epoch in (1, 2, 4, 5):
        hook(epoch)  # not its epoch: nothing happens
    for n in (1, 2):
        with pytest.raises(KeyboardInterrupt):
            hook(3)
        # counted before the signal, in the trial's own folder on this node
        assert (tmp_path / "mrlfads-faults" / "abc_00001" / "mrlfads-fault-0").read_text() == str(n)
    hook(3)  # fired twice: a third start of epoch 3 goes on
    again = faults.epoch_hook(None, "abc_00001")  # a new process of the same trial
    again(3)
    # `train`: the count lives in the run directory
    monkeypatch.setenv(faults.ENV, "signal-epoch:epoch=1,signal=INT")
    with pytest.raises(KeyboardInterrupt):
        faults.epoch_hook(tmp_path / "run")(1)
    assert (tmp_path / "run" / "mrlfads-fault-0").read_text() == "1"
    faults.epoch_hook(tmp_path / "run")(1)
