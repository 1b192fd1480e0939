"""MR-LFADS: the model, its losses and metrics (pure PyTorch + numpy), and the Python API.

``mrlfads.simulate``, ``ingest``, ``open_dataset``, ``fit``, ``load``, ``sweep``,
``plan_sweep`` and ``promote`` (docs/API.md) are the functions the ``mrlfads`` commands
call; they live in ``mrlfads.training.api`` and are imported on first use, so ``import
mrlfads`` and the model's own modules (``mrlfads.model``, ``mrlfads.loss``, ...) load
nothing else.

Every component imports under this one name: ``mrlfads.training``, ``mrlfads.tracking``,
``mrlfads.data_loaders``, ``mrlfads.search_spaces``. Installed, they are subfolders (the
package-dir mapping in pyproject.toml); in a source checkout (a clone, or the working
directory ``ray job submit --working-dir .`` ships to every node) they are the checkout's
top-level folders, which the finder below maps by name (only those four: the checkout root
itself is not a package). Nothing is importable as a bare ``training`` or ``tracking``, so a
user's folders of those names shadow nothing.
"""
from __future__ import annotations

import sys as _sys
from importlib.abc import MetaPathFinder as _MetaPathFinder
from importlib.machinery import PathFinder as _PathFinder
from pathlib import Path as _Path

__version__ = "0.1.0"

COMPONENTS = ("data_loaders", "search_spaces", "tracking", "training")
API = ("Dataset", "Effectome", "Inference", "Model", "Perturbed", "SweepResult",
       "compare_effectomes", "fit", "ingest", "load", "open_dataset", "plan_sweep", "promote",
       "simulate", "sweep")
__all__ = list(API)


def _checkout_root() -> _Path | None:
    """The source checkout this package sits in (its pyproject.toml names mrlfads and its
    component folders are beside us), or None when installed or copied alone."""
    here = _Path(__file__).resolve().parent
    root = here.parent
    if (here / "training").is_dir() or not (root / "pyproject.toml").is_file():
        return None
    if 'name = "mrlfads"' not in (root / "pyproject.toml").read_text(errors="replace"):
        return None
    return root if all((root / c / "__init__.py").is_file() for c in COMPONENTS) else None


class CheckoutComponents(_MetaPathFinder):
    """Finds ``mrlfads.<component>`` in the checkout's top-level folder of that name. First
    on ``sys.meta_path``, so a checkout run from (a Ray working directory) wins over another
    one installed in editable mode; it answers for those four names and nothing else."""

    def __init__(self, root: _Path):
        self.root = str(root)

    def find_spec(self, fullname, path=None, target=None):
        parent, _, name = fullname.rpartition(".")
        if parent != __name__ or name not in COMPONENTS:
            return None
        return _PathFinder.find_spec(fullname, [self.root])


if (_root := _checkout_root()) is not None:
    _sys.meta_path[:] = [f for f in _sys.meta_path if type(f).__name__ != "CheckoutComponents"]
    _sys.meta_path.insert(0, CheckoutComponents(_root))


def __getattr__(name: str):
    if name in API:
        from mrlfads.training import api

        return getattr(api, name)
    raise AttributeError(f"module 'mrlfads' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(API))
