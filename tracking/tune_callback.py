"""Ray Tune -> MLflow: one parent run per sweep, one child run per trial across PBT restarts.

Why not Ray's MLflowLoggerCallback: it re-logs an exploited trial's changed config as params
(MLflow refuses: the sweep aborts), and ``setup_mlflow`` makes a new run per restart. Here:
- runs are keyed by trial id (a restarted/exploited trial keeps its run; steps may rewind);
- the trial's starting config is logged once as params; every searched hyperparameter is a
  step metric ``hp/<path>``, so PBT's changes show as curves;
- an exploit is detected when the config a result was produced with (``result["config"]``)
  differs from the previous one; the donor comes from PBT's policy file. Each event goes
  to the trial as a tag, metrics (``pbt/exploit``, ``pbt/n_exploits``) and ``pbt/exploits.json``;
- a trial that restarted after a non-finite loss (training/trainable.py) reports
  ``nonfinite/events``: each event becomes a tag ``mrlfads.nonfinite.<n>`` and goes to
  ``nonfinite/events.json``; ``hp/*`` curves show the values the trial really ran with;
- a trial that runs again from an earlier checkpoint (Tune's retry after its process died,
  or ``mrlfads sweep --resume`` after the driver died) logs the replayed epochs a second
  time (MLflow keeps both values; the later is the trial's) and gets a tag
  ``mrlfads.restart.<n>`` ``{"epoch": last logged, "resumed_at": first replayed}``; an
  exploit of the lost epochs is marked ``"superseded"`` and leaves the lineage;
- a resumed sweep re-opens its runs and reads back what the dead driver recorded (last
  metrics, failures, exploit, non-finite and restart events, ``hp/*`` curves), so its
  events number on and its summary counts the trials that ended before the driver died;
  a trial Tune restores as ended (ERROR or TERMINATED) gets its run ended as it did;
- a trial that ends in error ends its run FAILED with tags ``mrlfads.error_cause`` (the
  exception line) and ``mrlfads.error`` (the traceback's tail), and ``error.txt`` (all of it);
- at the end the parent run gets the best trial (``mrlfads.ramps.best_trial`` over the
  trials that did not fail, as the sweep summary picks it), its lineage (``lineage.json``
  and a graph of the population's exploits) and the hyperparameter trajectories (PNGs);
- when a trial ends, its figures: ``trial_figures(checkpoint, folder)`` when given
  (training/report_figures.py's ``checkpoint_figures``: the model's figures), else the
  effectome from its metrics.
Each trial's writes go through its own tracker with an outbox in the trial dir.
"""
from __future__ import annotations

import json
import logging
import math
import numbers
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.logger import LoggerCallback

from mrlfads.config_utils import to_dict
from mrlfads.ramps import best_trial
from mrlfads.scratch import scratch_dir
from mrlfads.search_spaces.tune_state import STOP_REQUESTED
from mrlfads.tracking import figures
from mrlfads.tracking.inputs import dataset_input
from mrlfads.tracking.interface import Tracker, flatten
from mrlfads.tracking.lineage import changed, last_policy_line, lineage, orig_tag
from mrlfads.tracking.redact import redact_text, redact_uri, same_store_from_env
from mrlfads.tracking.revision import revision_tags
from mrlfads.tracking.shareable import (
    DIGEST_PARAM,
    contract_home,
    home_relative,
    manifest_digest,
    shared_manifest,
    shared_run_config,
    shared_uri,
)
from mrlfads.tracking.tags import CHECKPOINT, METRIC, MODE, ROLE, SWEEP, SWEEP_STATE, TRIAL_ID

log = logging.getLogger(__name__)
OUTBOX_NAME = "tracking-outbox.jsonl"
# Ray bookkeeping that is not worth a metric curve.
_SKIP = {"config", "trial_id", "date", "hostname", "node_ip", "pid", "timestamp", "done",
         "experiment_tag", "should_checkpoint", "checkpoint_dir_name", "experiment_id"}
_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. :/]")
EXPLOIT_TAG, NONFINITE_TAG, RESTART_TAG = "pbt.exploit.", "mrlfads.nonfinite.", "mrlfads.restart."


def metric_key(key: str) -> str:
    """MLflow allows letters, digits, ``_-. :/``; ``src->dst`` becomes ``src_to_dst``."""
    return _BAD_KEY.sub("_", key.replace("->", "_to_"))


def _safe(hook):
    """A tracking problem is logged, never raised into Tune (it would abort the sweep)."""
    import functools

    @functools.wraps(hook)
    def wrapper(self, *args, **kwargs):
        try:
            return hook(self, *args, **kwargs)
        except Exception as exc:
            log.warning("MLflow tracking: %s failed (%s: %s); the sweep goes on",
                        hook.__name__, type(exc).__name__, redact_text(str(exc)))
            return None
    return wrapper


def _numbered_events(tags: Mapping[str, str], prefix: str) -> list[dict[str, Any]]:
    """The JSON events of tags ``<prefix><n>``, in the order of n."""
    found = []
    for key, value in tags.items():
        n = key[len(prefix):]
        if key.startswith(prefix) and n.isdigit():
            try:
                found.append((int(n), json.loads(value)))
            except ValueError:
                log.warning("MLflow tracking: tag %s is not the JSON event it should be; "
                            "left out of the resumed sweep's record", key)
    return [event for _, event in sorted(found, key=lambda ne: ne[0])]


def _params(flat: Mapping[str, Any]) -> dict[str, str]:
    return {metric_key(k)[:250]: _param_value(_shared(k, v)) for k, v in flat.items()}


def _shared(key: str, value: Any) -> Any:
    """A ``*.uri`` value (the trials' ``run.data.uri``) as a dataset name, never a local path
    (tracking/shareable.py)."""
    return shared_uri(value) if isinstance(value, str) and key.endswith("uri") else value


def _param_value(v: Any) -> str:
    s = json.dumps(v, default=str) if isinstance(v, (list, tuple, dict)) else str(v)
    return s if len(s) <= 500 else s[:497] + "..."


class MlflowTuneCallback(LoggerCallback):
    """Log a Tune sweep to MLflow (see the module docstring).

    ``sweep_info``: what the parent run records (search space, scheduler, dataset manifest,
    resolved config...): each top-level entry becomes ``<name>.json`` and flattened params.
    ``hparams``: the searched hyperparameters as flattened-config paths (dotted), or a mapping
    path -> name (``{"hparams.train.lr": "train.lr"}``) giving metric ``hp/<name>``;
    default: every numeric config leaf under its own path.
    ``regions``/``truth_comm``: for the end-of-trial effectome heatmap.
    ``tracker_factory(outbox_path) -> Tracker``: default MlflowTracker on ``tracking_uri``.
    ``outbox_dir``: a local folder for the parent run's outbox (trials keep theirs in the
    trial dir); without it the parent's writes during an outage live in memory only.
    ``outbox_files``: after the sweep, the outbox files still undelivered (for import-metrics).
    ``dataset``: the data as an MLflow input (``mrlfads.tracking.inputs.dataset_input``), logged on
    the parent run and every trial run.
    ``trial_figures(checkpoint_path, out_dir) -> [png paths]``: draws a finished trial's
    model (its last checkpoint) on the driver; logged under ``figures/`` on its run. A
    failure is logged and the effectome from the metrics drawn instead.
    ``baseline``: metrics of the data alone (``valid/smoothing_co_bps``, the held-out score
    of smoothed spikes: training/smoothing.py), logged on the parent run at step 0.
    """

    def __init__(self, sweep: str, *, tracking_uri: str | None = None, metric: str = "objective",
                 mode: str = "min", sweep_info: Mapping[str, Any] | None = None,
                 hparams: Sequence[str] | Mapping[str, str] | None = None, regions: Sequence[str] | None = None,
                 truth_comm: Sequence[Sequence[float]] | None = None,
                 tracker_factory: Callable[[Path | None], Tracker] | None = None,
                 resume: bool = False, system_metrics: bool = True,
                 outbox_dir: str | os.PathLike | None = None,
                 dataset: Mapping[str, Any] | None = None,
                 trial_figures: Callable[[str, Path], Sequence[Path]] | None = None,
                 baseline: Mapping[str, float] | None = None) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode {mode!r} must be 'min' or 'max'")
        self.sweep, self.tracking_uri, self.metric, self.mode = sweep, tracking_uri, metric, mode
        self.sweep_info = dict(sweep_info or {})
        self.hparams = (dict(hparams) if isinstance(hparams, Mapping) else {h: h for h in hparams}
                        ) if hparams is not None else None
        self.regions, self.truth_comm = (list(regions) if regions else None), truth_comm
        self.tracker_factory, self.resume, self.system_metrics = tracker_factory, resume, system_metrics
        self.outbox_dir = Path(outbox_dir) if outbox_dir is not None else None
        self.outbox_files: list[str] = []
        self.dataset = dict(dataset) if dataset else None
        self.trial_figures = trial_figures
        self.baseline = dict(baseline or {})
        self._reset()

    def _reset(self) -> None:
        self.parent: Tracker | None = None
        self.parent_run_id: str | None = None
        self.trackers: dict[str, Tracker] = {}
        self.run_ids: dict[str, str] = {}
        self.tag_to_trial: dict[str, str] = {}
        self.last_hp: dict[str, dict[str, Any]] = {}
        self.last_step: dict[str, int] = {}
        self.last_metrics: dict[str, dict[str, float]] = {}
        self.failed: set[str] = set()  # trials that ended in error: never the best
        self.hp_history: dict[str, dict[str, list[tuple[int, float]]]] = {}
        self.exploits: dict[str, list[dict[str, Any]]] = {}
        self.nonfinite: dict[str, list[dict[str, Any]]] = {}
        self.restarts: dict[str, list[dict[str, Any]]] = {}
        self.checkpoints: dict[str, tuple[str, int]] = {}  # what each trial's tags name
        self.checkpoint_epochs: dict[str, int] = {}  # checkpoint path -> the epoch it holds
        self.undelivered: list[Tracker] = []  # ended trials whose outbox the store never took
        self.open_restored: set[str] = set()  # restored runs the dead driver never ended
        self._delivery = None
        self._tmp = None

    def __getstate__(self):  # Tune may pickle callbacks with the run config
        state = self.__dict__.copy()
        for key in ("parent", "trackers", "undelivered", "_delivery", "_tmp"):
            state[key] = {} if key == "trackers" else [] if key == "undelivered" else None
        if self.tracking_uri:  # tuner.pkl lands on the sweep's storage: no credentials there
            state["tracking_uri"] = redact_uri(self.tracking_uri)
        return state

    # -- trackers ---------------------------------------------------------------------
    def _new_tracker(self, outbox: Path | None, system_metrics: bool = False) -> Tracker:
        if self.tracker_factory is not None:
            return self.tracker_factory(outbox)
        from mrlfads.tracking.mlflow_tracker import MlflowTracker

        t = MlflowTracker(same_store_from_env(self.tracking_uri), outbox_path=outbox,
                          system_metrics=system_metrics, delivery=self._delivery)
        self._delivery = t.delivery  # one client and one pending-run map for all trackers
        return t

    def _existing_runs(self, **tags: str) -> list:
        """Runs of this sweep carrying ``tags`` (only on MLflow; for ``resume``)."""
        delivery = getattr(self.parent, "delivery", None)
        if delivery is None:
            return []
        try:
            exp = delivery.client.get_experiment_by_name(self.sweep)
            if exp is None:
                return []
            flt = " and ".join(f"tags.`{k.replace('__', '.')}` = '{v}'" for k, v in tags.items())
            return delivery.client.search_runs([exp.experiment_id], flt, order_by=["attributes.start_time DESC"])
        except Exception as exc:
            log.warning("could not look up earlier runs of sweep %s: %s", self.sweep, exc)
            return []

    def setup(self, *args, **kwargs) -> None:
        self._tmp = scratch_dir("mrlfads-tune-")
        self.outbox_files = []
        outbox = self.outbox_dir / OUTBOX_NAME if self.outbox_dir is not None else None
        self.parent = self._new_tracker(outbox, system_metrics=self.system_metrics)
        earlier = self._existing_runs(mrlfads__role="sweep", mrlfads__sweep=self.sweep) if self.resume else []
        tags = {ROLE: "sweep", SWEEP: self.sweep, METRIC: self.metric,
                MODE: self.mode, **revision_tags()}
        self.parent_run_id = self.parent.start_run(
            self.sweep, experiment=self.sweep, tags=tags,
            run_id=earlier[0].info.run_id if earlier else None)
        if earlier:
            for run in self._existing_runs(mlflow__parentRunId=self.parent_run_id):
                tid = run.data.tags.get(TRIAL_ID, "")
                self.run_ids[tid] = run.info.run_id
                self._restore(tid, run)
        params: dict[str, str] = {}
        for name, value in self.sweep_info.items():
            path = self._write(f"{name}.json", value)
            self.parent.log_artifact(str(path), "sweep")
            flat = flatten(value, prefix=f"{name}.") if isinstance(value, Mapping) else {name: value}
            params.update(_params(flat))
        self.parent.log_params(params)
        if self.dataset:
            self.parent.log_input(self.dataset)
        if self.baseline and not earlier:  # a resumed sweep logged them when it began
            self.parent.log_metrics({metric_key(k): v for k, v in self.baseline.items()
                                     if math.isfinite(v)}, step=0)

    def _restore(self, tid: str, run) -> None:
        """What the driver before a ``--resume`` recorded of trial ``tid`` in its run: the
        last epoch and metrics, a failure, the exploit, non-finite and restart events and
        the ``hp/*`` curves. New events then number on after the old ones (never overwrite
        their tags), and the summary counts trials that ended before the driver died."""
        tags, metrics = run.data.tags, dict(run.data.metrics)
        if "epoch" in metrics:
            self.last_step[tid] = int(metrics["epoch"])
            self.last_metrics[tid] = metrics
        if run.info.status == "FAILED":
            self.failed.add(tid)
        elif run.info.status in ("RUNNING", "KILLED"):  # KILLED: by tracking/liveness.py
            self.open_restored.add(tid)
        for prefix, events in ((EXPLOIT_TAG, self.exploits), (NONFINITE_TAG, self.nonfinite),
                               (RESTART_TAG, self.restarts)):
            found = _numbered_events(tags, prefix)
            if found:
                events[tid] = found
        client = self.parent.delivery.client
        for key in metrics:
            if key.startswith("hp/"):
                history = sorted(client.get_metric_history(run.info.run_id, key),
                                 key=lambda m: (m.step, m.timestamp))
                curve: dict[int, float] = {}
                for m in history:  # a replayed epoch: its later value is the trial's
                    curve[int(m.step)] = m.value
                self.hp_history.setdefault(tid, {})[key[3:]] = sorted(curve.items())

    def _write(self, name: str, obj: Any) -> Path:
        path = Path(self._tmp.name, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, indent=2, default=str), encoding="utf-8")
        return path

    # -- trials -----------------------------------------------------------------------
    @_safe
    def log_trial_start(self, trial) -> None:
        tid = trial.trial_id
        self.tag_to_trial[orig_tag(trial.experiment_tag or "")] = tid
        self.open_restored.discard(tid)
        if tid in self.trackers:
            return  # a PBT restart of a trial we already track: same run
        outbox = Path(trial.local_path, OUTBOX_NAME) if trial.local_path else None
        t = self._new_tracker(outbox)
        self.trackers[tid] = t
        config = flatten(to_dict(trial.config or {}))  # the base run is a RunConfig
        self.last_hp[tid] = self._hp(config)
        self.run_ids[tid] = t.start_run(
            str(trial), experiment=self.sweep, parent_run_id=self.parent_run_id,
            run_id=self.run_ids.get(tid),
            tags={ROLE: "trial", SWEEP: self.sweep, TRIAL_ID: tid,
                  "mrlfads.experiment_tag": orig_tag(trial.experiment_tag or "")})
        ds = self.sweep_info.get("dataset")
        digest = ds.get("digest") if isinstance(ds, Mapping) else None
        params = {**_params(config), **({DIGEST_PARAM: digest} if digest else {})}
        # a re-opened run (a resumed sweep) holds the trial's starting config; what exploits
        # changed since is in its hp/* curves, and MLflow refuses to change a param
        held = getattr(t, "logged_params", {})
        t.log_params({k: v for k, v in params.items() if k not in held})
        if self.dataset:
            t.log_input(self.dataset)

    def _hp(self, flat_config: Mapping[str, Any]) -> dict[str, float]:
        names = self.hparams if self.hparams is not None else {
            k: k for k, v in flat_config.items() if isinstance(v, numbers.Real) and not isinstance(v, bool)}
        return {name: float(flat_config[path]) for path, name in names.items() if path in flat_config}

    @_safe
    def log_trial_result(self, iteration: int, trial, result: Mapping[str, Any]) -> None:
        tid = trial.trial_id
        if tid not in self.trackers:
            self.log_trial_start(trial)
        t = self.trackers[tid]
        step = int(result.get("epoch", result.get("training_iteration", iteration)))
        hp = self._hp(flatten(to_dict(result.get("config") or trial.config or {})))
        last = self.last_step.get(tid)
        if last is not None and step <= last and hp == self.last_hp.get(tid):
            self._restart(tid, t, last, step)
        metrics = {metric_key(k): float(v) for k, v in result.items()
                   if k not in _SKIP and isinstance(v, numbers.Real) and not isinstance(v, bool)
                   and math.isfinite(float(v))}
        for k, v in hp.items():
            # the trial's own hp/* (after a non-finite restart it runs other values than
            # the config Tune holds) win over the config's
            v = metrics.setdefault(metric_key(f"hp/{k}"), v)
            self.hp_history.setdefault(tid, {}).setdefault(k, []).append((step, v))
        if self.last_hp.get(tid) and hp != self.last_hp[tid] and tid in self.last_step:
            metrics.update(self._exploit(trial, t, self.last_hp[tid], hp, step))
        self.last_hp[tid], self.last_step[tid] = hp, step
        # each key's latest finite value, as the MLflow run holds it (and _restore reads it):
        # the cut effectome is not computed every epoch (training/loop.py, run_epoch)
        self.last_metrics[tid] = {**self.last_metrics.get(tid, {}), **metrics}
        t.log_metrics(metrics, step=step)
        if result.get("nonfinite/events"):
            self._nonfinite(tid, t, result["nonfinite/events"])
        # the result that carried a checkpoint names its folder (Ray's checkpoint_dir_name)
        folder, trial_path = result.get("checkpoint_dir_name"), getattr(trial, "path", None)
        if folder and trial_path:
            self.checkpoint_epochs[os.path.normpath(os.path.join(str(trial_path), str(folder)))] = step
        # a checkpoint not seen with a result is one the trial (re)started from (a resumed
        # sweep's): it holds the epoch before the first one run from it
        self._note_checkpoint(trial, t, step - 1)

    def _restart(self, tid: str, t: Tracker, last: int, step: int) -> None:
        """The trial runs again from an earlier checkpoint: epochs ``step..last`` are logged
        a second time (the later values are the trial's). Its exploits whose first epoch
        came after ``step`` were lost with those epochs: marked superseded, out of the
        lineage; its ``hp/*`` curve for the summary drops the lost epochs."""
        event = {"epoch": last, "resumed_at": step}
        events = self.restarts.setdefault(tid, [])
        events.append(event)
        tags = {f"{RESTART_TAG}{len(events)}": json.dumps(event)}
        exploits = self.exploits.get(tid, [])
        for n, e in enumerate(exploits, 1):
            if not e.get("superseded") and e.get("resumed_at", 0) > step:
                e["superseded"] = True
                tags[f"{EXPLOIT_TAG}{n}"] = json.dumps(e, default=str)
        t.set_tags(tags)
        if len(tags) > 1:
            t.log_artifact(str(self._write(f"{tid}/exploits.json", exploits)), "pbt")
        for curve in self.hp_history.get(tid, {}).values():
            curve[:] = [(s, v) for s, v in curve if s < step]
        log.info("trial %s runs again from epoch %s (it had logged up to %s)", tid, step, last)

    def _nonfinite(self, tid: str, t: Tracker, text: str) -> None:
        """Restarts after a non-finite loss: one tag per event and the list as JSON."""
        events = self.nonfinite.setdefault(tid, [])
        for event in json.loads(text):
            events.append(event)
            t.set_tags({f"{NONFINITE_TAG}{event.get('restart', len(events))}":
                        json.dumps(event, default=str)[:5000]})
            log.warning("trial %s: non-finite loss in epoch %s; restarted from %s with %s",
                        tid, event.get("epoch"), event.get("from"), event.get("new"))
        t.log_artifact(str(self._write(f"{tid}/nonfinite/events.json", events)), "nonfinite")

    def _exploit(self, trial, t: Tracker, old_hp, new_hp, step: int) -> dict[str, float]:
        tid = trial.trial_id
        old, new = changed(old_hp, new_hp)
        event: dict[str, Any] = {"epoch": self.last_step[tid], "resumed_at": step,
                                 "donor_trial": None, "donor_epoch": None, "old": old, "new": new}
        policy = Path(trial.local_experiment_path, f"pbt_policy_{tid}.txt")
        row = last_policy_line(policy, orig_tag(trial.experiment_tag or ""))
        if row is not None:
            event["donor_trial"] = self.tag_to_trial.get(row[1], row[1])
            event["donor_epoch"] = row[3]
        events = self.exploits.setdefault(tid, [])
        events.append(event)
        t.set_tags({f"{EXPLOIT_TAG}{len(events)}": json.dumps(event, default=str),
                    "pbt.last_donor": event["donor_trial"] or "unknown"})
        t.log_artifact(str(self._write(f"{tid}/exploits.json", events)), "pbt")
        log.info("trial %s exploited %s at epoch %s: %s -> %s", tid, event["donor_trial"],
                 event["epoch"], old, new)
        return {"pbt/exploit": 1.0, "pbt/n_exploits": float(len(events))}

    def _note_checkpoint(self, trial, t: Tracker, epoch: int) -> None:
        """Tag the trial's newest checkpoint and the epoch it holds: the epoch of the result
        that carried it (Ray's ``checkpoint_dir_name``; an exploit's donor's included),
        whether Tune registers the save before or after that result reaches us; ``epoch``
        for a checkpoint no result here carried (a resumed sweep's)."""
        path = getattr(getattr(trial, "checkpoint", None), "path", None)
        if not path:
            return
        known = self.checkpoint_epochs.get(os.path.normpath(path))
        noted = self.checkpoints.get(trial.trial_id)
        if noted is not None and noted[0] == path:
            if known is None or known == noted[1]:
                return
            epoch = known  # its result came after the save
        elif known is not None:
            epoch = known
        self.checkpoints[trial.trial_id] = (path, epoch)
        # promote finds the checkpoint on this machine; others see ~, not the home path
        t.set_tags({CHECKPOINT: home_relative(path), "mrlfads.checkpoint_epoch": epoch})

    @_safe
    def log_trial_save(self, trial) -> None:
        tid = trial.trial_id
        if tid in self.trackers:
            self._note_checkpoint(trial, self.trackers[tid], self.last_step.get(tid, 0))

    @_safe
    def log_trial_end(self, trial, failed: bool = False) -> None:
        tid = trial.trial_id
        if failed:
            self.failed.add(tid)
        t = self.trackers.pop(tid, None)
        if t is None:
            return
        try:
            self._trial_figures(tid, t, None if failed else trial)
            if failed:
                text = contract_home(self._error_text(trial))
                t.set_tags({"mrlfads.error": text[-4000:], "mrlfads.error_cause": _cause(text)})
                path = Path(self._tmp.name, tid, "error.txt")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
                t.log_artifact(str(path))
            t.end_run("FAILED" if failed else "FINISHED")
        finally:
            t.close()
            if getattr(getattr(t, "outbox", None), "pending", None):
                self.undelivered.append(t)  # ended during an outage: retried at the sweep's end

    @staticmethod
    def _error_text(trial) -> str:
        """The trial's traceback: the driver-side error file, else Tune's stored copy."""
        text = None
        path = getattr(trial, "error_file", None)
        if path and os.path.isfile(path):
            text = Path(path).read_text(errors="replace")
        if not text:
            try:
                text = str(trial.get_error() or "")
            except Exception:
                text = ""
        return text or "trial failed (no error text recorded)"

    def _trial_figures(self, tid: str, t: Tracker, trial=None) -> None:
        """The model's figures (``trial_figures``) of a trial that finished, else its
        effectome from the metrics it reported."""
        path = getattr(getattr(trial, "checkpoint", None), "path", None)
        if self.trial_figures is not None and path:
            try:
                for png in self.trial_figures(path, Path(self._tmp.name, tid, "figures")):
                    t.log_artifact(str(png), "figures")
                return
            except Exception as exc:
                log.warning("MLflow tracking: the figures of trial %s failed (%s: %s); logging "
                            "its effectome from the metrics instead", tid, type(exc).__name__,
                            redact_text(str(exc)))
        if not self.regions or len(self.regions) < 2:
            return
        E, title = figures.default_effectome(self.last_metrics.get(tid, {}), self.regions)
        if not np.isfinite(E).any():  # all NaN: the trial never reported its effectome
            return
        path = Path(self._tmp.name, tid, "effectome.png")
        figures.effectome_heatmap(E, self.regions, path, truth=self.truth_comm, title=title)
        t.log_artifact(str(path), "figures")

    # -- the end ----------------------------------------------------------------------
    @_safe
    def on_experiment_end(self, trials, **info) -> None:
        for trial in trials:
            if trial.trial_id in self.trackers:  # the driver stopped before this trial ended
                t = self.trackers.pop(trial.trial_id)
                t.end_run("KILLED")
                t.close()
            elif trial.trial_id in self.open_restored:
                self._close_restored(trial)
        if self.parent is None:
            return
        try:
            self._summarise()
            # a stop signal, not the trials' statuses: search_spaces/tune_state.py says why
            if STOP_REQUESTED.is_set():  # Tune saved the state; --resume re-opens the run
                self.parent.set_tags({SWEEP_STATE: (
                    "interrupted before every trial finished; `mrlfads sweep --resume` "
                    "continues the sweep")})
                self.parent.end_run("KILLED")
            else:
                self.parent.set_tags({SWEEP_STATE: "finished"})
                self.parent.end_run("FINISHED")
        finally:
            self.parent.close()
            if getattr(getattr(self.parent, "outbox", None), "pending", None):
                self.undelivered.append(self.parent)
            self.parent = None
            self._deliver_undelivered()
            if self._tmp is not None:
                self._tmp.cleanup()

    def _close_restored(self, trial) -> None:
        """End the re-opened run of a trial that ended while the driver was dead (Tune
        restores it ERROR or TERMINATED and never starts it again): as the trial ended, with
        its error when it failed, instead of leaving it RUNNING (or KILLED by liveness)."""
        self.open_restored.discard(trial.trial_id)
        status = getattr(trial, "status", None)
        if status not in ("ERROR", "TERMINATED"):
            return  # never ran again and never ended (the sweep stopped first): leave it
        self.log_trial_start(trial)  # re-opens its run, as for a trial Tune starts again
        self.log_trial_end(trial, failed=status == "ERROR")  # failed: never the best

    def _deliver_undelivered(self) -> None:
        """One last try for trials that ended while the store was away; what still fails
        stays in their outbox files for ``mrlfads import-metrics``."""
        left = []
        for t in self.undelivered:
            try:
                if not t.flush():
                    left.append(t)
            except Exception as exc:
                log.warning("MLflow tracking: delivering a finished trial's outbox failed: %s", exc)
        self.outbox_files = [str(t.outbox.path) for t in left if t.outbox.path is not None]
        for t in left:
            log.warning("%d tracking ops undelivered; kept in %s (run `mrlfads import-metrics` on it "
                        "once the server is back)", len(t.outbox.pending), t.outbox.path)
        self.undelivered = []

    def _summarise(self) -> None:
        # the sweep summary's rule: trials that did not fail, their latest metric
        finished = {t: m for t, m in self.last_metrics.items() if t not in self.failed}
        best = best_trial(finished, metric_key(self.metric), self.mode)
        # exploits lost with epochs a trial ran again are in exploits.json, not the lineage
        live = {t: [e for e in evs if not e.get("superseded")] for t, evs in self.exploits.items()}
        if self.hp_history:
            path = figures.hparam_trajectories(
                self.hp_history, Path(self._tmp.name, "pbt_hparams.png"),
                exploits={t: [e["epoch"] for e in evs] for t, evs in live.items()})
            self.parent.log_artifact(str(path), "figures")
        self.parent.log_artifact(str(self._write("exploits.json", self.exploits)), "pbt")
        if self.run_ids:
            epochs = {t: float(self.last_step.get(t, 0)) for t in self.run_ids if t}
            path = figures.lineage_graph(epochs, live,
                                         Path(self._tmp.name, "pbt_lineage.png"), best=best)
            self.parent.log_artifact(str(path), "figures")
        if best is None:
            self.parent.set_tags({"mrlfads.best_trial_id": "none"})
            return
        chain = lineage(live, best)
        self.parent.log_artifact(str(self._write("lineage.json", {"best_trial": best, "hops": chain})), "pbt")
        self.parent.set_tags({
            "mrlfads.best_trial_id": best, "mrlfads.best_run_id": self.run_ids.get(best, ""),
            "mrlfads.best_lineage": " <- ".join([best] + [h["donor_trial"] for h in chain])[:5000]})
        self.parent.log_metrics({f"best/{metric_key(self.metric)}":
                                 self.last_metrics[best][metric_key(self.metric)],
                                 "best/n_lineage_hops": float(len(chain))}, step=0)


_EXC_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception|Interrupt)\w*): (.+)$", re.M)


def _cause(text: str) -> str:
    """The last exception line of a traceback (``NonFiniteLossError: loss became ...``)."""
    found = _EXC_LINE.findall(text)
    if found:
        return f"{found[-1][0]}: {found[-1][1]}"[:5000]
    lines = text.strip().splitlines()
    return lines[-1][:5000] if lines else ""


def known_comm(manifest: Mapping[str, Any]) -> list | None:
    """A manifest's true communication matrix, or None where it is unknown: null, or all
    zeros (what datasets written before null existed hold for "unknown")."""
    cm = manifest.get("comm_matrix")
    return cm if cm and any(any(row) for row in cm) else None


def _read_manifest(data_uri: str | None) -> dict[str, Any]:
    """The dataset manifest, local or remote (s3://: read with the dataset's own filesystem,
    data_loaders/fs.py); just the URI where it cannot be read. The sweep checked the data
    before Ray started (training/sweep.py, plan_sweep), so that is rare."""
    if not data_uri:
        return {}
    from mrlfads.data_loaders import fs as dfs

    try:
        fs, root = dfs.resolve(data_uri)
        with fs.open_input_stream(dfs.join(root, "dataset.json")) as f:
            return {"uri": data_uri, **json.loads(f.read().decode("utf-8"))}
    except (OSError, ValueError) as exc:  # ValueError: bad JSON, or a URI pyarrow refuses
        log.warning("could not read the manifest of %s: %s", redact_uri(data_uri), exc)
        return {"uri": data_uri}


def sweep_callbacks(plan, *, tracking_uri: str | None = None,
                    trial_figures: Callable[[str, Path], Sequence[Path]] | None = None,
                    baseline: Mapping[str, float] | None = None,
                    ) -> list[MlflowTuneCallback]:
    """The callbacks ``mrlfads sweep`` passes to Tune for a ``mrlfads.training.sweep.SweepPlan``.

    Reads only the plan's public fields (name, space, run, burn_in, experiment_path), so
    tracking does not import training (the caller passes ``trial_figures``, see
    MlflowTuneCallback). A resumed sweep (same name) re-opens its runs.
    """
    space = plan.space
    sched = space.scheduler
    searched = {hp.path for hp in space.hyperparameters}
    key = "hparams" if space.kind == "pbt" else "build"
    run = to_dict(plan.run)  # the base RunConfig as plain data
    manifest = _read_manifest((run.get("data") or {}).get("uri"))
    regions = [r["name"] for r in (run.get("model") or {}).get("regions", [])] or [
        r["name"] for r in manifest.get("regions", [])]
    # the parent run names the data by folder name + manifest digest, not its local path
    shared = shared_manifest(manifest)
    if len(manifest) > 1:  # more than the uri: the manifest was read
        shared["digest"] = manifest_digest({k: v for k, v in manifest.items() if k != "uri"})
    info = {"search_space": space.to_dict(), "config": shared_run_config(run),
            "dataset": shared,
            "sweep": {"name": plan.name, "kind": space.kind, "burn_in": plan.burn_in,
                      "storage": home_relative(plan.experiment_path),
                      "smoke_test": plan.smoke_test}}
    return [MlflowTuneCallback(
        plan.name, tracking_uri=tracking_uri, metric=sched.metric, mode=sched.mode,
        sweep_info=info, hparams={f"{key}.{p}": p for p in sorted(searched)}, regions=regions,
        truth_comm=known_comm(manifest), resume=True,
        outbox_dir=None if "://" in plan.experiment_path else plan.experiment_path,
        dataset=dataset_input(manifest, manifest.get("uri")) if manifest else None,
        trial_figures=trial_figures, baseline=baseline)]
