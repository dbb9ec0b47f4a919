"""No vLLM process outlives `selfinstruct generate`, even when it is killed while a restarted server starts.

The report: a CLI SIGTERMed seconds after a watchdog restart left the new server (API server, engine core,
worker) running. The parent-death signal reached only the API server, and nothing made it, or what it had
forked, exit. Now the run's direct child is pipeline/server_guard.py, which ends the server's whole process group
when the run dies (SIGTERM, then SIGKILL after a grace period), and a SIGTERMed CLI stops its servers itself.
These runs did not leave an orphan with the old code either (the vLLM build here exits on SIGTERM in these
states); tests/test_server_guard.py holds the mechanism with stand-in servers that ignore SIGTERM and fork.
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

from tests.conftest import PROJECT_ROOT, _require_vllm, tiny_llm_config, tiny_server_config

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def _server_processes(model_dir) -> list[psutil.Process]:
    """Every process of this test's server: the guard, the API server, and whatever they spawned."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info.get("cmdline") or []
            if str(model_dir) in cmdline:
                found.append(proc)
                found.extend(proc.children(recursive=True))
        except psutil.Error:
            continue
    return list({p.pid: p for p in found}.values())


def _api_server(model_dir) -> psutil.Process | None:
    for proc in _server_processes(model_dir):
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
        api_server = _api_server(model)
        assert api_server is not None
        api_server.kill()  # the server dies mid-run; the watchdog restarts it
        assert restarting.wait(60), "the watchdog did not restart the server:\n" + "".join(lines[-30:])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            restarted = _api_server(model)
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
    while _server_processes(model) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = []
    for proc in _server_processes(model):
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
