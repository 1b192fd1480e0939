"""Dotted config paths on plain dicts, with ``*`` meaning "every element of this list".

``set_paths(run_dict, {"model.regions.*.gen_dim": 64})`` sets the generator size of every
region without naming list positions; the caller re-validates the dict afterwards (e.g.
``RunConfig.from_dict``), so a misspelt field is reported there or here, never ignored.
"""
from __future__ import annotations

import copy
from typing import Any, Mapping

from search_spaces.errors import SearchSpaceError


def _set(node: Any, parts: list[str], value: Any, path: str) -> None:
    head, rest = parts[0], parts[1:]
    if head == "*":
        if not isinstance(node, list):
            raise SearchSpaceError(f"config path {path!r}: '*' must stand for a list, "
                                   f"found {type(node).__name__}")
        for item in node:
            _set(item, rest, value, path)
        return
    if not isinstance(node, dict) or head not in node:
        known = sorted(node) if isinstance(node, dict) else []
        raise SearchSpaceError(f"config path {path!r}: no field {head!r} here; known: {known}")
    if rest:
        _set(node[head], rest, value, path)
    else:
        node[head] = value


def set_paths(config: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``config`` with each dotted path set; unknown fields raise."""
    out = copy.deepcopy(dict(config))
    for path, value in values.items():
        parts = path.split(".")
        if parts[-1] == "*":
            raise SearchSpaceError(f"config path {path!r}: '*' cannot be the last part")
        _set(out, parts, value, path)
    return out


def get_path(config: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path; ``*`` reads the first element (a region's default is
    the same for every region unless the user set them apart)."""
    node: Any = config
    for head in path.split("."):
        if head == "*":
            if not isinstance(node, list) or not node:
                raise SearchSpaceError(f"config path {path!r}: '*' must stand for a non-empty list")
            node = node[0]
        elif isinstance(node, Mapping) and head in node:
            node = node[head]
        else:
            known = sorted(node) if isinstance(node, Mapping) else []
            raise SearchSpaceError(f"config path {path!r}: no field {head!r} here; known: {known}")
    return node
