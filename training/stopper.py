"""End a PBT sweep when the population's best stops improving (a ``tune.Stopper``).

Only results that arrive count, so a trial that died simply stops contributing; the
sweep's progress is the furthest generation any live trial has reached, which keeps moving
as long as one trial trains. Epochs before burn-in are ignored: the objective drifts while
the KL/L2 ramps are still rising. After an exploit a trial's epoch rewinds to its donor's;
progress takes the maximum, so rewinds never look like lost time.
"""
from __future__ import annotations

import math
from typing import Any

from ray import tune


class PopulationPlateauStopper(tune.Stopper):
    """``stop_all()`` once ``patience`` generations pass without the population best
    improving by more than ``min_delta`` (``patience=None``: never).

    A single trial is stopped only when it reaches ``max_epochs``: stopping it there, before
    the scheduler sees the result, keeps PBT from exploiting at the very last epoch (which
    would restore a finished donor into a trial with nothing left to train).
    """

    def __init__(self, metric: str, mode: str, generation: int, patience: int | None,
                 burn_in: int = 0, min_delta: float = 0.0, time_attr: str = "epoch",
                 max_epochs: int | None = None):
        if mode not in ("min", "max"):
            raise ValueError(f"stopper mode must be 'min' or 'max', got {mode!r}")
        if generation < 1 or (patience is not None and patience < 1):
            raise ValueError(f"stopper generation ({generation}) and patience ({patience}) "
                             "must be >= 1")
        self.metric, self.time_attr = metric, time_attr
        self.sign = 1.0 if mode == "min" else -1.0
        self.generation, self.patience = int(generation), patience
        self.max_epochs = max_epochs
        self.burn_in, self.min_delta = int(burn_in), float(min_delta)
        self.best: float | None = None  # sign-adjusted: lower is better
        self.best_generation = 0
        self.latest_generation = 0

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        value, time = result.get(self.metric), result.get(self.time_attr)
        if time is None:
            return False
        finished = self.max_epochs is not None and time >= self.max_epochs
        if value is None or time < self.burn_in:
            return finished
        value = float(value)
        if not math.isfinite(value):
            return finished
        gen = int(time) // self.generation
        self.latest_generation = max(self.latest_generation, gen)
        score = self.sign * value
        if self.best is None or score < self.best - self.min_delta:
            self.best, self.best_generation = score, gen
        return finished

    def stop_all(self) -> bool:
        return (self.patience is not None and self.best is not None
                and self.latest_generation - self.best_generation >= self.patience)
