"""Promote a sweep's best trial to the MLflow Model Registry, and resolve ``models:/`` URIs.

The logged model is an ``mlflow.pytorch`` model in the *pickle* format (the traced default
loads back as another class). Its module is ``RatesModule``: MRLFADS.forward takes a list of
per-region tensors, which a pyfunc signature cannot express, so the wrapper takes ONE tensor

    x: (B, T, sum_r N_heldin_r [+ sum_r ext_dim_r])  float32, regions in model-config order,
       all held-in columns first, then the external inputs (if any) in the same order
    -> (B, T - ic_enc_seq_len, sum_r N_heldin_r)     posterior-mean rates, same column order

(``mlflow.pyfunc.load_model(uri).predict(np_array)`` works.) The checkpoint itself, the run
config and the dataset manifest travel inside the model as extra files, so
``download_checkpoint`` gives back a file ``training.checkpoint.load_model`` reads. Those
copies name the dataset by folder name and manifest digest (tag ``mrlfads.dataset_digest``),
never by a local path (tracking/shareable.py): the checkpoint copy is rewritten when its run
config or manifest held one, so `infer` and `perturb` take the data from ``--data``.
Versions are tagged with the trial checkpoint's sha256: promoting the same checkpoint again
only re-points the alias.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mrlfads.ramps import selectable
from tracking.errors import TrackingError
from tracking.redact import redact_uri
from tracking.shareable import DIGEST_TAG, manifest_digest, shared_manifest, shared_run_config
from tracking.store import resolve_tracking_uri

SHA_TAG = "mrlfads.checkpoint_sha256"
# What a registered version is tagged with and `mrlfads promote` prints: the objective, the
# losses, the field's comparable scores (co-bps pooled over regions with the NLB null, PSTH
# R^2) and, with ground truth, the recovery scores.
KEY_METRICS = ("objective", "valid/loss", "valid/elbo", "valid/heldout_loss", "valid/recon_loss",
               "valid/sv_recon_loss", "valid/co_bps", "valid/bps", "valid/psth_r2",
               "valid/heldout_psth_r2", "valid/effectome_cosine", "valid/message_r2", "epoch")
RUN_CONFIG_FILE, MANIFEST_FILE = "run_config.json", "dataset.json"


class RatesModule(torch.nn.Module):
    """One concatenated input tensor in, concatenated posterior-mean rates out (see module doc)."""

    def __init__(self, model: torch.nn.Module, heldin_sizes: list[int], ext_sizes: list[int] | None = None):
        super().__init__()
        self.model = model
        self.heldin_sizes = [int(n) for n in heldin_sizes]
        self.ext_sizes = [int(n) for n in (ext_sizes or [0] * len(heldin_sizes))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.heldin_sizes + self.ext_sizes, dim=-1)  # each (B, T, n)
        R = len(self.heldin_sizes)
        heldin = list(parts[:R])
        ext = [p if p.shape[-1] else None for p in parts[R:]] if any(self.ext_sizes) else None
        with torch.no_grad():
            out = self.model(heldin, ext, sample=False)
        return torch.cat(list(out.rates), dim=-1)  # (B, T', sum N_heldin)


def wrap_model(model: torch.nn.Module, run_cfg: Mapping[str, Any]) -> RatesModule:
    """The pyfunc-friendly wrapper, sized from the run config's ``model.regions``."""
    try:
        regions = run_cfg["model"]["regions"]
        heldin = [int(r["n_heldin"]) for r in regions]
        ext = [int(r.get("ext_dim", 0) or 0) for r in regions]
    except (KeyError, TypeError) as exc:
        raise TrackingError(f"run config has no model.regions with n_heldin ({exc}): "
                            "is this an mrlfads checkpoint?") from exc
    return RatesModule(model.eval(), heldin, ext)


def model_name(sweep: str) -> str:
    return f"mrlfads-{sweep}"


@dataclasses.dataclass(frozen=True)
class BestTrial:
    run_id: str
    trial_id: str
    metric: str
    value: float
    checkpoint: str | None  # the trial's latest Tune checkpoint directory (tag mrlfads.checkpoint)
    metrics: dict[str, float]


@dataclasses.dataclass(frozen=True)
class Promotion:
    name: str
    version: str
    alias: str
    run_id: str
    created: bool  # False when an existing version (same run and checkpoint) was re-pointed

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}"


def _client(tracking_uri: str | None):
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    return MlflowClient(uri, registry_uri=uri)


def find_best_trial(sweep: str, *, metric: str | None = None, mode: str | None = None,
                    tracking_uri: str | None = None) -> BestTrial:
    """The best FINISHED trial run of ``sweep`` by its latest ``metric``.

    Defaults come from the sweep's parent run (tags ``mrlfads.metric``/``mrlfads.mode``),
    else ``objective``/``min``.
    """
    client = _client(tracking_uri)
    exp = client.get_experiment_by_name(sweep)
    if exp is None:
        raise TrackingError(f"no sweep named {sweep!r} in {redact_uri(client.tracking_uri)}: "
                            "check --sweep "
                            "(the sweep's --name) and --tracking-uri / MLFLOW_TRACKING_URI")
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    parents = [r for r in runs if r.data.tags.get("mrlfads.role") == "sweep"]
    ptags = parents[0].data.tags if parents else {}
    metric = metric or ptags.get("mrlfads.metric", "objective")
    mode = mode or ptags.get("mrlfads.mode", "min")
    if mode not in ("min", "max"):
        raise TrackingError(f"--mode {mode!r} must be min or max")
    trials = [r for r in runs if r.data.tags.get("mrlfads.role") == "trial"]
    ok = [r for r in trials if r.info.status == "FINISHED"
          and math.isfinite(r.data.metrics.get(metric, math.nan)) and selectable(r.data.metrics)]
    if not ok:
        seen = ", ".join(sorted({f"{r.info.status}" for r in trials})) or "none"
        raise TrackingError(
            f"sweep {sweep!r} has no finished trial with metric {metric!r} after its KL/L2 "
            f"ramps ({len(trials)} trial runs; statuses: {seen}): let the sweep finish (or "
            "resume it), or pick another --metric")
    best = (min if mode == "min" else max)(ok, key=lambda r: r.data.metrics[metric])
    return BestTrial(best.info.run_id, best.data.tags.get("mrlfads.trial_id", ""), metric,
                     float(best.data.metrics[metric]), best.data.tags.get("mrlfads.checkpoint"),
                     dict(best.data.metrics))


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _existing_version(client, name: str, run_id: str, sha: str):
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    for v in versions:
        if v.run_id == run_id and (v.tags or {}).get(SHA_TAG) == sha:
            return v
    return None


def promote(sweep: str, best: BestTrial, *, model: torch.nn.Module, run_cfg: Mapping[str, Any],
            manifest: Mapping[str, Any], checkpoint_file: str | os.PathLike,
            alias: str = "champion", tracking_uri: str | None = None) -> Promotion:
    """Log ``model`` (rebuilt from ``checkpoint_file``) into the trial's run, register a
    version of ``mrlfads-<sweep>``, tag it with the key metrics and point ``alias`` at it.
    Idempotent: a version from the same run and checkpoint is reused."""
    client = _client(tracking_uri)
    name, sha = model_name(sweep), sha256_file(checkpoint_file)
    existing = _existing_version(client, name, best.run_id, sha)
    if existing is not None:
        client.set_registered_model_alias(name, alias, existing.version)
        return Promotion(name, str(existing.version), alias, best.run_id, created=False)
    with _global_uri(client.tracking_uri):  # MLflow 3 resolves models:/m-... through the globals
        return _log_and_register(client, sweep, best, model, run_cfg, manifest, checkpoint_file,
                                 sha, alias)


def _log_and_register(client, sweep, best, model, run_cfg, manifest, checkpoint_file, sha, alias):
    name = model_name(sweep)
    source = _log_model(best, model, run_cfg, manifest, checkpoint_file, sha)
    tags = {SHA_TAG: sha, "mrlfads.sweep": sweep, "mrlfads.trial_id": best.trial_id,
            "mrlfads.metric": best.metric, f"metric.{best.metric}": repr(best.value),
            DIGEST_TAG: manifest_digest(manifest)}
    tags.update({f"metric.{k}": repr(best.metrics[k]) for k in KEY_METRICS if k in best.metrics})
    import mlflow

    # register_model (not create_model_version) links MLflow 3's logged model id, which a
    # tracking server requires for a models:/m-... source
    version = mlflow.register_model(source, name, tags=tags)
    client.set_registered_model_alias(name, alias, version.version)
    return Promotion(name, str(version.version), alias, best.run_id, created=True)


@contextlib.contextmanager
def _global_uri(uri: str):
    """Point MLflow's global tracking and registry URIs at ``uri`` for a block, then restore."""
    import mlflow
    from mlflow.tracking import fluent

    # mlflow.set_*_uri also write MLFLOW_*_URI into os.environ; restoring with get_*_uri()
    # would pin MLflow's relative default (sqlite:///mlflow.db) for the rest of the process,
    # so restore what the environment said (None unsets it).
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    previous_registry = os.environ.get("MLFLOW_REGISTRY_URI")
    # a caller's set_experiment() would make start_run(run_id=<a trial's run>) refuse to
    # re-open a run of another experiment; MLflow has no public way to unset it
    previous_experiment = getattr(fluent, "_active_experiment_id", None)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    fluent._active_experiment_id = None
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        mlflow.set_registry_uri(previous_registry)
        if previous_registry is None:
            os.environ.pop("MLFLOW_REGISTRY_URI", None)
        fluent._active_experiment_id = previous_experiment


def _log_model(best: BestTrial, model, run_cfg, manifest, checkpoint_file, sha) -> str:
    """Log the wrapped model (pickle format, signature, extra files) into the trial's run."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    wrapped = wrap_model(model, run_cfg)
    T = int(manifest.get("n_bins") or run_cfg.get("data", {}).get("n_bins") or 0) or (
        int(run_cfg["model"].get("ic_enc_seq_len", 10)) + 2)
    width = sum(wrapped.heldin_sizes) + sum(wrapped.ext_sizes)
    example = torch.zeros(2, T, width)  # (B, T, sum N): a shape, not data
    sig = infer_signature(example.numpy(), wrapped(example).numpy())
    regions = [r["name"] for r in run_cfg["model"]["regions"]]
    digest = manifest_digest(manifest)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for fname, obj in ((RUN_CONFIG_FILE, shared_run_config(run_cfg)),
                           (MANIFEST_FILE, shared_manifest(manifest))):
            (Path(tmp) / fname).write_text(json.dumps(obj, indent=2, default=str))
            files.append(str(Path(tmp) / fname))
        files.append(_shared_checkpoint(checkpoint_file, Path(tmp) / "checkpoint.pt"))
        with mlflow.start_run(run_id=best.run_id, nested=mlflow.active_run() is not None):
            info = mlflow.pytorch.log_model(
                wrapped, name=f"model-{sha[:12]}", signature=sig, extra_files=files,
                serialization_format="pickle",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                  f"mlflow=={mlflow.__version__}"],
                metadata={"regions": regions, "heldin_sizes": wrapped.heldin_sizes,
                          "ext_sizes": wrapped.ext_sizes, "obs_model": run_cfg["model"].get("obs_model"),
                          "input": "(B, T, sum N_heldin [+ sum ext_dim]) regions in order",
                          "output": "(B, T - ic_enc_seq_len, sum N_heldin) posterior-mean rates",
                          "dataset": manifest.get("name"), "dataset_digest": digest,
                          SHA_TAG: sha,
                          "trial_id": best.trial_id})
    return info.model_uri


def _shared_checkpoint(src: str | os.PathLike, dst: Path) -> str:
    """``src`` copied to ``dst``, rewritten (run config and manifest through
    tracking/shareable.py) when they record a local path; byte for byte otherwise."""
    payload = torch.load(src, map_location="cpu", weights_only=True)
    cfg, man = payload.get("run_config"), payload.get("manifest")
    new_cfg = shared_run_config(cfg) if isinstance(cfg, dict) else cfg
    new_man = shared_manifest(man) if isinstance(man, dict) else man
    if new_cfg == cfg and new_man == man:
        return str(shutil.copy(src, dst))
    torch.save({**payload, "run_config": new_cfg, "manifest": new_man}, dst)
    return str(dst)


# -- resolving models:/ URIs ---------------------------------------------------------------
def _check_uri(uri: str) -> None:
    if not uri.startswith("models:/"):
        raise TrackingError(f"{uri!r} is not a models:/NAME@ALIAS (or models:/NAME/VERSION) URI")


def resolve_model_uri(uri: str, *, tracking_uri: str | None = None, load: bool = False,
                      dst: str | os.PathLike | None = None):
    """``models:/NAME@ALIAS`` -> a local model directory, or (``load=True``) the RatesModule."""
    from mlflow.exceptions import MlflowException

    _check_uri(uri)
    resolved = resolve_tracking_uri(tracking_uri)
    try:
        with _global_uri(resolved):
            return _resolve(uri, load, dst)
    except MlflowException as exc:
        raise TrackingError(f"cannot resolve {uri} in {resolved}: {exc.message.splitlines()[0]}; "
                            "check the name and alias (mrlfads promote sets them) and "
                            "--tracking-uri / MLFLOW_TRACKING_URI") from exc


def _resolve(uri: str, load: bool, dst):
    import mlflow

    if load:
        import mlflow.pytorch

        return mlflow.pytorch.load_model(uri, map_location="cpu")
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri,
                                                    dst_path=None if dst is None else str(dst)))


def download_checkpoint(uri: str, *, tracking_uri: str | None = None) -> Path:
    """The checkpoint file inside a registered model (for ``training.checkpoint.load_model``)."""
    path = resolve_model_uri(uri, tracking_uri=tracking_uri) / "extra_files" / "checkpoint.pt"
    if not path.is_file():
        raise TrackingError(f"{uri} holds no checkpoint.pt: it was not registered by mrlfads promote")
    return path


def load_registered(uri: str, *, tracking_uri: str | None = None) -> tuple[torch.nn.Module, dict, dict]:
    """``(model, run_cfg_dict, manifest_dict)`` like ``training.checkpoint.load_model``."""
    local = resolve_model_uri(uri, tracking_uri=tracking_uri)
    import mlflow.pytorch

    wrapped = mlflow.pytorch.load_model(str(local), map_location="cpu")
    extra = local / "extra_files"
    run_cfg = json.loads((extra / RUN_CONFIG_FILE).read_text())
    manifest = json.loads((extra / MANIFEST_FILE).read_text())
    return wrapped.model.eval(), run_cfg, manifest
