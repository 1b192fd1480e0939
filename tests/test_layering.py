"""Dependencies point one way (docs/DESIGN.md): each package is imported in a fresh
interpreter and must not drag in what it has no business knowing about."""
import subprocess
import sys

import pytest

OURS = ["mrlfads.data_loaders", "mrlfads.training", "mrlfads.tracking", "mrlfads.search_spaces"]
CASES = {
    # the package a notebook imports: its API loads on first use (mrlfads/__init__.py)
    "mrlfads": ["torch", "ray", "mlflow", "pyarrow", "pynwb", *OURS],
    # the model stands alone: torch + numpy only
    "mrlfads.model, mrlfads.loss, mrlfads.metrics, mrlfads.inference, mrlfads.oracle":
        ["ray", "mlflow", "pyarrow", "pynwb", *OURS],
    # data knows nothing of ours, nor of Ray or MLflow
    "mrlfads.data_loaders.reader, mrlfads.data_loaders.writer, mrlfads.data_loaders.torch_data, "
    "mrlfads.data_loaders.simulate":
        ["ray", "mlflow", "pynwb", "mrlfads.model", "mrlfads.training", "mrlfads.tracking",
         "mrlfads.search_spaces"],
    # the training loop never imports Ray or MLflow; only the trainable/sweep do
    "mrlfads.training.loop, mrlfads.training.fit, mrlfads.training.evaluate, "
    "mrlfads.training.checkpoint":
        ["ray", "mlflow", "mrlfads.tracking"],
    # tracking builds on the model, never on training or data
    "mrlfads.tracking.interface, mrlfads.tracking.memory, mrlfads.tracking.figures, "
    "mrlfads.tracking.registry":
        ["mrlfads.training", "mrlfads.data_loaders", "mrlfads.search_spaces"],
    # search spaces are data: no Ray until they are turned into Tune objects
    "mrlfads.search_spaces.space, mrlfads.search_spaces.explore":
        ["ray", "mlflow", "torch", "mrlfads.training"],
    # the Python API imports Ray and MLflow only inside a sweep, a promotion or tracking
    "mrlfads.training.api": ["torch", "ray", "mlflow", "pyarrow", "pynwb"],
    # `mrlfads --help` must be instant: no heavy imports at all
    "mrlfads.training.cli": ["torch", "ray", "mlflow", "pyarrow", "pynwb"],
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
            "from mrlfads.training import api\n"
            "assert all(getattr(mrlfads, n) is getattr(api, n) for n in api.__all__)\n"
            "assert sorted(mrlfads.__all__) == sorted(api.__all__)\n"
            "print(','.join(m for m in ('ray', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""


NO_FCNTL = """
import sys, warnings
sys.modules["fcntl"] = None  # as on Windows: `import fcntl` raises ImportError
import torch
from mrlfads import native
from mrlfads.model import MRLFADS
from tests.test_model_basic import batch, tiny_cfg
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert native.ops() is None
print("WARNING:", caught[0].message)
torch.manual_seed(0)
cfg = tiny_cfg(dropout=0.0)
model = MRLFADS(cfg)
out = model(batch(cfg)[0], sample=False)
sum(r.sum() for r in out.readout).backward()
torch.save({"readout": [r.detach() for r in out.readout],
            "grad": [p.grad for p in model.parameters()]}, sys.argv[1])
"""


def test_the_model_imports_and_trains_without_fcntl(tmp_path, monkeypatch):
    """Without fcntl (Windows) the model imports, the compiled loop is off with one warning
    naming the reason, and a forward and backward pass give the Python loop's numbers."""
    import os

    import torch

    from mrlfads import loop_ops
    from mrlfads.model import MRLFADS
    from tests.test_model_basic import batch, tiny_cfg

    env = {**os.environ, "MRLFADS_NATIVE": "1"}
    out = subprocess.run([sys.executable, "-c", NO_FCNTL, str(tmp_path / "out.pt")],
                         capture_output=True, text=True, timeout=300, env=env, check=False,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert "no fcntl file locking" in out.stdout and "install a C++ compiler" not in out.stdout
    monkeypatch.setattr(loop_ops, "USE_NATIVE", False)
    torch.manual_seed(0)
    cfg = tiny_cfg(dropout=0.0)
    model = MRLFADS(cfg)
    ref = model(batch(cfg)[0], sample=False)
    sum(r.sum() for r in ref.readout).backward()
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    for a, b in zip(got["readout"], ref.readout):
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)
    for a, p in zip(got["grad"], model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=0, atol=0)
