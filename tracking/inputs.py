"""The dataset entry a run logs as its MLflow input (the UI's Dataset column).

Why a plain dict: it travels through the outbox as JSON (tracking/outbox.py) and is turned
into MLflow's ``Dataset``/``DatasetInput`` only on delivery. It names the data the way every
other shared record does (tracking/shareable.py): a local dataset by its folder name, a
remote one by its URI without credentials, never a path on this machine. The digest is
the manifest's sha256 (``sha256sum dataset.json``) cut to the 36 characters MLflow stores;
the profile keeps all 64.

Pure functions over plain dicts: no mlflow import.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from mrlfads.tracking.shareable import is_local, manifest_digest, shared_uri

DIGEST_CHARS = 36  # MLflow's limit for a dataset digest
CONTEXT_TAG = "mlflow.data.context"  # the input tag MLflow's UI shows as the context


def dataset_input(manifest: Mapping[str, Any], uri: str | None, *,
                  context: str = "training") -> dict[str, Any]:
    """``{name, digest, source_type, source, schema, profile, context}`` for ``manifest``
    (a dataset.json dict) read from ``uri``.

    A manifest that holds nothing but its ``uri`` (one the sweep's callback could not read)
    is identified by the shared URI's sha256 instead; the profile says so."""
    source = shared_uri(uri or manifest.get("uri") or manifest.get("name") or "")
    content = {k: v for k, v in manifest.items() if k != "uri"}
    if content:
        full = manifest_digest(content)
        profile: dict[str, Any] = {"sha256": full, "digest_of": "dataset.json"}
    else:
        full = hashlib.sha256(source.encode()).hexdigest()
        profile = {"sha256": full, "digest_of": "uri"}
    profile.update(_profile(content))
    name = str(content.get("name") or source.rstrip("/").rsplit("/", 1)[-1] or "dataset")
    remote = bool(source) and not is_local(source)
    return {
        "name": name,
        "digest": full[:DIGEST_CHARS],
        "source_type": source.split("://", 1)[0] if remote else "local",
        "source": json.dumps({"uri": source or name}),
        "schema": json.dumps(_schema(content)) if content.get("regions") else None,
        "profile": json.dumps(profile),
        "context": context,
    }


def _profile(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Trials per split, bins, bin width, observation model and neurons per region."""
    keys = ("splits", "n_bins", "bin_width_s", "obs_model")
    out = {k: manifest[k] for k in keys if k in manifest}
    if manifest.get("regions"):
        out["regions"] = {r["name"]: {"n_heldin": r.get("n_heldin"), "n_heldout": r.get("n_heldout")}
                          for r in manifest["regions"]}
    return out


def _schema(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """MLflow's tensor dataset schema: one ``x/<region>`` column per region, (trials, bins,
    held-in + held-out neurons), the shard layout."""
    T = int(manifest.get("n_bins") or -1)
    specs = [{"name": f"x/{r['name']}", "type": "tensor",
              "tensor-spec": {"dtype": "float32",
                              "shape": [-1, T, int(r.get("n_heldin", 0)) + int(r.get("n_heldout", 0))]}}
             for r in manifest["regions"]]
    return {"mlflow_tensorspec": {"features": json.dumps(specs), "targets": None}}
