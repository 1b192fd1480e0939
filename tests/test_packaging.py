"""Every component installs and imports under the one name ``mrlfads`` (the package-dir
mapping in pyproject.toml; mrlfads/__init__.py for a source checkout), so a user's own
``training/``, ``tracking/`` or ``data_loaders.py`` shadows nothing: not in the CLI, not in
a wheel, not in the Ray workers a sweep starts."""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import mrlfads
from mrlfads.data_loaders.testing import make_tiny_dataset
from mrlfads.training.cli import main

ROOT = Path(__file__).resolve().parents[1]
POISON = "raise ImportError('the user\\'s own {name} was imported instead of mrlfads.{name}')\n"


def _user_folder(path: Path) -> Path:
    """A folder a user might run from: packages and modules named like our components, each
    failing loudly if imported."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("training", "tracking"):
        (path / name).mkdir()
        (path / name / "__init__.py").write_text(POISON.format(name=name))
    for name in ("data_loaders", "search_spaces"):
        (path / f"{name}.py").write_text(POISON.format(name=name))
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(MRLFADS_NATIVE="0", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    return env


# printed by the child: where each of our modules came from, and any bare component name
REPORT = ("import json, sys\n"
          "mods = {m: getattr(sys.modules[m], '__file__', None) for m in list(sys.modules)\n"
          "        if m == 'mrlfads' or m.startswith('mrlfads.')}\n"
          "bare = [m for m in sys.modules if m.split('.')[0] in mrlfads.COMPONENTS]\n"
          "print(json.dumps({'mods': mods, 'bare': bare}))\n")


def _report(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def _all_under(mods: dict[str, str | None], root: Path) -> list[str]:
    """Modules of ours loaded from anywhere but ``root``."""
    return [m for m, f in mods.items() if f and not Path(f).resolve().is_relative_to(root.resolve())]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """The repository's files as git sees them (what a clone or `ray job submit --working-dir
    .` holds), without this interpreter's build or install state."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    dst = tmp_path_factory.mktemp("checkout")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    return dst


@pytest.fixture(scope="module")
def wheel(checkout, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(out), str(checkout)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = out.glob("mrlfads-*.whl")
    return whl


def test_version_flag_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out == f"mrlfads {mrlfads.__version__}\n"
    # pyproject.toml reads the version from mrlfads.__version__: one place
    assert importlib.metadata.version("mrlfads") == mrlfads.__version__


def test_the_wheel_holds_every_component_inside_mrlfads(wheel, checkout):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n.split("/")[0] for n in names} == {"mrlfads", f"mrlfads-{mrlfads.__version__}.dist-info"}
    # every source file of every component, at its place under mrlfads/ (a subpackage
    # missing from pyproject.toml's list fails here)
    want = {f"mrlfads/{f.relative_to(checkout / 'mrlfads').as_posix()}"
            for f in (checkout / "mrlfads").rglob("*") if f.suffix in (".py", ".cpp")}
    for comp in mrlfads.COMPONENTS:
        want |= {f"mrlfads/{comp}/{f.relative_to(checkout / comp).as_posix()}"
                 for f in (checkout / comp).rglob("*") if f.suffix in (".py", ".yaml")}
    assert "mrlfads/search_spaces/pbt.yaml" in want and "mrlfads/native/loop.cpp" in want
    assert sorted(want - names) == []
    entry = zipfile.ZipFile(wheel).read(f"mrlfads-{mrlfads.__version__}.dist-info/entry_points.txt")
    assert "mrlfads = mrlfads.training.cli:main" in entry.decode()


def test_the_unpacked_wheel_trains_from_a_folder_with_its_own_training_and_tracking(
        wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    user = _user_folder(tmp_path / "user")
    code = (f"import sys; sys.path.insert(0, {str(site)!r})\n"
            "import mrlfads\n"
            "from mrlfads.data_loaders.testing import make_tiny_dataset\n"
            "from mrlfads.training.cli import main\n"
            "make_tiny_dataset('data')\n"
            "assert main(['train', '--data', 'data', '--smoke-test', '--epochs', '2', '--out',"
            " 'run', '--no-tracking', '--quiet']) == 0\n"
            "assert mrlfads._checkout_root() is None\n" + REPORT)
    proc = subprocess.run([sys.executable, "-c", code], cwd=user, env=_env(), capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = _report(proc.stdout)
    assert "mrlfads.training.loop" in seen["mods"] and "mrlfads.tracking" in seen["mods"]
    assert _all_under(seen["mods"], site) == [] and seen["bare"] == []
    assert (user / "run" / "best.pt").is_file()


def test_a_source_checkout_imports_its_own_components(checkout, tmp_path):
    """What `ray job submit --working-dir .` gives each node: the checkout as the working
    directory, first on sys.path, beside (or instead of) an installed mrlfads."""
    code = ("import mrlfads, mrlfads.training.cli, mrlfads.tracking.tune_callback, "
            "mrlfads.data_loaders.nwb, mrlfads.search_spaces.space\n"
            # only the four components are mapped: the checkout root is no package
            "import importlib.util, pkgutil\n"
            "assert importlib.util.find_spec('mrlfads.tests') is None\n"
            "assert importlib.util.find_spec('mrlfads.mrlfads') is None\n"
            "walked = [m.name for m in pkgutil.walk_packages(mrlfads.__path__, 'mrlfads.')]\n"
            "assert 'mrlfads.model' in walked and len(walked) < 100, walked\n" + REPORT)
    proc = subprocess.run([sys.executable, "-c", code], cwd=checkout, env=_env(),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = _report(proc.stdout)
    assert _all_under(seen["mods"], checkout) == [] and seen["bare"] == []
    assert "mrlfads.search_spaces.space" in seen["mods"]


def test_the_cli_runs_from_a_folder_with_its_own_training_and_tracking(tmp_path):
    user = _user_folder(tmp_path / "user")
    make_tiny_dataset(user / "data")
    # `python -m` puts the working directory first on sys.path: the strongest shadow
    cmd = [sys.executable, "-m", "mrlfads", "train", "--data", "data", "--smoke-test",
           "--epochs", "2", "--out", "run", "--no-tracking", "--quiet"]
    proc = subprocess.run(cmd, cwd=user, env=_env(), capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (user / "run" / "best.pt").is_file()
    script = Path(sys.executable).parent / "mrlfads"
    proc = subprocess.run([str(script), "--version"], cwd=user, env=_env(), capture_output=True,
                          text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stdout) == (0, f"mrlfads {mrlfads.__version__}\n"), proc.stderr


@pytest.mark.slow  # ~1 min: a smoke sweep whose trials run in Ray workers
@pytest.mark.timeout(420)
def test_a_sweep_from_a_folder_with_its_own_training_and_tracking(ray_session, tiny_dataset_dir,
                                                                  tmp_path):
    """Ray gives its workers the driver's sys.path, the user's folder first: the trials
    import only mrlfads.* and finish."""
    user = _user_folder(tmp_path / "user")
    cmd = [sys.executable, "-m", "mrlfads", "sweep", "--data", tiny_dataset_dir, "--smoke-test",
           "--name", "shadowed", "--storage", str(tmp_path / "sweeps"), "--address",
           ray_session, "--no-tracking", "--quiet"]
    proc = subprocess.run(cmd, cwd=user, env=_env(), capture_output=True, text=True, timeout=400,
                          check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary = json.loads((tmp_path / "sweeps" / "shadowed" / "summary.json").read_text())
    assert sorted(set(summary["trials"].values())) == ["TERMINATED"]
    # beside the best trial, the data's own baseline (training/smoothing.py), computed once
    from mrlfads.data_loaders.reader import ArrowDataset
    from mrlfads.training.smoothing import smoothing_scores

    _, expected = smoothing_scores(ArrowDataset.open(tiny_dataset_dir), ["valid"])
    assert summary["baseline"] == pytest.approx(expected)
    assert f"valid/smoothing_co_bps: {expected['valid/smoothing_co_bps']:.5g} (smoothed" in proc.stdout
