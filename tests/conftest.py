"""Session-wide test settings: quiet, deterministic, and pinned to local services only."""
import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see training/cli.py
# no smoothing-baseline cache (training/smoothing.py) outside the tests that ask for one: a
# test must fit what it checks, and nothing is written to the user's cache folder
os.environ["MRLFADS_CACHE_DIR"] = ""

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed_everything():
    """Every test starts from the same RNG state, so failures reproduce."""
    import random

    random.seed(0)
    np.random.seed(0)
    try:
        import torch

        torch.manual_seed(0)
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    yield
pytest_plugins = ["tests.mlflow_fixtures"]
pytest_plugins += ["tests.ray_fixtures"]  # shared session Ray (search/sweep tests)


def require_native_loop():
    """The compiled CPU loop, or a test failure: CI must exercise it, not silently skip it.
    Only an explicit MRLFADS_NATIVE=0 skips."""
    from mrlfads import native

    if not native.enabled():
        pytest.skip("MRLFADS_NATIVE=0: the compiled loop is turned off")
    try:
        native.build()
    except native.NativeUnsupported as err:  # no fcntl (Windows): the Python loop only
        pytest.skip(f"no compiled loop on this platform: {err}")
    except native.NativeBuildError as err:
        pytest.fail(f"the compiled CPU loop did not build: {err}")
    ops = native.ops()
    assert ops is not None
    return ops


@pytest.fixture(params=["native", "python"])
def loop_impl(request, monkeypatch):
    """Run the test once with the compiled CPU loop and once with the Python loop."""
    from mrlfads import loop_ops

    if request.param == "native":
        require_native_loop()
    monkeypatch.setattr(loop_ops, "USE_NATIVE", request.param == "native")
    return request.param
