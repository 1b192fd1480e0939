"""What each sweep trial asks Ray for, and the device it then trains on.

``resources: auto`` (``gpu: auto``, the search spaces' default) is settled once, when the
sweep starts: a trial asks for ``GPU_SHARE`` of a GPU (and the space's CPUs) when the
cluster has GPUs now (``ray.cluster_resources()``) or, while it has none, when a node type
its autoscaler may start declares GPUs (the cluster config the launcher leaves on the head
as ``~/ray_bootstrap_config.yaml``, where ``ray job submit`` runs the driver); otherwise it
asks for CPUs only. A GPU request is what makes the autoscaler start a GPU worker.

In the trial, ``train.device: auto`` follows what Ray gave it: CUDA with a GPU share, the
CPU without one. Ray leaves every GPU of a node visible to a trial that asked for none, so
torch's own "CUDA if present" would put it on a card nobody reserved.
"""
from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

from mrlfads.search_spaces.space import Resources

# Trials per GPU at the default size on an H200 (docs/PERFORMANCE.md, "Trials per GPU"): 4
# trials share a card at 94% of a lone trial's speed each; 8 add 24% throughput but run at
# 58% each, which stretches every PBT generation.
GPU_SHARE = 0.25
# Where the Ray cluster launcher (`ray up`) leaves the cluster config on the head node.
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"


def declared_node_types(path: str | Path = BOOTSTRAP_CONFIG) -> dict[str, dict[str, float]]:
    """Node type -> resources for every type the cluster config lets the autoscaler run (the
    head, and worker types whose ``max_workers`` is above 0); {} without a readable config."""
    import yaml

    try:
        cfg = yaml.safe_load(Path(path).expanduser().read_text())
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(cfg, Mapping) or not isinstance(cfg.get("available_node_types"), Mapping):
        return {}
    cluster_max = cfg.get("max_workers", 1)
    out = {}
    for name, node in cfg["available_node_types"].items():
        if not isinstance(node, Mapping):
            continue
        is_head = name == cfg.get("head_node_type")
        if not is_head and min(node.get("max_workers", cluster_max), cluster_max) <= 0:
            continue
        res = node.get("resources") or {}
        out[str(name)] = {str(k): float(v) for k, v in res.items() if isinstance(v, (int, float))}
    return out


def gpu_node_types(declared: Mapping[str, Mapping[str, float]]) -> list[str]:
    return sorted(name for name, res in declared.items() if res.get("GPU", 0) > 0)


def per_trial(resources: Resources, cluster: Mapping[str, float],
              declared: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, float]:
    """One trial's request from the cluster's resources now (``ray.cluster_resources()``)
    and the node types it may start (``declared_node_types``): an explicit ``gpu`` as
    written; ``gpu: auto`` -> ``GPU_SHARE`` when either has a GPU, else none."""
    if not resources.auto:
        return resources.as_tune()
    gpus = cluster.get("GPU", 0) > 0 or bool(gpu_node_types(declared or {}))
    return {"cpu": float(resources.cpu), "gpu": GPU_SHARE if gpus else 0.0}


def explain(request: Mapping[str, float], cluster: Mapping[str, float],
            declared: Mapping[str, Mapping[str, float]]) -> str:
    """The line a sweep prints about what ``resources: auto`` chose, and why."""
    each = f"{request['cpu']:g} CPU" + (f" + {request['gpu']:g} GPU" if request["gpu"] else "")
    if cluster.get("GPU", 0) > 0:
        why = f"the cluster has {cluster['GPU']:g} GPUs"
    elif request["gpu"]:
        why = ("no GPU is up yet; the autoscaler may start node types with GPUs: "
               + ", ".join(gpu_node_types(declared)))
    else:
        why = "no GPU in the cluster or in node types it may start"
    return f"each trial asks for {each} (resources: auto: {why})"


def trial_resources(resources: Resources, *, echo: bool = False,
                    config_path: str | Path = BOOTSTRAP_CONFIG) -> dict[str, float]:
    """``per_trial`` against the connected Ray cluster; ``echo`` prints ``explain``'s line."""
    if not resources.auto:
        return resources.as_tune()
    import ray

    cluster = ray.cluster_resources()
    declared = {} if cluster.get("GPU", 0) > 0 else declared_node_types(config_path)
    request = per_trial(resources, cluster, declared)
    if echo:
        print(explain(request, cluster, declared), flush=True)
    return request


def device_for(gpu_share: float, cuda_available: bool) -> str:
    """``train.device: auto`` in a trial: CUDA when Ray gave it a GPU share that torch can
    use, else the CPU."""
    return "cuda" if gpu_share > 0 and cuda_available else "cpu"


_fallback_said = False


def trial_device(configured: str) -> str:
    """The device a Tune trial trains on; outside a trial (``mrlfads train``, tests) and for
    any ``train.device`` but ``auto``, ``configured`` as it is. A trial given a GPU share
    that torch cannot use (no CUDA build or driver, logical GPUs) trains on the CPU and says
    so once per process, on stderr (the worker's log)."""
    global _fallback_said
    if configured != "auto":
        return configured
    got = _trial_gpus()
    if got is None:
        return configured
    share, ids = got
    import torch

    cuda = torch.cuda.is_available()
    device = device_for(share, cuda)
    if share > 0 and not cuda and not _fallback_said:
        _fallback_said = True
        print(f"mrlfads: this trial has {share:g} of GPU {','.join(ids) or '?'} but torch sees "
              "no CUDA device: training on the CPU", file=sys.stderr, flush=True)
    return device


def _trial_gpus() -> tuple[float, list[str]] | None:
    """(GPU share, Ray's GPU ids) of the Tune trial this code runs in; None outside one."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    from ray import tune

    with warnings.catch_warnings():  # outside a trial Tune warns and returns None
        warnings.simplefilter("ignore")
        context = tune.get_context()
        if context.get_trial_id() is None:
            return None
        factory = context.get_trial_resources()
    share = float(factory.required_resources.get("GPU", 0)) if factory is not None else 0.0
    return share, [str(i) for i in ray.get_gpu_ids()]
