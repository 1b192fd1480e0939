"""Bytes fetched by a streamed ingest against the NWB file's size (docs/PERFORMANCE.md).

Writes a session with many units (synthetic_session), serves it from 127.0.0.1 with the
Range-honouring server the tests use, and ingests it over http:// keeping 1 region of
--regions-of, then all of them. Prints file size, bytes fetched, requests and seconds.

    .venv/bin/python benchmarks/bench_remote_ingest.py --units 1000 --trials 200
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from mrlfads.data_loaders.nwb import IngestOptions, ingest
from mrlfads.data_loaders.nwb.range_server import RangeServer
from mrlfads.data_loaders.nwb.testing import synthetic_session


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--units", type=int, default=1000)
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--regions-of", type=int, default=20, help="regions the units spread over")
    a = p.parse_args()
    regions = tuple(f"R{i}" for i in range(a.regions_of))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        path = synthetic_session(os.path.join(tmp, "session.nwb"), n_units=a.units,
                                 n_trials=a.trials, regions=regions)
        size = os.path.getsize(path)
        print(f"wrote {a.units} units x {a.trials} trials: {size / 1e6:.1f} MB "
              f"({time.perf_counter() - t:.1f} s)")
        with RangeServer(tmp) as server:
            for keep in ((regions[0],), regions):
                server.reset()
                t = time.perf_counter()
                ingest([f"{server.url}/session.nwb"], os.path.join(tmp, "ds"),
                       IngestOptions(regions=keep), overwrite=True)
                dt = time.perf_counter() - t
                units = a.units * len(keep) // len(regions)
                print(f"{units:5d} of {a.units} units: fetched {server.bytes_sent / 1e6:7.2f} MB "
                      f"= {100 * server.bytes_sent / size:5.1f}% of the file in "
                      f"{server.requests} requests, {dt:.1f} s")


if __name__ == "__main__":
    main()
