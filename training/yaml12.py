"""Every value a user types (``--set PATH=VALUE``, ``--config`` files) is read as YAML 1.2.

PyYAML implements YAML 1.1, where ``1e-3`` is the string '1e-3' (a float needs a dot),
``010`` is 8, ``1:30`` is 90 and ``yes``/``no``/``on``/``off`` are booleans. Users type
numbers as YAML 1.2 (and JSON, and Python) read them, so ``Loader`` swaps PyYAML's implicit
bool, int, float and timestamp rules for the YAML 1.2 core schema:

- null: ``~``, ``null``, ``Null``, ``NULL``, empty;
- bool: ``true``/``True``/``TRUE``, ``false``/``False``/``FALSE`` (nothing else);
- int: ``[-+]?[0-9]+`` (decimal, leading zeros too), ``0o17``, ``0x1F``;
- float: ``[-+]?(.[0-9]+|[0-9]+(.[0-9]*)?)([eE][-+]?[0-9]+)?``: ``1e-3``, ``1E4``, ``.5``,
  ``-2e-5``, ``+1.5e3``, ``1.``; ``.inf``, ``-.inf``, ``.nan`` (plain ``inf`` and ``nan``
  are strings, as in YAML 1.2);
- anything else is a string (``1_000``, ``yes``, ``2024-01-01``, ``cuda:0``).
"""
from __future__ import annotations

import re
from typing import Any, Iterable

import yaml

from mrlfads.config_utils import ConfigError

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_REPLACED = {_BOOL, _INT, _FLOAT, "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value"}

BOOL_RE = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
INT_RE = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
FLOAT_RE = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                      r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")


class Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with the YAML 1.2 core schema's booleans and numbers."""


Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _REPLACED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
# int before float: the float pattern also matches "12"
Loader.add_implicit_resolver(_BOOL, BOOL_RE, list("tTfF"))
Loader.add_implicit_resolver(_INT, INT_RE, list("-+0123456789"))
Loader.add_implicit_resolver(_FLOAT, FLOAT_RE, list("-+.0123456789"))


def _construct_bool(loader: Loader, node: yaml.Node) -> bool:
    return loader.construct_scalar(node).lower() == "true"


def _construct_int(loader: Loader, node: yaml.Node) -> int:
    text = loader.construct_scalar(node)
    return int(text, 0) if text[:2] in ("0o", "0x") else int(text)


def _construct_float(loader: Loader, node: yaml.Node) -> float:
    text = loader.construct_scalar(node).lower()
    if text.endswith(".inf"):
        return float("-inf") if text.startswith("-") else float("inf")
    if text == ".nan":
        return float("nan")
    return float(text)


Loader.add_constructor(_BOOL, _construct_bool)
Loader.add_constructor(_INT, _construct_int)
Loader.add_constructor(_FLOAT, _construct_float)


def load(text: str) -> Any:
    """Parse a YAML document with the YAML 1.2 core schema (raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=Loader)


def parse_value(text: str, where: str = "value") -> Any:
    """One user-typed value: ``"1e-3"`` -> 0.001, ``"8"`` -> 8, ``"rates"`` -> 'rates',
    ``"[1, 2]"`` -> [1, 2]; a malformed one raises ConfigError naming ``where``."""
    try:
        return load(text)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: {text!r} is not a YAML value ({problem}); quote strings "
                          "with special characters, e.g. --set 'data.uri=\"a: b\"'") from None


def parse_sets(items: Iterable[str], flag: str = "--set") -> dict[str, Any]:
    """``["train.lr=1e-3"]`` -> ``{"train.lr": 0.001}``: dotted path = YAML 1.2 value."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r}: expected PATH=VALUE, e.g. {flag} train.lr=1e-3")
        out[key] = parse_value(value.strip(), where=f"{flag} {key}")
    return out
