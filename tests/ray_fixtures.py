"""Shared Ray fixtures: ONE local Ray for the whole test session (start ~5 s / 700 MB).

Load from tests/conftest.py with ``pytest_plugins = ["tests.ray_fixtures"]``. Token auth
(on by default since Ray 2.59) is turned off by ``ray_session`` only, for the session
cluster: subprocess drivers joining it (``mrlfads sweep --address``) then need no token.
Everything else keeps Ray's default. Tests that need their own cluster
(ray.cluster_utils.Cluster) run it in a subprocess and never touch this one; so does
``own_ray``, for a test whose checks need every CPU of a Ray free of what earlier tests left.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Ray reads this when it is first imported, which a test module may do before any fixture
# runs: set here (plugin load, before collection), the session cluster and every driver that
# joins it agree on 127.0.0.1, as they do under the CLI.
from mrlfads.training.sweep import local_ray_on_loopback
from tests.ray_head import LOCAL_RAY

local_ray_on_loopback()

RAY_CPUS = 2


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 logical CPUs shared by every test that needs one; yields the GCS
    address so subprocess drivers (``mrlfads sweep --address``) can join it."""
    os.environ["RAY_AUTH_MODE"] = "disabled"  # inherited by the drivers that join it
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=RAY_CPUS, **LOCAL_RAY)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


class OwnRay:
    """A local Ray of one test's own (tests/ray_head.py in a subprocess, token auth off like
    the session's): its GCS address for drivers to join, and what holds it."""

    def __init__(self, num_cpus: int = RAY_CPUS):
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.ray_head", str(num_cpus)],
                                     cwd=Path(__file__).resolve().parents[1], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("ADDRESS "):
            self.close()
            raise RuntimeError(f"tests/ray_head.py did not start a Ray: {line!r}")
        self.address = line.split()[1]
        self.num_cpus = num_cpus

    def status(self) -> dict:
        """{"cpu": free logical CPUs, "actors": [[class, state, job, pid], ...] not dead}."""
        self.proc.stdin.write("status\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def wait_for_no_actors(self, what: str, seconds: float = 300) -> None:
        """Wait until no actor is alive, or fail naming those that are. A driver that dies
        takes its job's actors with it, but only once Ray notices, which on the loaded 2-core
        machine has taken longer than 150 s."""
        end = time.monotonic() + seconds
        now = self.status()
        while now["actors"] and time.monotonic() < end:
            time.sleep(0.5)
            now = self.status()
        if now["actors"]:
            pytest.fail(f"{what}: actors still alive after {seconds:g} s: {now}")

    def close(self) -> None:
        self.proc.stdin.close()  # ray_head shuts its Ray down and exits
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def own_ray():
    """A 2-CPU local Ray for this test alone (about 5 s to start), for a test whose sweep
    needs all of it: in the full suite on the CI machine the session Ray has kept one of its
    2 CPUs held for over 300 s with no actor and no placement group alive."""
    head = OwnRay()
    yield head
    head.close()


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory) -> str:
    """A small valid Arrow dataset (2 regions x 3+1 neurons, 12 bins), written once."""
    from mrlfads.data_loaders.testing import make_tiny_dataset

    path = tmp_path_factory.mktemp("sweep-data") / "tiny"
    make_tiny_dataset(path)
    return str(path)
