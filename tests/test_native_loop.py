"""The compiled CPU loop (mrlfads/native): same numbers as the Python loop, buffer reuse that
is never visible, and a clear fallback when it cannot be built. (Its agreement with the
region-by-region oracle and with finite differences is in test_model_oracle.py and
test_recurrence.py, which run both loops.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mrlfads import loop_ops, native
from mrlfads.config import LossConfig, ModelConfig, RegionConfig
from mrlfads.loss import compute_loss
from mrlfads.model import MRLFADS
from tests.conftest import require_native_loop

REPO = Path(__file__).resolve().parents[1]
REGIONS = (RegionConfig("A", 6, n_heldout=2, ext_dim=2), RegionConfig("B", 5, gen_dim=12),
           RegionConfig("C", 7, fac_dim=5))


def make_model(dtype=torch.float32, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(regions=REGIONS, obs_model="gaussian", ic_enc_seq_len=4, ic_enc_dim=8,
                      ci_enc_dim=8, con_dim=10, co_dim=3, ic_dim=6, com_dim=3, dropout=0.3, **kw)
    return MRLFADS(cfg).to(dtype)


def batch(seed, dtype=torch.float32, B=5, T=24):
    g = torch.Generator().manual_seed(seed)
    heldin = [torch.randn(B, T, r.n_heldin, generator=g, dtype=dtype) for r in REGIONS]
    heldout = [torch.randn(B, T, r.n_heldout, generator=g, dtype=dtype) for r in REGIONS]
    ext = [torch.randn(B, T, r.ext_dim, generator=g, dtype=dtype) if r.ext_dim else None
           for r in REGIONS]
    return heldin, heldout, ext


def step(model, data, use_native, monkeypatch, seed=7):
    """One training-mode forward (posterior samples, dropout) + backward; outputs, grads."""
    monkeypatch.setattr(loop_ops, "USE_NATIVE", use_native)
    heldin, heldout, ext = data
    model.train()
    model.zero_grad()
    torch.manual_seed(seed)  # the same noise and dropout masks for both loops
    out = model(heldin, ext, sample=True)
    compute_loss(out, heldin, heldout, LossConfig(), epoch=100).total.backward()
    outs = {k: v for k, v in vars(out).items() if isinstance(v, torch.Tensor)}
    outs.update({f"{k}[{i}]": t for k, v in vars(out).items() if isinstance(v, (list, tuple))
                 for i, t in enumerate(v) if isinstance(t, torch.Tensor)})
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach().clone() for k, v in outs.items()}, grads


@pytest.fixture
def poisoned():
    """Every buffer the compiled loop takes from its pool starts as NaN, so reading a slot
    before writing it (e.g. a recycled initial state) shows up as a mismatch."""
    ops = require_native_loop()
    ops.set_poison(True)
    yield ops
    ops.set_poison(False)


@pytest.mark.parametrize("variant", [{}, {"message_source": "generator"},
                                     {"inferred_inputs": False}, {"pathway_dropout": 0.5},
                                     {"detach_message_source": True}])
def test_native_loop_matches_python_loop_in_float32(variant, monkeypatch, poisoned):
    model = make_model(**variant)
    data = batch(1)
    out_n, grad_n = step(model, data, True, monkeypatch)
    out_p, grad_p = step(model, data, False, monkeypatch)
    assert out_n.keys() == out_p.keys() and grad_n.keys() == grad_p.keys()
    assert len(grad_n) == len(list(model.parameters()))
    for k in out_p:
        torch.testing.assert_close(out_n[k], out_p[k], rtol=1e-4, atol=2e-5, msg=k)
    for k in grad_p:
        torch.testing.assert_close(grad_n[k], grad_p[k], rtol=1e-3, atol=1e-4, msg=k)


def test_reused_buffers_never_change_earlier_results(monkeypatch, poisoned):
    """The loop recycles its sequence buffers between calls. Results kept from an earlier
    call stay intact, and the same input gives bit-identical results after other calls."""
    ops = poisoned
    model = make_model(torch.float64)
    a, b = batch(1, torch.float64), batch(2, torch.float64, B=3, T=20)
    out_a, grad_a = step(model, a, True, monkeypatch)
    kept = model(a[0], a[2], sample=False).factors[0]  # a live result across later calls
    kept_copy = kept.detach().clone()
    step(model, b, True, monkeypatch)
    out_a2, grad_a2 = step(model, a, True, monkeypatch)
    assert torch.equal(kept, kept_copy)
    for k in out_a:
        assert torch.equal(out_a[k], out_a2[k]), k
    for k in grad_a:
        assert torch.equal(grad_a[k], grad_a2[k]), k
    # and the recycling really happens: a released buffer comes back
    xg, w, bias = torch.randn(6, 2, 3, 12), torch.randn(2, 4, 12), torch.randn(2, 1, 12)
    first = ops.gru_sequence_forward(xg, w, bias)[0]
    ptr = first.data_ptr()
    del first
    assert ops.gru_sequence_forward(xg, w, bias)[0].data_ptr() == ptr


def test_python_loop_runs_where_the_native_one_does_not_apply():
    """CUDA tensors and half precision go to the Python loop (ops_for returns None)."""
    assert native.ops_for(torch.zeros(1, dtype=torch.bfloat16)) is None
    if torch.cuda.is_available():
        assert native.ops_for(torch.zeros(1, device="cuda")) is None


def _run_isolated(code: str, tmp_path, **env) -> dict:
    """Run ``code`` in a fresh interpreter with its own library cache; it prints JSON."""
    full_env = {**os.environ, "MRLFADS_NATIVE_CACHE": str(tmp_path / "cache"), **env}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


FALLBACK_PROBE = """
import json, warnings, torch
from mrlfads import native
from mrlfads.config import ModelConfig, RegionConfig
from mrlfads.model import MRLFADS
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ops = native.ops()
    cfg = ModelConfig(regions=(RegionConfig("A", 3), RegionConfig("B", 2)), ic_enc_seq_len=2,
                      obs_model="poisson",
                      ic_enc_dim=3, ci_enc_dim=3, con_dim=3, co_dim=1, ic_dim=2, com_dim=1)
    x = [torch.poisson(torch.ones(2, 8, n)) for n in (3, 2)]
    out = MRLFADS(cfg)(x, sample=True)
    out.factors[0].sum().backward()
print(json.dumps({"ops": ops is not None, "warnings": [str(w.message) for w in caught
                  if "compiled CPU training loop" in str(w.message)]}))
"""


def test_missing_compiler_falls_back_to_the_python_loop_with_one_clear_warning(tmp_path):
    res = _run_isolated(FALLBACK_PROBE, tmp_path, CXX="/nonexistent/c++")
    assert res["ops"] is False
    assert len(res["warnings"]) == 1
    msg = res["warnings"][0]
    assert "/nonexistent/c++" in msg and "install a C++ compiler" in msg
    assert "MRLFADS_NATIVE=0" in msg
    assert not list((tmp_path / "cache").glob("*.so"))


def test_failed_compile_names_the_source_and_leaves_no_partial_library(tmp_path):
    res = _run_isolated(FALLBACK_PROBE, tmp_path, CXX="false")  # a "compiler" that fails
    assert res["ops"] is False
    assert "compiling" in res["warnings"][0] and "loop.cpp" in res["warnings"][0]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".build.lock"]


@pytest.mark.slow
@pytest.mark.skipif(not native._openmp_wanted(), reason="built without OpenMP here anyway")
def test_compiler_without_openmp_still_gives_the_compiled_loop(tmp_path):
    """A compiler that refuses -fopenmp (clang without libomp, say) costs the parallel row
    passes, not the whole compiled loop; the serial library is then reused, not rebuilt."""
    real, calls = native._compiler(), tmp_path / "calls.log"
    cxx = tmp_path / "c++"
    cxx.write_text(f'#!/bin/sh\necho call >> {calls}\n'
                   'case " $* " in *" -fopenmp "*) echo "unsupported option -fopenmp" >&2; '
                   f'exit 1;; esac\nexec {real} "$@"\n')
    cxx.chmod(0o755)
    for n_calls in (2, 2):  # with -fopenmp, then without; the second run compiles nothing
        res = _run_isolated(FALLBACK_PROBE, tmp_path, CXX=str(cxx))
        assert res == {"ops": True, "warnings": []}
        libs = sorted(p.name for p in (tmp_path / "cache").glob("*.so"))
        assert libs == [native.library_path(str(cxx), openmp=False).name]
        assert len(calls.read_text().splitlines()) == n_calls


def test_turned_off_by_environment_without_a_warning(tmp_path):
    res = _run_isolated(FALLBACK_PROBE, tmp_path, MRLFADS_NATIVE="0")
    assert res == {"ops": False, "warnings": []}


@pytest.mark.slow
def test_concurrent_first_builds_share_one_library(tmp_path):
    """Two processes that need the library at once (e.g. sweep trials on a fresh machine):
    one compiles, the other waits, both load the same file, and nothing half-written is
    left in the cache."""
    code = ("import json; from mrlfads import native; "
            "print(json.dumps({'path': str(native.build()), 'ops': native.ops() is not None}))")
    env = {**os.environ, "MRLFADS_NATIVE_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0] == results[1] and results[0]["ops"] is True
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert names == [".build.lock", Path(results[0]["path"]).name]


def test_compiled_loop_declares_the_structures_of_loop_io():
    """loop.cpp's field lists are mrlfads.loop_io's, name for name and in order (the
    structures cross the operator boundary as lists in field order)."""
    from mrlfads.loop_io import GRUSaved, LoopInputs, LoopOutputs, LoopSaved, LoopWeights

    ops = require_native_loop()
    for name, cls in [("inputs", LoopInputs), ("weights", LoopWeights),
                      ("outputs", LoopOutputs), ("saved", LoopSaved), ("gru_saved", GRUSaved)]:
        assert ops.loop_fields(name).split(",") == list(cls._fields), name
    with pytest.raises(RuntimeError, match="no structure named"):
        ops.loop_fields("nothing")
