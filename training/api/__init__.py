"""The Python API (docs/API.md): every job the CLI does, as functions that return objects.

Each `mrlfads` command parses its flags, calls one of these and prints what it returns, so a
notebook and the command line run the same code. Importing this package is cheap: torch,
Ray and MLflow are imported inside the functions that need them. `import mrlfads` exposes
the same names (mrlfads/__init__.py).
"""
from mrlfads.training.api.datasets import Dataset, ingest, open_dataset, simulate
from mrlfads.training.api.infer import Effectome, Inference, compare_effectomes
from mrlfads.training.api.models import Model, fit, load
from mrlfads.training.api.perturb import Perturbed
from mrlfads.training.api.search import SweepResult, plan_sweep, promote, sweep

__all__ = ["Dataset", "Effectome", "Inference", "Model", "Perturbed", "SweepResult",
           "compare_effectomes", "fit", "ingest", "load", "open_dataset", "plan_sweep", "promote",
           "simulate", "sweep"]
