"""A dataset split held as tensors on the training device, in the model's region order.

MR-LFADS datasets are small next to the model's cost (2048 trials x 200 bins x 192 neurons
is ~300 MB of float32), so each split is read from the Arrow shards once and batches are
index slices: no per-trial Python work inside an epoch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mrlfads.data_loaders import schema
from mrlfads.data_loaders.reader import ArrowDataset


@dataclass
class SplitTensors:
    """One split: per-region held-in/held-out tensors (trials, T, N), optional truth, and
    each trial's condition label ('' where the dataset has none; PSTH R^2 groups by it)."""

    split: str
    heldin: list[torch.Tensor]
    heldout: list[torch.Tensor]
    ext: list[torch.Tensor] | None
    trial_id: np.ndarray
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    condition: np.ndarray | None = None  # (trials,) str

    @property
    def n_trials(self) -> int:
        return int(self.heldin[0].shape[0])

    def head(self, n: int) -> "SplitTensors":
        """The first ``n`` trials (views, no copy)."""
        sl = slice(0, min(n, self.n_trials))
        return SplitTensors(
            self.split, [x[sl] for x in self.heldin], [x[sl] for x in self.heldout],
            [x[sl] for x in self.ext] if self.ext is not None else None,
            self.trial_id[sl], {k: v[sl] for k, v in self.truth.items()},
            None if self.condition is None else self.condition[sl])

    def neuron_stats(self, counts: bool) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], ...]:
        """Per region, (mean, variance) of each held-in and each held-out neuron over trials
        and bins: what the readouts start from (``MRLFADS.init_from_data``).

        With ``counts`` (Poisson data), means are add-half estimates, (spikes + 0.5) /
        samples, so a neuron silent in this split starts at a small finite rate, not log(0)."""
        def stats(xs: list[torch.Tensor]):
            out = []
            for x in xs:
                flat = x.reshape(x.shape[0] * x.shape[1], x.shape[-1]).double()  # (trials*T, n)
                mean = (flat.sum(0) + 0.5) / flat.shape[0] if counts else flat.mean(0)
                # a region without held-out neurons: (0,) stats, no 0/0 variance warning
                var = flat.var(0, correction=0) if flat.shape[1] else flat.new_zeros(0)
                out.append((mean.float(), var.float()))
            return out

        return stats(self.heldin), stats(self.heldout)

    def batch(self, idx: torch.Tensor):
        """``(heldin, heldout, ext)`` lists for the trials at ``idx``."""
        heldin = [x[idx] for x in self.heldin]
        heldout = [x[idx] for x in self.heldout]
        ext = [x[idx] for x in self.ext] if self.ext is not None else None
        return heldin, heldout, ext


def load_split(
    dataset: ArrowDataset, split: str, device: torch.device, *, with_truth: bool = False
) -> SplitTensors:
    """Read ``split`` once; held-in neurons are the first n_heldin columns of ``x/<region>``."""
    m = dataset.manifest
    cols = [schema.TRIAL_ID, schema.CONDITION] + [schema.x_col(r.name) for r in m.regions]
    ext_regions = [r.name for r in m.regions if m.ext_dims.get(r.name, 0) > 0]
    cols += [schema.ext_col(name) for name in ext_regions]
    truth_cols = list(m.truth) if with_truth else []
    arrays = dataset.arrays(split, cols + truth_cols)

    def tensor(a: np.ndarray) -> torch.Tensor:
        # np.array copies: memory-mapped Arrow buffers are read-only.
        return torch.from_numpy(np.array(a, dtype=np.float32)).to(device)

    heldin, heldout = [], []
    for r in m.regions:
        x = arrays[schema.x_col(r.name)]  # (trials, T, n_heldin + n_heldout)
        heldin.append(tensor(x[:, :, : r.n_heldin]))
        heldout.append(tensor(x[:, :, r.n_heldin:]))
    ext = None
    if ext_regions:
        ext = []
        for r in m.regions:
            if r.name in ext_regions:
                ext.append(tensor(arrays[schema.ext_col(r.name)]))
            else:  # a region without observed inputs gets a zero-width tensor
                ext.append(torch.zeros(heldin[0].shape[0], m.n_bins, 0, device=device))
    truth = {c: np.asarray(arrays[c]) for c in truth_cols}
    condition = np.asarray(arrays[schema.CONDITION]).astype(str)
    return SplitTensors(split, heldin, heldout, ext, np.asarray(arrays[schema.TRIAL_ID]), truth,
                        condition)
