"""Train a data-generating network on its task: short BPTT runs of Adam on the CPU.

The networks need only be good enough to have task structure in their dynamics; the loss
achieved is reported in the dataset's provenance instead of being driven to zero.
"""
from __future__ import annotations

import contextlib
import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from mrlfads.data_loaders.simulate.network import MultiRegionRNN, NetworkSpec

Progress = Callable[[int, int, float], None]  # (step done, total steps, current loss)


@dataclass(frozen=True)
class TrainConfig:
    """How long and how hard to train (defaults keep each network to ~a minute on one core)."""

    steps: int = 400
    batch_size: int = 32
    n_bins: int = 60
    lr: float = 3e-3
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        for k in ("steps", "batch_size", "n_bins"):
            if getattr(self, k) < 1:
                raise ValueError(f"TrainConfig.{k}: must be >= 1, got {getattr(self, k)}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr: must be > 0, got {self.lr}")


@dataclass
class TaskBatch:
    """Trials of a task: inputs (B, T, I_tot) enter the regions, targets/mask (B, T, O_tot)."""

    inputs: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    conditions: list[str] = field(default_factory=list)
    variables: dict[str, np.ndarray] = field(default_factory=dict)  # task/<name> per trial


Sampler = Callable[[np.random.Generator, int, int], TaskBatch]  # (rng, n_trials, n_bins)
# (batch, hidden, messages, readout) -> scalar loss, normalised so ~1 means "learnt nothing"
LossFn = Callable[[TaskBatch, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked entries divided by the targets' masked mean square."""
    mask = mask.to(pred.dtype)
    err = ((pred - target) ** 2 * mask).sum()
    scale = ((target ** 2) * mask).sum().clamp_min(1e-8)
    return err / scale


def readout_loss(batch: TaskBatch, hidden, messages, readout) -> torch.Tensor:
    """Default loss: the task readout must match the targets where the mask is on."""
    t = torch.as_tensor(batch.targets, dtype=readout.dtype)
    return masked_mse(readout, t, torch.as_tensor(batch.mask))


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One torch thread inside: bitwise-reproducible results, and polite on shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def trained_on() -> dict[str, str]:
    """The torch build and CPU that trained a network. A seed fixes the network only for
    these: another CPU's float32 kernels round differently, and a few hundred optimiser
    steps turn that into a different network (so different hidden units and spikes)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")),
                       cpu)
    except OSError:
        pass
    return {"torch": torch.__version__, "cpu": cpu}


def train_network(net: MultiRegionRNN, sample: Sampler, loss_fn: LossFn, cfg: TrainConfig,
                  rng: np.random.Generator, torch_seed: int,
                  progress: Progress | None = None) -> dict[str, float]:
    """Adam on fresh task batches with the network's own noise; returns first/last losses."""
    gen = torch.Generator().manual_seed(int(torch_seed))
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    spec = net.spec
    n_units, n_msg = sum(spec.n_units), sum(p.dim for p in spec.pathways)
    ema, first = None, None
    for step in range(cfg.steps):
        batch = sample(rng, cfg.batch_size, cfg.n_bins)
        b, t = batch.inputs.shape[:2]
        h_init = torch.tanh(spec.init_scale * torch.randn(b, n_units, generator=gen))
        eps_h = torch.randn(b, t, n_units, generator=gen)
        eps_c = torch.randn(b, t, n_msg, generator=gen)
        hidden, messages, readout = net(h_init, torch.as_tensor(batch.inputs, dtype=torch.float32),
                                        eps_h, eps_c)
        loss = loss_fn(batch, hidden, messages, readout)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        value = float(loss.detach())
        first = value if first is None else first
        ema = value if ema is None else 0.9 * ema + 0.1 * value
        if progress is not None:
            progress(step + 1, cfg.steps, ema)
    return {"train_loss_first": float(first or 0.0), "train_loss_final_ema": float(ema or 0.0),
            "train_steps": cfg.steps}


@dataclass
class Family:
    """What a network family module builds: the architecture, its task and how it is scored."""

    spec: NetworkSpec
    sample: Sampler
    loss_fn: LossFn
    full_length_training: bool  # timings scale with T: train on whole trials
    description: dict = field(default_factory=dict)  # JSON-able, goes to provenance
