"""Fitted models for the Python API: `fit` trains one (what `mrlfads train` runs), `load`
opens a checkpoint or a registered model (what `mrlfads infer` and `perturb` open), and a
`Model` infers and perturbs."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrlfads.training.api.infer import DEFAULT_SAMPLES

if TYPE_CHECKING:
    from mrlfads.training.api.datasets import Dataset
    from mrlfads.training.api.infer import Inference
    from mrlfads.training.api.perturb import Perturbed


class Model:
    """A fitted MR-LFADS model with the run config it was trained under.

    ``module`` is the torch model (``mrlfads.model.MRLFADS``, in eval mode), ``config`` the
    ``mrlfads.training.config.RunConfig``, ``manifest`` the training data's ``dataset.json`` as a
    dict, ``source`` where it was loaded from (a checkpoint path or ``models:/NAME@ALIAS``).
    Models from `fit` also carry ``history`` (one metrics dict per epoch), ``out`` (the run
    directory) and ``run_id`` (the MLflow run, when tracked)."""

    def __init__(self, module: Any, config: Any, manifest: Mapping[str, Any], source: str,
                 *, history: list[dict[str, float]] | None = None, out: Path | None = None,
                 run_id: str | None = None) -> None:
        self.module, self.config, self.manifest, self.source = module, config, dict(manifest), source
        self.history = list(history or [])
        self.out, self.run_id = out, run_id

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(self.config.model.region_names)

    def infer(self, dataset: Dataset | str | os.PathLike, *, samples: int = DEFAULT_SAMPLES,
              splits: str | Iterable[str] = "all", seed: int = 0, device: str = "auto",
              out: str | os.PathLike | None = None, overwrite: bool = False) -> Inference:
        """Rates, factors, inferred inputs and messages of every trial of ``splits``, the
        effectome and the metrics (training/api/infer.py); written to ``out`` if given."""
        from mrlfads.training.api.infer import infer

        return infer(self, dataset, samples=samples, splits=splits, seed=seed, device=device,
                     out=out, overwrite=overwrite)

    def perturb(self, dataset: Dataset | str | os.PathLike, *,
                window: str | tuple[int, int], silence: str | None = None,
                cut: str | None = None, silence_inputs: str | None = None,
                channels: str | Iterable[int] | None = None, split: str = "valid",
                device: str = "auto", out: str | os.PathLike | None = None,
                overwrite: bool = False) -> Perturbed:
        """Predicted effect on every neuron of silencing a region's messages (``silence``),
        one pathway (``cut="SRC->DST"``) or a region's inferred inputs (``silence_inputs``)
        over trial bins ``window`` (training/api/perturb.py); written to ``out`` if given."""
        from mrlfads.training.api.perturb import perturb

        return perturb(self, dataset, window=window, silence=silence, cut=cut,
                       silence_inputs=silence_inputs, channels=channels, split=split,
                       device=device, out=out, overwrite=overwrite)

    def __repr__(self) -> str:
        cfg = self.config.model
        return (f"Model({self.source!r}: regions {list(self.regions)}, {cfg.obs_model}, "
                f"com_dim {cfg.com_dim}, co_dim {cfg.co_dim if cfg.inferred_inputs else 0})")


def load(source: str | os.PathLike, *, tracking_uri: str | None = None) -> Model:
    """A model from a checkpoint file, a run directory (its ``best.pt``) or a registered
    model ``models:/NAME@ALIAS`` (downloaded from MLflow at ``tracking_uri``)."""
    from mrlfads.files import BEST
    from mrlfads.training.checkpoint import load_model
    from mrlfads.training.config import RunConfig

    source = os.fspath(source)
    path = source
    if source.startswith("models:/"):
        from mrlfads.tracking.registry import download_checkpoint

        path = str(download_checkpoint(source, tracking_uri=tracking_uri))
    elif os.path.isdir(source):
        path = os.path.join(source, BEST)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{source} is a directory without {BEST}: pass a checkpoint "
                                    f"file or a run directory of `mrlfads train`")
    module, run_cfg, manifest = load_model(path)
    return Model(module, RunConfig.from_dict(run_cfg), manifest, source)


def _log_figures(tracker: Any, trainer: Any, dataset: Any, out: Path) -> None:
    """The model's figures on the run, as the sweep logs each trial's. They come after the
    training, which is done and saved: a figure that fails (a plotting library's bug, a
    disk that filled) is named in a warning and does not fail the run, whose checkpoint is
    still logged for `mrlfads promote --run`."""
    from mrlfads.tracking.redact import redact_text
    from mrlfads.training.report_figures import log_model_figures

    try:
        log_model_figures(tracker.log_artifact, trainer.model, dataset, trainer.cfg)
    except Exception as exc:  # noqa: BLE001 - figures are an extra; the run is complete
        print(f"warning: the run's figures were not logged ({type(exc).__name__}: "
              f"{redact_text(str(exc))}); "
              f"training is complete and saved in {out}; `mrlfads report {out}` draws them",
              file=sys.stderr)


def fit(dataset: Dataset | str | os.PathLike, *, config: str | os.PathLike | Mapping | None = None,
        out: str | os.PathLike = "runs/train",
        overrides: Mapping[str, Any] | Iterable[str] | None = None,
        epochs: int | None = None, device: str | None = None, resume: bool = False,
        smoke_test: bool = False, tracking: bool = True, tracking_uri: str | None = None,
        experiment: str = "mrlfads-train", progress: bool = True) -> Model:
    """Train one model on ``dataset`` into the run directory ``out`` and return its best
    checkpoint (best.pt: the lowest smoothed objective after every KL/L2 ramp ended).

    ``config`` is a YAML file or a dict with optional model/loss/train/data sections;
    ``overrides`` set single fields, ``{"train.lr": 1e-3}`` or ``["train.lr=1e-3"]``
    (docs/API.md). ``epochs`` stretches the default ramps to fit; ``resume`` continues
    ``out/last.pt`` under its saved config. ``tracking`` logs the run to MLflow. Training
    ends early once ``train.patience`` epochs after the ramps bring no new best.
    A NaN or inf loss raises ``mrlfads.training.loop.NonFiniteLossError`` naming the checkpoint
    to resume from."""
    from mrlfads.files import BEST, LAST
    from mrlfads.training import checkpoint as ckpt
    from mrlfads.training.api.datasets import open_dataset
    from mrlfads.training.config import RunConfig, fit_ramps, load_config_file
    from mrlfads.training.fit import fit as train_epochs
    from mrlfads.training.loop import Trainer
    from mrlfads.training.smoothing import report_after_training
    from mrlfads.training.tracking_glue import open_run_tracker, save_run_id

    data = open_dataset(dataset)
    sets = _overrides(overrides)
    if device:
        sets["train.device"] = device
    if epochs is not None:
        sets["train.epochs"] = epochs
    out = Path(out)
    if resume:
        # a resumed run keeps its own config (sizes, ramps); only overrides / epochs change it
        state = ckpt.load(out / LAST)
        saved = ckpt.run_config(state, out / LAST)
        done = state.get("epoch")
        if epochs is not None and isinstance(done, int) and epochs <= done:
            raise ValueError(f"--epochs {epochs}: the run in {out} has already trained "
                             f"{done} epochs; pass more than {done} to continue it")
        cfg = fit_ramps(saved.with_overrides(sets), explicit=True)
        if config is not None:
            print(f"note: --resume keeps the config saved in {out / LAST}; --config is ignored "
                  "(use --set PATH=VALUE to change a field)")
        trainer = Trainer.from_checkpoint(out / LAST, data.arrow, run_cfg=cfg)
        print(f"resuming {out / LAST} at epoch {trainer.epoch}")
    else:
        if (out / LAST).exists():
            raise ValueError(f"{out} already holds a run (last.pt): pass --resume to continue it "
                             "or choose another --out")
        user = dict(config) if isinstance(config, Mapping) else load_config_file(config)
        cfg = RunConfig.for_dataset(data.manifest, uri=data.uri, user=user, overrides=sets,
                                    smoke_test=smoke_test)
        trainer = Trainer(cfg, data.arrow)
    tracker = open_run_tracker(experiment, out.name, cfg, data.manifest, tracking_uri, out,
                               resume=resume) if tracking else None
    status, run_id = "FINISHED", None
    try:
        train_epochs(trainer, out, tracker=tracker, progress=progress)
        report_after_training(data.arrow, trainer.cfg, trainer.history,
                              {trainer.cfg.data.train_split: trainer.train_data,
                               trainer.cfg.data.valid_split: trainer.valid_data}, tracker)
        if tracker is not None:
            _log_figures(tracker, trainer, data.arrow, out)
            if (out / BEST).is_file():  # what `mrlfads promote --run` registers
                from mrlfads.tracking.registry import log_run_checkpoint

                log_run_checkpoint(tracker.log_artifact, out / BEST)
                run_id = tracker.active_run_id
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        if tracker is not None:
            save_run_id(tracker, out)  # the real id, if the run was created during an outage
            tracker.end_run(status=status)
    model = load(out / BEST) if (out / BEST).is_file() else load(out / LAST)
    model.history, model.out, model.run_id = list(trainer.history), out, run_id
    return model


def _overrides(overrides: Mapping[str, Any] | Iterable[str] | None) -> dict[str, Any]:
    """``{"train.lr": 1e-3}`` as given; ``["train.lr=1e-3"]`` read as YAML 1.2, like --set."""
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    from mrlfads.training.yaml12 import parse_sets

    if isinstance(overrides, str):
        overrides = [overrides]
    return parse_sets(list(overrides))
