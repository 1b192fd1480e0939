"""Spiking data from a generator unlike the project's simulator, fitted with the defaults
(docs/RESULTS.md, "A generator unlike ours").

    .venv/bin/python benchmarks/science/lds_spikes.py --out lds_runs [--topologies chain loop] \
        [--data-seeds 0] [--seeds 0] [--epochs 350] [--rate-hz 5] [--nwb] [--set PATH=VALUE ...]

The benchmark's networks are RNNs trained on tasks (data_loaders/simulate); defaults tuned on
them could fit their quirks. Here each region is instead a linear latent of ``--dim``
damped oscillators (time constants 100-250 ms, 2-6 Hz) with process noise; a pathway
src -> dst adds ``B @ C @ tanh(x_src)`` to dst's next state, its message being
``C @ tanh(x_src)`` (1 or 2 dimensions); region R0 receives an unrecorded pulse whose
direction depends on the trial's condition (4 conditions; it drives bins 11-20), the
inferred input to recover. Spikes are Poisson with log-rate = each unit's base (log-normal around
``--rate-hz``) + a random projection of the standardised latent (log-rate s.d. ~0.7).
``--units`` per region (10% held out), ``--trials`` trials (80% train) of ``--bins`` bins.
``--intervention-trials N --arm A`` draws N more training trials (the same ones in every
arm, so the other trials and the validation trials are shared): arm ``observational``
leaves them out, ``more-trials`` keeps them as they are, ``interventions`` silences in each
every message of one random region over a random quarter of the trial, recorded in the
dataset's ``silenced/<region>`` columns (docs/MODEL.md, "Recorded interventions").

Each dataset is written with its truth (rates, messages, inputs) under OUT/data, with
``--nwb`` also as an NWB file beside it (for the README's ingest recipe), then fitted with
the default configuration for ``--epochs`` epochs (spiking_grid's ``run_defaults``: what
`mrlfads train --data DIR --epochs N` does) and ``best.pt`` is scored like the spiking
benchmark's rows; ``--set`` adds config overrides (YAML 1.2 values) to every fit. One JSON
line per fit goes to OUT/results.jsonl.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import spiking_grid  # benchmarks/science is not a package

TOPOLOGIES = {  # name -> pathways (src, dst, message dimension)
    "chain": [(0, 1, 2), (1, 2, 1)],
    "loop": [(0, 1, 2), (1, 2, 1), (2, 0, 1)],
    "fan": [(0, 1, 1), (0, 2, 2), (1, 3, 1), (3, 2, 1)],
    "pair": [(0, 1, 2), (1, 0, 1)],  # a reciprocal loop between two regions
}
NOISE, COUPLING, LOG_RATE_SD, N_COND = 0.12, 0.35, 0.7, 4


def _dynamics(rng: np.random.Generator, d: int, dt: float) -> np.ndarray:
    """A (d, d) state map: d/2 damped rotations in a random orthonormal basis."""
    M = np.zeros((d, d))
    for k in range(d // 2):
        tau, freq = rng.uniform(0.1, 0.25), rng.uniform(2, 6)
        th, lam = 2 * np.pi * freq * dt, np.exp(-dt / tau)
        M[2 * k:2 * k + 2, 2 * k:2 * k + 2] = lam * np.array([[np.cos(th), -np.sin(th)],
                                                              [np.sin(th), np.cos(th)]])
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return Q @ M @ Q.T


ARMS = ("observational", "more-trials", "interventions")


def make(path: Path, topology: str, seed: int = 0, rate_hz: float = 5.0, bin_ms: float = 10.0,
         units: int = 40, trials: int = 500, bins: int = 100, dim: int = 4,
         extra: int = 0, arm: str = "observational") -> Path:
    """Write one dataset (with its truth) at ``path``; returns it. ``extra`` more trials are
    drawn after ``trials``; ``arm`` says what becomes of them (the module's docstring)."""
    from mrlfads.data_loaders.writer import write_dataset

    rng = np.random.default_rng(seed)
    paths = TOPOLOGIES[topology]
    R = 1 + max(max(s, t) for s, t, _ in paths)
    d, T, n, dt = dim, bins, trials + extra, bin_ms / 1000
    A = [_dynamics(rng, d, dt) for _ in range(R)]
    C = {(s, t): rng.normal(size=(k, d)) / np.sqrt(d) for s, t, k in paths}
    B = {(s, t): rng.normal(size=(d, k)) * COUPLING for s, t, k in paths}
    cond = rng.integers(N_COND, size=n)
    pulse = rng.normal(size=(N_COND, d)) / np.sqrt(d) * 0.5
    u = np.zeros((n, T, d))  # R0's unrecorded input
    u[:, 10:20] = pulse[cond][:, None, :]
    x = np.zeros((n, T, R, d))
    x[:, 0] = rng.normal(size=(n, R, d)) * 0.5
    msgs = {(s, t): np.zeros((n, T, k)) for s, t, k in paths}
    silenced = np.zeros((n, T, R), np.float32)  # 1 where region r's messages are zeroed
    if extra:
        length, tau = (T - 10) // 4, 10
        src = rng.integers(R, size=extra)
        start = rng.integers(tau, T - length + 1, size=extra)
        if arm == "interventions":
            for i, (r, a) in enumerate(zip(src, start)):
                silenced[trials + i, a:a + length, r] = 1
    for step in range(1, T):  # bin step's message is read from bin step-1, as the model's is
        for s, t, _ in paths:
            msgs[(s, t)][:, step] = (np.tanh(x[:, step - 1, s]) @ C[(s, t)].T) \
                * (1 - silenced[:, step, s:s + 1])
        for r in range(R):
            drive = x[:, step - 1, r] @ A[r].T + NOISE * rng.normal(size=(n, d))
            if r == 0:
                drive += u[:, step - 1]
            for s, t, _ in paths:
                if t == r:
                    drive += msgs[(s, t)][:, step] @ B[(s, t)].T
            x[:, step, r] = drive
    names = [f"R{r}" for r in range(R)]
    counts, rates = {}, {}
    extra_rng = np.random.default_rng([seed, 1])
    for r, name in enumerate(names):
        W = rng.normal(size=(units, d))
        W *= LOG_RATE_SD / np.linalg.norm(W, axis=1, keepdims=True)
        z = x[:, :, r] / x[:trials, :, r].std()  # the shared trials' scale, in every arm
        log_rate = np.log(rate_hz * dt) + rng.normal(size=units) * 0.5 + z @ W.T \
            - 0.5 * LOG_RATE_SD ** 2
        rates[name] = np.exp(log_rate)
        # the extra trials' spikes from their own stream: a Poisson draw takes as many
        # numbers as its rates ask, and the arms' extra trials have different rates
        counts[name] = np.concatenate([rng.poisson(rates[name][:trials]),
                                       extra_rng.poisson(rates[name][trials:])]
                                      ).astype(np.float32)
    n_out = max(1, round(0.1 * units))
    n_valid = trials // 5
    keep = trials if arm == "observational" else n
    truth = {f"truth/rates/{nm}": rates[nm].astype(np.float32) for nm in names}
    truth.update({f"truth/messages/{names[s]}->{names[t]}": msgs[(s, t)].astype(np.float32)
                  for s, t, _ in paths})
    u_read = np.zeros_like(u)  # bin t's input is what drives bin t, as the model's is
    u_read[:, 1:] = u[:, :-1]
    truth[f"truth/inputs/{names[0]}"] = u_read.astype(np.float32)
    split = ["train"] * (trials - n_valid) + ["valid"] * n_valid + ["train"] * (keep - trials)
    write_dataset(path, name=f"lds-{topology}-{seed}", obs_model="poisson", bin_width_s=dt,
                  regions=[{"name": nm, "n_heldin": units - n_out, "n_heldout": n_out}
                           for nm in names],
                  ic_enc_seq_len=10, x={k: v[:keep] for k, v in counts.items()},
                  truth={k: v[:keep] for k, v in truth.items()}, trial_id=np.arange(keep),
                  split=np.array(split, dtype=object),
                  condition=cond[:keep].astype(str).astype(object), overwrite=True,
                  silenced={nm: silenced[:keep, :, r] for r, nm in enumerate(names)
                            if silenced[:, :, r].any()} or None,
                  provenance={"generator": "benchmarks/science/lds_spikes.py", "seed": seed,
                              "topology": topology, "rate_hz": rate_hz, "bin_ms": bin_ms,
                              "extra_trials": extra, "arm": arm})
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="lds_runs")
    p.add_argument("--topologies", nargs="+", default=["chain", "loop"], choices=list(TOPOLOGIES))
    p.add_argument("--data-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds")
    p.add_argument("--epochs", type=int, default=350)
    p.add_argument("--rate-hz", type=float, default=5.0)
    p.add_argument("--bin-ms", type=float, default=10.0)
    p.add_argument("--units", type=int, default=40)
    p.add_argument("--trials", type=int, default=500)
    p.add_argument("--nwb", action="store_true", help="also write each dataset as NWB")
    p.add_argument("--intervention-trials", type=int, default=0, metavar="N",
                   help="N more training trials, used as --arm says (default 0: none)")
    p.add_argument("--arm", choices=ARMS, default="observational")
    p.add_argument("--set", nargs="*", default=[], metavar="PATH=VALUE",
                   help="config overrides for every fit, e.g. loss.kl_com_ratio=4.4")
    args = p.parse_args()
    from mrlfads.training.yaml12 import parse_sets

    overrides = parse_sets(args.set)
    out = Path(args.out).resolve()
    results = out / "results.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    for topo in args.topologies:
        for dseed in args.data_seeds:
            tag = f"{topo}-{dseed}-{args.rate_hz:g}hz-{args.bin_ms:g}ms-{args.units}u"
            if args.intervention_trials:
                tag += f"-{args.arm}{args.intervention_trials}"
            path = out / "data" / tag
            if not (path / "dataset.json").exists():
                make(path, topo, dseed, args.rate_hz, args.bin_ms, args.units, args.trials,
                     extra=args.intervention_trials, arm=args.arm)
            if args.nwb:
                from mrlfads.data_loaders.nwb.export import dataset_to_nwb
                dataset_to_nwb(path, out / "data" / f"{tag}.nwb")
            ceil = spiking_grid.ceilings(path)
            for seed in args.seeds:
                t0 = time.time()
                run_dir = out / "runs" / "-".join([tag, f"s{seed}", *args.set])
                metrics = spiking_grid.run_defaults(path, seed, args.epochs, run_dir, overrides)
                row = {"dataset": tag, "seed": seed, "epochs": args.epochs, "set": args.set,
                       "seconds": round(time.time() - t0), "metrics": metrics, "ceilings": ceil}
                with open(results, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
