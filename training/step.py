"""One training step as an object: fixed batch buffers, hyperparameters held in tensors, and
on CUDA the whole step (forward, loss, backward, clipping, AdamW) captured as a CUDA graph.

Why: on a GPU the step is launch-bound (docs/PERFORMANCE.md): thousands of small kernels per
step, each launched from Python. Replaying a captured graph launches them all at once. A
graph replays fixed memory, so everything a step reads lives at a fixed address: the batch
is copied into buffers, and what changes between steps (the learning rate, from PBT and the
plateau schedule; the KL/L2 ramp weights; the dropout and coordinated-dropout rates) sits in
0-d tensors updated in place, which every replay reads. On the CPU the same object runs the
same body eagerly (on the compiled loop), so every CPU test exercises the GPU's code path.

What a graph bakes in, and so recaptures on change: the batch size (one graph per size: a
full batch and the last, partial one; docs/DESIGN.md, "The training step"), the gradient
clip, weight decay, betas, autocast, and whether dropout or coordinated dropout is on at
all. A restored optimiser has new state tensors: ``adopt_loaded_optimizer`` after any.

The loss terms of every step are summed on the device; the host reads them (and learns
whether any was non-finite) once per epoch, in ``epoch_means``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from mrlfads.config_utils import ConfigError
from mrlfads.loss import compute_loss
from mrlfads.model import MRLFADS
from mrlfads.ramps import loss_weights
from mrlfads.training.config import RunConfig
from mrlfads.training.data import SplitTensors
from mrlfads.training.masks import training_inputs

Tensor = torch.Tensor
WEIGHT_NAMES = ("kl_ic", "kl_co", "kl_com", "l2", "sparsity")  # the ramped loss weights, in this order
WARMUP_STEPS = 3  # eager steps of a batch shape before its capture (PyTorch's recipe)


def wants_graph(setting: bool | str, device: torch.device) -> bool:
    """``train.cuda_graph``: ``auto`` captures on CUDA only; true asks for it (a CPU run
    says it cannot); false never."""
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


@dataclass
class _Batch:
    """Buffers one batch size's steps read: the trials' indices and data."""

    idx: Tensor
    heldin: list[Tensor]
    heldout: list[Tensor]
    ext: list[Tensor] | None
    sv: list[Tensor] | None
    session: int  # every trial of a batch is from this session (stitched models)
    silenced: Tensor | None  # (n, T, R) recorded interventions, when the split has any

    @classmethod
    def like(cls, data: SplitTensors, sv: list[Tensor] | None, n: int, session: int) -> _Batch:
        def rows(xs):
            return None if xs is None else [x.new_empty((n, *x.shape[1:])) for x in xs]

        return cls(torch.empty(n, dtype=torch.long, device=data.heldin[0].device),
                   rows(data.heldin), rows(data.heldout), rows(data.ext), rows(sv), session,
                   None if data.silenced is None else rows([data.silenced])[0])

    def load(self, data: SplitTensors, sv: list[Tensor] | None, idx: Tensor) -> None:
        self.idx.copy_(idx)
        silenced = (None, None) if self.silenced is None else ([data.silenced], [self.silenced])
        for src, dst in ((data.heldin, self.heldin), (data.heldout, self.heldout),
                         (data.ext, self.ext), (sv, self.sv), silenced):
            for x, buf in zip(src or (), dst or ()):
                torch.index_select(x, 0, self.idx, out=buf)


class TrainStep:
    """The training step of one Trainer (training/loop.py), eager or replayed as a graph.

    ``set_epoch`` writes the ramp weights of an epoch, ``set_lr`` / ``set_cd_rate`` the
    trial's values (the model's dropout tensor is the model's: ``MRLFADS.set_dropout``);
    ``run(data, idx)`` trains on the trials ``idx``; ``epoch_means()`` returns the mean of
    every loss term over the steps since ``start_epoch()``.
    """

    def __init__(self, model: MRLFADS, optimizer: torch.optim.Optimizer, cfg: RunConfig,
                 device: torch.device, graph: bool) -> None:
        if graph and device.type != "cuda":
            raise ConfigError(f"train.cuda_graph=true needs a CUDA device, not {device}: "
                             "use auto (graphs on CUDA only) or false")
        self.model, self.optimizer, self.cfg, self.device = model, optimizer, cfg, device
        self.graph = graph
        self.weights = torch.zeros(len(WEIGHT_NAMES), device=device)
        self.cd_rate = torch.tensor(float(cfg.train.cd_rate), device=device)
        self.lr = torch.tensor(float(optimizer.param_groups[0]["lr"]), device=device)
        self.adopt_lr()
        self._names: list[str] | None = None  # loss terms, in the order of _sums
        self._sums: Tensor | None = None
        self._bad: Tensor | None = None  # terms non-finite in the epoch's first bad step
        self._rows = 0
        self._batches: dict[tuple[int, int], _Batch] = {}  # by (batch size, session)
        self._graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        self._warm: dict[tuple[int, int], int] = {}
        self._baked: tuple | None = None
        self.captures = 0  # graphs captured so far (tests and benchmarks read it)

    # ------------------------------------------------------------------ hyperparameters
    def adopt_lr(self) -> None:
        """Make every param group's lr this object's tensor, keeping the group's value:
        after construction and after ``optimizer.load_state_dict`` (which puts the saved
        float back), so the plateau schedule, PBT and the graph share one number."""
        value = float(self.optimizer.param_groups[0]["lr"])
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr
        self.set_lr(value)

    def adopt_loaded_optimizer(self) -> None:
        """After ``optimizer.load_state_dict``: the loaded param groups carry the saving
        run's lr (a float) and ``capturable`` flag, and its step counts where it kept them.
        A checkpoint moves between graphed CUDA runs and CPU runs (a resume, a PBT exploit
        on another node), so put this run's back: the lr tensor, ``capturable`` as this
        step needs (AdamW refuses capturable on the CPU and capture without it), step
        counts on the device when capturing; and drop the graphs, which recorded the old
        state tensors."""
        for group in self.optimizer.param_groups:
            group["capturable"] = self.graph
        if self.graph:
            for state in self.optimizer.state.values():
                if torch.is_tensor(state.get("step")):
                    state["step"] = state["step"].to(self.device, torch.float32)
        self.adopt_lr()
        self.invalidate()

    def set_lr(self, lr: float) -> None:
        self._lr_written = float(lr)
        self.lr.fill_(self._lr_written)

    def lr_value(self) -> float:
        """The learning rate as a float: the value last written here when the tensor still
        holds it (float32 would turn 1e-3 into 0.0010000000475 in the metrics), else the
        tensor's (the plateau schedule writes the tensor itself)."""
        held = float(self.lr)
        return self._lr_written if float(torch.tensor(self._lr_written).item()) == held else held

    def set_cd_rate(self, rate: float) -> None:
        self.cd_rate.fill_(float(rate))

    def set_epoch(self, epoch: float) -> None:
        """The KL/L2 weights (ramp x scale) of ``epoch`` under the current loss config."""
        w = loss_weights(self.cfg.loss, epoch)
        self.weights.copy_(torch.tensor([w[k] for k in WEIGHT_NAMES]))

    def set_config(self, cfg: RunConfig) -> None:
        """A changed run config (PBT's hyperparameters): its rates into the tensors; the
        graphs are recaptured at their next step if anything they bake in changed."""
        self.cfg = cfg
        self.set_cd_rate(cfg.train.cd_rate)

    def invalidate(self) -> None:
        """Drop every captured graph (after an optimiser or model restore)."""
        self._graphs.clear()
        self._warm.clear()

    # ------------------------------------------------------------------ epochs
    def start_epoch(self) -> None:
        if self._sums is not None:
            self._sums.zero_()
            self._bad.zero_()
        self._rows = 0

    def epoch_means(self) -> dict[str, float]:
        """Mean of every loss term over this epoch's trials: one host read per epoch."""
        if self._sums is None or self._rows == 0:
            return {}
        return {k: v / self._rows for k, v in zip(self._names, self._sums.tolist())}

    def first_nonfinite(self) -> list[str]:
        """The loss terms that were non-finite in this epoch's first non-finite step; []
        if none was. (After such a step the weights are spoiled and every later term
        follows, so only that step says what went wrong.)"""
        if self._bad is None:
            return []
        return [k for k, b in zip(self._names, self._bad.tolist()) if b]

    def run(self, data: SplitTensors, idx: Tensor, sv: list[Tensor] | None,
            session: int = 0) -> None:
        """One optimiser step on the trials ``idx`` of ``data`` (``sv``: the split's
        sample-validation masks, or None), all of them from ``session``. Buffers and graphs
        are kept per batch shape: (size, session), as a session picks its own masks."""
        n = (int(idx.numel()), session)
        if n not in self._batches:
            self._batches[n] = _Batch.like(data, sv, n[0], session)
        batch = self._batches[n]
        batch.load(data, sv, idx)
        self._rows += n[0]
        if not self.graph:
            self._eager(batch)
            return
        baked = self._baked_values()
        if baked != self._baked:
            self.invalidate()
            self._baked = baked
        if n in self._graphs:
            self._graphs[n].replay()
        elif self._warm.get(n, 0) < WARMUP_STEPS or self._sums is None:
            self._warm[n] = self._warm.get(n, 0) + 1
            side = torch.cuda.Stream()  # warm-up off the default stream, as PyTorch's recipe
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._eager(batch)
            torch.cuda.current_stream().wait_stream(side)
        else:
            self._capture(n, batch).replay()

    def _eager(self, batch: _Batch) -> None:
        # in place, not None: gradients a graph captured stay where its replays write them
        self.optimizer.zero_grad(set_to_none=False)
        self._body(batch)

    def _capture(self, n: tuple[int, int], batch: _Batch) -> torch.cuda.CUDAGraph:
        """Record one step; it runs at the replay that follows. Gradients are unset first so
        the graph's backward writes (not adds) them in its own memory."""
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._body(batch)
        self._graphs[n] = graph
        self.captures += 1
        return graph

    @property
    def _priced(self) -> bool:
        """Whether the loss prices pathway drive: if not, the step skips the drive norms."""
        return self.cfg.loss.pathway_sparsity > 0

    def _baked_values(self) -> tuple:
        t, opt = self.cfg.train, self.optimizer.param_groups[0]
        return (t.grad_clip, float(opt["weight_decay"]), tuple(opt["betas"]), t.amp,
                self.model.dropout_p > 0, t.cd_rate > 0, self._priced)

    def _autocast(self):
        if self.cfg.train.amp and self.device.type == "cuda":
            # the weight cast cache must be off while capturing (PyTorch's graph notes)
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()

    def _body(self, batch: _Batch) -> None:
        """Forward, loss, backward, clip and optimiser step, reading only fixed buffers."""
        cfg, t = self.cfg, self.cfg.train
        Tp = batch.heldin[0].shape[1] - cfg.model.ic_enc_seq_len
        cd = self.cd_rate if t.cd_rate > 0 else 0.0
        shown, recon_weight = training_inputs(batch.heldin, Tp, cd, t.sv_rate, batch.sv)
        with self._autocast():
            extra = {"session": batch.session} if cfg.model.sessions else {}  # stitched
            if batch.silenced is not None:  # recorded interventions
                extra["silenced"] = batch.silenced
            out = self.model(shown, batch.ext, sample=True, **extra)
            terms = compute_loss(out, batch.heldin, batch.heldout, cfg.loss, 0,
                                 recon_weight=recon_weight,
                                 weights=dict(zip(WEIGHT_NAMES, self.weights.unbind())),
                                 drive_norms=self._priced)
        values = terms.scalar_tensors()
        if self._names is None:
            self._names = list(values)
            self._sums = torch.zeros(len(values), device=self.device, dtype=torch.float64)
            self._bad = torch.zeros(len(values), device=self.device, dtype=torch.bool)
        stacked = torch.stack(list(values.values())).to(torch.float64)
        self._sums.add_(stacked, alpha=float(batch.idx.numel()))
        bad = ~torch.isfinite(stacked)  # on the device: no host sync per step
        self._bad.logical_or_(bad & ~self._bad.any())
        terms.total.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.optimizer.step()
