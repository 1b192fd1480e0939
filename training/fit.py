"""`mrlfads train` without the CLI: a run directory, checkpoints, metrics and a progress bar.

Run directory layout:
  config.yaml      the resolved run config (what to pass back with --config to repeat it)
  metrics.jsonl    one JSON object per finished epoch
  last.pt          the newest checkpoint (every epoch)
  best.pt          the checkpoint with the lowest smoothed objective so far, among epochs
                   where every KL/L2 ramp had finished (earlier epochs optimise another
                   objective: a model from before the message bottleneck acts can look
                   better on held-out data while its communication is wrong)

Training ends early once ``train.patience`` epochs after the ramps bring no new best.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mrlfads.atomic import write_atomic
from mrlfads.files import BEST, LAST
from mrlfads.ramps import selectable
from mrlfads.training import faults
from mrlfads.training.loop import NonFiniteLossError, Trainer

METRICS = "metrics.jsonl"
CONFIG = "config.yaml"


def fit(
    trainer: Trainer,
    out_dir: str | os.PathLike,
    *,
    epochs: int | None = None,
    tracker: Any = None,
    progress: bool = True,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> dict[str, float]:
    """Train until ``epochs`` (default: the config's) are done, or until ``train.patience``
    epochs pass without a new best (then a line says so, and the tracker gets the tag
    ``mrlfads.stopped_early``); returns the last metrics.

    Resumable: a trainer restored from ``last.pt`` continues where it stopped, and the
    metrics file is truncated to the restored epoch so no epoch is written twice.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = epochs if epochs is not None else trainer.cfg.train.epochs
    write_atomic(out / CONFIG, yaml.safe_dump(trainer.cfg.to_dict(), sort_keys=False))
    write_atomic(out / METRICS, "".join(json.dumps(m) + "\n" for m in trainer.history))
    metrics: dict[str, float] = trainer.history[-1] if trainer.history else {}
    # a log file gets lines, not a bar's last frame; a notebook draws the bar itself
    lines = _LogLines(total) if progress and not _draws_live() else None
    bar = _progress(progress and lines is None)
    fault = faults.epoch_hook(out)  # None unless MRLFADS_FAULT asks (fault tests)
    patience = trainer.cfg.train.patience
    with bar:
        task = bar.add_task("training", total=total, completed=trainer.epoch, status="")
        while trainer.epoch < total and not stale(trainer.history, patience):
            if fault is not None:
                fault(trainer.epoch + 1)
            try:
                metrics = trainer.run_epoch()
            except NonFiniteLossError as exc:
                raise NonFiniteLossError(_where_to_go_on(exc, trainer, out)) from None
            trainer.save_checkpoint(out / LAST)
            if epochs_since_best(trainer.history) == (trainer.epoch, 0):  # a new best
                trainer.save_checkpoint(out / BEST)
            with open(out / METRICS, "a") as fh:
                fh.write(json.dumps(metrics) + "\n")
            if tracker is not None:  # NaN placeholders (e.g. the cut effectome pre-ramp) skipped
                tracker.log_metrics({k: v for k, v in metrics.items() if not math.isnan(v)},
                                    step=int(metrics["epoch"]))
            if on_epoch is not None:
                on_epoch(metrics)
            bar.update(task, completed=trainer.epoch, status=_status(metrics))
            if lines is not None:
                lines.epoch_done(trainer.epoch, metrics, epochs_since_best(trainer.history)[0],
                                 last=trainer.epoch >= total or stale(trainer.history, patience))
    if trainer.epoch < total and stale(trainer.history, patience):
        best_epoch, _ = epochs_since_best(trainer.history)
        note = (f"stopped at epoch {trainer.epoch} of {total}: no better objective in the "
                f"{patience} epochs since epoch {best_epoch}, which best.pt holds "
                "(train.patience; 0 trains every epoch)")
        print(note, flush=True)
        if tracker is not None:
            tracker.set_tags({"mrlfads.stopped_early": note})
    return metrics


def epochs_since_best(history: list[dict[str, float]]) -> tuple[int | None, int]:
    """The epoch best.pt holds (the lowest smoothed objective among epochs after the ramps,
    the later one on a tie: `fit` saves best.pt by this rule) and the epochs trained since;
    (None, 0) before the ramps end."""
    best, best_epoch = math.inf, None
    for m in history:
        if selectable(m) and m["objective"] <= best:
            best, best_epoch = m["objective"], int(m["epoch"])
    if best_epoch is None:
        return None, 0
    return best_epoch, int(history[-1]["epoch"]) - best_epoch


def stale(history: list[dict[str, float]], patience: int) -> bool:
    """Whether ``patience`` (> 0) epochs have passed since the one best.pt holds."""
    return patience > 0 and epochs_since_best(history)[1] >= patience


def _where_to_go_on(exc: Exception, trainer: Trainer, out: Path) -> str:
    """The loop's message plus a checkpoint that exists and a learning rate to try: a
    lower one is the usual cure (a quarter of the optimiser's, as a start)."""
    lower = f"--set train.lr={trainer.lr / 4:.2g} (the optimiser was at lr {trainer.lr:.2g})"
    if trainer.epoch > 0 and (out / LAST).is_file():  # written after every epoch
        return (f"{exc} Last good checkpoint (epoch {trainer.epoch}): {out / LAST}. Continue "
                f"from it with a lower learning rate (the usual cure): --resume {lower}.")
    return (f"{exc} {out} holds no checkpoint of this run to continue from: start again with "
            f"a lower learning rate (the usual cure), e.g. {lower}.")


def _status(m: dict[str, float]) -> str:
    return (f"loss {m['train/loss']:.3g}  valid elbo {m['valid/elbo']:.4g}  "
            f"objective {m['objective']:.4g}  lr {m['lr']:.2g}")


class _LogLines:
    """Progress as plain lines, for output that is not a terminal (a log file, a batch job),
    where a live bar shows nothing until the run ends: the first epoch, then at most one
    line every ``every_s`` seconds, and the last epoch."""

    def __init__(self, total: int, every_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.every_s, self.clock = total, every_s, clock
        self.start = clock()
        self.last_line: float | None = None

    def epoch_done(self, epoch: int, m: dict[str, float], best: int | None,
                   last: bool) -> None:
        """``best``: the epoch best.pt holds (None before the ramps end)."""
        now = self.clock()
        if not last and self.last_line is not None and now - self.last_line < self.every_s:
            return
        self.last_line = now
        minutes, seconds = divmod(int(now - self.start), 60)
        held = "none before the ramps end" if best is None else f"epoch {best}"
        print(f"epoch {epoch}/{self.total} ({minutes}:{seconds:02d}): {_status(m)}  "
              f"best.pt: {held}", flush=True)


def _draws_live() -> bool:
    """Whether rich can draw a live bar where the output goes (a terminal or a notebook)."""
    from rich import get_console

    console = get_console()
    return console.is_terminal or console.is_jupyter


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
        disable=not enabled or bool(os.environ.get("TQDM_DISABLE")),
    )
