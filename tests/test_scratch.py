"""Scratch folders a killed process leaves behind are removed by the next one made
(mrlfads/scratch.py); nobody else's are touched."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import psutil

from mrlfads.scratch import _host, remove_stale, scratch_dir

PREFIX = "mrlfads-good-"


def _dead_pid() -> int:
    pid = 4_000_000
    while psutil.pid_exists(pid):
        pid -= 1
    return pid


def test_a_killed_process_folder_goes_when_the_next_is_made(tmp_path):
    code = ("import os, signal, sys; from mrlfads.scratch import scratch_dir; "
            f"d = scratch_dir({PREFIX!r}, sys.argv[1]); open(os.path.join(d.name, 'ckpt'), 'w'); "
            "print(d.name, flush=True); os.kill(os.getpid(), signal.SIGKILL)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == -signal.SIGKILL
    left = done.stdout.strip()
    assert os.path.isdir(left) and os.path.basename(left).startswith(f"{PREFIX}{_host()}-")
    with scratch_dir(PREFIX, tmp_path) as mine:
        assert not os.path.exists(left)  # the killed process's folder, with its file
        assert os.path.basename(mine).startswith(f"{PREFIX}{_host()}-{os.getpid()}-")
    assert not os.path.exists(mine)  # as TemporaryDirectory: gone on leaving


def test_only_this_hosts_ended_processes_folders_of_the_prefix_are_removed(tmp_path):
    dead, host = _dead_pid(), _host()
    gone = tmp_path / f"{PREFIX}{host}-{dead}-abc"
    kept = [tmp_path / f"{PREFIX}{host}-{os.getpid()}-abc",  # a live process
            tmp_path / f"{PREFIX}otherhost-{dead}-abc",  # another host sharing the folder
            # the same host name in another pid namespace (a container): its pids are not ours
            tmp_path / f"{PREFIX}{socket.gethostname()}_0123456789ab-{dead}-abc",
            tmp_path / f"mrlfads-ckpt-{host}-{dead}-abc",  # another prefix
            tmp_path / f"{PREFIX}abc"]  # not one of ours (a name without host and pid)
    for d in [gone, *kept]:
        d.mkdir()
    (tmp_path / f"{PREFIX}{host}-{dead}-file").write_text("")  # a file, not a folder
    assert remove_stale(PREFIX, tmp_path) == [gone]
    assert not gone.exists() and all(d.is_dir() for d in kept)
    assert (tmp_path / f"{PREFIX}{host}-{dead}-file").is_file()


def test_the_pid_space_is_this_boots_pid_namespace():
    """Linux: a hash of the boot id and the pid namespace, the same in every process of it
    (a child here), and part of the folder names' host."""
    from mrlfads.pid_space import pid_space

    space = pid_space()
    if not os.path.exists("/proc/self/ns/pid"):
        assert space == "" and "_" not in _host()[-13:]
        return
    assert len(space) == 12 and int(space, 16) >= 0
    code = "from mrlfads.pid_space import pid_space; print(pid_space())"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=60, check=True)
    assert child.stdout.strip() == space
    assert _host().endswith(f"_{space}")
