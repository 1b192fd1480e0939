"""A local Ray of one test's own, run in a subprocess by tests/ray_fixtures.py `own_ray` (a
process belongs to one Ray at a time, and the test process already belongs to the session's).

Prints ``ADDRESS <gcs address>`` once Ray is up. Then each ``status`` line read from stdin
gets one JSON line back: the free logical CPUs and every actor not dead, as
[class, state, job id, pid], read from the GCS (the state API needs the dashboard, which
this Ray does not run). When stdin closes, Ray is shut down and the process exits.

    python -m tests.ray_head NUM_CPUS
"""
from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

# how every test's local Ray starts (the session's too, tests/ray_fixtures.py): "local" is a
# Ray of its own even where other Rays run on the machine (without it, ray.init joins the
# newest of them); no dashboard, and the workers' logs stay out of the test output
LOCAL_RAY = {"address": "local", "include_dashboard": False, "log_to_driver": False,
             "logging_level": "WARNING"}


def main(num_cpus: int) -> None:
    import ray
    from ray._private import state

    ray.init(num_cpus=num_cpus, **LOCAL_RAY)
    print("ADDRESS " + ray.get_runtime_context().gcs_address, flush=True)
    for line in sys.stdin:
        if line.strip() == "status":
            actors = [[a["ActorClassName"], a["State"], a["JobID"], a["Pid"]]
                      for a in state.actors().values() if a["State"] != "DEAD"]
            print(json.dumps({"cpu": ray.available_resources().get("CPU", 0.0),
                              "actors": actors}), flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]))
