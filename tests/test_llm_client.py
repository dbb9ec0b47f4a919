"""LLM client errors against a scripted fake server: which statuses fail at once, which are one request's problem,
how long a Retry-After makes it wait, and what happens when every endpoint is down. Delays are recorded (the
client's backoff is wrapped), never measured."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.config import GenerationConfig, LLMConfig
from pipeline.generate import GenerationRun
from pipeline.lifecycle import run_rounds
from pipeline.llm import LLMClient, LLMUnavailableError, RequestRejectedError
from pipeline.server import free_port
from tests.fault_proxy import CONNECTION_RESET, HANG, HTTP_503, TRUNCATED_BODY, FaultProxy

OK_BODY = {
    "id": "c", "object": "chat.completion", "created": 0, "model": "fake",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": '{"tasks": []}'}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
}


class ScriptedServer:
    """Answers POSTs from a script of (status, headers); the last entry repeats. Counts requests."""

    def __init__(self, script: list[tuple[int, dict[str, str]]], keepalive_s: float | None = None,
                 bodies: list[bytes | None] | None = None):
        self.script, self.requests, self.lock = list(script), 0, threading.Lock()
        bodies = list(bodies or [])
        self.connections, self.dropped = 0, 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                self.answered_at: float | None = None
                with fake.lock:
                    fake.connections += 1

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                if keepalive_s is not None and self.answered_at is not None and time.monotonic() - self.answered_at >= keepalive_s:
                    # The server's keep-alive timer fired as the request arrived (uvicorn: same loop turn): the
                    # connection is closed with the request unanswered.
                    with fake.lock:
                        fake.dropped += 1
                    self.close_connection = True
                    return
                with fake.lock:
                    status, headers = fake.script[min(fake.requests, len(fake.script) - 1)]
                    scripted_body = bodies[fake.requests] if fake.requests < len(bodies) else None
                    fake.requests += 1
                body = OK_BODY if status == 200 else {"error": {"message": f"scripted {status}", "code": status}}
                data = scripted_body or json.dumps(body).encode()
                self.send_response(status)
                for key, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                self.answered_at = time.monotonic()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def sleeps(monkeypatch):
    """The client's retry delays, recorded and then not slept. (Patching asyncio.sleep itself would also stop the
    sleeps of every other event loop in the process, e.g. a Prefect test harness's services, which then spin.)"""
    recorded: list[float] = []
    backoff = LLMClient._backoff

    def record(self, attempt, retry_after):
        recorded.append(backoff(self, attempt, retry_after))
        return 0.0

    monkeypatch.setattr(LLMClient, "_backoff", record)
    return recorded


def _complete(config: LLMConfig, urls: list[str]):
    async def go():
        client = LLMClient(config, urls)
        try:
            return await client.complete(0, "prompt", 1), client
        finally:
            await client.aclose()

    return asyncio.run(go())


def _config(**overrides) -> LLMConfig:
    return LLMConfig(**{"model": "fake", "max_retries": 3, "backoff_initial_s": 0.5, "backoff_max_s": 2.0,
                        "request_timeout_s": 10, **overrides})


@pytest.mark.parametrize("status", [401, 403, 404])
def test_auth_and_not_found_fail_at_once_naming_the_settings(status, sleeps):
    with ScriptedServer([(status, {})]) as server:
        with pytest.raises(LLMUnavailableError) as info:
            _complete(_config(), [server.url])
    assert server.requests == 1 and sleeps == []  # no retry
    assert f"HTTP {status}: scripted {status}" in str(info.value)
    assert "check llm.model and llm.api_key" in str(info.value)


def test_400_rejects_that_request_only(sleeps):
    with ScriptedServer([(400, {})]) as server:
        with pytest.raises(RequestRejectedError) as info:
            _complete(_config(), [server.url])
    assert server.requests == 1 and info.value.status == 400 and "scripted 400" in str(info.value)


def test_400s_are_recorded_and_eight_in_a_row_fail_the_round(tmp_path, sleeps):
    with ScriptedServer([(400, {})]) as server:
        config = GenerationConfig(run_name="r400", output_dir=str(tmp_path), target=50, tasks_per_request=2,
                                  llm=_config(base_urls=[server.url], max_concurrency=1))
        run = GenerationRun(config).open()
        try:
            with pytest.raises(LLMUnavailableError, match="refused 8 requests in a row; last: .*scripted 400"):
                run_rounds(run, [server.url], None, None)
        finally:
            run.close()
    rejected = [json.loads(line) for line in (config.run_dir / "rejected.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rejected] == ["request_error"] * 7
    assert all("scripted 400" in r["detail"] for r in rejected)


@pytest.mark.parametrize("retry_after, expected", [("0.3", 0.3), ("100", 2.0)], ids=["honoured", "capped"])
def test_retry_after_is_honoured_up_to_backoff_max(retry_after, expected, sleeps):
    with ScriptedServer([(429, {"Retry-After": retry_after}), (200, {})]) as server:
        completion, client = _complete(_config(), [server.url])
    assert completion.attempts == 2 and server.requests == 2
    assert sleeps == [expected]
    assert client.stats.faults["http_429"] == 1


def test_every_endpoint_down_probes_the_one_that_waited_longest_and_fails_after_the_retries(sleeps):
    dead = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]  # nothing listens there
    config = _config(max_retries=3, endpoint_failure_threshold=1, endpoint_cooldown_s=600)

    async def go():
        client = LLMClient(config, dead)
        try:
            with pytest.raises(LLMUnavailableError, match="failed after 3 retries: cannot connect"):
                await client.complete(0, "prompt", 1)
            return client.endpoint_summary()
        finally:
            await client.aclose()

    summary = asyncio.run(go())
    # Both out of rotation for 10 minutes, yet the client neither stalls for the cool-down nor sticks to one:
    # it alternates, probing whichever went down first.
    assert [e["requests"] for e in summary] == [2, 2]
    assert len(sleeps) == 3 and all(delay <= config.backoff_max_s for delay in sleeps)


@pytest.mark.parametrize("backend", ["aiohttp", "httpx"])
@pytest.mark.parametrize("expiry, faults", [(None, {}), (5.0, {"connection_error": 1})], ids=["default", "5s-expiry"])
def test_idle_connections_are_dropped_before_the_server_closes_them(expiry, faults, backend, sleeps):
    """A connection idle for nearly the server's keep-alive (vLLM/uvicorn: 5 s) may be closed by the server just as
    the next request goes out on it: that request fails with no answer. The client must stop reusing idle
    connections well before that. Scaled down here: the server's window opens at 1 s idle; the client waits 1.2 s.
    httpx's own 5 s expiry reuses the connection and loses the request (the contrast shows the server bites)."""
    config = _config(http_backend=backend) if expiry is None else _config(http_backend=backend, keepalive_expiry_s=expiry)
    if expiry is None:
        config = config.model_copy(update={"keepalive_expiry_s": config.keepalive_expiry_s / 4})  # 0.5 s, as 2 s is to 5 s

    async def go(url):
        client = LLMClient(config, [url])
        try:
            await client.complete(0, "prompt", 1)
            await asyncio.sleep(1.2)
            await client.complete(1, "prompt", 2)
            return client
        finally:
            await client.aclose()

    with ScriptedServer([(200, {})], keepalive_s=1.0) as server:
        client = asyncio.run(go(server.url))
    assert dict(client.stats.faults) == faults
    assert server.connections == 2 and server.dropped == len(faults)
    assert LLMConfig(model="m").keepalive_expiry_s < 5.0


@pytest.mark.parametrize("backend", ["aiohttp", "httpx"])
@pytest.mark.parametrize("fault, kind", [(CONNECTION_RESET, "connection_error"), (TRUNCATED_BODY, "connection_error"),
                                         (HANG, "timeout"), (HTTP_503, "http_503")])
def test_transport_faults_are_named_and_retried_on_either_backend(fault, kind, backend, sleeps):
    """Each backend names a fault the same way in run.json: openai's aiohttp transport reports a reset connection as
    a connect timeout, which must still count as a connection error (and a silent server as a timeout)."""
    with ScriptedServer([(200, {})]) as server, FaultProxy(server.url, fault_rate=0.0, script=[fault], hang_seconds=30) as proxy:
        started = time.monotonic()
        completion, client = _complete(_config(http_backend=backend, request_timeout_s=1.0), [proxy.v1_url])
    assert completion.text == OK_BODY["choices"][0]["message"]["content"] and completion.attempts == 2
    assert dict(client.stats.faults) == {kind: 1} and proxy.counts[fault] == 1
    assert time.monotonic() - started < 15  # the hang ends by the client's 1 s timeout, not the proxy's 30 s


def test_malformed_body_is_a_bad_response_and_retried(sleeps):
    with ScriptedServer([(200, {}), (200, {})], bodies=[b'{"choices": []}', None]) as server:
        completion, client = _complete(_config(), [server.url])
    assert completion.attempts == 2 and dict(client.stats.faults) == {"bad_response": 1}
