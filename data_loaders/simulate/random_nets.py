"""Random multi-region networks trained on a mix of (simplified) cognitive tasks.

The seed picks the network: 3 or 4 regions (A0..), units per region, each ordered pathway
present with probability 0.4 (redrawn until the output region can hear every input region),
message dims 1..max_msg_dim. Task inputs are split into three groups that enter randomly
chosen regions: stimulus modality 1 (1 d), modality 2 (1 d) and context (fixation + a
one-hot task rule, 6 d). A 1-d readout in an output region other than the sensory ones
answers 0 while fixation is on and +-1 after the go cue (fixation off):
  go:               stim1 = +-v (v in [0.5, 1)) from onset to the end; answer sign(stim1)
  anti_go:          the same stimulus; answer -sign(stim1)
  delayed_decision: stim1 = c + N(0, 0.5^2) in a window, then a delay; answer sign(c)
  multisensory:     stim1 = c1 + noise and stim2 = c2 + noise (c1 + c2 = 2c); answer sign(c)
  categorisation:   stim2 = v ~ U(-1, 1) in a window; answer +1 if |v| > 0.5 else -1
with c in +-{0.1, 0.2, 0.4}. Leaky tanh units (alpha = 0.2); timings scale with T.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from mrlfads.data_loaders.simulate.config import SimConfig
from mrlfads.data_loaders.simulate.network import NetworkSpec, Pathway
from mrlfads.data_loaders.simulate.relay_decision import timings
from mrlfads.data_loaders.simulate.train import Family, TaskBatch, readout_loss

TASKS = ("go", "anti_go", "delayed_decision", "multisensory", "categorisation")
GROUPS = {"stim1": [0], "stim2": [1], "context": list(range(2, 3 + len(TASKS)))}  # global channels
CHANNELS = ["stim1", "stim2", "fixation"] + [f"rule_{t}" for t in TASKS]
P_PATHWAY = 0.4
COHERENCES = np.array([-0.4, -0.2, -0.1, 0.1, 0.2, 0.4])
ALPHA = 0.2


def _reaches(present: np.ndarray, src: int, dst: int) -> bool:
    """Is there a directed path src -> ... -> dst (present[dst, src] = edge src -> dst)?"""
    seen, todo = {src}, deque([src])
    while todo:
        s = todo.popleft()
        for d in np.flatnonzero(present[:, s]):
            if d not in seen:
                seen.add(int(d))
                todo.append(int(d))
    return dst in seen


def draw_network(cfg: SimConfig, rng: np.random.Generator):
    """(spec, allocation {group: region index}, output region index) for this seed."""
    n_regions = int(rng.integers(3, 5))
    names = tuple(f"A{i}" for i in range(n_regions))
    choices = sorted({max(2, cfg.n_units // 2), max(2, 3 * cfg.n_units // 4), cfg.n_units})
    sizes = tuple(int(s) for s in rng.choice(choices, n_regions))
    alloc = {g: int(rng.integers(n_regions)) for g in GROUPS}
    others = [i for i in range(n_regions) if i not in (alloc["stim1"], alloc["stim2"])]
    out = int(rng.choice(others))
    for _ in range(1000):
        present = rng.random((n_regions, n_regions)) < P_PATHWAY  # [dst, src]
        np.fill_diagonal(present, False)
        if all(_reaches(present, alloc[g], out) for g in GROUPS):
            break
    else:  # pragma: no cover - probability ~0; a ring always works
        present = np.zeros((n_regions, n_regions), bool)
        present[(np.arange(n_regions) + 1) % n_regions, np.arange(n_regions)] = True
    pairs = [(int(s), int(d)) for d in range(n_regions) for s in range(n_regions) if present[d, s]]
    dims = rng.integers(1, cfg.max_msg_dim + 1, len(pairs))
    paths = tuple(Pathway(s, d, int(k)) for (s, d), k in zip(pairs, dims))
    in_dims = tuple(sum(len(GROUPS[g]) for g in GROUPS if alloc[g] == i) for i in range(n_regions))
    out_dims = tuple(int(i == out) for i in range(n_regions))
    spec = NetworkSpec(names, sizes, paths, in_dims, out_dims, alpha=ALPHA, init_scale=0.5)
    return spec, alloc, out


def task_trials(rng: np.random.Generator, n: int, n_bins: int) -> tuple[np.ndarray, ...]:
    """Global input channels (n, T, 8), targets (n, T, 1), task ids, variables."""
    task = rng.integers(len(TASKS), size=n)
    on, off, go = timings(rng, n, n_bins)
    t = np.arange(n_bins)[None, :]                                             # (1, T)
    window = (t >= on[:, None]) & (t < off[:, None])                          # (n, T)
    to_end = t >= on[:, None]
    c = rng.choice(COHERENCES, n)
    v = rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 1.0, n)
    w = rng.uniform(0, 1, n)
    val1 = np.select([task <= 1, task == 2, task == 3], [v, c, 2 * w * c], 0.0)
    val2 = np.select([task == 3, task == 4], [2 * (1 - w) * c, rng.uniform(-1, 1, n)], 0.0)
    noisy = (task == 2) | (task == 3)
    shown1 = np.where((task <= 1)[:, None], to_end, window)
    stim1 = np.where(shown1, val1[:, None] + 0.5 * noisy[:, None] * rng.standard_normal((n, n_bins)), 0)
    stim2 = np.where(window, val2[:, None] + 0.5 * (task == 3)[:, None]
                     * rng.standard_normal((n, n_bins)), 0)
    choice = np.select([task == 0, task == 1, task == 4],
                       [np.sign(v), -np.sign(v), np.where(np.abs(val2) > 0.5, 1.0, -1.0)], np.sign(c))
    x = np.zeros((n, n_bins, len(CHANNELS)))
    x[..., 0], x[..., 1], x[..., 2] = stim1, stim2, t < go[:, None]
    x[np.arange(n), :, 3 + task] = 1.0                                        # rule, whole trial
    target = np.where(t >= go[:, None], choice[:, None], 0.0)[..., None]      # (n, T, 1)
    variables = {"task_id": task, "stim_on": on, "stim_off": off, "go_time": go,
                 "value1": val1, "value2": val2, "choice": choice, "target": target}
    return x, target, task, choice, variables


def build(cfg: SimConfig, rng: np.random.Generator) -> Family:
    spec, alloc, out = draw_network(cfg, rng)
    # stacked input order: region by region, groups in GROUPS order inside a region
    cols = [ch for i in range(len(spec.n_units)) for ch in cols_of(alloc, i)]

    def sample(rng: np.random.Generator, n: int, n_bins: int) -> TaskBatch:
        x, target, task, choice, variables = task_trials(rng, n, n_bins)
        conds = [f"{TASKS[k]}_{'pos' if ch > 0 else 'neg'}" for k, ch in zip(task, choice)]
        return TaskBatch(x[..., cols].astype(np.float32), target.astype(np.float32),
                         np.ones_like(target, np.float32), conds,
                         {k: np.asarray(a, np.float32) for k, a in variables.items()})

    names = spec.region_names
    desc = {"tasks": list(TASKS), "inputs": {names[i]: [CHANNELS[c] for c in cols_of(alloc, i)]
                                             for i in range(len(names)) if spec.input_dims[i]},
            "output_region": names[out], "pathway_probability": P_PATHWAY}
    return Family(spec, sample, readout_loss, full_length_training=True, description=desc)


def cols_of(alloc: dict[str, int], region: int) -> list[int]:
    return [ch for g in GROUPS if alloc[g] == region for ch in GROUPS[g]]
