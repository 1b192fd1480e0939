"""The PBT explore step: pure functions of (values, space, rng). (Initial values are
Tune's draws from ``mrlfads.search_spaces.tune_objects.domain``.)

Ray's built-in perturbation multiplies by 0.8 or 1.2 and steps outside the declared bounds;
owning the step keeps it unbiased and inside the box:
- log scale: ``x * exp(u)``, ``u ~ U(-log(1 + w), log(1 + w))``, so ``E[log x'] = log x``
  (multiplicative, unbiased in log space); w is the hyperparameter's exploration weight.
- linear scale: ``x + u * w * (high - low)``, ``u ~ U(-1, 1)`` (unbiased additive step).
Both are then clipped to the bounds.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from mrlfads.search_spaces.errors import SearchSpaceError
from mrlfads.search_spaces.space import Hyperparameter, SearchSpace


def perturb(value: float, hp: Hyperparameter, rng: np.random.Generator) -> float:
    """One hyperparameter's explore step; clipped to ``hp.bounds``."""
    low, high = hp.bounds
    if hp.scale == "log":
        half = math.log1p(hp.explore_weight)
        new = max(value, low) * math.exp(rng.uniform(-half, half))
    else:
        new = value + rng.uniform(-1.0, 1.0) * hp.explore_weight * (high - low)
    return float(min(max(new, low), high))


def explore(values: Mapping[str, float], space: SearchSpace,
            rng: np.random.Generator) -> dict[str, float]:
    """A perturbed copy of ``values`` (path -> value); keys the space does not search pass
    through unchanged. Deterministic given the rng state; never mutates ``values``."""
    out = dict(values)
    for hp in space.hyperparameters:
        if hp.path not in values:
            raise SearchSpaceError(f"explore: trial values lack {hp.path!r}, searched by the "
                                   f"space; got keys {sorted(values)}")
        out[hp.path] = perturb(float(values[hp.path]), hp, rng)
    return out


class SpaceExplorer:
    """PBT's ``custom_explore_fn``: perturbs ``config[key]`` with :func:`explore`.

    A picklable object (Tune saves the scheduler with the experiment) holding its own rng
    seeded from the space, so a sweep's sequence of explore steps is reproducible.
    """

    def __init__(self, space: SearchSpace, key: str = "hparams", seed: int | None = None):
        self.space = space
        self.key = key
        self.rng = np.random.default_rng(space.seed + 1 if seed is None else seed)

    def __call__(self, config: dict) -> dict:
        config = dict(config)
        config[self.key] = explore(config[self.key], self.space, self.rng)
        return config
