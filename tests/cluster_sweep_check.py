"""Run by tests/test_cluster_config.py in a subprocess (its own Ray, not the session one):
a smoke PBT sweep of 2 members on a 2-node ray.cluster_utils.Cluster whose nodes advertise
one logical GPU each, every trial asking for half a GPU. Each member is pinned to its own
node (a custom resource per node), so nothing depends on where Ray would place it, and with
2 members every exploit copies the other node's checkpoint. Prints one JSON line."""
from __future__ import annotations

import json
import os
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main(data: str, storage: str) -> None:
    import ray
    from ray import tune
    from ray.cluster_utils import Cluster
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from mrlfads.search_spaces import tune_objects
    from mrlfads.search_spaces.space import Resources
    from mrlfads.training import sweep
    from mrlfads.training.trainable import trainable

    records = Path(storage) / "records"
    records.mkdir(parents=True, exist_ok=True)

    def recording_trainable(config):
        """The real trainable, after writing down where it runs and what it restored (test
        harness; written first and atomically: Tune may kill a trial's process at a pause)."""
        ckpt = tune.get_checkpoint()
        rec = {"trial": tune.get_context().get_trial_id(),
               "node": ray.get_runtime_context().get_node_id(),
               "gpus": [str(g) for g in ray.get_gpu_ids()], "start": time.time(),
               "restored": ckpt.path if ckpt else None}
        name = uuid.uuid4().hex
        (records / f"{name}.tmp").write_text(json.dumps(rec))
        os.replace(records / f"{name}.tmp", records / f"{name}.json")
        trainable(config)

    nodes = ["node_a", "node_b"]  # member i runs where resource nodes[i] is
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "num_gpus": 1, "resources": {nodes[0]: 1}})
    cluster.add_node(num_cpus=2, num_gpus=1, resources={nodes[1]: 1})
    ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
    plan = sweep.plan_sweep(data, smoke_test=True, storage=storage, name="cluster")
    # 2 members, the worse one exploits the better one at every synchronisation
    space = replace(plan.space.with_scheduler(population=2, quantile_fraction=0.5),
                    resources=Resources(cpu=0.5, gpu=0.5))
    plan = sweep.SweepPlan(plan.name, plan.storage, space, plan.run, plan.burn_in, True)

    def pinned(config):  # read once, when Tune creates the trial (an exploit copies config)
        return tune.PlacementGroupFactory([{**{k.upper(): v for k, v in
                                               space.resources.as_tune().items()},
                                            nodes[config["member"]]: 1}])

    param_space = {**tune_objects.param_space(space, plan.run),
                   "member": tune.grid_search([0, 1])}
    tuner = tune.Tuner(
        tune.with_resources(recording_trainable, pinned), param_space=param_space,
        tune_config=tune.TuneConfig(
            scheduler=tune_objects.pbt_scheduler(space, plan.burn_in),
            search_alg=BasicVariantGenerator(random_state=space.seed), num_samples=1,
            reuse_actors=False),
        run_config=sweep.make_run_config(plan, verbose=0))
    summary = sweep.summarize(tuner.fit(), plan)
    recs = [json.loads(p.read_text()) for p in records.glob("*.json")]
    ray.shutdown()
    cluster.shutdown()
    print("RESULT " + json.dumps({"trials": summary.trials, "exploits": summary.exploits,
                                  "records": recs}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
