"""The data-generating network: a multi-region tanh RNN whose regions talk only through channels.

Dynamics (all regions step together; `s->r` runs over PRESENT pathways only):

    m_{s->r}[t] = C_{s->r} h_s[t-1] + channel_noise * xi_{s->r}[t]          (the true message)
    a_r[t]      = W_r h_r[t-1] + sum_s B_{s->r} m_{s->r}[t] + U_r u_r[t] + b_r + hidden_noise * eps_r[t]
    h_r[t]      = (1 - alpha) h_r[t-1] + alpha * tanh(a_r[t])
    z_r[t]      = D_r h_r[t] + d_r                                            (task readout)

with h_r[-1] = tanh(init_scale * zeta_r). An absent pathway has no C/B at all, so its message
is exactly zero. The noises of trial `trial_id` are the standard normals drawn by
`trial_noise(noise_seed, trial_id, ...)`, so a stored dataset plus network.npz replays exactly.

For speed the regions are stacked into one state vector (N_tot units, D_tot message dims);
masks keep every weight inside its block, so the stacked form IS the region-wise form.
"""
from __future__ import annotations

import io
import itertools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Pathway:
    """A present channel src -> dst carrying a `dim`-dimensional message."""

    src: int
    dst: int
    dim: int

    def __post_init__(self) -> None:
        assert self.src != self.dst and self.dim >= 1, self


@dataclass(frozen=True)
class NetworkSpec:
    """Architecture and noise levels of a data-generating network."""

    region_names: tuple[str, ...]
    n_units: tuple[int, ...]
    pathways: tuple[Pathway, ...]
    input_dims: tuple[int, ...]   # private (unobserved) input width per region, 0 = none
    output_dims: tuple[int, ...]  # task readout width per region, 0 = none
    alpha: float = 1.0            # dt / tau; 1 = plain discrete-time RNN
    hidden_noise: float = 0.05
    channel_noise: float = 0.01
    init_scale: float = 1.0
    gain: float = 1.0             # spectral scale of the initial recurrent weights

    def __post_init__(self) -> None:
        r = len(self.region_names)
        assert len(self.n_units) == len(self.input_dims) == len(self.output_dims) == r
        pairs = [(p.src, p.dst) for p in self.pathways]
        assert len(set(pairs)) == len(pairs) and all(0 <= i < r for pr in pairs for i in pr)
        assert 0 < self.alpha <= 1

    def unit_slices(self) -> list[slice]:
        return slices(self.n_units)

    def msg_slices(self) -> list[slice]:
        return slices([p.dim for p in self.pathways])

    def comm_matrix(self) -> list[list[int]]:
        """comm_matrix[dst][src] = message dimension, 0 where the pathway is absent."""
        r = len(self.region_names)
        cm = [[0] * r for _ in range(r)]
        for p in self.pathways:
            cm[p.dst][p.src] = p.dim
        return cm

    def pathway_name(self, p: Pathway) -> str:
        return f"{self.region_names[p.src]}->{self.region_names[p.dst]}"


def slices(sizes) -> list[slice]:
    edges = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(edges)]


def _block_mask(rows: list[slice], cols: list[slice], pairs) -> torch.Tensor:
    n_r = rows[-1].stop if rows else 0
    n_c = cols[-1].stop if cols else 0
    mask = torch.zeros(n_r, n_c)
    for i, j in pairs:
        mask[rows[i], cols[j]] = 1.0
    return mask


class MultiRegionRNN(nn.Module):
    """Stacked multi-region RNN; `forward` runs whole trials given inputs and noise."""

    def __init__(self, spec: NetworkSpec, rng: np.random.Generator) -> None:
        super().__init__()
        self.spec = spec
        us, ms = spec.unit_slices(), spec.msg_slices()
        ins, outs = slices(spec.input_dims), slices(spec.output_dims)
        r, paths = len(spec.n_units), spec.pathways
        masks = {
            "W": _block_mask(us, us, [(i, i) for i in range(r)]),
            "C": _block_mask(ms, us, [(k, p.src) for k, p in enumerate(paths)]),
            "B": _block_mask(us, ms, [(p.dst, k) for k, p in enumerate(paths)]),
            "U": _block_mask(us, ins, [(i, i) for i in range(r)]),
            "D": _block_mask(outs, us, [(i, i) for i in range(r)]),
        }
        for k, m in masks.items():
            self.register_buffer(f"mask_{k}", m)
        n_tot = sum(spec.n_units)
        fan_w = np.repeat(spec.n_units, spec.n_units).astype(float)  # per-row fan-in of W, C, D
        fan_c = np.array([spec.n_units[p.src] for p in paths for _ in range(p.dim)], float)
        fan_d = np.array([spec.n_units[i] for i in range(r) for _ in range(spec.output_dims[i])], float)
        fan_b = np.array([max(1, sum(p.dim for p in paths if p.dst == i))
                          for i in range(r) for _ in range(spec.n_units[i])], float)
        fan_u = np.array([max(1, spec.input_dims[i]) for i in range(r) for _ in range(spec.n_units[i])], float)

        def init(shape, fan):
            w = rng.standard_normal(shape) / np.sqrt(fan)[:, None]
            return nn.Parameter(torch.tensor(w, dtype=torch.float32))

        self.W = init((n_tot, n_tot), fan_w / spec.gain**2)
        self.C = init((len(fan_c), n_tot), fan_c)
        self.B = init((n_tot, len(fan_c)), fan_b)
        self.U = init((n_tot, sum(spec.input_dims)), fan_u)
        self.D = init((len(fan_d), n_tot), fan_d)
        self.b = nn.Parameter(torch.zeros(n_tot))
        self.d = nn.Parameter(torch.zeros(len(fan_d)))

    def weights(self) -> dict[str, torch.Tensor]:
        """Effective (masked) weights: zero outside each block, exactly."""
        return {k: getattr(self, k) * getattr(self, f"mask_{k}") for k in "WCBUD"} | {
            "b": self.b, "d": self.d}

    def forward(self, h_init: torch.Tensor, u: torch.Tensor, eps_h: torch.Tensor,
                eps_c: torch.Tensor, gate: torch.Tensor | None = None,
                hold: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h_init (B, N_tot) = h[-1]; u (B, T, I_tot); eps_h (B, T, N_tot); eps_c (B, T, D_tot);
        gate (T, D_tot) or (T, B, D_tot), optional: every message is multiplied by it (0
        silences a pathway at a step, noise included); hold (T, D_tot), optional, is added
        after the gate (a gated message held at a value instead of zero).

        Returns hidden (B, T, N_tot), messages (B, T, D_tot), readout (B, T, O_tot)."""
        w = {k: v.to(u.dtype) for k, v in self.weights().items()}
        s = self.spec
        drive = u @ w["U"].T + w["b"] + s.hidden_noise * eps_h  # (B, T, N_tot), all but h and m
        xi = s.channel_noise * eps_c
        wt, ct, bt = w["W"].T, w["C"].T, w["B"].T
        h, hs, ms = h_init, [], []
        for t in range(u.shape[1]):  # fused ops: the loop is per-op overhead bound
            m = torch.addmm(xi[:, t], h, ct)
            if gate is not None:
                m = m * gate[t]
            if hold is not None:
                m = m + hold[t]
            a = torch.addmm(torch.addmm(drive[:, t], h, wt), m, bt)
            h = torch.lerp(h, torch.tanh(a), s.alpha)  # (1 - alpha) h + alpha tanh(a)
            hs.append(h)
            ms.append(m)
        hidden = torch.stack(hs, 1)
        return hidden, torch.stack(ms, 1), hidden @ w["D"].T + w["d"]


def trial_noise(noise_seed: int, trial_id: int, n_bins: int, n_units: int, n_msg: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(zeta (N_tot,), eps_h (T, N_tot), xi (T, D_tot)) of one trial, float64, replayable."""
    rng = np.random.default_rng([int(noise_seed), int(trial_id)])
    flat = rng.standard_normal(n_units + n_bins * (n_units + n_msg))
    zeta, rest = flat[:n_units], flat[n_units:]
    rest = rest.reshape(n_bins, n_units + n_msg)  # (T, N_tot + D_tot)
    return zeta, rest[:, :n_units], rest[:, n_units:]


@torch.no_grad()
def run_trials(net: MultiRegionRNN, u: np.ndarray, trial_ids: np.ndarray, noise_seed: int,
               chunk: int = 256, gate: np.ndarray | None = None,
               hold: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the trained network (float64) on inputs u (n, T, I_tot) with replayable noise;
    ``gate`` (T, D_tot), or (n, T, D_tot) one per trial, multiplies the messages and
    ``hold`` (T, D_tot) is added to them after it (`MultiRegionRNN.forward`).

    Returns hidden (n, T, N_tot), messages (n, T, D_tot), readout (n, T, O_tot) as float32."""
    s = net.spec
    n, T = u.shape[:2]
    n_units, n_msg = sum(s.n_units), sum(p.dim for p in s.pathways)
    outs: list[list[np.ndarray]] = [[], [], []]
    for start in range(0, n, chunk):
        ids = trial_ids[start:start + chunk]
        noise = [trial_noise(noise_seed, i, T, n_units, n_msg) for i in ids]
        zeta = torch.from_numpy(np.stack([z for z, _, _ in noise]))
        eps_h = torch.from_numpy(np.stack([e for _, e, _ in noise]))
        eps_c = torch.from_numpy(np.stack([c for _, _, c in noise]))
        h_init = torch.tanh(s.init_scale * zeta)
        g = None
        if gate is not None:
            g = torch.from_numpy(np.asarray(gate, np.float64))
            if g.ndim == 3:  # per trial: (chunk, T, D) -> (T, chunk, D), gate[t] is (B, D)
                g = g[start:start + chunk].transpose(0, 1)
        held = None if hold is None else torch.from_numpy(np.asarray(hold, np.float64))
        res = net(h_init, torch.from_numpy(u[start:start + chunk]).double(), eps_h, eps_c, g,
                  held)
        for acc, r in zip(outs, res):
            acc.append(r.numpy().astype(np.float32))
    return tuple(np.concatenate(a) if a else np.zeros((0, T, 0), np.float32) for a in outs)


def to_npz(net: MultiRegionRNN, noise_seed: int, extra: dict[str, np.ndarray] | None = None) -> bytes:
    """network.npz: every weight per region/pathway (network unit order) and the noise recipe.

    Keys: region_names, n_units, input_dims, output_dims, pathways ("src->dst"), pathway_dims,
    nonlinearity, alpha, hidden_noise, channel_noise, init_scale, noise_seed, equations;
    per region W/<r>, b/<r>, U/<r>, D/<r>, d/<r>; per present pathway C/<src>-><dst>,
    B/<src>-><dst>. Unit i of region r is neuron_ids "i" in the dataset manifest."""
    s = net.spec
    w = {k: v.detach().double().numpy() for k, v in net.weights().items()}
    us, ms = s.unit_slices(), s.msg_slices()
    ins, outs = slices(s.input_dims), slices(s.output_dims)
    arrays: dict[str, np.ndarray] = {
        "region_names": np.array(s.region_names),
        "n_units": np.array(s.n_units),
        "input_dims": np.array(s.input_dims),
        "output_dims": np.array(s.output_dims),
        "pathways": np.array([s.pathway_name(p) for p in s.pathways], dtype=str),
        "pathway_dims": np.array([p.dim for p in s.pathways], dtype=int),
        "nonlinearity": np.array("tanh"),
        "alpha": np.array(s.alpha), "hidden_noise": np.array(s.hidden_noise),
        "channel_noise": np.array(s.channel_noise), "init_scale": np.array(s.init_scale),
        "noise_seed": np.array(int(noise_seed)),
        "equations": np.array(__doc__.split("\n\n")[1]),
    }
    for i, name in enumerate(s.region_names):
        arrays[f"W/{name}"] = w["W"][us[i], us[i]]
        arrays[f"b/{name}"] = w["b"][us[i]]
        arrays[f"U/{name}"] = w["U"][us[i], ins[i]]
        arrays[f"D/{name}"] = w["D"][outs[i], us[i]]
        arrays[f"d/{name}"] = w["d"][outs[i]]
    for k, p in enumerate(s.pathways):
        arrays[f"C/{s.pathway_name(p)}"] = w["C"][ms[k], us[p.src]]
        arrays[f"B/{s.pathway_name(p)}"] = w["B"][us[p.dst], ms[k]]
    arrays.update(extra or {})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def load_npz(blob: bytes) -> dict[str, np.ndarray]:
    """Inverse of `to_npz` (a plain dict of arrays; no pickles)."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
