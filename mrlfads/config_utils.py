"""Frozen-dataclass configs built from plain dicts, with every error reported at once.

Configs travel as JSON/YAML (checkpoints, MLflow params, Ray trial configs), so each
component's dataclass must round-trip through dicts and reject unknown keys loudly
(torchtune style): a typo in a sweep file must not silently fall back to a default.
``with_overrides`` is the one way to change a config by dotted path (``get_path`` reads one).
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


# ------------------------------------------------------------------------ dotted paths
# One syntax names a config field everywhere: --set, config files, search spaces (their
# hyperparameters and `fixed:`) and PBT's values. Parts are field names; inside a list of
# named sections (model.regions) a part is ``*`` (every element) or an element's name,
# never a list position, so a path survives reordering.
PATH_SYNTAX = ("a dotted path of field names such as train.lr; in a list of named sections "
               "a part is '*' (every element) or an element's name: model.regions.*.gen_dim")

_Item = tuple  # (remaining parts, value, the full path as the user wrote it)


def _section_list(tp: Any) -> type | None:
    """The element type of a ``tuple[SomeDataclass, ...]`` field, else None."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and args and _is_dataclass_type(args[0]):
        return args[0]
    return None


def _known(node: Any) -> list[str]:
    """A dataclass's (or its instance's) field names, sorted: what an error lists."""
    return sorted(f.name for f in dataclasses.fields(node) if f.init)


def _element_names(elements: tuple) -> list[Any]:
    return [getattr(e, "name", None) for e in elements]


def _no_field(path: str, part: str, node: Any, where: str) -> str:
    what = f"{where} ({type(node).__name__})" if where else type(node).__name__
    if part == "*":
        return (f"config path {path!r}: '*' stands for every element of a list of sections, "
                f"and {what} is not one; its fields: {_known(node)}")
    return f"config path {path!r}: no field {part!r} in {what}; known: {_known(node)}"


def _split(path: Any, errors: list[str]) -> list[str] | None:
    parts = path.split(".") if isinstance(path, str) else []
    if not parts or not all(parts):
        errors.append(f"config path {path!r}: expected {PATH_SYNTAX}")
        return None
    return parts


def _apply(node: Any, items: list[_Item], where: str, errors: list[str]) -> Any:
    """``node`` (a dataclass instance) with ``items`` applied; each touched dataclass is
    rebuilt once, with all its changes, so its validation sees them together."""
    types = _field_types(type(node))
    known = _known(node)
    groups: dict[str, list[_Item]] = {}
    for parts, value, path in items:
        head = parts[0]
        if head not in known:
            errors.append(_no_field(path, head, node, where))
            continue
        groups.setdefault(head, []).append((parts[1:], value, path))
    before = len(errors)
    changes = {name: _apply_field(types[name], getattr(node, name), sub,
                                  f"{where}.{name}" if where else name, errors)
               for name, sub in groups.items()}
    if len(errors) > before or not changes:
        return node  # never validate values that failed: one message per path
    try:
        return dataclasses.replace(node, **changes)
    except (ConfigError, ValueError, TypeError) as exc:
        paths = sorted({path for sub in groups.values() for _, _, path in sub})
        errors.append(f"{', '.join(paths)}: {exc}")
        return node


def _apply_field(tp: Any, current: Any, items: list[_Item], where: str,
                 errors: list[str]) -> Any:
    if _is_dataclass_type(tp):
        sub: list[_Item] = []
        for rest, value, path in items:
            if rest:
                sub.append((rest, value, path))
            elif isinstance(value, Mapping):  # a mapping sets the fields it names
                sub += [(str(k).split("."), v, f"{path}.{k}") for k, v in value.items()]
            else:
                errors.append(f"config path {path!r}: {where} is a section of {tp.__name__} "
                              f"fields ({_known(current)}), not a value; set one of them, "
                              f"e.g. {path}.{_known(tp)[0]}, or give a mapping")
        return _apply(current, sub, where, errors) if sub else current
    element_tp = _section_list(tp)
    if element_tp is not None:
        return _apply_elements(element_tp, current, items, where, errors)
    for rest, value, path in items:
        if rest:
            errors.append(f"config path {path!r}: {where} is a value, not a section: it has "
                          f"no field {rest[0]!r}")
        else:
            current = _convert(tp, value, path, errors)
    return current


def _apply_elements(element_tp: type, current: tuple, items: list[_Item], where: str,
                    errors: list[str]) -> tuple:
    """A list of named sections: ``*`` or a name selects elements; a list value sets, entry
    by entry, the fields of the element its ``name`` names (never by position)."""
    names = _element_names(current)
    per: list[list[_Item]] = [[] for _ in current]
    for rest, value, path in items:
        if not rest:
            if not isinstance(value, (list, tuple)):
                errors.append(f"config path {path!r}: {where} is a list of {element_tp.__name__} "
                              f"entries; give a list of {{name: ..., field: value}} entries or "
                              f"set one field, e.g. {path}.*.FIELD")
                continue
            for entry in value:
                entry = to_dict(entry) if dataclasses.is_dataclass(entry) else entry
                name = entry.get("name") if isinstance(entry, Mapping) else None
                if name not in names:
                    errors.append(f"config path {path!r}: entry {entry!r} must name one of the "
                                  f"elements {names} (its `name`)")
                    continue
                fields = {k: v for k, v in entry.items() if k != "name"}
                per[names.index(name)].append(([], fields, f"{path}.{name}"))
            continue
        selector, tail = rest[0], rest[1:]
        if not tail and not isinstance(value, Mapping):
            errors.append(f"config path {path!r}: selects whole {element_tp.__name__} entries; "
                          f"set one field, e.g. {path}.{_known(element_tp)[0]}, or give "
                          "a mapping")
            continue
        if selector == "*":
            targets = range(len(current))
        elif selector in names:
            targets = [names.index(selector)]
        else:
            errors.append(f"config path {path!r}: no element {selector!r} in {where}; known: "
                          f"{names}, or '*' for every element")
            continue
        for i in targets:
            per[i].append((tail, value, path))
    return tuple(_apply_field(element_tp, element, sub, f"{where}.{names[i]}", errors)
                 if sub else element for i, (element, sub) in enumerate(zip(current, per)))


def with_overrides(cfg: T, overrides: Mapping[str, Any]) -> T:
    """A copy of ``cfg`` with each dotted path set: the one override function behind --set,
    config files, search spaces (searched values and ``fixed:``) and PBT.

    ``with_overrides(run_cfg, {"train.lr": 1e-3, "model.regions.*.gen_dim": 64})``. A value
    is converted to the field's type (an int field takes 1e3); a mapping on a section sets
    the fields it names (``{"train": {"lr": 1e-3}}``, how config files merge); a list on a
    list of named sections sets the fields of each entry's ``name``. Later paths win. Every
    touched dataclass is validated once with all its changes; all problems are reported
    together, each naming its path and the fields known there.
    """
    errors: list[str] = []
    items = []
    for path, value in overrides.items():
        parts = _split(path, errors)
        if parts is not None:
            items.append((parts, value, path))
    out = _apply(cfg, items, "", errors) if items else cfg
    if errors:
        raise ConfigError("invalid overrides:\n  " + "\n  ".join(errors))
    return out


def get_path(cfg: Any, path: str) -> Any:
    """The value at a dotted path (the syntax of :func:`with_overrides`); ``*`` reads the
    first element (where a field is set for every region, each holds the same value)."""
    errors: list[str] = []
    parts = _split(path, errors)
    node, where = cfg, ""
    for part in parts or []:
        if isinstance(node, tuple) and node and dataclasses.is_dataclass(node[0]):
            names = _element_names(node)
            if part == "*" or part in names:
                node = node[0 if part == "*" else names.index(part)]
            else:
                errors.append(f"config path {path!r}: no element {part!r} in {where}; known: "
                              f"{names}, or '*' for every element")
                break
        elif dataclasses.is_dataclass(node) and part in _known(node):
            node = getattr(node, part)
        elif dataclasses.is_dataclass(node):
            errors.append(_no_field(path, part, node, where))
            break
        else:
            errors.append(f"config path {path!r}: {where} is a value, not a section: it has "
                          f"no field {part!r}")
            break
        where = f"{where}.{part}" if where else part
    if errors:
        raise ConfigError(errors[0])
    return node
