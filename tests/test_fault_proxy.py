"""Tests for tests/fault_proxy.py, driven through the real ``openai.AsyncOpenAI`` client.

A tiny OpenAI-compatible fake upstream (stdlib ``http.server`` in a thread) answers
``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``; the proxy sits in front
and each test checks what the client observes for one fault kind.

What the client sees, per fault (openai client, ``max_retries=0``):

==========================  =============================================================
http_500 / http_503         ``openai.InternalServerError`` (an ``APIStatusError``), status
http_429                    ``openai.RateLimitError``, ``Retry-After: 1`` on the response
connection_reset            ``openai.APIConnectionError`` (not the timeout subclass)
hang                        ``openai.APITimeoutError`` after the client timeout
truncated_body              ``openai.APIConnectionError`` (httpx ``RemoteProtocolError``:
                            peer closed before the announced Content-Length; httpx reads
                            the body inside the client's request call, so it never
                            becomes a JSON decode error)
invalid_json_content        200, valid completion, ``json.loads(content)`` fails
finish_length               200, ``finish_reason == "length"``, content cut to half
==========================  =============================================================
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest

from tests.fault_proxy import (
    ALL_FAULTS,
    CONNECTION_RESET,
    FINISH_LENGTH,
    HANG,
    HTTP_429,
    HTTP_500,
    HTTP_503,
    INVALID_JSON_CONTENT,
    TRUNCATED_BODY,
    FaultProxy,
)

pytestmark = pytest.mark.timeout(60)

MODEL = "fake-model"
CONTENT = json.dumps({"instruction": "Name three primary colors.", "input": "", "output": "Red, yellow, blue."})


# --- fake upstream ---------------------------------------------------------------------------
class _FakeOpenAIHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like vLLM
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid 40 ms stalls
    seen: list[dict[str, Any]]  # set per server in the fixture

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.server.seen.append({"method": "GET", "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}})  # type: ignore[attr-defined]
        if self.path == "/v1/models":
            self._reply(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "test"}]})
        else:
            self._reply(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.seen.append(  # type: ignore[attr-defined]
            {"method": "POST", "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": raw}
        )
        usage = {"prompt_tokens": 5, "completion_tokens": 20, "total_tokens": 25}
        if self.path == "/v1/chat/completions":
            self._reply(
                200,
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": 0,
                    "model": MODEL,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": CONTENT},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
            )
        elif self.path == "/v1/completions":
            self._reply(
                200,
                {
                    "id": "cmpl-1",
                    "object": "text_completion",
                    "created": 0,
                    "model": MODEL,
                    "choices": [{"index": 0, "text": CONTENT, "finish_reason": "stop", "logprobs": None}],
                    "usage": usage,
                },
            )
        else:
            self._reply(404, {"error": {"message": "not found"}})


class _FakeOpenAIServer(ThreadingHTTPServer):
    # The default listen backlog (5) overflows under concurrent tests, and the kernel then
    # drops connections the client believed open (httpx ReadError): a test artifact.
    request_queue_size = 128
    daemon_threads = True


@pytest.fixture(scope="module")
def upstream() -> Iterator[ThreadingHTTPServer]:
    server = _FakeOpenAIServer(("127.0.0.1", 0), _FakeOpenAIHandler)
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def upstream_url(upstream: ThreadingHTTPServer) -> str:
    upstream.seen.clear()  # type: ignore[attr-defined]
    return f"http://127.0.0.1:{upstream.server_address[1]}"


# --- helpers -------------------------------------------------------------------------------
def _client(proxy: FaultProxy, timeout: float = 5.0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.v1_url, api_key="sk-test", max_retries=0, timeout=timeout)


async def _chat(client: openai.AsyncOpenAI) -> Any:
    return await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Give me an instruction as JSON."}]
    )


def _one_chat(proxy: FaultProxy, timeout: float = 5.0) -> Any:
    """Run one chat completion through the proxy on a fresh loop; returns it or raises."""

    async def go() -> Any:
        async with _client(proxy, timeout) as client:
            return await _chat(client)

    return asyncio.run(go())


def _outcomes(proxy: FaultProxy, n: int) -> list[str]:
    """Send n sequential chat requests; label each by what the client observed."""

    async def go() -> list[str]:
        labels = []
        async with _client(proxy) as client:
            for _ in range(n):
                try:
                    await _chat(client)
                    labels.append("ok")
                except openai.APIStatusError as exc:
                    labels.append(str(exc.status_code))
        return labels

    return asyncio.run(go())


def _only(fault: str, **kwargs: Any) -> dict[str, Any]:
    """Constructor kwargs: first eligible request gets `fault`, no random faults after."""
    return {"fault_rate": 0.0, "script": [fault], **kwargs}


# --- one test per fault kind ---------------------------------------------------------------
@pytest.mark.parametrize(("fault", "status"), [(HTTP_500, 500), (HTTP_503, 503)])
def test_server_error_faults(upstream_url: str, fault: str, status: int) -> None:
    with FaultProxy(upstream_url, **_only(fault)) as proxy:
        with pytest.raises(openai.InternalServerError) as info:
            _one_chat(proxy)
        assert isinstance(info.value, openai.APIStatusError)
        assert info.value.status_code == status
        assert proxy.counts[fault] == 1
        # The next request is no longer scripted and passes through.
        assert json.loads(_one_chat(proxy).choices[0].message.content) == json.loads(CONTENT)
        assert proxy.counts["passed"] == 1


def test_rate_limit_has_retry_after(upstream_url: str) -> None:
    with FaultProxy(upstream_url, **_only(HTTP_429)) as proxy:
        with pytest.raises(openai.RateLimitError) as info:
            _one_chat(proxy)
        assert info.value.status_code == 429
        assert info.value.response.headers["retry-after"] == "1"
        assert proxy.counts[HTTP_429] == 1


def test_connection_reset(upstream: ThreadingHTTPServer, upstream_url: str) -> None:
    with FaultProxy(upstream_url, **_only(CONNECTION_RESET)) as proxy:
        with pytest.raises(openai.APIConnectionError) as info:
            _one_chat(proxy)
        assert not isinstance(info.value, openai.APITimeoutError)
        assert proxy.counts[CONNECTION_RESET] == 1
    assert upstream.seen == []  # type: ignore[attr-defined]  # never forwarded


def test_hang_ends_by_client_timeout(upstream_url: str) -> None:
    with FaultProxy(upstream_url, hang_seconds=30.0, **_only(HANG)) as proxy:
        t0 = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            _one_chat(proxy, timeout=0.5)
        # The failure this guards against waits out the 30 s hang; half of it leaves a loaded machine room.
        assert time.monotonic() - t0 < 15.0
        assert proxy.counts[HANG] == 1


def test_truncated_body_is_connection_error(upstream: ThreadingHTTPServer, upstream_url: str) -> None:
    with FaultProxy(upstream_url, **_only(TRUNCATED_BODY)) as proxy:
        with pytest.raises(openai.APIConnectionError) as info:
            _one_chat(proxy)
        assert not isinstance(info.value, openai.APITimeoutError)
        # httpx (or httpx2, in newer openai) RemoteProtocolError: short read of the body.
        assert type(info.value.__cause__).__name__ == "RemoteProtocolError"
        assert proxy.counts[TRUNCATED_BODY] == 1
    assert len(upstream.seen) == 1  # type: ignore[attr-defined]  # it was forwarded


def test_invalid_json_content(upstream_url: str) -> None:
    with FaultProxy(upstream_url, **_only(INVALID_JSON_CONTENT)) as proxy:
        completion = _one_chat(proxy)  # HTTP 200 with a well-formed body
        content = completion.choices[0].message.content
        assert content
        with pytest.raises(json.JSONDecodeError):
            json.loads(content)
        assert completion.choices[0].finish_reason == "stop"
        assert proxy.counts[INVALID_JSON_CONTENT] == 1


def test_finish_length(upstream_url: str) -> None:
    with FaultProxy(upstream_url, **_only(FINISH_LENGTH)) as proxy:
        completion = _one_chat(proxy)
        choice = completion.choices[0]
        assert choice.finish_reason == "length"
        assert choice.message.content == CONTENT[: len(CONTENT) // 2]
        assert proxy.counts[FINISH_LENGTH] == 1


def test_content_faults_on_legacy_completions(upstream_url: str) -> None:
    async def go(proxy: FaultProxy) -> list[Any]:
        async with _client(proxy) as client:
            return [await client.completions.create(model=MODEL, prompt="x") for _ in range(2)]

    with FaultProxy(upstream_url, fault_rate=0.0, script=[FINISH_LENGTH, INVALID_JSON_CONTENT]) as proxy:
        first, second = asyncio.run(go(proxy))
    assert first.choices[0].finish_reason == "length"
    assert first.choices[0].text == CONTENT[: len(CONTENT) // 2]
    with pytest.raises(json.JSONDecodeError):
        json.loads(second.choices[0].text)


# --- pass-through, counts, determinism, shutdown -------------------------------------------
def test_models_endpoint_untouched(upstream_url: str) -> None:
    async def go(proxy: FaultProxy) -> list[str]:
        async with _client(proxy) as client:
            return [m.id for m in (await client.models.list()).data]

    # fault_rate=1: every eligible request would be faulted, but /v1/models is not eligible.
    with FaultProxy(upstream_url, fault_rate=1.0, faults=[HTTP_500]) as proxy:
        assert asyncio.run(go(proxy)) == [MODEL]
        assert asyncio.run(go(proxy)) == [MODEL]
        assert sum(proxy.counts.values()) == 0
        assert proxy.history == []


def test_headers_and_body_forwarded_as_is(upstream: ThreadingHTTPServer, upstream_url: str) -> None:
    schema = {"type": "object", "properties": {"instruction": {"type": "string"}}, "required": ["instruction"]}

    async def go(proxy: FaultProxy) -> None:
        async with _client(proxy) as client:
            await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "안녕하세요 — JSON please"}],
                response_format={"type": "json_schema", "json_schema": {"name": "item", "schema": schema}},
            )

    with FaultProxy(upstream_url, fault_rate=0.0) as proxy:
        asyncio.run(go(proxy))
        assert proxy.counts["passed"] == 1
    (seen,) = upstream.seen  # type: ignore[attr-defined]
    assert seen["path"] == "/v1/chat/completions"
    assert seen["headers"]["authorization"] == "Bearer sk-test"
    sent = json.loads(seen["body"])
    assert sent["response_format"]["json_schema"]["schema"] == schema
    assert sent["messages"][0]["content"] == "안녕하세요 — JSON please"


def test_upstream_with_v1_suffix_and_unreachable_upstream(upstream_url: str) -> None:
    with FaultProxy(upstream_url + "/v1/", fault_rate=0.0) as proxy:
        assert _one_chat(proxy).choices[0].finish_reason == "stop"
    # Port 9 (discard) on localhost is practically never listening -> 502 from the proxy.
    with FaultProxy("http://127.0.0.1:9", fault_rate=0.0) as proxy:
        with pytest.raises(openai.APIStatusError) as info:
            _one_chat(proxy)
        assert info.value.status_code == 502
        assert proxy.counts["upstream_error"] == 1


def test_counts_with_script_then_rate(upstream_url: str) -> None:
    script = [HTTP_500, None, HTTP_429, HTTP_503, None, HTTP_500]
    with FaultProxy(upstream_url, fault_rate=0.0, script=script) as proxy:
        labels = _outcomes(proxy, 8)
        counts = proxy.counts
        history = proxy.history
    assert labels == ["500", "ok", "429", "503", "ok", "500", "ok", "ok"]
    assert history == [*script, None, None]
    assert counts == {
        **dict.fromkeys(ALL_FAULTS, 0),
        HTTP_500: 2,
        HTTP_429: 1,
        HTTP_503: 1,
        "passed": 4,
        "upstream_error": 0,
    }


def test_seeded_determinism(upstream_url: str) -> None:
    def run(seed: int) -> tuple[list[str], list[str | None]]:
        # Only fast status faults, so 30 sequential requests take well under a second.
        with FaultProxy(upstream_url, fault_rate=0.5, faults=[HTTP_500, HTTP_503, HTTP_429], seed=seed) as proxy:
            return _outcomes(proxy, 30), proxy.history

    first, second, other = run(1234), run(1234), run(99)
    assert first == second
    assert first != other
    labels, history = first
    assert {"ok", "500", "503", "429"} <= set(labels)  # the rate actually mixes outcomes
    expected = {None: "ok", HTTP_500: "500", HTTP_503: "503", HTTP_429: "429"}
    assert labels == [expected[f] for f in history]


def test_concurrent_requests_pass_through(upstream_url: str) -> None:
    async def go(proxy: FaultProxy) -> list[str | None]:
        async with _client(proxy) as client:
            results = await asyncio.gather(*(_chat(client) for _ in range(20)))
        return [r.choices[0].message.content for r in results]

    with FaultProxy(upstream_url, fault_rate=0.0) as proxy:
        assert asyncio.run(go(proxy)) == [CONTENT] * 20
        assert proxy.counts["passed"] == 20


def test_stop_is_fast_with_hung_request(upstream_url: str) -> None:
    proxy = FaultProxy(upstream_url, hang_seconds=60.0, **_only(HANG)).start()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            _one_chat(proxy, timeout=30.0)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion below
            errors.append(exc)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    deadline = time.monotonic() + 5
    while proxy.counts[HANG] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.counts[HANG] == 1

    t0 = time.monotonic()
    proxy.stop()
    assert time.monotonic() - t0 < 15.0  # not held by the 30 s hang
    assert proxy._thread is not None and not proxy._thread.is_alive()

    # The hung client is released promptly with a connection error, not a 30 s timeout.
    caller.join(5)
    assert not caller.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], openai.APIConnectionError)
    assert not isinstance(errors[0], openai.APITimeoutError)
    proxy.stop()  # idempotent


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        FaultProxy("http://x", faults=["nope"])
    with pytest.raises(ValueError):
        FaultProxy("http://x", script=[HTTP_500, "nope"])
    with pytest.raises(ValueError):
        FaultProxy("http://x", fault_rate=1.5)
    with pytest.raises(RuntimeError):
        FaultProxy("http://x").base_url  # not started
