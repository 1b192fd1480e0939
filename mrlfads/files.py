"""The names of the files a model is saved in: one place for training (run directories,
Tune checkpoints) and tracking (registered models), which do not import each other."""
from __future__ import annotations

CHECKPOINT = "checkpoint.pt"  # the file in a Tune checkpoint directory and a registered model
LAST = "last.pt"  # a run directory's newest epoch (what --resume continues)
BEST = "best.pt"  # a run directory's best epoch after the KL/L2 ramps
