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
    improving by more than ``min_delta``; single trials are never stopped here."""

    def __init__(self, metric: str, mode: str, generation: int, patience: int,
                 burn_in: int = 0, min_delta: float = 0.0, time_attr: str = "epoch"):
        if mode not in ("min", "max"):
            raise ValueError(f"stopper mode must be 'min' or 'max', got {mode!r}")
        if generation < 1 or patience < 1:
            raise ValueError(f"stopper generation ({generation}) and patience ({patience}) "
                             "must be >= 1")
        self.metric, self.time_attr = metric, time_attr
        self.sign = 1.0 if mode == "min" else -1.0
        self.generation, self.patience = int(generation), int(patience)
        self.burn_in, self.min_delta = int(burn_in), float(min_delta)
        self.best: float | None = None  # sign-adjusted: lower is better
        self.best_generation = 0
        self.latest_generation = 0

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        value, time = result.get(self.metric), result.get(self.time_attr)
        if value is None or time is None or time < self.burn_in:
            return False
        value = float(value)
        if not math.isfinite(value):
            return False
        gen = int(time) // self.generation
        self.latest_generation = max(self.latest_generation, gen)
        score = self.sign * value
        if self.best is None or score < self.best - self.min_delta:
            self.best, self.best_generation = score, gen
        return False

    def stop_all(self) -> bool:
        return (self.best is not None
                and self.latest_generation - self.best_generation >= self.patience)
