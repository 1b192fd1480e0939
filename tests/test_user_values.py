"""Values users type (--set, --config files) read as YAML 1.2 in every command, and config
errors that name the field and never show a Python type error."""
from __future__ import annotations

import json
import math

import pytest
import yaml

from mrlfads.config import LossConfig, ModelConfig, RampConfig, RegionConfig
from mrlfads.config_utils import ConfigError, from_dict
from mrlfads.data_loaders.testing import make_tiny_dataset
from mrlfads.training.cli import build_parser, main
from mrlfads.training.config import DataConfig, RunConfig, TrainConfig, load_config_file
from mrlfads.training.yaml12 import parse_sets, parse_value

SPELLINGS = [  # (typed, value, type): the YAML 1.2 core schema
    ("1e-3", 1e-3, float), ("1E4", 1e4, float), (".5", 0.5, float), ("-2e-5", -2e-5, float),
    ("+1.5e3", 1500.0, float), ("1.", 1.0, float), ("0.001", 0.001, float),
    ("1.0e-3", 1e-3, float), (".inf", math.inf, float), ("-.Inf", -math.inf, float),
    ("12", 12, int), ("-3", -3, int), ("+4", 4, int), ("010", 10, int), ("0o17", 15, int),
    ("0x1F", 31, int), ("true", True, bool), ("False", False, bool),
    ("null", None, type(None)), ("~", None, type(None)), ("", None, type(None)),
    # YAML 1.1 read these as bool, int or date; YAML 1.2 as strings
    ("inf", "inf", str), ("yes", "yes", str), ("off", "off", str), ("1_000", "1_000", str),
    ("1:30", "1:30", str), ("2024-01-01", "2024-01-01", str), ("cuda:0", "cuda:0", str),
    ("rates", "rates", str), ('"1e-3"', "1e-3", str),
]


@pytest.mark.parametrize("typed,value,kind", SPELLINGS, ids=[s[0] or "empty" for s in SPELLINGS])
def test_every_spelling_parses_to_its_yaml_1_2_value_and_type(typed, value, kind):
    got = parse_value(typed)
    assert type(got) is kind and got == value


def test_nan_lists_and_maps_and_pyyaml_itself_untouched():
    assert math.isnan(parse_value(".nan"))
    assert parse_value("[1, 2e-3, {a: 1E2}]") == [1, 0.002, {"a": 100.0}]
    assert yaml.safe_load("1e-3") == "1e-3"  # our Loader is a subclass; PyYAML stays 1.1


def test_parse_sets_splits_at_the_first_equals_and_rejects_malformed_items():
    assert parse_sets(["train.lr=1e-3", "data.uri=s3://b/k=v", " train.seed = 7"]) == {
        "train.lr": 0.001, "data.uri": "s3://b/k=v", "train.seed": 7}
    with pytest.raises(ConfigError, match=r"--set 'train\.lr': expected PATH=VALUE"):
        parse_sets(["train.lr"])
    with pytest.raises(ConfigError, match="expected PATH=VALUE"):
        parse_sets(["=3"])
    with pytest.raises(ConfigError, match=r"--set train\.lr: '\[1' is not a YAML value"):
        parse_sets(["train.lr=[1"])


def test_config_file_reads_numbers_as_yaml_1_2(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  lr: 1e-3\n  epochs: 4E2\n"
                    "loss:\n  l2_ramp: {start: 1e2, length: 50}\n")
    data = load_config_file(path)
    assert data["train"]["lr"] == 0.001 and isinstance(data["train"]["lr"], float)
    ds = make_tiny_dataset(tmp_path / "d")
    cfg = RunConfig.for_dataset(ds.manifest, user=data)
    assert (cfg.train.lr, cfg.train.epochs) == (0.001, 400)  # a whole float is a fine int
    assert (cfg.loss.l2_ramp.start, cfg.loss.l2_ramp.length) == (100, 50)


def test_train_set_lr_1e_3_trains_end_to_end(tmp_path):
    make_tiny_dataset(tmp_path / "data")
    code = main(["train", "--data", str(tmp_path / "data"), "--set", "train.lr=1e-3",
                 "--set", "train.grad_clip=.5E3", "--smoke-test", "--epochs", "2",
                 "--out", str(tmp_path / "run"), "--no-tracking", "--quiet"])
    assert code == 0
    saved = load_config_file(tmp_path / "run" / "config.yaml")
    assert saved["train"]["lr"] == 0.001 and saved["train"]["grad_clip"] == 500.0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["lr"] for m in lines] == [0.001, 0.001]


def test_sweep_set_values_reach_the_plan_as_numbers(tmp_path):
    make_tiny_dataset(tmp_path / "data")
    from mrlfads.training.commands.sweep import make_plan

    args = build_parser().parse_args([
        "sweep", "--data", str(tmp_path / "data"), "--smoke-test", "--storage", str(tmp_path / "s"),
        "--set", "train.weight_decay=1e-5", "--set", "train.grad_clip=2E2",
        "--set", "train.epochs=1.2e1"])
    plan = make_plan(args)
    train = plan.run.train
    assert (train.weight_decay, train.grad_clip, train.epochs) == (1e-5, 200.0, 12)
    assert isinstance(train.epochs, int)


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_set_takes_several_pairs_after_one_flag_and_repeats(command):
    args = build_parser().parse_args([
        command, "--data", "d", "--set", "train.lr=1e-3", "train.seed=1", "--no-tracking",
        "--set", "train.threads=1"])
    assert args.set == ["train.lr=1e-3", "train.seed=1", "train.threads=1"]
    assert args.no_tracking and args.data == "d"
    assert build_parser().parse_args([command, "--data", "d"]).set == []


@pytest.mark.parametrize("argv_set,field", [
    ("train.lr=abc", "train.lr"), ("train.epochs=2.5", "train.epochs"),
    ("model.dropout=yes", "model.dropout"), ("loss.l2_ramp.start=soon", "loss.l2_ramp.start"),
    ("train.amp=1", "train.amp"),
])
def test_cli_type_errors_are_one_message_naming_the_field(tmp_path, capsys, argv_set, field):
    make_tiny_dataset(tmp_path / "data")
    code = main(["train", "--data", str(tmp_path / "data"), "--set", argv_set, "--smoke-test",
                 "--out", str(tmp_path / "run"), "--no-tracking", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert field in err and "expected" in err
    assert "not supported between" not in err and "TypeError" not in err
    assert not (tmp_path / "run" / "last.pt").exists()


BAD = {  # per config dataclass: wrong types for several fields, and the fields named
    RegionConfig: ({"name": "A", "n_heldin": "3", "n_heldout": 1.5, "gen_dim": "big"},
                   ["n_heldin", "n_heldout", "gen_dim"]),
    RampConfig: ({"start": "0", "length": None}, ["start", "length"]),
    LossConfig: ({"kl_ic_scale": "1e-3", "kl_com_ratio": True, "l2_scale": [1],
                  "ic_ramp": 5}, ["kl_ic_scale", "kl_com_ratio", "l2_scale", "ic_ramp"]),
    ModelConfig: ({"regions": [{"name": "A", "n_heldin": 2}], "obs_model": 1, "com_dim": "2",
                   "dropout": "0.1", "prior_var": None},
                  ["obs_model", "com_dim", "dropout", "prior_var"]),
    TrainConfig: ({"epochs": "10", "lr": "1e-3", "smoothing": "high", "device": 0,
                   "batch_size": 2.5}, ["epochs", "lr", "smoothing", "device", "batch_size"]),
    DataConfig: ({"uri": 3, "train_split": None}, ["uri", "train_split"]),
}


@pytest.mark.parametrize("cls", list(BAD), ids=[c.__name__ for c in BAD])
def test_wrong_types_give_one_clear_message_per_field(cls):
    data, fields = BAD[cls]
    with pytest.raises(ConfigError) as info:
        from_dict(cls, data)
    lines = str(info.value).splitlines()[1:]
    assert sorted(line.strip().split(":")[0] for line in lines) == sorted(
        f"config.{f}" for f in fields)
    assert "not supported between" not in str(info.value)


def test_nested_errors_and_a_run_config_with_every_section_wrong():
    data = {"model": {"regions": [{"name": "A", "n_heldin": "x"}], "obs_model": "poisson"},
            "loss": {"l2_scale": "1e4"}, "train": {"lr": "fast"}, "data": {"uri": 1}}
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(data)
    msg = str(info.value)
    for where in ("run.model.regions[0].n_heldin", "run.loss.l2_scale", "run.train.lr",
                  "run.data.uri"):
        assert where in msg
    assert "not supported between" not in msg and len(msg.splitlines()) == 5


@pytest.mark.parametrize("build", [
    lambda: RegionConfig("A", "3"), lambda: RampConfig("1", 0),
    lambda: LossConfig(kl_co_scale="1"), lambda: LossConfig(kl_com_ratio=None),
    lambda: ModelConfig((RegionConfig("A", 2),), "poisson", com_dim="4"),
])
def test_direct_construction_with_a_wrong_type_is_a_config_error_too(build):
    with pytest.raises(ConfigError, match="expected"):
        build()


@pytest.mark.parametrize("argv, message", [
    (["simulate", "random", "--out", "x", "--bins", "1"], "argument --bins: need at least 2, got 1"),
    (["simulate", "random", "--out", "x", "--trials", "two"],
     "argument --trials: expected a whole number, got 'two'"),
    (["simulate", "random", "--out", "x", "--rate-hz", "0"], "argument --rate-hz: must be > 0"),
    (["report", "somewhere", "--trials", "0"], "argument --trials: need at least 1, got 0"),
])
def test_bad_numbers_on_the_command_line_name_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
