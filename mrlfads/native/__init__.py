"""The compiled CPU time loop (``loop.cpp``) and dropout masks (``dropout.cpp``): built on
first use, cached, optional.

Why: on a CPU the Python loop in ``mrlfads.recurrence`` spends most of a training step
dispatching ~100 small ops per time bin; ``loop.cpp`` runs the same steps with the
interpreter gone and one fused pass per GRU step (see its header); ``dropout.cpp`` draws
dropout masks on all cores, where torch's CPU generator is serial. Both are compiled with
the machine's C++ compiler against the installed torch (no ninja, no build step in pip) into
``$MRLFADS_NATIVE_CACHE`` (default ``~/.cache/mrlfads/native``), one file per hash of
(sources, torch version, flags), written atomically so concurrent trials never load a
half-written library. ``make`` builds it at set-up (``python -m mrlfads.native``).

Without a compiler everything still works: the Python loop runs and one warning says why.
So it does where ``fcntl`` (the file lock that keeps concurrent builds apart) is missing, as
on Windows: the model imports and trains there on the Python loop.
``MRLFADS_NATIVE=0`` turns the compiled loop off (no build, no warning).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

from mrlfads.atomic import replacing
from mrlfads.files import cache_root

try:
    import fcntl
except ImportError:  # Windows: no build lock, so no compiled loop; the Python loop runs
    fcntl = None

SOURCES = tuple(Path(__file__).with_name(n) for n in ("loop.cpp", "dropout.cpp"))
LIBRARY = "mrlfads_native"
_loaded: dict[str, object] = {}


class NativeBuildError(RuntimeError):
    """The C++ loop could not be compiled or loaded (the message says why and what to do)."""


class NativeUnsupported(NativeBuildError):
    """This platform cannot build the C++ loop at all (no ``fcntl``): nothing to fix."""


def enabled() -> bool:
    """False when the user set MRLFADS_NATIVE=0 (or false/off/no)."""
    return os.environ.get("MRLFADS_NATIVE", "1").strip().lower() not in ("0", "false", "off", "no")


def cache_dir() -> Path:
    env = os.environ.get("MRLFADS_NATIVE_CACHE")
    if env:
        return Path(env)
    return cache_root() / "native"


def _compiler() -> str:
    """$CXX if set, else the first of c++, g++, clang++ on PATH."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    for cxx in names:
        if shutil.which(cxx) is not None:
            return cxx
    raise NativeBuildError(f"no C++ compiler: {' / '.join(repr(n) for n in names)} not on PATH "
                           "(install g++, e.g. `apt-get install g++`, or point CXX at one)")


def _openmp_wanted() -> bool:
    """-fopenmp turns at::parallel_for on (without it ATen's header runs every loop
    serially), on torch's own OpenMP runtime (libgomp.so.1, already loaded by torch). Linux
    only, where torch's wheels use GNU OpenMP and compilers take the flag as is."""
    return sys.platform.startswith("linux") and torch.backends.openmp.is_available()


def _command(cxx: str, out: str, openmp: bool) -> list[str]:
    from torch.utils import cpp_extension

    simd = ["-mavx2", "-mfma"] if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") \
        else []
    includes = [arg for p in cpp_extension.include_paths() for arg in ("-isystem", p)]
    libdirs = cpp_extension.library_paths()
    # -fno-trapping-math lets GCC vectorise the fused GRU passes (~20 -> ~3 ns per element)
    return [cxx, "-O3", "-std=c++20", "-fPIC", "-shared", "-fno-math-errno",
            "-fno-trapping-math", *(["-fopenmp"] if openmp else []), *simd,
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}", *includes,
            *map(str, SOURCES), "-o", out, *(f"-L{d}" for d in libdirs),
            *(f"-Wl,-rpath,{d}" for d in libdirs), "-lc10", "-ltorch_cpu"]


def library_path(cxx: str, openmp: bool) -> Path:
    """Where the library for these sources, torch and compiler flags lives."""
    key = hashlib.sha256()
    for source in SOURCES:
        key.update(source.read_bytes())
    key.update(" ".join(_command(cxx, "OUT", openmp)).encode())
    key.update(torch.__version__.encode())
    return cache_dir() / f"{LIBRARY}-{key.hexdigest()[:16]}.so"


def build(verbose: bool = False) -> Path:
    """Compile the sources unless their library is already cached; return its path.

    With OpenMP where torch uses it; if the compiler refuses that (e.g. clang without
    libomp), without it: the same library with its row passes on one thread, ~10% slower,
    rather than no compiled loop at all. Either library, once built, is used from then on."""
    if fcntl is None:
        raise NativeUnsupported(f"{sys.platform} has no fcntl file locking, which keeps "
                                "concurrent builds of the compiled loop apart")
    cxx = _compiler()
    variants = [(omp, library_path(cxx, omp)) for omp in
                ((True, False) if _openmp_wanted() else (False,))]  # best first
    for _, path in variants:
        if path.exists():
            return path
    for openmp, path in variants[:-1]:
        try:
            return _compile(cxx, openmp, path, verbose)
        except NativeBuildError as err:
            if verbose:
                print(f"compiling with -fopenmp failed; retrying without it:\n{err}",
                      file=sys.stderr)
    return _compile(cxx, *variants[-1], verbose)


def _compile(cxx: str, openmp: bool, target: Path, verbose: bool) -> Path:
    """One process compiles while the others wait on a lock; the library appears by an
    atomic rename, so a killed build leaves nothing half-written behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released by the OS if this process dies
        if target.exists():
            return target
        start = time.perf_counter()
        with replacing(target) as tmp:
            proc = subprocess.run(_command(cxx, str(tmp), openmp), capture_output=True,
                                  text=True, check=False)
            if proc.returncode != 0:
                tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
                names = ", ".join(map(str, SOURCES))
                raise NativeBuildError(f"compiling {names} failed:\n{tail}")
            os.chmod(tmp, 0o755)  # whatever the umask, other users of a shared cache load it
        if verbose:
            print(f"built {target}{'' if openmp else ' (without OpenMP)'} in "
                  f"{time.perf_counter() - start:.1f} s", file=sys.stderr)
    return target


def ops():
    """``torch.ops.mrlfads_native``, building it on first use; None when turned off or
    when it cannot be built (then one warning names the reason and the fix)."""
    if not enabled():
        return None
    if "ops" not in _loaded:
        try:
            torch.ops.load_library(str(build()))
            _loaded["ops"] = getattr(torch.ops, LIBRARY)
        except (NativeBuildError, OSError) as err:
            fix = ("" if isinstance(err, NativeUnsupported) else
                   "install a C++ compiler (or set CXX), point MRLFADS_NATIVE_CACHE at a "
                   "writable folder if that is the problem, or ")
            warnings.warn(f"mrlfads: the compiled CPU training loop is unavailable, so training "
                          f"uses the slower Python loop. Reason: {err}. Fix: {fix}set "
                          f"MRLFADS_NATIVE=0 to use the Python loop silently.", RuntimeWarning,
                          stacklevel=2)
            _loaded["ops"] = None
    return _loaded["ops"]


def ops_for(t: torch.Tensor):
    """The compiled ops when they apply to ``t`` (a float32/float64 CPU tensor), else None."""
    if t.device.type != "cpu" or t.dtype not in (torch.float32, torch.float64):
        return None
    return ops()


def main() -> int:
    """``python -m mrlfads.native``: build (or find) the library and say where it is."""
    if not enabled():
        print("MRLFADS_NATIVE=0: the compiled loop is off; nothing to build")
        return 0
    try:
        path = build(verbose=True)
    except NativeBuildError as err:
        print(f"warning: {err}\ntraining will use the Python loop", file=sys.stderr)
        return 0
    print(f"mrlfads native loop: {path}")
    return 0

