"""A tour of the Python API (docs/API.md), cell by cell as in a notebook.

Simulates a small two-region relay with known messages, fits MR-LFADS to it, infers rates,
messages and the effectome, cuts the pathway in silico, and reloads the model the way a
colleague would. `--sweep` adds a smoke-sized PBT sweep on a local Ray (about a minute).

    python examples/notebook_tour.py --out tour          # ~30 s on a laptop CPU

The test suite runs it (tests/test_notebook_tour.py). Sizes are the smoke sizes: this shows
the calls, not a converged model; docs/MODEL.md gives the real defaults.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import mrlfads


def tour(out: Path, epochs: int = 12, sweep: bool = False) -> dict:
    # -- data: a simulated benchmark (or mrlfads.ingest("session.nwb", out=...))
    data = mrlfads.simulate("relay-decision", out / "data", smoke_test=True, obs="poisson",
                            seed=0, overwrite=True)
    print(data)
    print("network task loss:", round(data.summary["task_loss"], 3))

    # -- fit one model; tracking=False keeps this tour out of MLflow
    model = mrlfads.fit(data, out=out / "run", smoke_test=True, epochs=epochs,
                        overrides={"train.seed": 0}, tracking=False, progress=False)
    print(model, "-", len(model.history), "epochs, best objective",
          round(min(m["objective"] for m in model.history if m.get("ramps_done")), 4))

    # -- infer: arrays with named dims, the effectome and the metrics
    result = model.infer(data)
    src, dst = data.regions[0], data.regions[1]
    print(f"rates/{dst}", result[f"rates/{dst}"].shape, result.dims[f"rates/{dst}"])
    print(result.effectome)
    print("held-out co-bps (valid):", round(result.metrics["valid/co_bps"], 4))
    result.save(out / "infer", overwrite=True)  # what `mrlfads infer --out` writes

    # -- perturb: cut the pathway over the second half of the trial
    tau, n_bins = model.config.model.ic_enc_seq_len, data.manifest.n_bins
    window = ((tau + n_bins) // 2, n_bins)
    cut = model.perturb(data, cut=f"{src}->{dst}", window=window, out=out / "perturb",
                        overwrite=True)
    print(cut)

    # -- reload: a run directory (its best.pt), a checkpoint, or models:/NAME@ALIAS
    again = mrlfads.load(out / "run")
    found = {"data": data, "model": model, "result": result, "cut": cut, "again": again}
    if sweep:
        swept = mrlfads.sweep(data, smoke_test=True, storage=str((out / "sweeps").resolve()),
                              name="tour", tracking=False, verbose=0)
        print(swept)
        found["sweep"] = swept
        found["best"] = swept.best_model()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tour", help="folder for data, run and outputs")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--sweep", action="store_true", help="also run a smoke-sized sweep")
    args = parser.parse_args(argv)
    tour(Path(args.out), args.epochs, args.sweep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
