"""The PBT explore step: seeded, pure, multiplicative and unbiased in log space, clipped."""
from __future__ import annotations

import math
import pickle

import numpy as np
import pytest

from mrlfads.search_spaces.errors import SearchSpaceError
from mrlfads.search_spaces.explore import SpaceExplorer, explore, perturb
from mrlfads.search_spaces.space import Hyperparameter, SearchSpace

LR = Hyperparameter("train.lr", bounds=(1e-5, 5e-3), scale="log", init="loguniform",
                    explore_weight=0.25)
DROPOUT = Hyperparameter("model.dropout", bounds=(0.0, 0.6), scale="linear", init=0.3,
                         explore_weight=0.1)
SPACE = SearchSpace("pbt", (LR, DROPOUT), seed=3)


def test_log_step_matches_hand_computation():
    u = np.random.default_rng(7).uniform(-math.log(1.25), math.log(1.25))
    got = perturb(1e-3, LR, np.random.default_rng(7))
    assert got == pytest.approx(1e-3 * math.exp(u), rel=1e-12)


def test_linear_step_matches_hand_computation():
    u = np.random.default_rng(7).uniform(-1, 1)
    got = perturb(0.3, DROPOUT, np.random.default_rng(7))
    assert got == pytest.approx(0.3 + u * 0.1 * 0.6, abs=1e-12)


def test_log_perturbation_is_unbiased_in_log_space_and_bounded_by_the_weight():
    rng = np.random.default_rng(0)
    ratios = np.array([perturb(1e-4, LR, rng) / 1e-4 for _ in range(20000)])
    logs = np.log(ratios)
    # E[log ratio] = 0 within 4 standard errors; the factor stays within [1/1.25, 1.25]
    assert abs(logs.mean()) < 4 * logs.std() / math.sqrt(len(logs))
    assert ratios.min() >= 1 / 1.25 - 1e-12 and ratios.max() <= 1.25 + 1e-12
    # symmetric: as many steps up as down (binomial, 4 sigma)
    assert abs((logs > 0).mean() - 0.5) < 4 * 0.5 / math.sqrt(len(logs))


def test_linear_perturbation_is_unbiased_and_bounded():
    rng = np.random.default_rng(1)
    steps = np.array([perturb(0.3, DROPOUT, rng) - 0.3 for _ in range(20000)])
    assert abs(steps.mean()) < 4 * steps.std() / math.sqrt(len(steps))
    assert np.abs(steps).max() <= 0.06 + 1e-12


@pytest.mark.parametrize("hp,edge", [(LR, 5e-3), (LR, 1e-5), (DROPOUT, 0.0), (DROPOUT, 0.6)])
def test_perturbation_is_clipped_to_bounds(hp, edge):
    rng = np.random.default_rng(2)
    values = np.array([perturb(edge, hp, rng) for _ in range(2000)])
    low, high = hp.bounds
    assert values.min() >= low and values.max() <= high
    # about half the steps from an edge point outward and are clipped onto it
    assert 0.4 < np.mean(values == edge) < 0.6


def test_explore_is_pure_and_seeded():
    values = {"train.lr": 1e-3, "model.dropout": 0.3, "loss.other": 5.0}
    a = explore(values, SPACE, np.random.default_rng(11))
    b = explore(values, SPACE, np.random.default_rng(11))
    c = explore(values, SPACE, np.random.default_rng(12))
    assert a == b and a != c
    assert values == {"train.lr": 1e-3, "model.dropout": 0.3, "loss.other": 5.0}
    assert a["loss.other"] == 5.0  # paths the space does not search pass through


def test_explore_names_a_missing_hyperparameter():
    with pytest.raises(SearchSpaceError, match="model.dropout"):
        explore({"train.lr": 1e-3}, SPACE, np.random.default_rng(0))


def test_space_explorer_perturbs_only_hparams_and_survives_pickling():
    config = {"run": {"train": {"lr": 1.0}}, "hparams": {"train.lr": 1e-3, "model.dropout": 0.3}}
    explorer = SpaceExplorer(SPACE)
    clone = pickle.loads(pickle.dumps(explorer))
    out1, out2 = explorer(config), clone(config)
    assert out1 == out2  # same rng state after pickling: reproducible sweeps
    assert out1["run"] == config["run"] and out1["hparams"] != config["hparams"]
    assert config["hparams"] == {"train.lr": 1e-3, "model.dropout": 0.3}


def test_the_initial_population_is_within_bounds_and_honours_fixed_values():
    from mrlfads.search_spaces.tune_objects import domain

    assert domain(DROPOUT, initial=True) == 0.3  # a fixed initial value, not a draw
    lrs = np.array(domain(LR, initial=True).sample(size=50,
                                                   random_state=np.random.default_rng(3)))
    assert lrs.min() >= 1e-5 and lrs.max() <= 5e-3
    # log-uniform: the median sits near the geometric mean of the bounds, not the midpoint
    assert abs(math.log(np.median(lrs)) - math.log(math.sqrt(1e-5 * 5e-3))) < 1.0
