"""Checkpoints: one file holding everything needed to resume exactly or rebuild the model.

Written atomically (mrlfads.atomic: a temporary sibling, fsync, os.replace), so a crash
mid-write leaves the previous checkpoint intact. Loaded with ``weights_only=True``: a
checkpoint holds only tensors and plain Python containers, never pickled objects.
"""
from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrlfads.atomic import open_atomic
from mrlfads.config_utils import ConfigError
from mrlfads.files import CHECKPOINT as CHECKPOINT_NAME

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or not an mrlfads checkpoint."""


def save(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``payload`` to ``path`` atomically; returns the path."""
    path = Path(path)
    with open_atomic(path, "wb") as fh:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, fh)
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; errors name the file and the fix."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist: pass a checkpoint file (e.g. RUN_DIR/best.pt) "
            "or a models:/NAME@ALIAS URI"
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/foreign files
        raise CheckpointError(
            f"checkpoint {path} could not be read ({type(exc).__name__}: {exc}); it is truncated "
            "or not an mrlfads checkpoint: use another checkpoint from the run directory"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"checkpoint {path} is not an mrlfads checkpoint of format {CHECKPOINT_FORMAT}"
        )
    return payload


@contextmanager
def restoring(path: str | os.PathLike) -> Iterator[None]:
    """Turn a state dict that does not fit (missing or foreign keys, wrong shapes, not a
    dict) into a CheckpointError naming the file, instead of a traceback from torch."""
    try:
        yield
    except (KeyError, RuntimeError, TypeError, AttributeError, IndexError, ValueError) as exc:
        detail = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} does not fit this model ({type(exc).__name__}: {detail}); it "
            "was written by another model or damaged: use another checkpoint from the run "
            "directory") from None


def run_config(payload: dict[str, Any], path: str | os.PathLike):
    """The RunConfig saved in ``payload``, or a CheckpointError naming the file."""
    from mrlfads.training.config import RunConfig

    saved = payload.get("run_config")
    if not isinstance(saved, dict):
        raise CheckpointError(f"checkpoint {path} holds no run config: it is not a checkpoint "
                              "written by `mrlfads train` or `mrlfads sweep`")
    try:
        return RunConfig.from_dict(saved)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path} holds no valid run config: {exc}") from None


def rng_state() -> dict[str, Any]:
    """All RNG state as tensors/ints/lists so it loads under weights_only."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Rebuild the model from a checkpoint alone: ``(model, run_cfg_dict, manifest_dict)``."""
    from mrlfads.config import ModelConfig
    from mrlfads.config_utils import from_dict
    from mrlfads.model import MRLFADS

    payload = load(path, map_location)
    try:
        model_cfg = from_dict(ModelConfig, payload["run_config"]["model"], where="checkpoint.model")
    except (KeyError, TypeError, ConfigError) as exc:  # TypeError: a section is no mapping
        raise CheckpointError(f"checkpoint {path} holds no valid model config: {exc}") from exc
    model = MRLFADS(model_cfg)
    with restoring(path):
        model.load_state_dict(payload["model"])
    model.eval()
    return model, payload["run_config"], payload.get("manifest", {})
