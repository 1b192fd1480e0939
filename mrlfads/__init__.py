"""MR-LFADS: the model, its losses and metrics (pure PyTorch + numpy), and the Python API.

``mrlfads.simulate``, ``ingest``, ``open_dataset``, ``fit``, ``load``, ``sweep``,
``plan_sweep`` and ``promote`` (docs/API.md) are the functions the ``mrlfads`` commands
call; they live in ``training.api`` and are imported on first use, so ``import mrlfads``
and the model's own modules (``mrlfads.model``, ``mrlfads.loss``, ...) load nothing else.
"""
from __future__ import annotations

API = ("Dataset", "Effectome", "Inference", "Model", "Perturbed", "SweepResult", "fit", "ingest",
       "load", "open_dataset", "plan_sweep", "promote", "simulate", "sweep")
__all__ = list(API)


def __getattr__(name: str):
    if name in API:
        from training import api

        return getattr(api, name)
    raise AttributeError(f"module 'mrlfads' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(API))
