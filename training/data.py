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
from mrlfads.sessions import session_groups


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
    # (trials,) int64 on the device: each trial's session, for datasets of several sessions
    # (docs/MODEL.md, "Several sessions"); None: one session
    session: torch.Tensor | None = None
    # (trials, T, R) float on the device: 1 where the experiment silenced every message a
    # region sends (docs/MODEL.md, "Recorded interventions"); None: no interventions here
    silenced: torch.Tensor | None = None

    @property
    def n_trials(self) -> int:
        return int(self.heldin[0].shape[0])

    def session_groups(self) -> list[tuple[int, torch.Tensor]]:
        """``(session, trial indices)`` for every session with trials here, in session
        order: the model runs one session per batch."""
        return [(s or 0, rows) for s, rows in
                session_groups(self.session, self.n_trials, self.heldin[0].device)]

    def head(self, n: int) -> "SplitTensors":
        """The first ``n`` trials (views, no copy)."""
        sl = slice(0, min(n, self.n_trials))
        return SplitTensors(
            self.split, [x[sl] for x in self.heldin], [x[sl] for x in self.heldout],
            [x[sl] for x in self.ext] if self.ext is not None else None,
            self.trial_id[sl], {k: v[sl] for k, v in self.truth.items()},
            None if self.condition is None else self.condition[sl],
            None if self.session is None else self.session[sl],
            None if self.silenced is None else self.silenced[sl])

    def subset(self, idx: torch.Tensor) -> "SplitTensors":
        """The trials at ``idx`` (copies)."""
        host = idx.cpu().numpy()
        return SplitTensors(
            self.split, [x[idx] for x in self.heldin], [x[idx] for x in self.heldout],
            [x[idx] for x in self.ext] if self.ext is not None else None,
            self.trial_id[host], {k: v[host] for k, v in self.truth.items()},
            None if self.condition is None else self.condition[host],
            None if self.session is None else self.session[idx],
            None if self.silenced is None else self.silenced[idx])

    def neuron_stats(self, counts: bool, recorded=None
                     ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], ...]:
        """Per region, (mean, variance) of each held-in and each held-out neuron over trials
        and bins: what the readouts start from (``MRLFADS.init_from_data``).

        With ``counts`` (Poisson data), means are add-half estimates, (spikes + 0.5) /
        samples, so a neuron silent in this split starts at a small finite rate, not log(0).
        ``recorded`` (several sessions: the model's ``(session_recorded,
        session_recorded_heldout)`` masks, (S, R, width)): each neuron's statistics come
        from the trials of the session that recorded it."""
        def one(x: torch.Tensor):
            flat = x.reshape(x.shape[0] * x.shape[1], x.shape[-1]).double()  # (trials*T, n)
            mean = (flat.sum(0) + 0.5) / max(flat.shape[0], 1) if counts else flat.mean(0)
            # a region without held-out neurons: (0,) stats, no 0/0 variance warning
            var = flat.var(0, correction=0) if flat.shape[1] else flat.new_zeros(0)
            return mean.float(), var.float()

        def stats(xs: list[torch.Tensor], masks):
            if masks is None or self.session is None:
                return [one(x) for x in xs]
            out = []
            for r, x in enumerate(xs):
                mean, var = x.new_zeros(x.shape[-1]), x.new_zeros(x.shape[-1])
                for s, rows in self.session_groups():
                    cols = masks[s, r, : x.shape[-1]].bool()
                    if cols.any() and rows.numel():
                        mean[cols], var[cols] = one(x[rows][:, :, cols])
                out.append((mean, var))
            return out

        rec_in, rec_out = recorded if recorded is not None else (None, None)
        return stats(self.heldin, rec_in), stats(self.heldout, rec_out)

    def trial_averages(self, recorded: torch.Tensor, tau: int = 0) -> list[torch.Tensor]:
        """Per region, (rows, N) trial-averaged held-in data from bin ``tau`` on, rows =
        (condition, bin): each neuron averaged over the trials of the session that recorded
        it (``recorded``: the model's (S, R, width) held-in masks), so rows line up across
        sessions. Conditions some session lacks are left out; data without conditions has
        one."""
        groups = self.session_groups()
        conds = [""]
        if self.condition is not None:
            present = [set(self.condition[rows.cpu().numpy()].tolist()) for _, rows in groups]
            conds = sorted(set.intersection(*present)) if present else [""]
        out = []
        for r, x in enumerate(self.heldin):
            n = x.shape[-1]
            blocks = []
            for c in conds or [""]:
                avg = x.new_zeros(x.shape[1] - tau, n)
                for s, rows in groups:
                    if c:
                        rows = rows[torch.as_tensor(self.condition[rows.cpu().numpy()] == c,
                                                    device=rows.device)]
                    cols = recorded[s, r, :n].bool()
                    if rows.numel() and cols.any():
                        avg[:, cols] = x[rows, tau:][:, :, cols].mean(0)
                blocks.append(avg)
            out.append(torch.cat(blocks))
        return out

    def batch(self, idx: torch.Tensor):
        """``(heldin, heldout, ext)`` lists for the trials at ``idx``."""
        heldin = [x[idx] for x in self.heldin]
        heldout = [x[idx] for x in self.heldout]
        ext = [x[idx] for x in self.ext] if self.ext is not None else None
        return heldin, heldout, ext

    def intervention_kwargs(self, idx: torch.Tensor) -> dict:
        """``{"silenced": (B, T, R)}`` for the model's forward when these trials record
        interventions, else ``{}``."""
        return {} if self.silenced is None else {"silenced": self.silenced[idx]}


def load_split(
    dataset: ArrowDataset, split: str, device: torch.device, *, with_truth: bool = False
) -> SplitTensors:
    """Read ``split`` once; held-in neurons are the first n_heldin columns of ``x/<region>``."""
    m = dataset.manifest
    cols = [schema.TRIAL_ID, schema.CONDITION] + [schema.x_col(r.name) for r in m.regions]
    if len(m.sessions) > 1:
        cols.append(schema.SESSION)
    ext_regions = [r.name for r in m.regions if m.ext_dims.get(r.name, 0) > 0]
    cols += [schema.ext_col(name) for name in ext_regions]
    cols += [schema.silenced_col(name) for name in m.silenced]
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
    session = None
    if len(m.sessions) > 1:
        session = torch.from_numpy(np.asarray(arrays[schema.SESSION], dtype=np.int64)).to(device)
    return SplitTensors(split, heldin, heldout, ext, np.asarray(arrays[schema.TRIAL_ID]), truth,
                        condition, session, _silenced(dataset, arrays, device))


def _silenced(dataset: ArrowDataset, arrays: dict[str, np.ndarray],
              device: torch.device) -> torch.Tensor | None:
    """(trials, T, R) 0/1 from the ``silenced/<region>`` columns, zero for regions never
    silenced; None when no trial of the split records an intervention."""
    m = dataset.manifest  # the reader has checked the columns hold only 0 and 1
    if not m.silenced:
        return None
    n = len(arrays[schema.TRIAL_ID])
    out = np.zeros((n, m.n_bins, len(m.regions)), np.float32)
    for r, name in enumerate(m.region_names):
        if name in m.silenced:
            out[:, :, r] = arrays[schema.silenced_col(name)]
    return torch.from_numpy(out).to(device) if out.any() else None
