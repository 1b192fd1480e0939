"""Shared Ray fixtures: ONE local Ray for the whole test session (start ~5 s / 700 MB).

Load from tests/conftest.py with ``pytest_plugins = ["tests.ray_fixtures"]``. Token auth
(on by default since Ray 2.59) is turned off by ``ray_session`` only, for the session
cluster: subprocess drivers joining it (``mrlfads sweep --address``) then need no token.
Everything else keeps Ray's default. Tests that need their own cluster
(ray.cluster_utils.Cluster) run it in a subprocess and never touch this one.
"""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# Ray reads this when it is first imported, which a test module may do before any fixture
# runs: set here (plugin load, before collection), the session cluster and every driver that
# joins it agree on 127.0.0.1, as they do under the CLI.
from mrlfads.training.sweep import local_ray_on_loopback

local_ray_on_loopback()

RAY_CPUS = 2


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray with 2 logical CPUs shared by every test that needs one; yields the GCS
    address so subprocess drivers (``mrlfads sweep --address``) can join it."""
    os.environ["RAY_AUTH_MODE"] = "disabled"  # inherited by the drivers that join it
    import ray

    if not ray.is_initialized():
        # "local": a Ray of its own, even where other Rays run on the machine (without it,
        # ray.init joins the newest of them)
        ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False,
                 log_to_driver=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory) -> str:
    """A small valid Arrow dataset (2 regions x 3+1 neurons, 12 bins), written once."""
    from mrlfads.data_loaders.testing import make_tiny_dataset

    path = tmp_path_factory.mktemp("sweep-data") / "tiny"
    make_tiny_dataset(path)
    return str(path)
