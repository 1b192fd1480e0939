"""Dependencies point one way (ARCHITECTURE.md): each package is imported in a fresh
interpreter and must not drag in what it has no business knowing about."""
import subprocess
import sys

import pytest

CASES = {
    # the package a notebook imports: its API loads on first use (mrlfads/__init__.py)
    "mrlfads": ["torch", "ray", "mlflow", "pyarrow", "pynwb", "data_loaders", "training",
                "tracking", "search_spaces"],
    # the model stands alone: torch + numpy only
    "mrlfads.model, mrlfads.loss, mrlfads.metrics, mrlfads.inference, mrlfads.oracle":
        ["ray", "mlflow", "pyarrow", "pynwb", "data_loaders", "training", "tracking",
         "search_spaces"],
    # data knows nothing of ours, nor of Ray or MLflow
    "data_loaders.reader, data_loaders.writer, data_loaders.torch_data, data_loaders.simulate":
        ["ray", "mlflow", "pynwb", "mrlfads", "training", "tracking", "search_spaces"],
    # the training loop never imports Ray or MLflow; only the trainable/sweep do
    "training.loop, training.fit, training.evaluate, training.checkpoint":
        ["ray", "mlflow", "tracking"],
    # tracking builds on the model, never on training or data
    "tracking.interface, tracking.memory, tracking.figures, tracking.registry":
        ["training", "data_loaders", "search_spaces"],
    # search spaces are data: no Ray until they are turned into Tune objects
    "search_spaces.space, search_spaces.explore": ["ray", "mlflow", "torch", "training"],
    # the Python API imports Ray and MLflow only inside a sweep, a promotion or tracking
    "training.api": ["torch", "ray", "mlflow", "pyarrow", "pynwb"],
    # `mrlfads --help` must be instant: no heavy imports at all
    "training.cli": ["torch", "ray", "mlflow", "pyarrow", "pynwb"],
}


@pytest.mark.parametrize("modules", list(CASES))
def test_package_imports_only_what_it_may(modules):
    forbidden = CASES[modules]
    code = (f"import sys, {modules}\n"
            f"bad = [m for m in {forbidden!r} if m in sys.modules]\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"importing {modules} also imported {out.stdout.strip()}"


def test_the_api_names_load_on_first_use_without_ray_or_mlflow():
    code = ("import sys, mrlfads\n"
            "from training import api\n"
            "assert all(getattr(mrlfads, n) is getattr(api, n) for n in api.__all__)\n"
            "assert sorted(mrlfads.__all__) == sorted(api.__all__)\n"
            "print(','.join(m for m in ('ray', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""

