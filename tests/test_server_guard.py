"""The guard that ends a managed server's whole process group when the run dies, tested without vLLM: stand-in
servers that ignore SIGTERM and spawn children, as vLLM's can."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

from pipeline import server as server_module


#: A stand-in server: ignores SIGTERM (as a vLLM API server busy starting up may), forks a child that ignores it
#: too (the engine core), prints both pids and sleeps.
STUBBORN_SERVER = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    print(os.getpid(), child.pid, flush=True)
    time.sleep(600)
""")

#: The run: starts the guard exactly as ManagedServer does (own session, parent-death signal), prints its pid.
OWNER = textwrap.dedent("""
    import os, subprocess, sys
    from pipeline.server import _GUARD
    from pipeline.server_guard import die_with_parent
    guard = subprocess.Popen([sys.executable, str(_GUARD), str(os.getpid()), "1", sys.executable, "-c", sys.argv[1]],
                             start_new_session=True, preexec_fn=die_with_parent, stdout=sys.stdout)
    print(guard.pid, flush=True)
    guard.wait()
""")


def _gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids):
            return True
        time.sleep(0.1)
    return False


def test_sigkilled_owner_takes_the_whole_server_group_down(tmp_path):
    owner = subprocess.Popen([sys.executable, "-c", OWNER, STUBBORN_SERVER], stdout=subprocess.PIPE, text=True,
                             cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(server_module.PROJECT_ROOT)})
    guard_pid = int(owner.stdout.readline())
    server_pid, engine_pid = map(int, owner.stdout.readline().split())
    pids = [guard_pid, server_pid, engine_pid]
    try:
        assert os.getpgid(server_pid) == os.getpgid(engine_pid) == guard_pid  # one group, led by the guard
        owner.kill()
        owner.wait()
        # SIGTERM is ignored by both; after its 1 s grace the guard SIGKILLs the group.
        assert _gone(pids, timeout=10), "server processes outlived their SIGKILLed owner"
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_server_that_exits_takes_its_children_and_the_guard_with_it(tmp_path):
    script = "import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); print(c.pid, flush=True); time.sleep(0.5); sys.exit(3)"
    guard = subprocess.Popen([sys.executable, str(server_module._GUARD), str(os.getpid()), "5", sys.executable, "-c", script],
                             start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    orphan_pid = int(guard.stdout.readline())
    guard.wait(timeout=10)
    assert "vLLM exited with code 3" in guard.stderr.read()
    assert _gone([orphan_pid], timeout=5), "the dead server's child was left running"


def test_a_sigkilled_guard_still_stops_its_server():
    """The guard itself may be SIGKILLed (the OOM killer, a too-broad pkill): the server gets a parent-death SIGTERM."""
    script = "import os, time; print(os.getpid(), flush=True); time.sleep(600)"
    guard = subprocess.Popen([sys.executable, str(server_module._GUARD), str(os.getpid()), "5", sys.executable, "-c", script],
                             start_new_session=True, stdout=subprocess.PIPE, text=True)
    server_pid = int(guard.stdout.readline())
    guard.kill()
    guard.wait()
    try:
        assert _gone([server_pid], timeout=5), "the server outlived its SIGKILLed guard"
    finally:
        try:
            os.kill(server_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
