"""cluster.yaml passes Ray's own autoscaler validation (offline); slow: a PBT sweep on a
2-node local cluster with fractional logical GPUs, exploiting across nodes."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster_cfg() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_schema_validation(cluster_cfg):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cluster_cfg))  # jsonschema against ray-schema.json + checks


def test_cluster_yaml_starts_with_the_exact_commands():
    first = (ROOT / "cluster.yaml").read_text().splitlines()[0]
    assert first.startswith("# ray get-auth-token --generate && ray up cluster.yaml")
    assert "RAY_AUTH_MODE=token ray job submit --address http://localhost:8265" in first
    assert "-- mrlfads sweep --data s3://" in first and "--storage s3://" in first
    assert "--address auto" in first


def test_cluster_has_a_cpu_head_and_1_and_4_gpu_workers_that_install_the_project(cluster_cfg):
    types = cluster_cfg["available_node_types"]
    head = types[cluster_cfg["head_node_type"]]
    assert head["resources"]["GPU"] == 0
    gpus = sorted(t["resources"]["GPU"] for n, t in types.items() if n != cluster_cfg["head_node_type"])
    assert gpus == [1, 4]
    for name, t in types.items():
        if name != cluster_cfg["head_node_type"]:
            assert t["min_workers"] == 0 and t["max_workers"] >= 1
    assert sum(t.get("max_workers", 0) for t in types.values()) <= cluster_cfg["max_workers"]
    mounted = list(cluster_cfg["file_mounts"])[0]
    assert any(f"pip install -e {mounted}" in c for c in cluster_cfg["setup_commands"])


def test_every_node_runs_ray_with_token_auth_and_no_public_dashboard(cluster_cfg):
    """The token made on the user's machine goes to every node; nothing binds 0.0.0.0."""
    assert cluster_cfg["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    starts = cluster_cfg["head_start_ray_commands"] + cluster_cfg["worker_start_ray_commands"]
    assert [c for c in starts if "ray start" in c and "RAY_AUTH_MODE=token ray start" not in c] == []
    assert "0.0.0.0" not in (ROOT / "cluster.yaml").read_text()
    assert "RAY_AUTH_MODE := disabled" not in (ROOT / "Makefile").read_text()


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_two_node_cluster_packs_half_gpu_trials_and_exploits_across_nodes(tiny_dataset_dir, tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.cluster_sweep_check", tiny_dataset_dir, str(tmp_path / "shared")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=450)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    recs = out["records"]

    assert len(out["trials"]) == 4 and set(out["trials"].values()) == {"TERMINATED"}
    assert len({r["node"] for r in recs}) == 2  # trials ran on both nodes
    assert all(len(r["gpus"]) == 1 for r in recs)  # each trial saw one (logical) GPU
    # packing: at any moment at most 2 half-GPU trials share a node's GPU
    by_gpu = defaultdict(list)
    for r in recs:
        by_gpu[(r["node"], r["gpus"][0])].append(r)
    for runs in by_gpu.values():
        for r in runs:
            overlapping = sum(1 for o in runs if o["start"] < r["end"] and r["start"] < o["end"])
            assert overlapping <= 2
    # exploits restored a donor's checkpoint through the shared storage path; at least one
    # restored on a different node from the one that wrote it
    assert out["exploits"] >= 1
    cross = 0
    for r in recs:
        if r["restored"]:
            donor = re.search(r"_([0-9a-f]+_\d{5})_", Path(r["restored"]).parent.name).group(1)
            written = [d for d in recs if d["trial"] == donor and d["start"] < r["start"]]
            if donor != r["trial"] and written and max(written, key=lambda d: d["start"])["node"] != r["node"]:
                cross += 1
    assert cross >= 1
