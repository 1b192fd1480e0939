"""`--threads auto` takes the cores other work leaves free (training/cpu_threads.py)."""
from __future__ import annotations

import argparse

import pytest
import torch
from threadpoolctl import threadpool_info

from mrlfads.training.cpu_threads import free_cpus, parse_threads, set_threads, usable_cpus


@pytest.mark.parametrize(("busy", "cpus", "free"), [
    (0.0, 2, 2), (20.0, 2, 2), (50.0, 2, 1), (100.0, 2, 1),  # two CPU hogs on 2 cores: 1
    (10.0, 8, 7), (49.0, 8, 4), (100.0, 16, 1), (100.0, 1, 1)])
def test_free_cpus_are_the_cores_not_in_use_at_least_one(busy, cpus, free):
    assert free_cpus(busy, cpus) == free


def test_threads_parse_auto_or_a_positive_count():
    assert parse_threads("auto") == 0 and parse_threads("3") == 3
    for bad in ("0", "-2", "two", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="give auto or a number"):
            parse_threads(bad)


def test_set_threads_limits_torch_and_numpys_blas():
    before = torch.get_num_threads()
    try:
        assert set_threads(1) == 1
        assert torch.get_num_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
        assert 1 <= set_threads(0) <= usable_cpus()
    finally:
        set_threads(before)


def test_infer_perturb_and_report_take_threads(capsys):
    from mrlfads.training.cli import main

    for args in (["infer", "--out", "o", "--model", "m.pt", "--data", "d"],
                 ["perturb", "--window", "1:2", "--silence", "A", "--model", "m.pt", "--data", "d"],
                 ["report", "RUN"]):
        with pytest.raises(SystemExit):
            main([*args, "--threads", "0"])
        assert "--threads '0': give auto or a number" in capsys.readouterr().err
