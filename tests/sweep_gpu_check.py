"""Run by tests/test_sweep_gpus.py in a subprocess (its own Ray, not the session one): a
smoke PBT sweep with the default ``resources: auto`` through ``sweep.run_sweep`` on a
ray.cluster_utils.Cluster whose head has CPUs only and whose worker advertises 2 logical
GPUs. The real trainable runs wrapped to record where each trial ran and what it got.
Prints one JSON line; the trials' own stderr reaches this process's stderr."""
from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # every trial's line, not "[repeated 3x]"


def main(data: str, storage: str) -> None:
    import ray
    from ray import tune
    from ray.cluster_utils import Cluster

    from mrlfads.training import resources, sweep, trainable

    records = Path(storage) / "records"
    records.mkdir(parents=True, exist_ok=True)
    real_trainable_for = trainable.trainable_for

    def recording_trainable_for(space):
        real = real_trainable_for(space)

        def recording_trainable(config):
            """The sweep's trainable, plus where it ran and what it got (test harness)."""
            import torch

            ctx = tune.get_context()
            rec = {"trial": ctx.get_trial_id(), "pid": os.getpid(),
                   "node": ray.get_runtime_context().get_node_id(),
                   "gpus": [str(g) for g in ray.get_gpu_ids()],
                   "resources": ctx.get_trial_resources().required_resources,
                   "device": resources.trial_device("auto"),  # what build_trainer gets too
                   "cuda": torch.cuda.is_available(), "start": time.time()}
            try:
                real(config)
            finally:
                rec["end"] = time.time()
                (records / f"{uuid.uuid4().hex}.json").write_text(json.dumps(rec))

        return recording_trainable

    trainable.trainable_for = recording_trainable_for  # build_tuner imports it at call time

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0})
    cluster.add_node(num_cpus=2, num_gpus=2)
    ray.init(address=cluster.address, log_to_driver=True, logging_level="WARNING")
    cluster.wait_for_nodes()
    gpu_nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")]
    plan = sweep.plan_sweep(data, smoke_test=True, storage=storage, name="gpus",
                            run_overrides={"train.epochs": 4})
    chosen = resources.trial_resources(plan.space.resources, echo=True)
    summary = sweep.run_sweep(plan, address=cluster.address, verbose=0)
    recs = [json.loads(p.read_text()) for p in records.glob("*.json")]
    ray.shutdown()
    cluster.shutdown()
    print("RESULT " + json.dumps({
        "auto": plan.space.resources.auto, "chosen": chosen, "trials": summary.trials,
        "gpu_nodes": gpu_nodes, "records": recs}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
