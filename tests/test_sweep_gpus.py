"""Sweeps use GPUs by default: ``resources: auto`` settled against the cluster (a pure rule
from cluster resources and declared node types to one trial's request), the trial's device
following its GPU share, and (slow) a sweep on a 2-node local cluster with logical GPUs."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from mrlfads.search_spaces.space import Resources, SearchSpace
from mrlfads.training import resources
from mrlfads.training.resources import GPU_SHARE

ROOT = Path(__file__).resolve().parents[1]
AUTO = Resources()
LR = {"train.lr": {"bounds": [1e-4, 1e-3]}}


# ------------------------------------------------------------------ the rule (pure)
def test_auto_asks_for_a_quarter_gpu_when_the_cluster_has_gpus_and_cpus_otherwise():
    assert GPU_SHARE == 0.25  # 4 trials per card: docs/PERFORMANCE.md, "Trials per GPU"
    assert resources.per_trial(AUTO, {"CPU": 16.0, "GPU": 1.0}) == {"cpu": 1.0, "gpu": 0.25}
    assert resources.per_trial(AUTO, {"CPU": 8.0}) == {"cpu": 1.0, "gpu": 0.0}
    assert resources.per_trial(AUTO, {"CPU": 8.0, "GPU": 0.0}) == {"cpu": 1.0, "gpu": 0.0}
    # the space's CPUs are kept either way (a smoke sweep's 0.5, a user's 2)
    assert resources.per_trial(Resources(cpu=2, gpu="auto"), {"GPU": 4.0}) == {"cpu": 2.0,
                                                                               "gpu": 0.25}


def test_explicit_cpu_and_gpu_are_taken_as_written_whatever_the_cluster():
    assert resources.per_trial(Resources(cpu=2, gpu=0), {"CPU": 8.0, "GPU": 4.0}) == {
        "cpu": 2.0, "gpu": 0.0}
    assert resources.per_trial(Resources(cpu=1, gpu=0.5), {"CPU": 8.0}) == {"cpu": 1.0,
                                                                            "gpu": 0.5}


def test_an_autoscaling_cluster_without_gpus_up_yet_asks_for_them_from_its_node_types():
    head_only = {"CPU": 8.0}
    declared = {"head.cpu": {"CPU": 8.0, "GPU": 0.0}, "worker.gpu1": {"CPU": 4.0, "GPU": 1.0}}
    assert resources.per_trial(AUTO, head_only, declared) == {"cpu": 1.0, "gpu": 0.25}
    cpu_types = {"head.cpu": {"CPU": 8.0}, "worker.cpu": {"CPU": 32.0}}
    assert resources.per_trial(AUTO, head_only, cpu_types) == {"cpu": 1.0, "gpu": 0.0}
    assert "autoscaler may start node types with GPUs: worker.gpu1" in resources.explain(
        {"cpu": 1.0, "gpu": 0.25}, head_only, declared)
    assert "no GPU" in resources.explain({"cpu": 1.0, "gpu": 0.0}, head_only, cpu_types)
    assert resources.explain({"cpu": 0.5, "gpu": 0.25}, {"GPU": 2.0}, {}) == (
        "each trial asks for 0.5 CPU + 0.25 GPU (resources: auto: the cluster has 2 GPUs)")


def test_the_readme_cluster_recipe_declares_gpu_workers_so_its_trials_ask_for_gpus():
    """cluster.yaml as `ray up` leaves it on the head: the head is CPU-only, so before any
    worker is up only the declared node types can say the sweep should ask for GPUs."""
    declared = resources.declared_node_types(ROOT / "cluster.yaml")
    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert declared[cfg["head_node_type"]]["GPU"] == 0
    assert resources.gpu_node_types(declared) == ["worker.gpu1", "worker.gpu4"]
    head = {"CPU": declared[cfg["head_node_type"]]["CPU"]}
    request = resources.per_trial(SearchSpace.from_yaml(ROOT / "search_spaces/pbt.yaml").resources,
                                  head, declared)
    assert request == {"cpu": 1.0, "gpu": 0.25}
    # one GPU worker of the smallest type runs 4 such trials (its CPUs are no tighter)
    gpu1 = declared["worker.gpu1"]
    assert min(gpu1["GPU"] / request["gpu"], gpu1["CPU"] / request["cpu"]) == 4


def test_declared_node_types_skip_types_the_autoscaler_may_not_start(tmp_path):
    cfg = {"max_workers": 4, "head_node_type": "head",
           "available_node_types": {
               "head": {"resources": {"CPU": 4}},
               "gpu_off": {"min_workers": 0, "max_workers": 0, "resources": {"CPU": 4, "GPU": 1}},
               "gpu_on": {"min_workers": 0, "resources": {"CPU": 4, "GPU": 1}}}}
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert set(resources.declared_node_types(path)) == {"head", "gpu_on"}
    path.write_text(yaml.safe_dump({**cfg, "max_workers": 0}))  # no worker at all
    assert set(resources.declared_node_types(path)) == {"head"}
    path.write_text("available_node_types: [unclosed")
    assert resources.declared_node_types(path) == {}
    assert resources.declared_node_types(tmp_path / "missing.yaml") == {}


def test_resources_auto_is_the_default_and_parses_in_both_spellings():
    default = SearchSpace.from_dict({"kind": "pbt", "hyperparameters": LR}).resources
    assert default == Resources(cpu=1.0, gpu="auto") and default.auto
    assert SearchSpace.from_dict({"kind": "pbt", "resources": "auto",
                                  "hyperparameters": LR}).resources == default
    for name in ("pbt", "optuna"):
        space = SearchSpace.from_yaml(ROOT / "search_spaces" / f"{name}.yaml")
        assert space.resources == default
        assert SearchSpace.from_json(space.to_json()) == space
    with pytest.raises(ValueError, match="trial_resources"):
        default.as_tune()  # only the cluster can say what auto means
    with pytest.raises(Exception, match=r"`resources`: must be 'auto' or a mapping"):
        SearchSpace.from_dict({"kind": "pbt", "resources": "gpu", "hyperparameters": LR})
    with pytest.raises(Exception, match=r"`resources.gpu`: must be 'auto' or a number"):
        SearchSpace.from_dict({"kind": "pbt", "resources": {"gpu": "all"}, "hyperparameters": LR})


def test_a_trial_trains_on_cuda_only_with_a_gpu_share_torch_can_use():
    assert resources.device_for(0.25, cuda_available=True) == "cuda"
    assert resources.device_for(0.25, cuda_available=False) == "cpu"  # logical GPUs only
    # Ray leaves every GPU visible to a trial that asked for none: it must not use them
    assert resources.device_for(0.0, cuda_available=True) == "cpu"


def test_outside_a_trial_the_configured_device_is_kept():
    """`mrlfads train` and Ray-free tests build trainers through the same function."""
    assert resources.trial_device("auto") == "auto"
    assert resources.trial_device("cpu") == "cpu"


def test_the_gpu_share_constant_points_at_an_existing_measurement():
    text = (ROOT / "docs" / "PERFORMANCE.md").read_text()
    section = text.split("## Trials per GPU", 1)[1]
    assert "| 4 |" in section and f"gpu: {GPU_SHARE}" in section


# ------------------------------------------------------------------ a real sweep (slow)
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_auto_sweep_places_quarter_gpu_trials_on_the_gpu_node_and_falls_back_to_cpu(
        tiny_dataset_dir, tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_DEDUP_LOGS": "0"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.sweep_gpu_check", tiny_dataset_dir, str(tmp_path / "s")],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    recs = out["records"]

    assert out["auto"] is True  # the default space, as the CLI plans it
    assert out["chosen"] == {"cpu": 0.5, "gpu": GPU_SHARE}  # smoke: half a CPU each
    assert ("each trial asks for 0.5 CPU + 0.25 GPU (resources: auto: the cluster has 2 GPUs)"
            in proc.stdout)
    assert len(out["trials"]) == 4 and set(out["trials"].values()) == {"TERMINATED"}
    assert {r["trial"] for r in recs} == set(out["trials"])
    assert len(out["gpu_nodes"]) == 1
    for r in recs:
        # on the GPU worker, never on the CPU-only head (which had 2 free CPUs)
        assert r["node"] == out["gpu_nodes"][0]
        assert r["resources"] == {"CPU": 0.5, "GPU": GPU_SHARE}  # as Tune reports them
        assert len(r["gpus"]) == 1 and r["gpus"][0] in ("0", "1")
        assert r["device"] == ("cuda" if r["cuda"] else "cpu")
    # packed: trials shared a logical GPU, never more than 4 quarter-GPU trials at a time
    sharing = [sum(o["start"] < r["end"] and r["start"] < o["end"]
                   for o in recs if o["gpus"] == r["gpus"]) for r in recs]
    assert 2 <= max(sharing) <= 4
    # without CUDA, each trial process said once that it trains on the CPU
    said = Counter(re.search(r"pid=(\d+)", line).group(1)
                   for line in proc.stderr.splitlines() + proc.stdout.splitlines()
                   if "but torch sees no CUDA device: training on the CPU" in line)
    fallback_pids = {str(r["pid"]) for r in recs if not r["cuda"]}
    assert set(said) == fallback_pids and set(said.values()) <= {1}
