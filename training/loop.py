"""The explicit training loop: one Trainer owns model, optimiser, schedule, RNG and history.

No trainer framework: PBT needs exact control of what a checkpoint restores (weights,
optimiser moments, scheduler, RNG, smoothed objective) and of what is re-applied after a
restore (the trial's own learning rate, KL/L2 weights and dropout). Ray never appears here;
the Tune trainable and `mrlfads train` drive the same ``run_epoch``.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Mapping

import numpy as np
import torch

from mrlfads.config_utils import ConfigError
from mrlfads.data_loaders.reader import ArrowDataset
from mrlfads.metrics import EMA
from mrlfads.model import MRLFADS
from mrlfads.ramps import RAMPS_DONE
from mrlfads.training import checkpoint as ckpt
from mrlfads.training.config import RunConfig, check_against_data
from mrlfads.training.data import SplitTensors, load_split
from mrlfads.training.evaluate import cut_effectome_metrics, evaluate_split
from mrlfads.training.masks import sample_validation_hidden
from mrlfads.training.objective import resolve_objective, unprotected_warning
from mrlfads.training.step import TrainStep, wants_graph

# Hyperparameters that may change mid-run (PBT); everything else is fixed at build time.
# train.cd_rate only changes how a training step masks its inputs; train.sv_rate is not
# here: it fixes which data elements are validation data.
MUTABLE_PREFIXES = ("train.lr", "train.grad_clip", "train.weight_decay", "train.cd_rate",
                    "model.dropout", "loss.")


class UnprotectedObjectiveWarning(UserWarning):
    """The run is selected on a score a model copying its input can win."""


class NonFiniteLossError(RuntimeError):
    """The loss went NaN/inf; the message names the epoch and the terms. The epoch does not
    count (``Trainer.epoch`` stays), but its earlier steps may have changed the weights:
    restore a checkpoint to go on."""


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``auto`` picks CUDA when present; anything else is taken as given."""
    if isinstance(name, torch.device):
        return name
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA device is visible: use cpu or auto")
    return torch.device(name)


class Trainer:
    """Train one MR-LFADS model on one dataset, epoch by epoch; see docs/DESIGN.md."""

    def __init__(self, run_cfg: RunConfig, dataset: ArrowDataset, device: Any = None) -> None:
        check_against_data(run_cfg, dataset.manifest)
        self.cfg = run_cfg
        self.dataset = dataset
        self.device = resolve_device(device if device is not None else run_cfg.train.device)
        if run_cfg.train.threads > 0:
            torch.set_num_threads(run_cfg.train.threads)
        torch.manual_seed(run_cfg.train.seed)
        np.random.seed(run_cfg.train.seed)
        self._train: SplitTensors | None = None
        self._valid: SplitTensors | None = None
        # data first: its shapes and values are checked against the manifest before a model
        # sized from that manifest is allocated
        train = self.train_data
        self.model = MRLFADS(run_cfg.model).to(self.device)
        stats = train.neuron_stats(
            counts=run_cfg.model.obs_model == "poisson",
            recorded=(self.model.session_recorded, self.model.session_recorded_heldout))
        # readouts, input scales and message baselines from the data (a restore overwrites)
        self.model.init_from_data(*stats)
        if run_cfg.model.sessions:  # every session's read-in starts in one latent space
            self.model.init_readin_across_sessions(
                train.trial_averages(self.model.session_recorded))
        t = run_cfg.train
        graph = wants_graph(t.cuda_graph, self.device)
        # capturable: AdamW's step counts stay on the device, as a captured graph needs
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps,
            weight_decay=t.weight_decay, capturable=graph,
        )
        # the step owns lr, ramp weights and cd rate as tensors (training/step.py)
        self.step = TrainStep(self.model, self.optimizer, run_cfg, self.device, graph)
        self.scheduler = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode="min", factor=t.plateau_factor,
                patience=t.plateau_patience, min_lr=t.plateau_min_lr)
            if t.lr_plateau else None
        )
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.smoother = EMA(1.0 - t.smoothing)
        self.best_objective = math.inf
        self.hparams: dict[str, float] = {}
        self._sv_hidden: dict[str, list[torch.Tensor]] = {}  # split -> sample-validation masks
        warning = unprotected_warning(resolve_objective(run_cfg))
        if warning:
            warnings.warn(warning, UnprotectedObjectiveWarning, stacklevel=2)

    # ------------------------------------------------------------------ data
    @property
    def train_data(self) -> SplitTensors:
        if self._train is None:
            self._train = load_split(self.dataset, self.cfg.data.train_split, self.device)
        return self._train

    @property
    def valid_data(self) -> SplitTensors:
        if self._valid is None:
            self._valid = load_split(self.dataset, self.cfg.data.valid_split, self.device,
                                     with_truth=True)
        return self._valid

    def sv_hidden(self, data: SplitTensors) -> list[torch.Tensor] | None:
        """The split's sample-validation masks (training/masks.py), drawn once; None
        without sample validation."""
        if self.cfg.train.sv_rate <= 0:
            return None
        if data.split not in self._sv_hidden:
            Tp = data.heldin[0].shape[1] - self.cfg.model.ic_enc_seq_len
            self._sv_hidden[data.split] = sample_validation_hidden(
                data.trial_id, [x.shape[-1] for x in data.heldin], Tp,
                self.cfg.train.sv_rate, self.device)
        return self._sv_hidden[data.split]

    # ------------------------------------------------------------------ hyperparameters
    def apply_hparams(self, hparams: Mapping[str, Any]) -> None:
        """Write a trial's own hyperparameters into config, optimiser and model.

        Called after any checkpoint restore: the restored optimiser state carries the
        donor's learning rate, which must not survive an exploit (the AutoLFADS bug).
        """
        bad = [p for p in hparams if not p.startswith(MUTABLE_PREFIXES)]
        if bad:
            raise ConfigError(
                f"hyperparameters {bad} cannot change during training; only paths starting "
                f"with {MUTABLE_PREFIXES} can (search the others with optuna.yaml)")
        self.cfg = self.cfg.with_overrides(hparams)
        self._sync_from_config()
        self.hparams.update({k: float(v) for k, v in hparams.items()})

    def _sync_from_config(self) -> None:
        """Config -> live objects: lr and weight decay into every param group, dropout."""
        t = self.cfg.train
        self.step.set_lr(t.lr)
        for group in self.optimizer.param_groups:
            group["weight_decay"] = t.weight_decay
        self.model.set_dropout(self.cfg.model.dropout)
        self.step.set_config(self.cfg)

    @property
    def lr(self) -> float:
        return self.step.lr_value()

    # ------------------------------------------------------------------ epochs
    def train_one_epoch(self) -> dict[str, float]:
        """One pass over the training split in a seeded order; returns mean loss terms.

        Steps run through ``self.step`` (eager, or replayed CUDA graphs); a non-finite step
        shows in the epoch's summed terms, read once at the end, and raises then."""
        data, t = self.train_data, self.cfg.train
        gen = torch.Generator().manual_seed(t.seed * 1_000_003 + self.epoch)
        self.model.train()
        sv = self.sv_hidden(data)
        self.step.set_epoch(self.epoch)
        self.step.start_epoch()
        for session, idx in epoch_batches(data, t.batch_size, gen):
            self.step.run(data, idx, sv, session)
        bad = self.step.first_nonfinite()
        if bad:
            raise NonFiniteLossError(_nonfinite_message(self.epoch, dict.fromkeys(bad, math.nan)))
        return self.step.epoch_means()

    def run_epoch(self, cut_effectome: bool = False) -> dict[str, float]:
        """Train one epoch, validate with posterior means, update schedule and history.

        The cut effectome (one forward pass per pathway: 40% of an epoch's time with 4
        regions) is computed only after the ramps, and there only where its value is read:
        an epoch that improves the smoothed objective (best.pt may hold it), the last epoch,
        every ``train.cut_effectome_every`` epochs, and when ``cut_effectome`` asks (a
        sweep's checkpoints). Its keys are NaN in the other epochs."""
        train_terms = self.train_one_epoch()
        ramps_done = self.epoch >= self.cfg.loss.ramps_end
        comm, effects = self.dataset.manifest.comm_matrix, self.dataset.manifest.cut_effects
        metrics = evaluate_split(self.model, self.valid_data, self.cfg, self.epoch,
                                 comm_matrix=comm, sv_hidden=self.sv_hidden(self.valid_data),
                                 cut_effects=effects)
        for key in ("loss", "elbo", "recon_loss", "heldout_loss"):
            metrics[f"train/{key}"] = train_terms[key]
        raw = metrics[resolve_objective(self.cfg).metric]  # training/objective.py
        if not math.isfinite(raw):
            raise NonFiniteLossError(_nonfinite_message(self.epoch, metrics))
        metrics["objective_raw"] = raw
        metrics["objective"] = self.smoother.update(raw)
        every = self.cfg.train.cut_effectome_every
        if ramps_done and (cut_effectome or metrics["objective"] <= self.best_objective
                           or self.epoch + 1 >= self.cfg.train.epochs
                           or (self.epoch + 1) % every == 0):
            metrics.update(cut_effectome_metrics(self.model, self.valid_data, comm,
                                                 cut_effects=effects))
        # 1 once every KL/L2 ramp is at full weight: only such epochs may be selected
        metrics[RAMPS_DONE] = float(ramps_done)
        metrics["lr"] = self.lr
        for path, value in self.hparams.items():
            metrics[f"hp/{path}"] = value
        if self.scheduler is not None:
            self.scheduler.step(metrics["objective"])
        self.epoch += 1
        metrics["epoch"] = float(self.epoch)
        if metrics[RAMPS_DONE]:
            self.best_objective = min(self.best_objective, metrics["objective"])
        self.history.append(metrics)
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "run_config": self.cfg.to_dict(),
            "manifest": self.dataset.manifest.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": _float_lr(self.optimizer.state_dict(), self.lr),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": ckpt.rng_state(),
            "epoch": self.epoch,
            "history": self.history,
            "smoother": self.smoother.state_dict(),
            "best_objective": self.best_objective,
            "hparams": dict(self.hparams),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step.adopt_loaded_optimizer()  # this run's lr tensor and capturable flag
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.smoother.load_state_dict(state["smoother"])
        self.best_objective = float(state["best_objective"])
        self.hparams = dict(state.get("hparams", {}))

    def save_checkpoint(self, path) -> None:
        ckpt.save(self.state_dict(), path)

    @classmethod
    def from_checkpoint(cls, path, dataset: ArrowDataset, device: Any = None,
                        run_cfg: RunConfig | None = None) -> "Trainer":
        """Rebuild from a checkpoint; ``run_cfg`` (e.g. a trial's own) replaces the saved one."""
        state = ckpt.load(path, map_location="cpu")
        cfg = run_cfg or ckpt.run_config(state, path)
        trainer = cls(cfg, dataset, device=device)
        with ckpt.restoring(path):
            trainer.load_state_dict(state)
        if run_cfg is not None:
            # the restored param groups carry the saved lr: put this run's own back.
            trainer._sync_from_config()
        return trainer


def epoch_batches(data: SplitTensors, batch_size: int, gen: torch.Generator
                  ) -> list[tuple[int, torch.Tensor]]:
    """One epoch's batches as ``(session, trial indices)``, in a seeded order. One session:
    a permutation cut into batches (the last one partial). Several: each session's trials
    permuted and cut on their own (every batch is one session's), the batches then in a
    random order, so sessions mix across batches and every trial is seen once."""
    if data.session is None:
        order = torch.randperm(data.n_trials, generator=gen).to(data.heldin[0].device)
        return [(0, order[i:i + batch_size]) for i in range(0, data.n_trials, batch_size)]
    batches = []
    for session, rows in data.session_groups():
        perm = rows[torch.randperm(rows.numel(), generator=gen).to(rows.device)]
        batches += [(session, perm[i:i + batch_size]) for i in range(0, perm.numel(), batch_size)]
    order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in order]


def _float_lr(state: dict[str, Any], lr: float) -> dict[str, Any]:
    """An optimiser state dict with each group's lr the float ``lr`` (the live one is the
    step's tensor, shared by every group): checkpoints keep the format they had."""
    groups = [{**g, "lr": lr} for g in state["param_groups"]]
    return {**state, "param_groups": groups}


def _nonfinite_message(epoch: int, scalars: Mapping[str, float]) -> str:
    """Names the epoch (1-based, as metrics.jsonl counts: ``epoch`` epochs had finished)
    and the non-finite terms, per-region ones (``kl_com/B``) before the sums they spoil.
    Where to go on from is the caller's to say (training/fit.py, training/trainable.py)."""
    bad = sorted((k for k, v in scalars.items() if not math.isfinite(v)),
                 key=lambda k: ("/" not in k.removeprefix("valid/"), k))
    what = "validation loss" if bad and all(k.startswith("valid/") for k in bad) else "loss"
    return (f"the {what} became non-finite in epoch {epoch + 1} "
            f"(non-finite terms: {', '.join(bad) or 'total'}).")
