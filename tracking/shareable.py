"""What a local path becomes before it leaves the machine: a name plus a checksum.

Why: MLflow params and tags, the artifacts logged with a run and the files inside a
registered model are read by other people, on other machines. A path such as
``/home/alice/projects/x/data/ring`` tells them the user's name and directory layout and
locates nothing for them. So a *local* dataset location is shared as the dataset folder's
name (``ring``) plus the manifest digest (``sha256`` of ``dataset.json``), which identifies the
data wherever a copy lives. Remote URIs (``s3://bucket/ring``) locate the same data for
everyone and stay, without credentials (tracking/redact.py). The run directory's own files
(``last.pt``, ``best.pt``) keep the real path: ``--resume`` and ``promote``'s figures read the
data from it on this machine, and those files are rewritten here before they are shared.

Pure functions over plain dicts: tracking imports neither training nor data_loaders.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from mrlfads.tracking.redact import redact_uri

DIGEST_PARAM = "data.digest"  # the run param holding manifest_digest()
DIGEST_TAG = "mrlfads.dataset_digest"  # the same, as a run or model-version tag


def is_local(uri: str) -> bool:
    """A path on this machine (plain or ``file://``), not a URI others can reach."""
    text = os.fspath(uri)
    return "://" not in text or text.startswith("file://")


def shared_uri(uri: str | os.PathLike | None) -> str:
    """A dataset location as others may see it: a local path becomes its last component
    (the dataset folder's name), a remote URI loses only its credentials."""
    if uri is None:
        return ""
    text = os.fspath(uri)
    if not text or not is_local(text):
        return redact_uri(text) if text else text
    path = text.removeprefix("file://").rstrip("/\\")
    return os.path.basename(path) or path


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """sha256 of the manifest's JSON as the writer stores it (DatasetManifest.to_json: sorted
    keys, indent 2, newline): for a dataset written by mrlfads, ``sha256sum dataset.json``."""
    text = json.dumps(dict(manifest), indent=2, sort_keys=True) + "\n"
    return hashlib.sha256(text.encode()).hexdigest()


def shared_run_config(run_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a run config dict whose ``data.uri`` is ``shared_uri(data.uri)``."""
    out = copy.deepcopy(dict(run_cfg))
    data = out.get("data")
    if isinstance(data, dict) and "uri" in data:
        data["uri"] = shared_uri(data["uri"])
    return out


def shared_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a manifest dict without local paths: an ``uri`` entry (the sweep records
    one) as ``shared_uri``, and NWB sources as file names (datasets ingested before sources
    were recorded by name keep a ``path`` entry; the sha256 next to it identifies the file)."""
    out = copy.deepcopy(dict(manifest))
    if isinstance(out.get("uri"), str):
        out["uri"] = shared_uri(out["uri"])
    prov = out.get("provenance")
    if isinstance(prov, dict):
        for src in prov.get("sources") or []:
            if isinstance(src, dict) and isinstance(src.get("path"), str):
                name = os.path.basename(src.pop("path"))
                src.setdefault("name", name)
        opts = prov.get("options")
        if isinstance(opts, dict) and isinstance(opts.get("region_map"), str):
            opts["region_map"] = os.path.basename(opts["region_map"])
    return out


def home_relative(path: str | os.PathLike) -> str:
    """``~/...`` for a local path under the user's home (for tags that must find a file again
    on this machine, such as a trial's checkpoint), otherwise the path itself."""
    text = os.fspath(path)
    if not is_local(text):
        return redact_uri(text)
    home = _home()
    bare = text.removeprefix("file://")
    if home and (bare == home or bare.startswith(home + "/")):
        return "~" + bare[len(home):]
    return text


def contract_home(text: str) -> str:
    """``text`` (a traceback, an error message) with the home directory written ``~``."""
    home = _home()
    return text.replace(home + "/", "~/") if home else text


def _home() -> str:
    home = os.path.expanduser("~").rstrip("/")
    return home if home and home != "~" else ""
