"""Promote a sweep's best trial, or one training run, to the MLflow Model Registry, and
resolve ``models:/`` URIs.

The logged model is an MLflow pyfunc written as code (tracking/pyfunc_model.py), not a
pickle: its artifacts are the checkpoint (state dict, run config and dataset manifest, no
optimiser state), ``run_config.json`` and ``dataset.json``; the ``mrlfads`` package travels
with it as ``code_paths``; its requirements are torch, numpy and MLflow. So

    mlflow.pyfunc.load_model("models:/mrlfads-ring@champion").predict({"A": xa, "B": xb})

works in a Python environment without this repository: one float32 array of held-in
counts ``(trials, bins, n_heldin)`` per region in, ``rates/<region>``,
``heldout_rates/<region>``, ``factors/<region>``, ``inputs/<region>`` and
``messages/<src>-><dst>`` out (the model's signature lists them). ``download_checkpoint``
gives back the checkpoint file for ``mrlfads.training.checkpoint.load_model`` (infer, perturb).
The copies inside the model name the dataset by folder name and manifest digest (tag
``mrlfads.dataset_digest``), never by a local path (tracking/shareable.py). Versions are
tagged with the source checkpoint's sha256: promoting the same checkpoint again only
re-points the alias.
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
from mrlfads.tracking.errors import TrackingError
from mrlfads.tracking.redact import redact_uri
from mrlfads.tracking.shareable import (
    DIGEST_TAG,
    manifest_digest,
    shared_manifest,
    shared_run_config,
)
from mrlfads.tracking.store import mlflow_client, resolve_tracking_uri
from mrlfads.tracking.tags import CHECKPOINT, METRIC, MODE, ROLE, SWEEP, SWEEP_STATE, TRIAL_ID

SHA_TAG = "mrlfads.checkpoint_sha256"
# What a registered version is tagged with and `mrlfads promote` prints: the objective, the
# losses, the field's comparable scores (co-bps pooled over regions with the NLB null, PSTH
# R^2) and, with ground truth, the recovery scores.
KEY_METRICS = ("objective", "valid/loss", "valid/elbo", "valid/heldout_loss", "valid/recon_loss",
               "valid/sv_recon_loss", "valid/co_bps", "valid/bps", "valid/psth_r2",
               "valid/heldout_psth_r2", "valid/effectome_cosine", "valid/message_r2", "epoch")
RUN_CONFIG_FILE, MANIFEST_FILE, CHECKPOINT_FILE = "run_config.json", "dataset.json", "checkpoint.pt"
PYFUNC_FILE = "pyfunc_model.py"  # the model's code, beside this module
# where `mrlfads train` logs its best checkpoint (model part only) among the run's artifacts
RUN_CHECKPOINT_DIR, RUN_CHECKPOINT = "checkpoint", "checkpoint/best.pt"


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
    uri = resolve_tracking_uri(tracking_uri)
    return mlflow_client(uri, registry_uri=uri)


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
    parents = [r for r in runs if r.data.tags.get(ROLE) == "sweep"]
    ptags = parents[0].data.tags if parents else {}
    state = ptags.get(SWEEP_STATE, "")
    if state.startswith("interrupted"):
        raise TrackingError(f"sweep {sweep!r} stopped before its end ({state}): continue it "
                            f"with `mrlfads sweep --resume --name {sweep}` (and its --storage), "
                            "then promote it")
    metric = metric or ptags.get(METRIC, "objective")
    mode = mode or ptags.get(MODE, "min")
    if mode not in ("min", "max"):
        raise TrackingError(f"--mode {mode!r} must be min or max")
    trials = [r for r in runs if r.data.tags.get(ROLE) == "trial"]
    ok = [r for r in trials if r.info.status == "FINISHED"
          and math.isfinite(r.data.metrics.get(metric, math.nan)) and selectable(r.data.metrics)]
    if not ok:
        seen = ", ".join(sorted({f"{r.info.status}" for r in trials})) or "none"
        raise TrackingError(
            f"sweep {sweep!r} has no finished trial with metric {metric!r} after its KL/L2 "
            f"ramps ({len(trials)} trial runs; statuses: {seen}): let the sweep finish (or "
            "resume it), or pick another --metric")
    best = (min if mode == "min" else max)(ok, key=lambda r: r.data.metrics[metric])
    return BestTrial(best.info.run_id, best.data.tags.get(TRIAL_ID, ""), metric,
                     float(best.data.metrics[metric]), best.data.tags.get(CHECKPOINT),
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


def promote(sweep: str | None, best: BestTrial, *, model: torch.nn.Module,
            run_cfg: Mapping[str, Any], manifest: Mapping[str, Any],
            checkpoint_file: str | os.PathLike, alias: str = "champion",
            tracking_uri: str | None = None, name: str | None = None) -> Promotion:
    """Log ``model`` (rebuilt from ``checkpoint_file``) into ``best``'s run, register a
    version of ``name`` (default ``mrlfads-<sweep>``), tag it with the key metrics and point
    ``alias`` at it. Idempotent: a version from the same run and checkpoint is reused."""
    if name is None:
        if not sweep:
            raise TrackingError("promote needs a sweep or a model name")
        name = model_name(sweep)
    client = _client(tracking_uri)
    sha = sha256_file(checkpoint_file)
    existing = _existing_version(client, name, best.run_id, sha)
    if existing is not None:
        client.set_registered_model_alias(name, alias, existing.version)
        return Promotion(name, str(existing.version), alias, best.run_id, created=False)
    with _global_uri(client.tracking_uri):  # MLflow 3 resolves models:/m-... through the globals
        return _log_and_register(client, name, sweep, best, model, run_cfg, manifest,
                                 checkpoint_file, sha, alias)


def _log_and_register(client, name, sweep, best, model, run_cfg, manifest, checkpoint_file,
                      sha, alias):
    source = _log_model(best, model, run_cfg, manifest, checkpoint_file, sha)
    tags = {SHA_TAG: sha, METRIC: best.metric, f"metric.{best.metric}": repr(best.value),
            DIGEST_TAG: manifest_digest(manifest)}
    if sweep:
        tags[SWEEP] = sweep
    if best.trial_id:
        tags[TRIAL_ID] = best.trial_id
    tags.update({f"metric.{k}": repr(best.metrics[k]) for k in KEY_METRICS if k in best.metrics})
    import mlflow

    # register_model (not create_model_version) links MLflow 3's logged model id, which a
    # tracking server requires for a models:/m-... source
    version = mlflow.register_model(source, name, tags=tags)
    client.set_registered_model_alias(name, alias, version.version)
    return Promotion(name, str(version.version), alias, best.run_id, created=True)


@contextlib.contextmanager
def no_artifact_progress_bars():
    """MLflow's progress bars off for a block, unless the user set
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR: promoting downloads a run's checkpoint and logging
    a model loads it back to check its input example, and each artifact drew a bar of its
    own on stderr."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if key in os.environ:
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)


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
    """Log the pyfunc (code, artifacts, signature, requirements) into ``best``'s run."""
    import mlflow
    import mlflow.pyfunc
    import numpy as np

    regions = run_cfg["model"]["regions"]
    digest = manifest_digest(manifest)
    with tempfile.TemporaryDirectory() as tmp:
        arts = {"checkpoint": model_checkpoint(checkpoint_file, Path(tmp) / CHECKPOINT_FILE)}
        for key, fname, obj in (("run_config", RUN_CONFIG_FILE, shared_run_config(run_cfg)),
                                ("dataset", MANIFEST_FILE, shared_manifest(manifest))):
            (Path(tmp) / fname).write_text(json.dumps(obj, indent=2, default=str))
            arts[key] = str(Path(tmp) / fname)
        with mlflow.start_run(run_id=best.run_id, nested=mlflow.active_run() is not None):
            info = mlflow.pyfunc.log_model(
                name=f"model-{sha[:12]}", python_model=str(Path(__file__).with_name(PYFUNC_FILE)),
                artifacts=arts, code_paths=[_model_package(Path(tmp) / "code")],
                signature=model_signature(model, run_cfg), input_example=input_example(run_cfg),
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                  f"numpy=={np.__version__}", f"mlflow=={mlflow.__version__}"],
                metadata={"regions": [r["name"] for r in regions],
                          "n_heldin": [int(r["n_heldin"]) for r in regions],
                          "n_heldout": [int(r.get("n_heldout", 0) or 0) for r in regions],
                          "ext_dim": [int(r.get("ext_dim", 0) or 0) for r in regions],
                          "obs_model": run_cfg["model"].get("obs_model"),
                          "input": "{region: float32 (trials, bins, n_heldin)} [+ ext/<region>]",
                          "output": "posterior means over bins ic_enc_seq_len.. (rates/<region>, "
                                    "heldout_rates/<region>, factors/, inputs/, messages/)",
                          "dataset": manifest.get("name"), "dataset_digest": digest,
                          SHA_TAG: sha, "source_run": best.run_id, "trial_id": best.trial_id})
    return info.model_uri


def model_signature(model, run_cfg: Mapping[str, Any]):
    """Named float32 tensors: one input per region (and ``ext/<region>``), every output of
    ``mrlfads.inference.posterior_means``; trials and bins are free (-1)."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from mrlfads.inference import posterior_means

    regions = run_cfg["model"]["regions"]
    example = input_example(run_cfg)
    ext_dims = [int(r.get("ext_dim", 0) or 0) for r in regions]
    ext = [example.get(f"ext/{r['name']}") for r in regions] if any(ext_dims) else None
    out = posterior_means(model, [example[r["name"]] for r in regions], ext)  # shapes only

    def spec(name, dim):
        return TensorSpec(np.dtype(np.float32), (-1, -1, int(dim)), name)

    inputs = [spec(r["name"], r["n_heldin"]) for r in regions]
    inputs += [spec(f"ext/{r['name']}", d) for r, d in zip(regions, ext_dims) if d]
    return ModelSignature(Schema(inputs), Schema([spec(k, v.shape[-1]) for k, v in out.items()]))


def input_example(run_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """No spikes in two bins past the IC window, one trial: the shape of an input."""
    import numpy as np

    regions = run_cfg["model"]["regions"]
    T = int(run_cfg["model"].get("ic_enc_seq_len", 0)) + 2
    out = {r["name"]: np.zeros((1, T, int(r["n_heldin"])), np.float32) for r in regions}
    out.update({f"ext/{r['name']}": np.zeros((1, T, int(r["ext_dim"])), np.float32)
                for r in regions if int(r.get("ext_dim", 0) or 0)})
    return out


def _model_package(dst: Path) -> str:
    """A copy of the ``mrlfads`` model package (sources only) for the model's ``code_paths``:
    not its components (``mrlfads.training`` ...), which an installed mrlfads holds inside."""
    import mrlfads

    source = Path(mrlfads.__file__).parent
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "build")

    def ignore(folder: str, names: list[str]) -> set[str]:
        top = set(mrlfads.COMPONENTS) if Path(folder) == source else set()
        return set(junk(folder, names)) | (top & set(names))

    target = dst / "mrlfads"
    shutil.copytree(source, target, ignore=ignore)
    return str(target)


def model_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> str:
    """The model part of checkpoint ``src`` written to ``dst``: state dict, run config and
    manifest (through tracking/shareable.py: no local path), the epoch and that epoch's
    metrics; no optimiser, RNG or history. ``mrlfads.training.checkpoint.load_model`` reads it."""
    payload = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "model" not in payload:
        raise TrackingError(f"{os.path.basename(os.fspath(src))} is not an mrlfads checkpoint "
                            "(no model state)")
    cfg, man = payload.get("run_config"), payload.get("manifest")
    history = payload.get("history") or []
    out = {"format": payload.get("format"), "model": payload["model"],
           "run_config": shared_run_config(cfg) if isinstance(cfg, dict) else cfg,
           "manifest": shared_manifest(man) if isinstance(man, dict) else man}
    if "epoch" in payload:
        out["epoch"] = payload["epoch"]
    metrics = payload.get("metrics") or (history[-1] if history else None)
    if isinstance(metrics, dict):
        out["metrics"] = metrics
    torch.save(out, dst)
    return str(dst)


# -- resolving models:/ URIs ---------------------------------------------------------------
def _check_uri(uri: str) -> None:
    if not uri.startswith("models:/"):
        raise TrackingError(f"{uri!r} is not a models:/NAME@ALIAS (or models:/NAME/VERSION) URI")


def resolve_model_uri(uri: str, *, tracking_uri: str | None = None, load: bool = False,
                      dst: str | os.PathLike | None = None):
    """``models:/NAME@ALIAS`` -> a local model directory, or (``load=True``) the pyfunc."""
    from mlflow.exceptions import MlflowException

    _check_uri(uri)
    resolved = resolve_tracking_uri(tracking_uri)
    try:
        with _global_uri(resolved):
            return _resolve(uri, load, dst)
    except MlflowException as exc:
        raise TrackingError(f"cannot resolve {uri} in {redact_uri(resolved)}: "
                            f"{exc.message.splitlines()[0]}; check the name and alias (mrlfads "
                            "promote sets them) and --tracking-uri / MLFLOW_TRACKING_URI") from exc


def _resolve(uri: str, load: bool, dst):
    import mlflow

    if load:
        import mlflow.pyfunc

        return mlflow.pyfunc.load_model(uri, dst_path=None if dst is None else str(dst))
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri,
                                                    dst_path=None if dst is None else str(dst)))


def _model_file(local: Path, name: str) -> Path | None:
    """``name`` inside a downloaded model: under ``artifacts/`` (pyfunc), or ``extra_files/``
    (models registered as pickled torch modules by earlier versions)."""
    for sub in ("artifacts", "extra_files"):
        if (local / sub / name).is_file():
            return local / sub / name
    return None


def download_checkpoint(uri: str, *, tracking_uri: str | None = None) -> Path:
    """The checkpoint file inside a registered model (for ``mrlfads.training.checkpoint.load_model``)."""
    path = _model_file(resolve_model_uri(uri, tracking_uri=tracking_uri), CHECKPOINT_FILE)
    if path is None:
        raise TrackingError(f"{uri} holds no checkpoint.pt: it was not registered by mrlfads promote")
    return path


def load_registered(uri: str, *, tracking_uri: str | None = None) -> tuple[torch.nn.Module, dict, dict]:
    """``(model, run_cfg_dict, manifest_dict)`` like ``mrlfads.training.checkpoint.load_model``."""
    from mrlfads.config import ModelConfig
    from mrlfads.config_utils import from_dict
    from mrlfads.model import MRLFADS

    payload = torch.load(download_checkpoint(uri, tracking_uri=tracking_uri), map_location="cpu",
                         weights_only=True)
    model = MRLFADS(from_dict(ModelConfig, payload["run_config"]["model"], where="checkpoint.model"))
    model.load_state_dict(payload["model"])
    return model.eval(), payload["run_config"], payload.get("manifest", {})


# -- one training run ----------------------------------------------------------------------
def find_run(run_id: str, *, tracking_uri: str | None = None) -> BestTrial:
    """A finished `mrlfads train` run (or a sweep's trial run) as a promotion candidate.

    Its checkpoint is the run's ``checkpoint/best.pt`` artifact (``runs:/`` URI) when train
    logged one, else the trial's ``mrlfads.checkpoint`` tag; errors say which is missing."""
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    where = redact_uri(client.tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise TrackingError(f"no run {run_id!r} in {where}: check --run (`mrlfads train` prints "
                            "the run id; RUN_DIR/tracking.json holds it) and --tracking-uri / "
                            "MLFLOW_TRACKING_URI") from exc
    tags, metrics = run.data.tags, dict(run.data.metrics)
    if tags.get(ROLE) == "sweep":
        raise TrackingError(f"run {run_id} is the parent run of sweep {tags.get('mrlfads.sweep')!r}: "
                            "promote its best trial with --sweep NAME")
    if run.info.status != "FINISHED":
        raise TrackingError(f"run {run_id} is {run.info.status}, not FINISHED: only a finished "
                            "run can be promoted (let it finish; `mrlfads train --resume --out "
                            "RUN_DIR` continues a killed run)")
    names = {a.path for a in client.list_artifacts(run_id, RUN_CHECKPOINT_DIR)}
    if RUN_CHECKPOINT in names:
        checkpoint = f"runs:/{run_id}/{RUN_CHECKPOINT}"
    elif tags.get(CHECKPOINT) and selectable(metrics):
        checkpoint = tags[CHECKPOINT]
    else:
        raise TrackingError(
            f"run {run_id} has no checkpoint to promote: no {RUN_CHECKPOINT} artifact (`mrlfads "
            "train` logs best.pt there once an epoch after its KL/L2 ramps is done: train more "
            "epochs) and no trial checkpoint after the ramps (tag mrlfads.checkpoint)")
    value = metrics.get("objective", math.nan)
    return BestTrial(run_id, tags.get(TRIAL_ID, ""), "objective", float(value),
                     checkpoint, metrics)


def download_run_checkpoint(uri: str, dst: str | os.PathLike, *,
                            tracking_uri: str | None = None) -> Path:
    """A ``runs:/RUN_ID/checkpoint/best.pt`` artifact as a local file under ``dst``."""
    import mlflow

    with _global_uri(resolve_tracking_uri(tracking_uri)):
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))


def log_run_checkpoint(log_artifact, src: str | os.PathLike) -> None:
    """Log the model part of checkpoint ``src`` as the run's ``checkpoint/best.pt`` (what
    ``mrlfads promote --run`` registers) through ``log_artifact(path, artifact_dir)``."""
    with tempfile.TemporaryDirectory() as tmp:
        log_artifact(model_checkpoint(src, Path(tmp) / "best.pt"), RUN_CHECKPOINT_DIR)
