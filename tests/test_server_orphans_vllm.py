"""No vLLM process outlives `selfinstruct generate`, even when it is killed while a restarted server starts.

The report: a CLI SIGTERMed seconds after a watchdog restart left the new server (API server, engine core,
worker) running. With the code before the fix, both cases below fail, in two ways: the restarted API server
outlived the SIGTERMed CLI (the parent-death signal reached only it, mid start-up), and the engine core and
worker of the server that had died stayed behind (stop() looked up the process group of an already reaped
leader and signalled nothing). Orphans are found by process group: once re-parented to init, an engine core's
command line ("VLLM::EngineCore") names no model. Now the run's direct child is pipeline/server_guard.py, which
leads the server's group and ends all of it when vLLM exits or the run dies, and a SIGTERMed CLI stops its
servers itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import psutil
import pytest
import yaml

from tests.conftest import PROJECT_ROOT, _require_vllm, server_processes, tiny_llm_config, tiny_server_config

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _api_server(model_dir, groups: set[int]) -> psutil.Process | None:
    for proc in server_processes(model_dir, groups):
        try:
            if proc.cmdline()[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]:  # not the guard that runs it
                return proc
        except psutil.Error:
            continue
    return None


def _engine_core_started(api_server: psutil.Process) -> bool:
    try:
        return any("EngineCore" in " ".join(child.cmdline()) for child in api_server.children(recursive=True))
    except psutil.Error:
        return False


#: When the signal comes: half a second into the restart (the new API server is importing vLLM), or the moment
#: the new API server has forked its engine core (the state the orphan was first seen in).
MOMENTS = [(signal.SIGTERM, "engine-core"), (signal.SIGKILL, "importing")]


@pytest.mark.parametrize("signum,moment", MOMENTS, ids=[f"{s.name.lower()}-{m}" for s, m in MOMENTS])
def test_killing_the_cli_right_after_a_watchdog_restart_leaves_no_vllm_process(tiny_llama, tmp_path, signum, moment):
    _require_vllm()
    model = tmp_path / "model"
    model.symlink_to(tiny_llama, target_is_directory=True)  # a private path: only this test's processes name it
    llm = tiny_llm_config([], str(model), max_concurrency=2, max_retries=20, backoff_initial_s=0.5)
    server = tiny_server_config(max_restarts=2)
    config = {
        "run_name": "orphans", "output_dir": str(tmp_path / "outputs"), "target": 100000, "tasks_per_request": 2,
        "llm": llm.model_dump(mode="json") | {"api_key": "EMPTY"}, "server": server.model_dump(mode="json"),
    }
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    cli = subprocess.Popen(
        [str(PROJECT_ROOT / ".venv" / "bin" / "selfinstruct"), "generate", "--config", str(config_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    lines: list[str] = []
    groups: set[int] = set()
    ready, restarting = threading.Event(), threading.Event()

    def read_stderr() -> None:
        for line in cli.stderr:
            lines.append(line)
            if "vLLM ready at" in line:
                ready.set()
            if "restart 1/" in line:
                restarting.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        assert ready.wait(600), "the managed server never became ready:\n" + "".join(lines[-30:])
        time.sleep(2)  # a few requests in flight
        api_server = _api_server(model, groups)
        assert api_server is not None
        api_server.kill()  # the server dies mid-run; the watchdog restarts it
        assert restarting.wait(60), "the watchdog did not restart the server:\n" + "".join(lines[-30:])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            restarted = _api_server(model, groups)
            if restarted is not None and restarted.pid != api_server.pid:
                if moment == "importing" or _engine_core_started(restarted):
                    break
            time.sleep(0.05)
        else:
            pytest.fail(f"the restarted server never reached {moment!r}:\n" + "".join(lines[-30:]))
        if moment == "importing":
            time.sleep(0.5)
        assert cli.poll() is None and sum("vLLM ready at" in line for line in lines) == 1, "the restart finished first"
        cli.send_signal(signum)
        cli.wait(timeout=120)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()

    deadline = time.monotonic() + 60
    while server_processes(model, groups) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = []
    for proc in server_processes(model, groups):
        try:
            left.append((proc.pid, proc.ppid(), os.getpgid(proc.pid), " ".join(proc.cmdline())[:100]))
        except (psutil.Error, ProcessLookupError):
            continue
    for pid, *_ in left:
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"vLLM processes outlived the run: {left}\n" + "".join(lines[-40:])
    # SIGTERM: an orderly exit (servers stopped, run committed and unlocked), not the default death by signal.
    assert cli.returncode == (128 + signal.SIGTERM if signum == signal.SIGTERM else -signal.SIGKILL), "".join(lines[-30:])
