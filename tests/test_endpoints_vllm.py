"""Several endpoints: two real vLLM CPU servers behind one run, and one of them dying mid-run."""

from __future__ import annotations

import json

import pytest

from pipeline.generate import generate
from pipeline.server import ManagedServer
from tests.conftest import _require_vllm, tiny_server_config
from tests.test_generate_vllm import make_config

pytestmark = pytest.mark.vllm


class _SpawnOnly(ManagedServer):
    """Starts the process but returns at once, so the session server can boot meanwhile (same thread: the
    parent-death signal is tied to the thread that spawned the process)."""

    def _wait_ready(self) -> None:
        pass


@pytest.fixture(scope="session")
def _second_spawned(tiny_llama, tmp_path_factory):
    # Session scope so that pytest sets it up before the session-scoped `vllm_server`: both servers boot together.
    _require_vllm()
    server = _SpawnOnly(tiny_server_config(), str(tiny_llama), tmp_path_factory.mktemp("vllm-b") / "server.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def second_server(_second_spawned, vllm_server):
    server = _second_spawned
    ManagedServer._wait_ready(server)
    yield server
    server.stop()  # idempotent; frees the memory when this module is done


def test_run_spreads_requests_over_both_endpoints(vllm_server, second_server, tiny_llama, tmp_path):
    a, b = vllm_server.base_url, second_server.base_url
    # A fixed number of requests (an unreachable target), two tasks each: short, and nothing sent in vain.
    config = make_config(tmp_path, [a, b], str(tiny_llama), run_name="two", target=1000, max_requests=24, tasks_per_request=2)
    summary = generate(config, export=False)

    meta = json.loads((config.run_dir / "run.json").read_text())
    assert summary.requests == 24 and summary.accepted > 0
    assert meta["usage"]["requests"] == 24 and meta["usage"].get("retries", 0) == 0
    transport_faults = [k for k in meta["faults"] if k in ("timeout", "connection_error", "bad_response") or k.startswith("http_")]
    assert transport_faults == [], meta["faults"]
    endpoints = {e["url"]: e for e in meta["endpoints"]}
    assert set(endpoints) == {a, b}
    assert sum(e["requests"] for e in endpoints.values()) == 24
    # Least-outstanding balancing: the first max_concurrency (16) requests alternate between the two idle
    # endpoints; after that each endpoint gets work as fast as it finishes it (a server still compiling the JSON
    # grammar of its first requests gets less), so at least half of max_concurrency each.
    for e in endpoints.values():
        assert e["requests"] >= config.llm.max_concurrency // 2, endpoints
        assert e["failures"] == 0

