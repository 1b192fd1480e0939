"""Where `infer` and `perturb` get a model: a checkpoint file or a registered MLflow model."""
from __future__ import annotations

from typing import Any

from training.checkpoint import load_model


def load_any_model(source: str, tracking_uri: str | None = None) -> tuple[Any, dict, dict]:
    """``(model, run_cfg_dict, manifest_dict)`` from a checkpoint path or ``models:/NAME@ALIAS``."""
    if source.startswith("models:/"):
        from tracking.registry import download_checkpoint

        source = str(download_checkpoint(source, tracking_uri=tracking_uri))
    return load_model(source)
