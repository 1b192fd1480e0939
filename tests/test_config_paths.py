"""One config-path syntax and one override function (mrlfads.config_utils.with_overrides)
behind --set in every command, config files, search spaces (searched values and `fixed:`)
and PBT: the same key works everywhere and a wrong one gets the same message everywhere."""
from __future__ import annotations

import pytest

from mrlfads.config import LossConfig, ModelConfig, RegionConfig
from mrlfads.config_utils import ConfigError, get_path, with_overrides
from mrlfads.data_loaders.testing import make_tiny_dataset
from mrlfads.search_spaces.space import SearchSpace
from mrlfads.training import checkpoint as ckpt
from mrlfads.training import sweep
from mrlfads.training.cli import build_parser, main
from mrlfads.training.config import RunConfig
from mrlfads.training.trainable import trial_run_config

# the line every entry point shows for a misspelt field
UNKNOWN = ("config path 'train.lrr': no field 'lrr' in train (TrainConfig); known: ['amp', "
           "'batch_size', 'beta1', 'beta2', 'cd_rate', 'cuda_graph', 'cut_effectome_every', "
           "'device', 'epochs', 'eps', 'grad_clip', 'lr', 'lr_plateau', 'objective', "
           "'patience', 'plateau_factor', 'plateau_min_lr', "
           "'plateau_patience', 'seed', 'smoothing', 'sv_rate', 'threads', 'weight_decay']")


def _cfg() -> RunConfig:
    regions = (RegionConfig("A", 3, 1), RegionConfig("B", 4, 1, gen_dim=9))
    return RunConfig(model=ModelConfig(regions=regions, obs_model="poisson"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("paths")
    make_tiny_dataset(root / "data")
    return root / "data"


# ----------------------------------------------------------------------------- the function
def test_star_a_name_and_a_mapping_set_fields_and_later_paths_win():
    cfg = _cfg()
    out = with_overrides(cfg, {"model.regions.*.gen_dim": 5, "model.regions.B.fac_dim": 2,
                               "loss": {"kl_ic_scale": 0.5, "l2_ramp": {"start": 3}},
                               "model.regions.A.gen_dim": 7, "train.epochs": 1e3})
    assert [(r.gen_dim, r.fac_dim) for r in out.model.regions] == [(7, None), (5, 2)]
    assert out.loss.kl_ic_scale == 0.5 and out.loss.l2_ramp.start == 3
    assert out.loss.l2_ramp.length == LossConfig().l2_ramp.length  # the rest kept
    assert out.train.epochs == 1000 and isinstance(out.train.epochs, int)
    assert cfg.model.regions[1].gen_dim == 9  # the input is never changed
    assert (get_path(out, "model.regions.*.gen_dim"), get_path(out, "model.regions.B.gen_dim"),
            get_path(out, "loss.l2_ramp.start")) == (7, 5, 3)


def test_a_list_of_named_entries_sets_those_regions_never_by_position():
    out = _cfg().with_overrides({"model.regions": [{"name": "B", "gen_dim": 3}]})
    assert [r.gen_dim for r in out.model.regions] == [None, 3]


def test_each_touched_section_is_validated_once_with_all_its_changes():
    # objective=sv alone is refused (it needs sv_rate > 0): applied one by one, the first
    # path would fail although the pair is valid
    out = _cfg().with_overrides({"train.objective": "sv", "train.sv_rate": 0.1})
    assert (out.train.objective, out.train.sv_rate) == ("sv", 0.1)
    with pytest.raises(ConfigError, match="train.objective='sv' ranks on sample-validation"):
        _cfg().with_overrides({"train.objective": "sv"})


def test_every_bad_path_is_reported_at_once_naming_the_path_and_the_known_keys():
    with pytest.raises(ConfigError) as exc:
        _cfg().with_overrides({"train.lrr": 1, "model.regions.C.gen_dim": 1, "train.*.lr": 1,
                               "train.lr.x": 1, "train.lr": "abc", "train..lr": 1,
                               "loss.kl_co_scale": -1.0})
    lines = str(exc.value).splitlines()[1:]
    assert sorted(lines) == sorted([
        "  config path 'train..lr': expected a dotted path of field names such as train.lr; in "
        "a list of named sections a part is '*' (every element) or an element's name: "
        "model.regions.*.gen_dim",
        "  " + UNKNOWN,
        "  config path 'model.regions.C.gen_dim': no element 'C' in model.regions; known: "
        "['A', 'B'], or '*' for every element",
        "  config path 'train.*.lr': '*' stands for every element of a list of sections, and "
        "train (TrainConfig) is not one; its fields: " + UNKNOWN.split("known: ")[1],
        "  config path 'train.lr.x': train.lr is a value, not a section: it has no field 'x'",
        "  train.lr: expected a number (YAML 1.2: 1e-3, .5, .inf), got the string 'abc'",
        "  loss.kl_co_scale: invalid loss config: kl_co_scale=-1.0 must be >= 0",
    ])
    with pytest.raises(ConfigError, match="no element 'C' in model.regions"):
        get_path(_cfg(), "model.regions.C.gen_dim")


# ----------------------------------------------------------------------------- the same key
def test_a_region_wildcard_works_in_train_set_and_in_a_sweep_space(data, tmp_path):
    key = "model.regions.*.gen_dim"
    assert main(["train", "--data", str(data), "--set", f"{key}=5", "--smoke-test", "--epochs",
                 "2", "--out", str(tmp_path / "run"), "--no-tracking", "--quiet"]) == 0
    saved = ckpt.run_config(ckpt.load(tmp_path / "run" / "last.pt"), "last.pt")
    assert [r.gen_dim for r in saved.model.regions] == [5, 5]
    # sweep --set, a space's `fixed:` and a searched value (Optuna `build`)
    args = build_parser().parse_args(["sweep", "--data", str(data), "--smoke-test",
                                      "--set", f"{key}=6", "--storage", str(tmp_path / "s")])
    from mrlfads.training.commands.sweep import make_plan

    assert [r.gen_dim for r in make_plan(args).run.model.regions] == [6, 6]
    space = SearchSpace.from_dict({
        "kind": "optuna", "fixed": {key: 7},
        "hyperparameters": {"model.regions.B.fac_dim": {"type": "categorical",
                                                        "choices": [2, 3]}}})
    plan = sweep.plan_sweep(str(data), space=space, smoke_test=True, storage=str(tmp_path / "s"))
    assert [r.gen_dim for r in plan.run.model.regions] == [7, 7]
    trial = trial_run_config({"run": plan.run, "build": {"model.regions.B.fac_dim": 3,
                                                         key: 8}, "hparams": {}})
    assert [(r.gen_dim, r.fac_dim) for r in trial.model.regions] == [(8, None), (8, 3)]


def test_an_unknown_path_gets_the_same_message_from_every_entry_point(data, tmp_path, capsys):
    def cli_error(*argv: str) -> str:
        assert main(list(argv)) == 2
        return capsys.readouterr().err

    common = ["--data", str(data), "--smoke-test", "--set", "train.lrr=1"]
    assert UNKNOWN in cli_error("train", *common, "--out", str(tmp_path / "r"), "--no-tracking")
    assert UNKNOWN in cli_error("sweep", *common, "--storage", str(tmp_path / "s"))
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  lrr: 1\n")
    assert UNKNOWN in cli_error("train", "--data", str(data), "--config", str(config),
                                "--out", str(tmp_path / "r"), "--no-tracking")
    for space in ({"kind": "pbt", "fixed": {"train.lrr": 1},
                   "hyperparameters": {"train.lr": {"bounds": [1e-4, 1e-2], "scale": "log"}}},
                  {"kind": "pbt",
                   "hyperparameters": {"train.lrr": {"bounds": [1e-4, 1e-2], "scale": "log"}}}):
        with pytest.raises(ConfigError if "fixed" in space else ValueError) as exc:
            sweep.plan_sweep(str(data), space=SearchSpace.from_dict(space), smoke_test=True,
                             storage=str(tmp_path / "s"))
        assert UNKNOWN in str(exc.value)
    with pytest.raises(ConfigError) as exc:  # a trial's values, PBT's included
        trial_run_config({"run": _cfg(), "hparams": {"train.lrr": 1.0}})
    assert UNKNOWN in str(exc.value)


def test_a_space_file_reads_scientific_numbers_without_a_dot(data, tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("kind: optuna\nfixed: {train.weight_decay: 1e-5, loss.l2_scale: 2E3}\n"
                    "hyperparameters:\n"
                    "  train.lr: {type: categorical, choices: [1e-3, 5e-3]}\n")
    space = SearchSpace.from_yaml(path)
    assert space.fixed == {"train.weight_decay": 1e-5, "loss.l2_scale": 2000.0}
    assert space["train.lr"].choices == (1e-3, 5e-3)
    plan = sweep.plan_sweep(str(data), space=space, smoke_test=True, storage=str(tmp_path / "s"))
    assert (plan.run.train.weight_decay, plan.run.loss.l2_scale) == (1e-5, 2000.0)
