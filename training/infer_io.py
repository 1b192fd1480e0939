"""The output of `mrlfads infer`: an Arrow dataset directory of posterior means per trial.

Layout (docs/DESIGN.md, "As built"):
  outputs.json           regions, pairs, bins covered (tau..T-1), source model and data
  effectome.json         {"regions": [...], "matrix": E[dst][src] (null on the diagonal),
                          "definition": "cut", "message_rms": the paper's E[dst][src],
                          "inputs": {"cut": [per region], "rms": [per region]}}:
                         "matrix" is the cut effectome (docs/MODEL.md, "Identifiable
                         effectome"), "message_rms" the RMS of the message means; "inputs"
                         the inferred-input effectome in region order (absent without
                         inferred inputs): readout change when a region's inputs are
                         silenced, and the RMS of the inputs
  source_dataset.json    the dataset's manifest (NWB sources by name, size and sha256,
                         bin width, trial alignment), for `mrlfads export-nwb`
  metrics.json           validation metrics (with ground-truth scores when the data has them)
  shards/part-00000.arrow  trial_id, split, session (datasets of several sessions: the
                         trial's session name; rates cover every session's neurons, the
                         model's prediction where the trial's session did not record them),
                         rates/<r>, heldout_rates/<r> (regions with
                         held-out neurons), factors/<r>, inputs/<r>,
                         messages/<src>-><dst>: fixed-shape tensors (T - tau, dim)
Rates are in counts per bin (Poisson) or data units (Gaussian): posterior means, or the
average over `--samples N` posterior samples (outputs.json says which).
Written into a temporary sibling directory and renamed into place, so a failed inference
never leaves a half-written output, and never replaces a good one until the new one is whole.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from mrlfads.files import EFFECTOME

OUTPUT_PREFIXES = ("rates/", "heldout_rates/", "factors/", "inputs/", "messages/")


def _tensor_column(arr: np.ndarray) -> pa.Array:
    return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(arr, dtype=np.float32))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def check_out(out_dir: str | os.PathLike, overwrite: bool) -> None:
    """Refuse an existing output without ``overwrite``: called before inference starts and
    again before the write."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"--out {out} already exists: choose another --out or pass "
                              "--overwrite")


@contextlib.contextmanager
def staged_dir(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary sibling of ``out`` to fill; on success it takes ``out``'s place
    (an old ``out`` is moved aside first and removed only after the swap), on any error it
    is deleted and ``out`` is left as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            check_out(out, overwrite)
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_outputs(out_dir: str | os.PathLike, outputs: Mapping[str, np.ndarray],
                  trial_id: np.ndarray, split: np.ndarray, info: Mapping[str, Any],
                  effectome: np.ndarray | None, metrics: Mapping[str, float],
                  overwrite: bool = False, message_rms: np.ndarray | None = None,
                  inputs_effectome: Mapping[str, np.ndarray] | None = None,
                  source_manifest: Mapping[str, Any] | None = None,
                  session: np.ndarray | None = None) -> Path:
    """Write one inference output directory atomically; returns its path. ``effectome``
    is the cut effectome, ``message_rms`` the paper's message-norm one,
    ``inputs_effectome`` {"cut": (R,), "rms": (R,)} the inferred inputs' one and
    ``source_manifest`` the dataset's manifest (without local paths)."""
    out = Path(out_dir)
    check_out(out, overwrite)
    with staged_dir(out, overwrite) as tmp:
        cols = {"trial_id": pa.array(trial_id.astype(np.int64)), "split": pa.array(split.astype(str))}
        if session is not None:
            cols["session"] = pa.array(np.asarray(session).astype(str))
        for key in sorted(outputs):
            # zero-width outputs (a region without held-out neurons) are left out
            if key.startswith(OUTPUT_PREFIXES) and outputs[key].shape[-1] > 0:
                cols[key] = _tensor_column(outputs[key])
        table = pa.table(cols)
        (tmp / "shards").mkdir()
        with ipc.new_file(str(tmp / "shards" / "part-00000.arrow"), table.schema) as writer:
            writer.write_table(table)
        regions = list(info["regions"])
        (tmp / "outputs.json").write_text(json.dumps(_json_safe(dict(info)), indent=2))
        if effectome is not None:
            def rows(E: np.ndarray) -> list[list[float | None]]:
                return [[None if r == s else float(E[r, s]) for s in range(len(regions))]
                        for r in range(len(regions))]

            payload = {"regions": regions, "matrix": rows(effectome), "index": "matrix[dst][src]",
                       "definition": "cut: RMS change of dst's readout when src->dst is silenced"}
            if message_rms is not None:
                payload["message_rms"] = rows(message_rms)
            if inputs_effectome is not None:
                payload["inputs"] = {
                    k: [None if not math.isfinite(float(v)) else float(v) for v in inputs_effectome[k]]
                    for k in ("cut", "rms")}
                payload["inputs"]["index"] = "inputs[cut|rms][region]"
                payload["inputs"]["definition"] = (
                    "cut: RMS change of a region's readout when the inferred inputs it "
                    "receives are silenced; rms: RMS of the inferred inputs")
            (tmp / EFFECTOME).write_text(json.dumps(payload, indent=2))
        (tmp / "metrics.json").write_text(json.dumps(_json_safe(dict(metrics)), indent=2))
        if source_manifest is not None:
            (tmp / "source_dataset.json").write_text(
                json.dumps(dict(source_manifest), indent=2, sort_keys=True) + "\n")
    return out


def read_outputs(out_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Column -> numpy array of an inference output (tensor columns are (trials, T', dim))."""
    path = Path(out_dir) / "shards" / "part-00000.arrow"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {out_dir} is not an `mrlfads infer` output")
    with pa.memory_map(str(path)) as source:
        table = ipc.open_file(source).read_all()
    out = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if isinstance(col.type, pa.FixedShapeTensorType):
            out[name] = col.to_numpy_ndarray().copy()
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out
