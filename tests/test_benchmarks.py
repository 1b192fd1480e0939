"""The training benchmark still runs (benchmarks are run by hand; this keeps them from
rotting): smoke sizes, every CPU code path, results as JSON lines."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bench_train_smoke_writes_fast_oracle_paired_and_packing_results(tmp_path):
    out = tmp_path / "bench.jsonl"
    common = [sys.executable, "benchmarks/bench_train.py", "--smoke", "--batches", "4",
              "--threads", "1", "--out", str(out)]
    for extra in (["--steps", "2", "--paired"],
                  ["--pack", "2", "--pack-warmup", "20", "--pack-seconds", "1"]):
        done = subprocess.run(common + extra, cwd=ROOT, capture_output=True, text=True,
                              timeout=240, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    paired = [r for r in rows if r.get("impl") == "paired"]
    single = {r["impl"]: r for r in rows if r.get("mode") == "eager" and "pack" not in r}
    packed = [r for r in rows if "pack" in r]
    assert len(paired) == 1 and paired[0]["speedup"] > 0
    assert set(single) == {"fast", "oracle"}
    for r in single.values():
        assert r["steps"] == 2 and r["trials_per_s"] > 0 and r["flops_per_step"] > 0
        assert 0 < r["fraction_of_matmul"] < 1 and r["peak_rss_mb"] > 0
    # the oracle does the same math region by region: within 15% of the fast path's FLOPs
    assert single["oracle"]["flops_per_step"] == pytest.approx(single["fast"]["flops_per_step"], rel=0.15)
    assert len(packed) == 1 and len(packed[0]["trials_per_s_each"]) == 2
    assert packed[0]["trials_per_s_total"] == pytest.approx(sum(packed[0]["trials_per_s_each"]))
