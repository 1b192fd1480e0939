"""The names of the files a model is saved in: one place for training (run directories,
Tune checkpoints) and tracking (registered models), which do not import each other; the
effectome file of an `infer` output, which infer writes and export-nwb and
compare-effectomes read; and the folder mrlfads keeps its caches in."""
from __future__ import annotations

import os
from pathlib import Path

CHECKPOINT = "checkpoint.pt"  # the file in a Tune checkpoint directory and a registered model
LAST = "last.pt"  # a run directory's newest epoch (what --resume continues)
BEST = "best.pt"  # a run directory's best epoch after the KL/L2 ramps
EFFECTOME = "effectome.json"  # in an `mrlfads infer` output: both effectomes and the inputs'


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/mrlfads``, else ``~/.cache/mrlfads``: the compiled training loop and
    the fitted smoothing baselines are kept under it unless their own variable says where."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mrlfads"
