"""Several endpoints: two real vLLM CPU servers behind one run, and one of them dying mid-run."""

from __future__ import annotations

import json
import logging
import os
import signal
import time

import pytest

from pipeline import lifecycle
from pipeline.lifecycle import generate
from pipeline.llm import LLMClient
from pipeline.server import ManagedServer
from tests.conftest import _require_vllm, tiny_llm_config, tiny_server_config
from tests.test_generate_vllm import make_config, read_lines

pytestmark = pytest.mark.vllm


class _SpawnOnly(ManagedServer):
    """Starts the process but returns at once, so the session server can boot meanwhile."""

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
    """Every LLMClient the run creates, to read its per-endpoint state at the moment of the kill."""
    created: list[LLMClient] = []

    class Recording(LLMClient):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            created.append(self)

    monkeypatch.setattr(lifecycle, "LLMClient", Recording)
    return created


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



def test_killing_one_endpoint_mid_run_completes_the_target_on_the_other(vllm_server, second_server, tiny_llama,
                                                                         tmp_path, clients, caplog):
    """Runs last in this module: it SIGKILLs the second server."""
    a, b = vllm_server.base_url, second_server.base_url
    threshold, cooldown = 2, 4.0
    llm = tiny_llm_config([a, b], str(tiny_llama), max_concurrency=4, max_ahead=8, endpoint_failure_threshold=threshold,
                          endpoint_cooldown_s=cooldown, max_retries=6, backoff_initial_s=0.2, backoff_max_s=1.0)
    # 40 records at 2 tasks a request need at least 20 requests. The kill comes after 4 are consumed, when at most
    # 4 + max_ahead have been sent, so at least 8 more are sent after it and some of them are offered to the dead
    # endpoint (it has the fewest outstanding) until it is taken out of rotation.
    config = make_config(tmp_path, [a, b], str(tiny_llama), run_name="failover", target=40, tasks_per_request=2, llm=llm)
    killed: dict[str, float] = {}

    def kill_b_after_four_requests(counts) -> None:
        if killed or counts.requests < 4:
            return
        client = clients[-1]
        killed.update(at=time.monotonic(), b_requests=client.endpoints[1].requests,
                      b_outstanding=client.endpoints[1].outstanding, a_requests=client.endpoints[0].requests)
        os.killpg(os.getpgid(second_server.process.pid), signal.SIGKILL)
        second_server.process.wait(timeout=60)  # SIGKILL is asynchronous: dead before the run goes on

    with caplog.at_level(logging.DEBUG, logger="pipeline.llm"):
        summary = generate(config, on_progress=kill_b_after_four_requests, export=False)
    ended = time.monotonic()
    picks = [r.endpoint_pick for r in caplog.records if hasattr(r, "endpoint_pick")]

    assert killed and not second_server.is_alive()
    assert vllm_server.is_alive()
    meta = json.loads((config.run_dir / "run.json").read_text())
    assert meta["status"] == "completed" and summary.accepted >= config.target
    keys = [(r["request_index"], r["candidate_index"]) for r in read_lines(config.run_dir / "accepted.jsonl")]
    assert keys == sorted(keys) and len(keys) == len(set(keys)) == summary.accepted
    # Every request got an answer in the end: the attempts caught on the dead server were retried on the other.
    assert "request_error" not in meta["counts"]["rejected"], meta["counts"]["rejected"]

    endpoints = {e["url"]: e for e in meta["endpoints"]}
    assert endpoints[a]["failures"] == 0
    b_after = endpoints[b]["requests"] - killed["b_requests"]
    # Every attempt on the dead server failed: those in flight at the kill and all later ones ...
    assert b_after + killed["b_outstanding"] >= endpoints[b]["failures"] >= max(1, b_after)
    transport = sum(meta["faults"].get(k, 0) for k in ("connection_error", "bad_response", "timeout"))
    assert transport >= endpoints[b]["failures"]
    # ... and it left the rotation after `threshold` failures in a row, getting only a probe per cool-down. Had it
    # stayed, least-outstanding balancing would offer it nearly every attempt (it fails at once, so it always has
    # the fewest outstanding), and requests would run out of retries there.
    # Each probe window may catch every attempt started before the first failing answer: at most max_concurrency.
    probes_allowed = threshold + killed["b_outstanding"] + llm.max_concurrency * ((ended - killed["at"]) / cooldown + 1)
    assert b_after <= probes_allowed, (b_after, probes_allowed)
    assert clients[-1].endpoints[1].consecutive_failures >= threshold
    # Every attempt's endpoint was logged with the state it was chosen in: the dead endpoint got no attempt while it
    # was cooling down and the other one was healthy, only probes when both were cooling down.
    assert len(picks) == sum(e["requests"] for e in endpoints.values())
    assert sum(p["url"] == b for p in picks) == endpoints[b]["requests"]
    assert [p for p in picks if p["url"] == b and b in p["cooling_down"] and p["healthy"]] == []
    assert any(b in p["cooling_down"] for p in picks), "the dead endpoint never left the rotation"
    # The survivor answered every request that was not answered before the kill.
    assert endpoints[a]["requests"] - killed["a_requests"] >= summary.requests - killed["a_requests"] - killed["b_requests"] > 0
