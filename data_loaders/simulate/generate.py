"""Build, train and run one data-generating network; return the dataset as arrays.

Randomness: one numpy SeedSequence(seed) is split into independent streams (network draw,
weights, training batches, training noise, trials, replayable trial noise, held-out choice,
split, spikes), so the gaussian and poisson datasets of one seed share the same hidden units
and the same seed always gives the same arrays: the same bytes in the Arrow shards and JSON,
the same arrays in the extras' .npz files (whose zip entries numpy stamps with the time
they were written). Torch runs single-threaded. That holds on one kind of CPU and torch
build, which provenance records (``trained_on``): the networks are trained in float32, and
another CPU's kernels round differently, which a few hundred training steps turn into a
different network.
"""
from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from mrlfads.data_loaders.manifest import CUT_EFFECTS_KEY, RegionSpec
from mrlfads.data_loaders.simulate import memory_ring, observe, random_nets, relay_decision
from mrlfads.data_loaders.simulate import perturbation as sim_perturbation
from mrlfads.data_loaders.simulate import sessions as sim_sessions
from mrlfads.data_loaders.simulate.config import OBS_MODELS, STEP_S, SimConfig, preset
from mrlfads.data_loaders.simulate.cut_effects import network_cut_effects
from mrlfads.data_loaders.simulate.network import MultiRegionRNN, run_trials, to_npz
from mrlfads.data_loaders.simulate.train import (
    Progress,
    TaskBatch,
    single_thread,
    train_network,
    trained_on,
)

FAMILIES = {"memory-ring": memory_ring, "relay-decision": relay_decision, "random": random_nets}
# append only: the streams are SeedSequence children by position, so a new one changes none
# of the others
_STREAMS = ("network", "weights", "train_tasks", "train_noise", "trials", "trial_noise",
            "heldout", "split", "spikes", "unit_rates", "sessions", "perturbation",
            "interventions")


@dataclass
class SimulatedData:
    """Everything `write_dataset` needs; x / truth rates in stored (held-in first) neuron order."""

    name: str
    regions: tuple[RegionSpec, ...]
    obs_model: str
    bin_width_s: float
    ic_enc_seq_len: int
    x: dict[str, np.ndarray]
    split: np.ndarray
    trial_id: np.ndarray
    condition: np.ndarray
    truth: dict[str, np.ndarray]
    task: dict[str, np.ndarray]
    comm_matrix: list[list[int]]
    provenance: dict[str, Any]
    extra_files: dict[str, bytes] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of training / all
    sessions: tuple = ()                 # SessionSpec per session (--sessions S > 1)
    session: np.ndarray | None = None    # (trials,) session index of each trial
    silenced: dict[str, np.ndarray] = field(default_factory=dict)  # recorded interventions

    def writer_kwargs(self) -> dict[str, Any]:
        kw = {k: getattr(self, k) for k in (
            "name", "regions", "obs_model", "bin_width_s", "ic_enc_seq_len", "x", "split",
            "trial_id", "condition", "truth", "task", "comm_matrix", "provenance", "extra_files")}
        if self.sessions:
            kw.update(sessions=self.sessions, session=self.session)
        if self.silenced:
            kw.update(silenced=self.silenced)
        return kw


def _canonical(a: np.ndarray) -> np.ndarray:
    """C-ordered with textbook strides: fancy indexing can leave odd strides on size-1 axes,
    which Arrow's fixed_shape_tensor conversion misreads."""
    want = tuple(int(np.prod(a.shape[i + 1:])) * a.itemsize for i in range(a.ndim))
    return a if a.strides == want else a.copy(order="C")


def _streams(seed: int) -> dict[str, np.random.Generator]:
    children = np.random.SeedSequence(int(seed)).spawn(len(_STREAMS))
    return {name: np.random.default_rng(c) for name, c in zip(_STREAMS, children)}


def _loss_on(family, batch: TaskBatch, hidden, messages, readout) -> float:
    with torch.no_grad():
        return float(family.loss_fn(batch, *(torch.from_numpy(a).double()
                                              for a in (hidden, messages, readout))))


def generate(kind: str, *, trials: int | None = None, seed: int = 0, obs: str = "gaussian",
             smoke_test: bool = False, n_bins: int | None = None, n_units: int | None = None,
             rate_hz: float | None = None, bin_ms: float | None = None,
             progress: Progress | None = None, sessions: int = 1,
             session_frac: float | None = None,
             perturbation: sim_perturbation.SimPerturbation | None = None,
             interventions: sim_perturbation.SimInterventions | None = None) -> SimulatedData:
    """Train the `kind` network (see the family modules) and simulate `trials` trials.

    ``rate_hz`` (mean firing rate of the Poisson spikes) and ``bin_ms`` (bin width) default to
    the preset's 5 Hz and 20 ms. ``sessions`` > 1 (or a ``session_frac``): a multi-session
    dataset of one network, `trials` trials per session, each session recording its own
    random ``session_frac`` (default 1 / sessions) of each region's units (simulate/sessions.py).
    ``perturbation``: extra trials with a region's messages silenced, the ``perturbed``
    split, and their true effects (simulate/perturbation.py); the other trials are the same
    arrays as without it. ``interventions``: extra training trials, each with one region's
    messages silenced over a random window, recorded in ``silenced/<region>`` columns."""
    frac = sim_sessions.check_sessions(sessions, session_frac)
    multi = sessions > 1 or session_frac is not None
    if perturbation is not None and multi:
        raise ValueError("--silence with --sessions: simulated perturbations are written for "
                         "one session only; drop --sessions/--session-frac or --silence")
    if interventions is not None and multi:
        raise ValueError("--intervention-trials with --sessions: simulated interventions are "
                         "written for one session only; drop one of them")
    if obs not in OBS_MODELS:
        raise ValueError(f"obs: {obs!r} is not one of {list(OBS_MODELS)}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: must be an integer >= 0, got {seed!r}")
    cfg = preset(kind, smoke_test, trials=trials, n_bins=n_bins, n_units=n_units,
                 rate_hz=rate_hz, bin_ms=bin_ms)
    rng = _streams(seed)
    t0 = time.perf_counter()
    with single_thread():
        family = FAMILIES[kind].build(cfg, rng["network"])
        spec = family.spec
        if perturbation is not None:  # checked before minutes of training
            window_steps = sim_perturbation.step_window(
                perturbation, spec.region_names, cfg.n_bins, cfg.steps_per_bin,
                cfg.bin_width_s * 1000)
        net = MultiRegionRNN(spec, rng["weights"])
        steps = cfg.n_steps  # the network runs in its own steps; bins come at the end
        train_steps = steps if family.full_length_training else min(cfg.train.n_bins, steps)
        train_cfg = dataclasses.replace(cfg.train, n_bins=train_steps)
        fit = train_network(net, family.sample, family.loss_fn, train_cfg, rng["train_tasks"],
                            int(rng["train_noise"].integers(2**31)), progress)
        t_train = time.perf_counter() - t0
        n_total = cfg.n_trials * sessions  # each session gets its own block of trials
        batch = family.sample(rng["trials"], n_total, steps)
        trial_id = np.arange(n_total, dtype=np.int64)
        noise_seed = int(rng["trial_noise"].integers(2**63))
        hidden, messages, readout = run_trials(net, batch.inputs, trial_id, noise_seed)
        fit["task_loss_generated"] = _loss_on(family, batch, hidden, messages, readout)
        cut_effects = network_cut_effects(
            net, batch.inputs, trial_id, noise_seed, first_bin=cfg.ic_enc_seq_len,
            steps_per_bin=cfg.steps_per_bin, scale=cfg.poisson_gain if obs == "poisson" else 1.0)
        n_i = 0 if interventions is None else interventions.trials
        if interventions is not None:
            i_batch = family.sample(rng["interventions"], n_i, steps)
            i_ids = np.arange(n_total, n_total + n_i, dtype=np.int64)
            i_gate, silenced = sim_perturbation.draw_interventions(
                spec, n_i, cfg.n_bins, cfg.ic_enc_seq_len, cfg.steps_per_bin, steps,
                rng["interventions"])
            if interventions.control:
                i_gate, silenced = None, {}
            i_hidden, i_messages, _ = run_trials(net, i_batch.inputs, i_ids, noise_seed,
                                                 gate=i_gate)
        if perturbation is not None:
            p_batch = family.sample(rng["perturbation"], perturbation.trials, steps)
            p_ids = np.arange(n_total + n_i, n_total + n_i + perturbation.trials, dtype=np.int64)
            gate = sim_perturbation.message_gate(spec, perturbation.region, window_steps, steps)
            p_hidden, p_messages, _ = run_trials(net, p_batch.inputs, p_ids, noise_seed, gate=gate)
            twin_hidden = run_trials(net, p_batch.inputs, p_ids, noise_seed)[0]
    base_hz = observe.unit_base_rates(hidden, cfg.rate_hz, cfg.rate_spread, cfg.poisson_gain,
                                      rng["unit_rates"])
    # extra trials are appended after the others, which stay as they were
    parts = (batch, trial_id, hidden, messages)
    if interventions is not None:
        parts = _append_trials(parts, (i_batch, i_ids, i_hidden, i_messages))
    if perturbation is not None:
        parts = _append_trials(parts, (p_batch, p_ids, p_hidden, p_messages))
    batch, trial_id, hidden, messages = parts
    n_perturbed = 0 if perturbation is None else perturbation.trials
    data = _assemble(kind, cfg, seed, obs, smoke_test, family, batch, trial_id, hidden, messages,
                     base_hz, rng, (sessions, frac) if multi else None, n_perturbed, n_i)
    if interventions is not None:
        data.silenced = {name: np.concatenate([np.zeros((n_total, cfg.n_bins), np.float32), a,
                                               np.zeros((n_perturbed, cfg.n_bins), np.float32)])
                         for name, a in silenced.items()}
        data.provenance["interventions"] = {
            "kind": "control: nothing silenced" if interventions.control else "silence",
            "trials": n_i, "split": "train",
            "trial_ids": [int(i_ids[0]), int(i_ids[-1]) + 1],
            "columns": "silenced/<region>: 1 in the bins where every message the region "
                       "sends is zero",
            "trials_per_region": {k: int(v.any(1).sum()) for k, v in silenced.items()}}
    if perturbation is not None:
        _add_true_effects(data, cfg, spec, perturbation, window_steps, twin_hidden, base_hz)
    data.provenance[CUT_EFFECTS_KEY] = cut_effects
    data.provenance.update({"training": fit, "train_config": dict(train_cfg.__dict__),
                            "trained_on": trained_on()})
    # timings stay out of provenance: the same seed must give byte-identical files
    data.seconds = {"train": round(t_train, 2), "total": round(time.perf_counter() - t0, 2)}
    obs_params = {"poisson_base_hz": base_hz, "poisson_gain": np.array(cfg.poisson_gain),
                  "bin_width_s": np.array(cfg.bin_width_s), "step_s": np.array(STEP_S)}
    data.extra_files["network.npz"] = to_npz(net, noise_seed, obs_params)
    return data


def _append_trials(a: tuple, b: tuple) -> tuple:
    """(batch, trial ids, hidden, messages) of trials ``a`` followed by trials ``b``."""
    return (_concat_batches(a[0], b[0]), *(np.concatenate([x, y]) for x, y in zip(a[1:], b[1:])))


def _concat_batches(a: TaskBatch, b: TaskBatch) -> TaskBatch:
    return TaskBatch(np.concatenate([a.inputs, b.inputs]), np.concatenate([a.targets, b.targets]),
                     np.concatenate([a.mask, b.mask]), list(a.conditions) + list(b.conditions),
                     {k: np.concatenate([v, b.variables[k]]) for k, v in a.variables.items()})


def _rates_in_bins(hidden: np.ndarray, cfg: SimConfig, obs: str, base_hz: np.ndarray) -> np.ndarray:
    """What truth/rates holds, network unit order: expected counts per bin, or the units."""
    if obs == "poisson":
        hidden = observe.poisson_rates(hidden, base_hz, cfg.poisson_gain, cfg.bin_width_s)
    return observe.steps_to_bins(hidden, cfg.steps_per_bin)


def _add_true_effects(data: SimulatedData, cfg: SimConfig, spec, p, window_steps,
                      twin_hidden: np.ndarray, base_hz: np.ndarray) -> None:
    """extras/perturbation.npz (simulate/perturbation.py) and the manifest's record of it:
    the perturbed trials' stored true rates (the last ``p.trials``) against their twins'."""
    twin = _rates_in_bins(twin_hidden, cfg, data.obs_model, base_hz)
    perturbed, twins = {}, {}
    for region, sl in zip(data.regions, spec.unit_slices()):
        perturbed[region.name] = data.truth[f"truth/rates/{region.name}"][-p.trials:]
        idx = sl.start + np.array([int(i) for i in region.neuron_ids])  # column order
        twins[region.name] = twin[..., idx]
    arrays = sim_perturbation.true_effects(perturbed, twins, p.window[0], cfg.ic_enc_seq_len)
    arrays.update(region=np.array(p.region), window=np.array(p.window),
                  window_steps=np.array(window_steps), trials=np.array(p.trials))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    data.extra_files["perturbation.npz"] = buf.getvalue()
    data.provenance["perturbation"] = {
        "kind": "silence", "target": p.region, "window": list(p.window),
        "window_steps": list(window_steps), "trials": p.trials,
        "messages_zeroed": sim_perturbation.silenced_pathways(spec, p.region),
        "true_effects": "extras/perturbation.npz: the keys of `mrlfads perturb`'s effects.npz, "
                        "from each perturbed trial against its unperturbed twin"}


def _assemble(kind: str, cfg: SimConfig, seed: int, obs: str, smoke_test: bool, family, batch: TaskBatch,
              trial_id: np.ndarray, hidden: np.ndarray, messages: np.ndarray, base_hz: np.ndarray,
              rng: dict[str, np.random.Generator],
              multi: tuple[int, float] | None = None, n_perturbed: int = 0,
              n_intervened: int = 0) -> SimulatedData:
    """Per-region observations in stored neuron order, and every truth column, in bins.
    multi = (sessions, fraction of units each records): the union layout of several sessions.
    The last ``n_perturbed`` trials form the ``perturbed`` split; the ``n_intervened``
    before them (recorded interventions) are all training trials."""
    spec = family.spec
    to_bins = partial(observe.steps_to_bins, steps_per_bin=cfg.steps_per_bin)
    if obs == "poisson":
        rates_all = _rates_in_bins(hidden, cfg, obs, base_hz)
        counts_all = observe.poisson_counts(rates_all, rng["spikes"])
    hidden, messages = to_bins(hidden), to_bins(messages)
    regions, x, truth = [], {}, {}
    layout = None
    if multi is not None:
        sl = dict(zip(spec.region_names, spec.unit_slices()))
        observed = {r: (counts_all if obs == "poisson" else hidden)[..., sl[r]] for r in sl}
        true = {r: rates_all[..., sl[r]] for r in sl} if obs == "poisson" else observed
        layout = sim_sessions.layout(spec.region_names, spec.n_units, observed, true, multi[0],
                                     multi[1], cfg.heldout_frac, rng["sessions"], rng["heldout"])
        regions, x = list(layout.regions), layout.x
        truth = {f"truth/rates/{r}": a for r, a in layout.rates.items()}
    else:  # one session: every unit recorded, in network order
        for name, sl, n_units in zip(spec.region_names, spec.unit_slices(), spec.n_units):
            order, n_out = observe.heldout_order(n_units, cfg.heldout_frac, rng["heldout"])
            idx = sl.start + order
            regions.append(RegionSpec(name, n_units - n_out, n_out, tuple(str(i) for i in order)))
            if obs == "poisson":
                x[name], truth[f"truth/rates/{name}"] = counts_all[..., idx], rates_all[..., idx]
            else:
                x[name] = hidden[..., idx]
                truth[f"truth/rates/{name}"] = None  # the same array as x (filled in below)
    for p, sl in zip(spec.pathways, spec.msg_slices()):
        truth[f"truth/messages/{spec.pathway_name(p)}"] = messages[..., sl]
    start = 0
    for name, width in zip(spec.region_names, spec.input_dims):
        if width:
            truth[f"truth/inputs/{name}"] = to_bins(batch.inputs[..., start:start + width])
        start += width
    n = len(trial_id)
    provenance = {
        "generator": f"mrlfads.simulate/{kind}", "kind": kind, "seed": int(seed), "obs": obs,
        "n_trials": n, "n_bins": cfg.n_bins, "n_steps": cfg.n_steps, "step_s": STEP_S,
        "task_times": "task/* times count network steps of step_s",
        "units": dict(zip(spec.region_names, spec.n_units)),
        "pathways": {spec.pathway_name(p): p.dim for p in spec.pathways},
        "alpha": spec.alpha, "hidden_noise": spec.hidden_noise, "channel_noise": spec.channel_noise,
        "nonlinearity": "tanh", "bin_width_s": cfg.bin_width_s, "smoke_test": bool(smoke_test),
        "poisson": {"mean_rate_hz": cfg.rate_hz, "base_rate_spread": cfg.rate_spread,
                    "gain": cfg.poisson_gain, "base_hz": "per unit, extras/network.npz",
                    "rates": "expected counts per bin"} if obs == "poisson" else None,
        "family": family.description, "network_file": "extras/network.npz",
        "neuron_ids": "index of the unit in the network (network.npz order)",
    }
    name = f"{kind}-seed{seed}-{obs}"
    if layout is not None:
        n_sessions = len(layout.sessions)
        name += f"-{n_sessions}sessions"
        provenance["neuron_ids"] = ("session name / index of the unit in its region of the "
                                    "network (network.npz order)")
        provenance["sessions"] = {
            "n_sessions": n_sessions, "session_frac": multi[1], "trials_per_session": n // n_sessions,
            "units": "sessions[k].provenance.units: each session's units per region, column "
                     "order (held-in then held-out); drawn independently per session"}
    x = {k: _canonical(v) for k, v in x.items()}
    truth = {k: x[k[len("truth/rates/"):]] if v is None else _canonical(v) for k, v in truth.items()}
    if layout is None:
        split = observe.train_valid_split(n - n_perturbed - n_intervened, cfg.valid_frac,
                                          rng["split"])
        split = np.concatenate([split, np.full(n_intervened, "train", dtype=object),
                                np.full(n_perturbed, "perturbed", dtype=object)])
    else:  # each session's trials split on their own, so every session has valid trials
        per = n // len(layout.sessions)
        split = np.concatenate([observe.train_valid_split(per, cfg.valid_frac, rng["split"])
                                for _ in layout.sessions])
    return SimulatedData(
        name=name, regions=tuple(regions), obs_model=obs,
        bin_width_s=cfg.bin_width_s, ic_enc_seq_len=cfg.ic_enc_seq_len, x=x,
        split=split, trial_id=trial_id,
        condition=np.asarray(batch.conditions, dtype=object), truth=truth,
        task={k: _canonical(to_bins(v) if v.ndim > 1 else v) for k, v in batch.variables.items()},
        comm_matrix=spec.comm_matrix(),
        provenance=provenance,
        sessions=() if layout is None else layout.sessions,
        session=None if layout is None else layout.session)
