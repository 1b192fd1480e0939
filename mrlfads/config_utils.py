"""Frozen-dataclass configs built from plain dicts, with every error reported at once.

Configs travel as JSON/YAML (checkpoints, MLflow params, Ray trial configs), so each
component's dataclass must round-trip through dicts and reject unknown keys loudly
(torchtune style): a typo in a sweep file must not silently fall back to a default.
"""
from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from typing import Any, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A user's configuration is invalid; the message lists every problem and its fix."""


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _is_union(origin: Any) -> bool:
    """``Optional[X]`` and ``X | None`` alike."""
    return origin is typing.Union or origin is types.UnionType


def _convert(tp: Any, value: Any, where: str, errors: list[str]) -> Any:
    """Convert a plain value to the annotated type (nested dataclasses, tuples of them).

    A value that does not fit appends one message to ``errors``; callers never build a
    dataclass from a field that failed (its __post_init__ would compare a string with a
    number and raise a bare TypeError).
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            errors.append(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
            return None
        return _build(tp, value, where, errors)
    if origin is tuple and args:
        if not isinstance(value, (list, tuple)):
            errors.append(f"{where}: expected a list, got {value!r}")
            return None
        item_tp = args[0]
        return tuple(_convert(item_tp, v, f"{where}[{i}]", errors) for i, v in enumerate(value))
    if _is_union(origin):
        non_none = [a for a in args if a is not type(None)]
        if value is None:
            return None
        if len(non_none) == 1:
            return _convert(non_none[0], value, where, errors)
        return value
    return _scalar(tp, value, where, errors)


def _scalar(tp: Any, value: Any, where: str, errors: list[str]) -> Any:
    """int, float, str or bool; an int field takes a whole float (``1e3`` for 1000)."""
    if tp not in (int, float, str, bool):
        return value
    is_bool = isinstance(value, bool)
    if tp is float and isinstance(value, numbers.Real) and not is_bool:
        return float(value)
    if tp is int and isinstance(value, numbers.Integral) and not is_bool:
        return int(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, tp) and (tp is bool or not is_bool):
        return value
    errors.append(f"{where}: expected {_TYPE_WORDS[tp]}, got {_describe(value)}")
    return value


_TYPE_WORDS = {int: "a whole number", float: "a number (YAML 1.2: 1e-3, .5, .inf)",
               str: "a string", bool: "true or false"}


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    if value is None:
        return "null"
    return f"{value!r} ({type(value).__name__})"


def type_problems(cfg: Any) -> list[str]:
    """Fields of a dataclass instance whose value is not of the annotated scalar type
    (``None`` allowed for ``X | None``): what __post_init__ checks before comparing values."""
    out = []
    types = _field_types(type(cfg))
    for f in dataclasses.fields(cfg):
        tp = types[f.name]
        value = getattr(cfg, f.name)
        if _is_union(typing.get_origin(tp)):
            non_none = [a for a in typing.get_args(tp) if a is not type(None)]
            if value is None or len(non_none) != 1:
                continue
            tp = non_none[0]
        if tp in (int, float):
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
            ok = ok and (tp is float or isinstance(value, numbers.Integral))
        elif tp in (str, bool):
            ok = isinstance(value, tp)
        else:
            continue
        if not ok:
            out.append(f"{f.name}: expected {_TYPE_WORDS[tp]}, got {_describe(value)}")
    return out


def _build(cls: type[T], data: Mapping[str, Any], where: str, errors: list[str]) -> T | None:
    types = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    before = len(errors)
    for key in sorted(set(data) - names, key=str):
        errors.append(f"{where}.{key}: unknown key for {cls.__name__}; known keys: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        if key in names:
            kwargs[key] = _convert(types[key], value, f"{where}.{key}", errors)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.init and f.name not in kwargs
        and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    for key in missing:
        errors.append(f"{where}.{key}: required key missing for {cls.__name__}")
    if len(errors) > before:  # never build from values that failed: one message per field
        return None
    try:
        return cls(**kwargs)
    except (ConfigError, ValueError, TypeError) as exc:
        errors.append(f"{where}: {exc}")
        return None


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "config") -> T:
    """Build ``cls`` from a nested dict; raise ConfigError listing all problems at once."""
    errors: list[str] = []
    out = _build(cls, data, where, errors)
    if errors or out is None:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(errors))
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain, JSON-serialisable dict of a (nested) dataclass config; tuples become lists."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def get_path(cfg: Any, path: str) -> Any:
    """Value at a dotted field path, e.g. ``get_path(run_cfg, "train.lr")``."""
    value = cfg
    for part in path.split("."):
        if not dataclasses.is_dataclass(value) or part not in {f.name for f in dataclasses.fields(value)}:
            raise ConfigError(f"config path {path!r}: no field {part!r} in {type(value).__name__}")
        value = getattr(value, part)
    return value


def with_overrides(cfg: T, overrides: Mapping[str, Any]) -> T:
    """A copy of ``cfg`` with dotted-path overrides applied and re-validated.

    ``with_overrides(run_cfg, {"train.lr": 1e-3, "model.dropout": 0.2})``. Unknown paths
    raise ConfigError naming the path; the result passes each dataclass's __post_init__.
    """
    data = to_dict(cfg)
    errors: list[str] = []
    for path, value in overrides.items():
        node = data
        parts = path.split(".")
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
                errors.append(f"{path}: no config section {part!r}")
                break
            node = node[part]
        else:
            if parts[-1] not in node:
                errors.append(f"{path}: unknown config field {parts[-1]!r}; known: {sorted(node)}")
            else:
                node[parts[-1]] = value
    if errors:
        raise ConfigError("invalid overrides:\n  " + "\n  ".join(errors))
    return from_dict(type(cfg), data)
