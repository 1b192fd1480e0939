"""`mrlfads export-nwb`: an `mrlfads infer` output back into NWB, beside its source session.

Writes a new NWB file holding the source's trials and units and, in the processing module
``mrlfads``, the rates, factors, inferred inputs, messages and effectomes, timed in the
session's clock (layout: data_loaders/nwb/results.py, docs/DESIGN.md "Results in NWB").
The NWB file must be one the dataset was ingested from: it is matched by size and sha256
against the sources the ingest recorded, and its trials by id.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

NAME = "export-nwb"
HELP = "write an `mrlfads infer` output into a new NWB file beside its source session"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--infer", required=True, metavar="OUT", help="an `mrlfads infer` output directory")
    p.add_argument("--nwb", required=True, metavar="SOURCE.nwb",
                   help="the NWB file the dataset was ingested from")
    p.add_argument("--out", required=True, metavar="RESULT.nwb", help="the NWB file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"--infer {path.parent}: no {path.name}; {what}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--infer {path.parent}: {path.name} is not valid JSON ({e}); re-run "
                         "`mrlfads infer`") from None


def matching_source(manifest: dict, nwb_path: str, infer_dir: str) -> tuple[int, dict]:
    """(index, entry) of the ingest source that is byte for byte ``nwb_path``."""
    from mrlfads.data_loaders.nwb.read import sha256_file

    prov = manifest.get("provenance") or {}
    sources = [s for s in prov.get("sources") or [] if isinstance(s, dict)]
    if prov.get("generator") != "mrlfads ingest" or not sources:
        raise ValueError(
            f"--infer {infer_dir}: its dataset {manifest.get('name')!r} was not ingested from NWB "
            f"(made by {prov.get('generator')!r}), so there is no session to export into; run "
            "`mrlfads infer` on a dataset made by `mrlfads ingest`")
    if not os.path.isfile(nwb_path):
        raise FileNotFoundError(f"--nwb {nwb_path}: no such file; pass the NWB file the dataset "
                                f"was ingested from ({', '.join(s.get('name', '?') for s in sources)})")
    size = os.path.getsize(nwb_path)
    candidates = [(k, s) for k, s in enumerate(sources) if s.get("size") in (None, size)]
    digest = sha256_file(nwb_path) if candidates else None
    for k, s in candidates:
        if s.get("sha256") == digest:
            return k, s
    names = ", ".join(f"{s.get('name', '?')} (sha256 {str(s.get('sha256'))[:12]}...)" for s in sources)
    raise ValueError(
        f"--nwb {nwb_path}: this file is not a source of dataset {manifest.get('name')!r} that "
        f"--infer {infer_dir} comes from (size {size} bytes"
        + (f", sha256 {digest[:12]}..." if digest else "") + f"); its sources are {names}: "
        "pass that file, unchanged")


def source_trial_ids(sources: list[dict], k: int) -> tuple[int, set[int]]:
    """(offset, NWB ids) of source ``k``: ingest shifts the ids of file k by the sum over
    earlier files of (their max id + 1) when it reads several files."""
    offset = 0
    if len(sources) > 1:
        offset = sum(max(s["trial_ids"]) + 1 for s in sources[:k])
    return offset, {int(t) for t in sources[k]["trial_ids"]}


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from mrlfads.data_loaders.nwb.results import NWBResults, ResultSeries, write_results_nwb
    from mrlfads.files import EFFECTOME
    from mrlfads.tracking.shareable import shared_uri
    from mrlfads.training.infer_io import read_outputs

    infer = Path(args.infer)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"--out {out} already exists: choose another --out or pass --overwrite")
    if out.resolve() == Path(args.nwb).resolve():
        raise ValueError(f"--out {out} is the source --nwb file; results go into a new file: "
                         "choose another --out")
    if not infer.is_dir():
        raise FileNotFoundError(f"--infer {infer}: no such directory; pass an `mrlfads infer --out` "
                                "directory")
    info = _read_json(infer / "outputs.json", "pass an `mrlfads infer --out` directory")
    manifest = _read_json(infer / "source_dataset.json",
                          "this output predates export-nwb: re-run `mrlfads infer` to write it")
    effectome = _read_json(infer / EFFECTOME, "") if (infer / EFFECTOME).is_file() else {}
    k, source = matching_source(manifest, args.nwb, str(infer))
    prov = manifest["provenance"]
    offset, nwb_ids = source_trial_ids(prov["sources"], k)
    cols = read_outputs(infer)
    ids = np.asarray(cols["trial_id"], dtype=np.int64) - offset
    keep = np.array([int(t) in nwb_ids for t in ids])
    if not keep.any():
        raise ValueError(f"--infer {infer}: none of its trials come from --nwb {args.nwb} "
                         f"(source {k + 1} of {len(prov['sources'])}); export the sessions "
                         "the inference covers")
    regions = list(info["regions"])
    spec = {r["name"]: r for r in manifest["regions"]}
    obs = info.get("obs_model", manifest.get("obs_model"))
    rate_unit = "counts per bin" if obs == "poisson" else "data units"
    series, neurons = [], []
    units = source.get("unit_ids") or {}
    # several sessions (ingest --sessions separate): file k is session k, whose units are
    # its own blocks of each region's columns (data_loaders/sessions.py)
    own = _session_columns(manifest, k, regions)
    for r in regions:
        n_in = int(spec[r]["n_heldin"])
        cin, cout = own[r] if own else (slice(None), slice(None))
        for kind, unit, what, cols_offset, sel in (
                ("rates", rate_unit, "predicted rates of the held-in units", 0, cin),
                ("heldout_rates", rate_unit, "predicted rates of the held-out units",
                 cin.stop - cin.start if own else n_in, cout),
                ("factors", "a.u.", "latent factors", None, slice(None)),
                ("inputs", "a.u.", "inferred inputs (posterior means)", None, slice(None))):
            key = f"{kind}/{r}"
            if key not in cols or cols[key][..., sel].shape[-1] == 0:
                continue
            name = f"{kind}_{r}"
            series.append(ResultSeries(name, kind, r, cols[key][keep][..., sel], unit,
                                       f"{what} of region {r}"))
            if cols_offset is not None:
                ids_r = units.get(r, [])
                if len(ids_r) < cols_offset + cols[key][..., sel].shape[-1]:
                    raise ValueError(
                        f"--infer {infer}: its dataset does not record which units of "
                        f"{source.get('name')} are region {r}'s columns; re-ingest the NWB file "
                        "with this version of `mrlfads ingest`, then infer again")
                for j in range(cols[key][..., sel].shape[-1]):
                    neurons.append({"series": name, "column": j, "region": r,
                                    "unit_id": int(ids_r[cols_offset + j]),
                                    "heldout": kind == "heldout_rates"})
    for pair in info.get("pairs", []):
        src, dst = pair.split("->")
        series.append(ResultSeries(f"messages_{src}_to_{dst}", "messages", dst,
                                   cols[f"messages/{pair}"][keep], "a.u.",
                                   f"messages {src} -> {dst} (posterior means)", source=src))
    rows = []
    E, rms = effectome.get("matrix"), effectome.get("message_rms")
    for d, dst in enumerate(effectome.get("regions", [])):
        for s, src in enumerate(effectome["regions"]):
            if s != d:
                rows.append({"source": src, "target": dst,
                             "cut": _num(E[d][s] if E else None),
                             "message_rms": _num(rms[d][s] if rms else None)})
    inp = effectome.get("inputs")
    input_rows = ([{"region": r, "cut": _num(inp["cut"][i]), "rms": _num(inp["rms"][i])}
                   for i, r in enumerate(effectome["regions"])] if inp else [])
    opts = prov.get("options") or {}
    window = prov.get("window_s") or [0.0]
    results = NWBResults(
        trial_ids=ids[keep], split=np.asarray(cols["split"])[keep],
        first_bin=int(info["bins"][0]), bin_width_s=float(manifest["bin_width_s"]),
        align=opts.get("align"), window_start_s=float(window[0]), series=series,
        neurons=neurons, effectome=rows, input_effectome=input_rows,
        provenance={"nwb_file": source.get("name", ""), "nwb_sha256": source.get("sha256", ""),
                    "dataset": manifest.get("name", ""),
                    "dataset_digest": info.get("dataset_digest", ""),
                    "model": shared_uri(str(info.get("model", ""))), "obs_model": str(obs),
                    "samples": int(info.get("samples", 0)),
                    "bin_width_s": float(manifest["bin_width_s"]),
                    "first_bin": int(info["bins"][0]), "align": opts.get("align") or "start_time",
                    "window_start_s": float(window[0]), "timestamps": "bin centres",
                    "mrlfads_version": _version()})
    path, skipped = write_results_nwb(args.nwb, out, results, overwrite=args.overwrite)
    print(f"wrote {int(keep.sum())} trials x {len(series)} series to {path} "
          f"(processing module 'mrlfads')")
    if skipped:
        print(f"note: columns that reference objects not copied were left out: {', '.join(skipped)}")
    return 0


def _session_columns(manifest: dict, k: int, regions: list[str]) -> dict | None:
    """For a dataset of several sessions, session k's (held-in, held-out) column slices of
    each region; None for a dataset of one session."""
    from mrlfads.data_loaders.sessions import SessionSpec, blocks

    raw = manifest.get("sessions") or []
    if len(raw) < 2:
        return None
    specs = [SessionSpec.from_dict(d) for d in raw]
    return {r: tuple(blocks(specs, r)[k]) for r in regions}


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mrlfads")
    except PackageNotFoundError:
        return ""
