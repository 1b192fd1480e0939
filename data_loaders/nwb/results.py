"""A model's results on an NWB session, written as a new NWB file readable with plain pynwb.

The new file keeps the session's start time, subject, trials and units (data_loaders/nwb/
copy_tables.py) and names the source file by identifier, name and sha256; the results go
into the processing module ``mrlfads``, built only from core NWB and hdmf-common types:

  TimeSeries ``<kind>_<region>`` (kind: rates, heldout_rates, factors, inputs) and
  ``messages_<src>_to_<dst>``: data (samples, dims), every result trial's reconstructed bins
  in time order; timestamps are bin centres in the session's time, shared by every series
  (stored once, linked from the others).
  DynamicTable ``series``: series (the TimeSeries name), kind, region (the target of a message), source (a
  message's sender, else "").
  DynamicTable ``result_trials``: trial (region of the file's trials table), trial_id,
  split, first_sample and n_samples (the rows of every series that belong to the trial).
  DynamicTable ``neurons``: series, column, region, unit (region of the units table),
  unit_id, heldout: which unit each column of a rates series is.
  DynamicTable ``effectome``: source, target, cut, message_rms per pathway.
  DynamicTable ``input_effectome``: region, cut, rms per region (with inferred inputs).
  DynamicTable ``provenance``: one row of what produced the results (source identifier,
  file name and sha256, dataset name and digest, model, bin width, alignment, ...).

Written to a temporary file beside the target and renamed into place, so a failure never
leaves a half-written file and never replaces a good one.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrlfads.atomic import replacing
from mrlfads.data_loaders.errors import IngestError

MODULE = "mrlfads"


@dataclass
class ResultSeries:
    """One output of the model: (trials, T', dims), in the order of ``NWBResults.trial_ids``."""

    name: str
    kind: str  # rates, heldout_rates, factors, inputs, messages
    region: str  # the region it belongs to (a message's target)
    data: np.ndarray
    unit: str
    description: str
    source: str = ""  # a message's sending region


@dataclass
class NWBResults:
    """Everything the results file holds besides what it copies from the source."""

    trial_ids: np.ndarray  # (trials,) ids in the source's trials table
    split: np.ndarray  # (trials,) str
    first_bin: int  # trial bin of the first result sample (the model's ic_enc_seq_len)
    bin_width_s: float
    align: str | None  # trials column the data window is aligned to (None: start_time)
    window_start_s: float  # window start relative to the alignment event
    series: list[ResultSeries]
    neurons: list[dict[str, Any]]  # series, column, region, unit_id, heldout
    effectome: list[dict[str, Any]]  # source, target, cut, message_rms
    input_effectome: list[dict[str, Any]] = field(default_factory=list)  # region, cut, rms
    provenance: dict[str, Any] = field(default_factory=dict)


def trial_timestamps(trials, trial_ids: np.ndarray, results: NWBResults, path: str) -> np.ndarray:
    """(trials, T') bin centres in session time: alignment event + window start + (bin + 0.5)
    * bin width, bins first_bin..; the ingest cut its bins at event + window start."""
    ids = np.asarray(trials.id.data[:], dtype=np.int64)
    row = {int(t): i for i, t in enumerate(ids)}
    missing = [int(t) for t in trial_ids if int(t) not in row]
    if missing:
        raise IngestError(f"{path}: trials {missing[:5]} of the results are not in its trials "
                          "table; pass the NWB file the dataset was ingested from")
    col = results.align or "start_time"
    if col not in trials.colnames:
        raise IngestError(f"{path}: trials table has no column {col!r}, the event the dataset's "
                          "windows are aligned to; pass the NWB file the dataset was ingested from")
    event = np.asarray(trials[col].data[:], dtype=np.float64)[[row[int(t)] for t in trial_ids]]
    n_samples = results.series[0].data.shape[1]
    bins = results.first_bin + np.arange(n_samples) + 0.5
    return event[:, None] + results.window_start_s + bins[None, :] * results.bin_width_s


def write_results_nwb(source: str | os.PathLike, out: str | os.PathLike, results: NWBResults,
                      *, overwrite: bool = False) -> tuple[Path, list[str]]:
    """Write the results file; returns its path and the source columns left out."""
    import pynwb

    from mrlfads.data_loaders.nwb.copy_tables import copy_session_tables, new_file_from
    from mrlfads.data_loaders.nwb.read import open_nwb

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out {out} already exists: choose another --out or pass --overwrite")
    with open_nwb(source) as s:
        src = s.nwbfile
        if src.trials is None or len(src.trials) == 0:
            raise IngestError(f"{source}: no trials table; pass the NWB file the dataset was "
                              "ingested from")
        stamps = trial_timestamps(src.trials, results.trial_ids, results, os.fspath(source))
        order = np.argsort(stamps[:, 0], kind="stable")  # time order: timestamps increase
        nwb = new_file_from(
            src, identifier=str(uuid.uuid4()),
            session_description=f"MR-LFADS results for NWB session {src.identifier!r}",
            notes=(f"Results of a multi-region LFADS model on the NWB file with identifier "
                   f"{src.identifier!r} ({results.provenance.get('nwb_file', '')}, sha256 "
                   f"{results.provenance.get('nwb_sha256', '')}); trials and units are copied "
                   f"from it. The results are in processing/{MODULE}."),
            generated_by=[("mrlfads", str(results.provenance.get("mrlfads_version", "")))])
        skipped = copy_session_tables(src, nwb)
        _add_results(nwb, results, stamps, order, src.identifier)
        with replacing(out, suffix=".nwb") as tmp:  # pynwb warns without it
            with pynwb.NWBHDF5IO(str(tmp), "w") as io:
                io.write(nwb)
            if out.exists() and not overwrite:
                raise FileExistsError(f"--out {out} already exists: choose another --out or "
                                      "pass --overwrite")
    return out, skipped


def _table(name: str, description: str, rows: Sequence[Mapping[str, Any]],
           columns: Mapping[str, str], region: tuple[str, str, Any, list[int]] | None = None):
    """A DynamicTable from row dicts; ``columns`` maps column name -> description;
    ``region`` (name, description, table, rows) adds a column of rows of another table."""
    from hdmf.common import DynamicTable, DynamicTableRegion, VectorData

    cols = [VectorData(name=c, description=d, data=[r[c] for r in rows])
            for c, d in columns.items()]
    if region is not None:
        rname, rdesc, table, idx = region
        cols.insert(0, DynamicTableRegion(name=rname, description=rdesc, data=list(idx),
                                          table=table))
    return DynamicTable(name=name, description=description, columns=cols)


def _add_results(nwb, results: NWBResults, stamps: np.ndarray, order: np.ndarray,
                 source_id: str) -> None:
    import pynwb

    n, Tp = stamps.shape
    module = nwb.create_processing_module(
        name=MODULE, description=f"MR-LFADS posterior means and effectome for NWB session "
                                 f"{source_id!r}; layout in mrlfads docs/DESIGN.md")
    timestamps = stamps[order].reshape(-1)
    first = None
    for s in results.series:
        data = np.ascontiguousarray(s.data[order].reshape(n * Tp, s.data.shape[-1]),
                                    dtype=np.float32)
        ts = pynwb.TimeSeries(name=s.name, data=data, unit=s.unit, description=s.description,
                              timestamps=first if first is not None else timestamps)
        if first is None:
            first = ts
        module.add(ts)
    module.add(_table("series", "which region (and, for messages, which sender) each "
                      "TimeSeries of this module belongs to",
                      [{"series": s.name, "kind": s.kind, "region": s.region,
                        "source": s.source} for s in results.series],
                      {"series": "TimeSeries name", "kind": "rates, heldout_rates, factors, "
                       "inputs or messages", "region": "region (a message's target)",
                       "source": "a message's sending region, else empty"}))
    trial_rows = {int(t): i for i, t in enumerate(np.asarray(nwb.trials.id.data, np.int64))}
    tr = [{"trial_id": int(results.trial_ids[k]), "split": str(results.split[k]),
           "first_sample": i * Tp, "n_samples": Tp} for i, k in enumerate(order)]
    module.add(_table(
        "result_trials", "the trials the results cover, in time order: rows first_sample to "
        "first_sample + n_samples - 1 of every TimeSeries of this module belong to the trial",
        tr, {"trial_id": "id in the trials table", "split": "dataset split (train, valid, "
             "test, perturbed)", "first_sample": "first row in every TimeSeries",
             "n_samples": "rows (reconstructed bins) per trial"},
        region=("trial", "the trial (row of the trials table)", nwb.trials,
                [trial_rows[r["trial_id"]] for r in tr])))
    unit_rows = {int(u): i for i, u in enumerate(np.asarray(nwb.units.id.data, np.int64))}
    module.add(_table(
        "neurons", "the unit behind each column of the rates and heldout_rates TimeSeries",
        results.neurons, {"series": "TimeSeries name", "column": "column of its data",
                          "region": "region", "unit_id": "id in the units table",
                          "heldout": "held out from the encoders (predicted from the others)"},
        region=("unit", "the unit (row of the units table)", nwb.units,
                [unit_rows[int(r["unit_id"])] for r in results.neurons])))
    if results.effectome:
        module.add(_table(
            "effectome", "per pathway source -> target: cut = RMS change of the target's "
            "readout when the pathway alone is silenced (the default effectome); "
            "message_rms = RMS of the message posterior means", results.effectome,
            {"source": "sending region", "target": "receiving region",
             "cut": "cut effectome", "message_rms": "message RMS effectome"}))
    if results.input_effectome:
        module.add(_table(
            "input_effectome", "per region: cut = RMS change of its readout when the inferred "
            "inputs it receives are silenced; rms = RMS of its inferred inputs",
            results.input_effectome, {"region": "region", "cut": "input cut effectome",
                                      "rms": "input RMS"}))
    prov = {k: ("" if v is None else v) for k, v in results.provenance.items()}
    module.add(_table("provenance", "what produced these results", [prov],
                      {k: k.replace("_", " ") for k in prov}))
