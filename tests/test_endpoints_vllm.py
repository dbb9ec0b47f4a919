"""Several endpoints: two real vLLM CPU servers behind one run, and one of them dying mid-run."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

import pipeline.generate
from pipeline.generate import generate
from pipeline.llm import LLMClient
from pipeline.server import ManagedServer
from tests.conftest import _require_vllm, tiny_llm_config, tiny_server_config
from tests.test_generate_vllm import make_config, read_lines

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


@pytest.fixture
def clients(monkeypatch) -> list[LLMClient]:
    """Every LLMClient the pipeline creates, to look at its endpoints during and after a run."""
    made: list[LLMClient] = []

    class Recording(LLMClient):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(pipeline.generate, "LLMClient", Recording)
    return made


def test_run_spreads_requests_over_both_endpoints(vllm_server, second_server, tiny_llama, tmp_path):
    a, b = vllm_server.base_url, second_server.base_url
    config = make_config(tmp_path, [a, b], str(tiny_llama), run_name="two", target=24)
    summary = generate(config, export=False)

    meta = json.loads((config.run_dir / "run.json").read_text())
    assert meta["status"] == "completed" and summary.accepted >= config.target
    endpoints = {e["url"]: e for e in meta["endpoints"]}
    assert set(endpoints) == {a, b}
    total = sum(e["requests"] for e in endpoints.values())
    assert total >= summary.requests
    # Least-outstanding balancing: the first max_concurrency requests alternate between the two idle endpoints;
    # after that each endpoint gets work as fast as it finishes it (a server still compiling the JSON grammar of
    # its first requests gets less), so at least half of max_concurrency each.
    for e in endpoints.values():
        assert e["requests"] >= config.llm.max_concurrency // 2, endpoints
        assert e["failures"] == 0


def test_dead_endpoint_leaves_rotation_and_the_run_finishes_on_the_other(vllm_server, second_server, tiny_llama, tmp_path, clients):
    a, b = vllm_server.base_url, second_server.base_url
    threshold, cooldown = 2, 3.0
    llm = tiny_llm_config([a, b], str(tiny_llama), endpoint_failure_threshold=threshold, endpoint_cooldown_s=cooldown,
                          max_retries=4, backoff_initial_s=0.2, backoff_max_s=1.0)
    config = make_config(tmp_path, [a, b], str(tiny_llama), run_name="failover", target=32, llm=llm)
    killed: dict[str, float] = {}

    def kill_b_once_records_flow(counts) -> None:
        if not killed and counts.accepted >= 8:
            client = clients[-1]
            killed["at"] = time.monotonic()
            killed["a_requests"] = client.endpoints[0].requests
            killed["b_requests"] = client.endpoints[1].requests
            killed["b_outstanding"] = client.endpoints[1].outstanding
            os.killpg(os.getpgid(second_server.process.pid), signal.SIGKILL)

    summary = generate(config, on_progress=kill_b_once_records_flow, export=False)
    ended = time.monotonic()

    assert killed, "the run finished before any record was accepted"
    assert not second_server.is_alive()
    meta = json.loads((config.run_dir / "run.json").read_text())
    assert meta["status"] == "completed" and summary.accepted >= config.target
    keys = [(r["request_index"], r["candidate_index"]) for r in read_lines(config.run_dir / "accepted.jsonl")]
    assert keys == sorted(keys) and len(keys) == len(set(keys))

    endpoints = {e["url"]: e for e in meta["endpoints"]}
    client_a, client_b = clients[-1].endpoints
    assert endpoints[a]["failures"] == 0
    assert endpoints[b]["failures"] >= threshold  # the dead endpoint's failures are counted ...
    assert meta["faults"].get("connection_error", 0) + meta["faults"].get("bad_response", 0) >= endpoints[b]["failures"]
    # ... every attempt on it after the kill failed, and so did those in flight at the kill (bar one whose answer
    # had already arrived) ...
    b_after = endpoints[b]["requests"] - killed["b_requests"]
    assert b_after <= endpoints[b]["failures"] <= b_after + killed["b_outstanding"]
    assert client_b.consecutive_failures >= threshold
    # ... and it was out of rotation: it only got the occasional probe after each cool-down. Had it stayed in
    # rotation, least-outstanding balancing would send it nearly every attempt (it fails at once, so it always
    # has the fewest outstanding), every request would use up its retries there, and the run would fail.
    probes_allowed = threshold + 4 * ((ended - killed["at"]) / cooldown + 1)
    assert b_after <= probes_allowed, (b_after, probes_allowed)
    # The other endpoint took over, the retries of the requests caught on the dead one included.
    assert endpoints[a]["requests"] - killed["a_requests"] >= max(1, killed["b_outstanding"])
