"""Lazy reading of one NWB file: unit labels and trials eagerly (small), spikes streamed.

Spike times stay in the HDF5 file; `iter_unit_spikes` reads them through the ragged
`spike_times_index` in blocks of consecutive units, so memory holds one block at a time,
never the whole file. Every structural problem raises IngestError naming the file and fix.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from mrlfads.data_loaders.errors import IngestError

SPIKE_BLOCK = 2_000_000  # spikes read per HDF5 call (~16 MB of float64)


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def as_strings(values) -> np.ndarray:
    """Object array of str from an HDF5 string column (str or bytes)."""
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


@contextlib.contextmanager
def open_nwb(path: str | os.PathLike) -> Iterator[NWBSession]:
    """Open `path` read-only as an NWBSession; a non-NWB file is an IngestError. An https://
    or s3:// URI is streamed (data_loaders/nwb/remote.py): only what is read is fetched, and
    the session's path is the URI without credentials."""
    import pynwb

    from mrlfads.data_loaders.nwb import remote

    path = os.fspath(path)
    shown, size, fileobj, h5 = remote.display(path), None, None, None
    if remote.is_remote(path):
        import h5py

        fileobj, size = remote.open_remote(path)
    elif not os.path.isfile(path):
        raise IngestError(f"{path}: no such file; check the path of the NWB file to ingest")
    try:
        if fileobj is not None:
            h5 = h5py.File(fileobj, "r", rdcc_nbytes=0)  # no chunk cache: HDF5 then reads
            # only the asked-for part of an uncompressed chunk, not the whole chunk
            io = pynwb.NWBHDF5IO(file=h5, mode="r")
        else:
            io = pynwb.NWBHDF5IO(path, "r")
    except Exception as e:
        _close(h5, fileobj)
        raise IngestError(f"{shown}: not an NWB file (cannot open it as HDF5/NWB: {type(e).__name__}: "
                          f"{_clean(e)}); pass NWB 2.x files written by pynwb or MatNWB") from None
    try:
        try:
            nwbfile = io.read()
        except Exception as e:
            raise IngestError(f"{shown}: not an NWB file (HDF5 but unreadable as NWB: "
                              f"{type(e).__name__}: {_clean(e)}); pass NWB 2.x files") from None
        yield NWBSession(shown, nwbfile, size)
    finally:
        io.close()
        _close(h5, fileobj)


def _close(*handles) -> None:
    for h in handles:
        if h is not None:
            with contextlib.suppress(Exception):
                h.close()


def _clean(e: Exception) -> str:
    """An exception's text with any URI in it stripped of credentials."""
    from mrlfads.tracking.redact import redact_text

    return redact_text(str(e))


@dataclass
class NWBSession:
    """One open NWB file. Arrays are read on demand; spike times are never all loaded."""

    path: str          # what errors and provenance name: a URI without its credentials
    nwbfile: object
    remote_size: int | None = None  # bytes of a streamed remote file (None: a local file)

    # -- units -----------------------------------------------------------------------------
    @property
    def units(self):
        units = self.nwbfile.units
        if units is None or len(units) == 0:
            raise IngestError(f"{self.path}: no Units table (nwbfile.units is empty); ingest needs "
                              "spike-sorted units: add them with nwbfile.add_unit(spike_times=...)")
        return units

    def unit_ids(self) -> np.ndarray:
        return np.asarray(self.units.id.data[:], dtype=np.int64)

    def unit_column(self, name: str, flag: str) -> np.ndarray:
        units = self.units
        if name not in units.colnames:
            raise IngestError(f"{self.path}: Units table has no column {name!r} (asked for by {flag}); "
                              f"its columns are {list(units.colnames)}")
        return np.asarray(units[name].data[:])

    def unit_labels(self, region_column: str | None) -> np.ndarray:
        """Region label of each unit: `region_column`, else its first electrode's location."""
        if region_column is not None:
            return as_strings(self.unit_column(region_column, "--region-column"))
        units = self.units
        if "electrodes" not in units.colnames:
            raise IngestError(
                f"{self.path}: units have no 'electrodes' column, so their regions are unknown; "
                "pass --region-column COL naming a Units column that holds each unit's region")
        region = units["electrodes"]
        if hasattr(region, "target"):  # ragged: VectorIndex over a DynamicTableRegion
            ends = np.asarray(region.data[:], dtype=np.int64)
            starts = np.concatenate([[0], ends[:-1]])
            if np.any(ends <= starts):
                bad = self.unit_ids()[ends <= starts][:5].tolist()
                raise IngestError(f"{self.path}: units {bad} have no electrodes, so their regions "
                                  "are unknown; pass --region-column COL instead")
            region = region.target
            rows = np.asarray(region.data[:], dtype=np.int64)[starts]
        else:
            rows = np.asarray(region.data[:], dtype=np.int64)
        table = region.table
        if "location" not in table.colnames:
            raise IngestError(f"{self.path}: electrodes table has no 'location' column; pass "
                              "--region-column COL naming a Units column with regions")
        locations = as_strings(table["location"].data[:])
        return locations[rows]

    def obs_intervals(self, rows: np.ndarray) -> dict[int, np.ndarray] | None:
        """{row: (k, 2) start/stop seconds} of the Units table's ``obs_intervals`` for unit
        ``rows``: when each unit was recorded (None: the file does not say)."""
        units = self.units
        if "obs_intervals" not in units.colnames:
            return None
        column = units["obs_intervals"]
        ends = np.asarray(column.data[:], dtype=np.int64)
        starts = np.concatenate([[0], ends[:-1]])
        data = np.asarray(column.target.data[:], dtype=np.float64).reshape(-1, 2)
        return {int(r): data[starts[r]:ends[r]] for r in rows}

    def spike_index(self) -> np.ndarray:
        """End offsets of each unit's spike times in the flat spike_times dataset."""
        units = self.units
        if "spike_times" not in units.colnames:
            raise IngestError(f"{self.path}: Units table has no 'spike_times' column; ingest needs "
                              "spike times per unit")
        return np.asarray(units["spike_times"].data[:], dtype=np.int64)

    def iter_unit_spikes(self, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """(row, spike times) for each unit row in `rows` (ascending), read in blocks."""
        ends = self.spike_index()
        starts = np.concatenate([[0], ends[:-1]])
        data = self.units["spike_times"].target.data
        i = 0
        rows = np.asarray(rows, dtype=np.int64)
        while i < len(rows):
            j = i + 1  # grow a block of consecutive rows up to SPIKE_BLOCK spikes
            while (j < len(rows) and rows[j] == rows[j - 1] + 1
                   and ends[rows[j]] - starts[rows[i]] <= SPIKE_BLOCK):
                j += 1
            lo, hi = starts[rows[i]], ends[rows[j - 1]]
            block = np.asarray(data[lo:hi], dtype=np.float64)
            for r in rows[i:j]:
                yield int(r), block[starts[r] - lo:ends[r] - lo]
            i = j

    # -- trials ----------------------------------------------------------------------------
    @property
    def trials(self):
        trials = self.nwbfile.trials
        if trials is None or len(trials) == 0:
            raise IngestError(f"{self.path}: the trials table is empty or missing; ingest cuts data "
                              "into trials: add them with nwbfile.add_trial(start_time=, stop_time=)")
        return trials

    def trial_ids(self) -> np.ndarray:
        return np.asarray(self.trials.id.data[:], dtype=np.int64)

    def trial_column(self, name: str, flag: str) -> np.ndarray:
        trials = self.trials
        if name not in trials.colnames:
            raise IngestError(f"{self.path}: trials table has no column {name!r} (asked for by "
                              f"{flag}); its columns are {list(trials.colnames)}")
        return np.asarray(trials[name].data[:])

    def trial_columns(self) -> tuple[str, ...]:
        return tuple(self.trials.colnames)

    # -- time series -----------------------------------------------------------------------
    def timeseries(self, name: str):
        """The TimeSeries `name` from acquisition, stimulus or a processing module."""
        f = self.nwbfile
        for group in (f.acquisition, f.stimulus):
            if name in group:
                return group[name]
        for module in f.processing.values():
            if name in module.data_interfaces:
                return module.data_interfaces[name]
        raise IngestError(f"{self.path}: no TimeSeries {name!r} in acquisition, stimulus or "
                          f"processing (asked for by --ext-timeseries); acquisition has "
                          f"{list(f.acquisition)}, stimulus has {list(f.stimulus)}")

    def timeseries_samples(self, name: str, t_lo: float, t_hi: float) -> tuple[np.ndarray, np.ndarray]:
        """(times (n,), values (n, D)) of TimeSeries `name` from the last sample before
        `t_lo` to `t_hi`; only that slice is read from disk."""
        ts = self.timeseries(name)
        n = ts.data.shape[0]
        if ts.timestamps is not None:
            times = np.asarray(ts.timestamps[:], dtype=np.float64)
        else:
            times = ts.starting_time + np.arange(n, dtype=np.float64) / ts.rate
        lo = max(int(np.searchsorted(times, t_lo, side="right")) - 1, 0)
        hi = int(np.searchsorted(times, t_hi, side="right"))
        values = np.asarray(ts.data[lo:hi], dtype=np.float64)
        values = values.reshape(len(values), -1)  # (n,) or (n, D) -> (n, D)
        return times[lo:hi], values
