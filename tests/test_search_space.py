"""Search spaces load from YAML, validate with messages naming key and reason, round-trip."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mrlfads.config import ModelConfig, RegionConfig
from mrlfads.config_utils import ConfigError
from mrlfads.search_spaces.errors import SearchSpaceError
from mrlfads.search_spaces.space import SearchSpace
from mrlfads.training.config import RunConfig

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"


def _run_cfg() -> RunConfig:
    regions = (RegionConfig("A", 3, 1), RegionConfig("B", 4, 1))
    return RunConfig(model=ModelConfig(regions=regions, obs_model="poisson"))


def _minimal(**hp) -> dict:
    spec = {"bounds": [1e-4, 1e-2], "scale": "log", "init": "loguniform"}
    spec.update(hp)
    return {"kind": "pbt", "hyperparameters": {"train.lr": spec}}


def _error(data: dict) -> str:
    with pytest.raises(SearchSpaceError) as info:
        SearchSpace.from_dict(data, source="space.yaml")
    return str(info.value)


@pytest.mark.parametrize("name", ["pbt.yaml", "optuna.yaml"])
def test_shipped_space_starts_with_the_command_that_uses_it(name):
    first = (SPACES / name).read_text().splitlines()[0]
    assert first.startswith("# mrlfads sweep ") and f"--space search_spaces/{name}" in first


@pytest.mark.parametrize("name", ["pbt.yaml", "optuna.yaml"])
def test_shipped_space_round_trips_through_json(name):
    space = SearchSpace.from_yaml(SPACES / name)
    text = space.to_json()
    assert SearchSpace.from_json(text) == space
    assert json.loads(text)["kind"] == name.split(".")[0]


def test_pbt_space_covers_the_issue_hyperparameters_and_keeps_bm_below_bu():
    space = SearchSpace.from_yaml(SPACES / "pbt.yaml")
    assert set(space.paths) >= {"train.lr", "model.dropout", "loss.kl_ic_scale",
                                "loss.kl_co_scale", "loss.kl_com_ratio", "loss.l2_scale"}
    assert space["train.lr"].bounds == (1e-5, 5e-3)
    assert space["model.dropout"].bounds == (0.0, 0.6)
    # b_m = kl_co_scale / ratio < b_u = kl_co_scale for every ratio the search can reach
    assert space["loss.kl_com_ratio"].bounds[0] > 1.0
    for path in ("loss.kl_ic_scale", "loss.kl_co_scale", "loss.l2_scale"):
        low, high = space[path].bounds
        assert space[path].scale == "log" and high / low >= 1e3  # several decades


@pytest.mark.parametrize("name", ["pbt.yaml", "optuna.yaml"])
def test_every_bound_and_choice_is_a_valid_run_config(name):
    """Each path exists in RunConfig and both ends of its range pass RunConfig validation."""
    space = SearchSpace.from_yaml(SPACES / name)
    base = _run_cfg()
    for hp in space.hyperparameters:
        values = hp.choices if hp.type == "categorical" else hp.bounds
        for value in values:
            cfg = base.with_overrides({hp.path: value}).to_dict()
            assert _values_at(cfg, hp.path.split(".")) == [value] * _count(hp.path)


def _count(path: str) -> int:
    return 2 if "*" in path else 1  # two regions in _run_cfg


def _values_at(node, parts: list[str]) -> list:
    if not parts:
        return [node]
    if parts[0] == "*":
        return [v for item in node for v in _values_at(item, parts[1:])]
    return _values_at(node[parts[0]], parts[1:])


def test_yaml_scientific_notation_without_dot_is_read_as_a_number(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("kind: pbt\nhyperparameters:\n  train.lr: {bounds: [1e-5, 5e-3], scale: log}\n")
    assert yaml.safe_load(path.read_text())["hyperparameters"]["train.lr"]["bounds"][0] == "1e-5"
    assert SearchSpace.from_yaml(path)["train.lr"].bounds == (1e-5, 5e-3)


def test_low_above_high_names_the_key_and_both_values():
    msg = _error(_minimal(bounds=[1e-2, 1e-4]))
    assert "space.yaml" in msg
    assert "`hyperparameters.train.lr.bounds`" in msg and "low=0.01, high=0.0001" in msg


def test_log_scale_needs_positive_low():
    msg = _error(_minimal(bounds=[0.0, 1.0], init="uniform"))
    assert "`hyperparameters.train.lr.bounds`" in msg and "larger than 0" in msg


def test_unknown_key_is_named_with_the_known_ones():
    data = _minimal()
    data["hyperparameters"]["train.lr"]["bound"] = [1, 2]
    msg = _error(data)
    assert "`hyperparameters.train.lr.bound`: unknown key" in msg and "'bounds'" in msg


def test_fixed_initial_value_outside_bounds_is_rejected():
    msg = _error(_minimal(init=0.5))
    assert "`hyperparameters.train.lr.init`" in msg and "[0.0001, 0.01]" in msg


def test_all_problems_are_reported_at_once():
    data = _minimal(bounds=[1e-2, 1e-4], explore_weight=-1)
    data["scheduler"] = {"quantile_fraction": 0.7, "population": 1}
    data["resources"] = {"cpu": 0, "gpu": 1.5}
    msg = _error(data)
    for key in ("train.lr.bounds", "train.lr.explore_weight", "scheduler.quantile_fraction",
                "scheduler.population", "resources.cpu", "resources.gpu"):
        assert f"`{key}`" in msg or f"`hyperparameters.{key}`" in msg, key


def test_pbt_rejects_categorical_and_optuna_keys():
    data = {"kind": "pbt", "scheduler": {"grace_period": 3},
            "hyperparameters": {"model.com_dim": {"type": "categorical", "choices": [2, 4]}}}
    msg = _error(data)
    assert "`scheduler.grace_period`: unknown key" in msg
    assert "`hyperparameters.model.com_dim.type`: PBT perturbs continuous values only" in msg


def test_fractional_gpu_and_cpu_are_allowed():
    data = _minimal()
    data["resources"] = {"cpu": 0.5, "gpu": 0.25}
    assert SearchSpace.from_dict(data).resources.as_tune() == {"cpu": 0.5, "gpu": 0.25}


def test_bad_path_and_kind_are_named():
    assert "`kind`" in _error({"kind": "grid", "hyperparameters": {}})
    msg = _error({"kind": "pbt", "hyperparameters": {"lr": {"bounds": [0, 1]}}})
    assert "`hyperparameters.lr`" in msg and "dotted config path" in msg


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(SearchSpaceError, match="nope.yaml"):
        SearchSpace.from_yaml(tmp_path / "nope.yaml")


def test_wildcard_sets_every_region_and_unknown_fields_are_refused():
    base = _run_cfg()
    out = base.with_overrides({"model.regions.*.gen_dim": 7, "train.lr": 1e-3})
    assert [r.gen_dim for r in out.model.regions] == [7, 7] and out.train.lr == 1e-3
    assert base.model.regions[0].gen_dim is None  # input untouched
    with pytest.raises(ConfigError, match="config path 'train.lrr': no field 'lrr'"):
        base.with_overrides({"train.lrr": 1.0})
