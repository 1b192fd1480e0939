"""The local Ray a sweep starts is its own (not another Ray running on the machine), listens
on 127.0.0.1 only, with Ray's token auth on, and SIGTERM still takes the Ctrl-C path after
ray.init.

Runs in a subprocess: the session Ray of tests/ray_fixtures.py has auth off on purpose, and
the loopback choice is read when ray is imported.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, os, subprocess, sys, psutil
from mrlfads.training.signals import installed, interrupt_on_termination
from mrlfads.training.sweep import init_ray
interrupt_on_termination()  # as the CLI does
init_ray()
import ray
gcs = ray.get_runtime_context().gcs_address
tree = [psutil.Process()] + psutil.Process().children(recursive=True)
pids = {p.pid: p.name() for p in tree}
listen = sorted({(pids[c.pid][:24], c.laddr.ip) for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in pids})
env = dict(os.environ, RAY_AUTH_MODE="disabled")
status = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ray"), "status",
                         "--address", gcs], env=env, capture_output=True, text=True, timeout=60)
print(json.dumps({"sigterm_is_ours": installed(), "gcs": gcs, "listen": listen,
                  "no_token_rc": status.returncode,
                  "no_token_out": (status.stdout + status.stderr)[-400:]}))
ray.shutdown()
"""


@pytest.mark.slow  # ~30 s: a Ray start, and a refused client that retries
def test_local_ray_binds_loopback_and_refuses_a_client_without_the_token(ray_session):
    """ray_session: another Ray runs on the machine meanwhile; the sweep starts its own."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["gcs"].startswith("127.0.0.1:") and got["gcs"] != ray_session
    assert got["sigterm_is_ours"]  # ray.init's own SIGTERM handler did not replace Ctrl-C's path
    assert got["listen"], "the probe found no listening Ray process"
    public = [(name, ip) for name, ip in got["listen"]
              if ip not in ("127.0.0.1", "::1", "::ffff:127.0.0.1")]
    assert public == []
    assert got["no_token_rc"] != 0 and "auth" in got["no_token_out"].lower(), got["no_token_out"]


def test_the_sweep_modules_import_no_ray():
    """The loopback choice is read when ray is imported (training/sweep.py,
    local_ray_on_loopback), so the modules a sweep goes through before it must not import
    it: a Ray imported first binds to the machine's public address."""
    code = ("import sys; import mrlfads.training.sweep, mrlfads.training.api, "
            "mrlfads.training.cli, mrlfads.training.commands.sweep; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
