"""cluster.yaml passes Ray's own autoscaler validation (offline); slow: a PBT sweep on a
2-node local cluster with fractional logical GPUs, each member pinned to a node, exploiting
across nodes at every synchronisation."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
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
def test_two_node_sweep_pins_half_gpu_members_and_every_exploit_crosses_nodes(tiny_dataset_dir,
                                                                            tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.cluster_sweep_check", tiny_dataset_dir, str(tmp_path / "shared")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=450, check=False)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    recs = out["records"]

    assert len(out["trials"]) == 2 and set(out["trials"].values()) == {"TERMINATED"}
    # each member ran on its own node only, and saw one (logical) GPU every time
    node_of = {}
    for r in recs:
        assert node_of.setdefault(r["trial"], r["node"]) == r["node"]
        assert len(r["gpus"]) == 1
    assert len(node_of) == 2 and len(set(node_of.values())) == 2
    # the smoke sweep synchronises at epochs 2, 4 and 6 (the stopper ends it at 8): the worse
    # member exploits the better one each time, restoring a checkpoint the other node wrote
    # to the shared storage path
    assert out["exploits"] == 3
    restored_from = []
    for r in recs:
        if r["restored"]:
            donor = re.search(r"_([0-9a-f]+_\d{5})_", Path(r["restored"]).parent.name).group(1)
            if donor != r["trial"]:
                restored_from.append((node_of[donor], r["node"]))
    assert len(restored_from) == 3 and all(wrote != read for wrote, read in restored_from)
