"""The first process of a managed vLLM server's process group: it ends the whole group when its owner dies.

    python pipeline/server_guard.py OWNER_PID GRACE_S vllm-command...

A parent-death signal reaches only the direct child of the dying process. vLLM's API server forks an engine
core and workers, and an API server that is SIGTERMed while it is still starting up (right after a watchdog
restart, say) can leave them running. So the run's direct child is this guard, not vLLM: it leads the process
group that vLLM and everything vLLM spawns belong to. When its owner dies (parent-death SIGTERM, or the
owner's pid is gone), when it is told to stop, or when vLLM exits on its own, it SIGTERMs the group, waits
``GRACE_S`` for vLLM, then SIGKILLs the group, itself included. It exits as soon as vLLM exits, so the owner sees
the server's death as the guard's.

It is run as a script, by path, and imports only the standard library: it must start in milliseconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    owner, grace_s, cmd = int(argv[0]), float(argv[1]), argv[2:]
    stop_requested = False

    def request_stop(signum, frame) -> None:
        nonlocal stop_requested
        stop_requested = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, request_stop)
    if os.getppid() != owner:  # the owner died before the parent-death signal was armed
        return 1
    child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    code = None
    while code is None and not stop_requested and os.getppid() == owner:
        try:
            code = child.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass
    if code is not None:
        print(f"[server_guard] vLLM exited with code {code}; ending its process group", file=sys.stderr, flush=True)
    else:
        _signal_group(signal.SIGTERM)  # this process ignores it (handler above)
        deadline = time.monotonic() + grace_s
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
    sys.stderr.flush()
    _signal_group(signal.SIGKILL)  # the engine core and workers, if vLLM left them; this process too
    return 1  # pragma: no cover - SIGKILL of the own group does not return


def die_with_parent() -> None:
    """Ask for SIGTERM when the parent dies (Linux ``PR_SET_PDEATHSIG``); a ``preexec_fn``, run between fork and exec.

    The run sets it on the guard, and the guard on vLLM, should the guard itself be SIGKILLed.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except OSError:
            pass


def _signal_group(sig: int) -> None:
    try:
        os.killpg(0, sig)
    except (ProcessLookupError, PermissionError):
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
