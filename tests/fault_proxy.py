"""Fault-injection HTTP proxy for testing the pipeline against an OpenAI-compatible server.

``FaultProxy`` sits between an OpenAI client and a real upstream server (vLLM, or a fake
one in unit tests) and corrupts a deterministic, seeded subset of requests so that the
pipeline's retry / timeout / parse-error handling can be exercised end to end::

    with FaultProxy("http://127.0.0.1:8000", fault_rate=0.3, seed=1) as proxy:
        client = openai.AsyncOpenAI(base_url=proxy.v1_url, api_key="x", max_retries=3)
        ...
        print(proxy.counts)   # {"http_500": 2, ..., "passed": 17, "upstream_error": 0}

Design notes
------------
* The server is a raw ``asyncio`` TCP server speaking HTTP/1.1 through ``h11`` (already a
  dependency of httpx). An ASGI framework would be simpler for the happy path, but it
  cannot abort a socket (``connection_reset``) or send a lying ``Content-Length``
  (``truncated_body``), which are the whole point here.
* It runs in a daemon thread with its own event loop, so it works from synchronous tests
  and from tests that run their own ``asyncio`` loop alike.
* Requests are non-streaming: request and response bodies are buffered whole.
* Only requests whose path is in ``only_paths`` are eligible for faults; everything else
  (``GET /v1/models``, ``/metrics``, ...) is forwarded untouched and not counted.
"""

from __future__ import annotations

import asyncio
import collections
import http
import json
import logging
import random
import socket
import struct
import threading
from collections.abc import Sequence
from typing import Any

import h11
import httpx

__all__ = [
    "ALL_FAULTS",
    "CONNECTION_RESET",
    "FINISH_LENGTH",
    "FaultProxy",
    "HANG",
    "HTTP_429",
    "HTTP_500",
    "HTTP_503",
    "INVALID_JSON_CONTENT",
    "TRUNCATED_BODY",
]

# --- fault kinds -------------------------------------------------------------------------
HTTP_500 = "http_500"
"""Answer ``500 Internal Server Error`` (OpenAI-style JSON error body) without forwarding."""
HTTP_503 = "http_503"
"""Answer ``503 Service Unavailable`` without forwarding."""
HTTP_429 = "http_429"
"""Answer ``429 Too Many Requests`` with ``Retry-After: 1`` without forwarding."""
CONNECTION_RESET = "connection_reset"
"""Read the request, then reset the TCP connection (RST) without any response."""
HANG = "hang"
"""Read the request and send nothing for ``hang_seconds``, then drop the connection."""
TRUNCATED_BODY = "truncated_body"
"""Forward, then send the real headers (full Content-Length) but only half the body, and close."""
INVALID_JSON_CONTENT = "invalid_json_content"
"""Forward, then make each choice's content non-JSON text (HTTP body stays valid JSON, 200)."""
FINISH_LENGTH = "finish_length"
"""Forward, then set each choice's ``finish_reason="length"`` and cut its content to half."""

ALL_FAULTS: tuple[str, ...] = (
    HTTP_500,
    HTTP_503,
    HTTP_429,
    CONNECTION_RESET,
    HANG,
    TRUNCATED_BODY,
    INVALID_JSON_CONTENT,
    FINISH_LENGTH,
)

PASSED = "passed"
"""``counts`` key: eligible request forwarded untouched."""
UPSTREAM_ERROR = "upstream_error"
"""``counts`` key: the upstream could not be reached / timed out; the client got a 502."""

# Faults that answer without ever contacting the upstream.
_STATUS_FAULTS: dict[str, int] = {HTTP_500: 500, HTTP_503: 503, HTTP_429: 429}
# Faults that rewrite the JSON body of a successful upstream completion.
_CONTENT_FAULTS = frozenset({INVALID_JSON_CONTENT, FINISH_LENGTH})

# Prefix that guarantees the content is not JSON (a bare word is never a JSON value) and
# mimics a classic LLM failure mode: chatty preamble before a half-written JSON object.
_GARBAGE_PREFIX = "Sure! Here is the JSON you asked for:\n```json\n"

# Hop-by-hop / framing headers that must not be copied between the two connections: the
# proxy re-frames both the upstream request (httpx) and the client response (h11) itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "host",
        # Dropped so the upstream answers uncompressed: content faults must read the body,
        # and httpx would hand us decoded bytes under a stale Content-Encoding anyway.
        "accept-encoding",
        "content-encoding",
    }
)

_READ_CHUNK = 65536

_log = logging.getLogger(__name__)


class FaultProxy:
    """An HTTP/1.1 proxy in a background thread that injects faults into LLM API calls.

    Args:
        upstream: base URL of the real server, e.g. ``"http://127.0.0.1:8000"``. Request
            paths are appended verbatim; a trailing ``/v1`` is tolerated and stripped
            because client paths already start with ``/v1``.
        fault_rate: probability that an eligible request gets a fault (after ``script``).
        faults: fault kinds to draw from, uniformly.
        seed: seed of the ``random.Random`` that draws faults, in request-arrival order.
        hang_seconds: how long a ``hang`` fault keeps the connection silent.
        only_paths: request paths (query string ignored) eligible for faults.
        script: optional explicit fault per eligible request, in order (``None`` = pass);
            once exhausted, faults are drawn from the seeded RNG at ``fault_rate``. The
            script does not consume RNG draws.
        upstream_timeout: timeout in seconds for the forwarded upstream call (generous
            by default: a CPU vLLM server can be slow).

    Attributes:
        base_url: ``http://127.0.0.1:PORT`` (no ``/v1``); valid after ``start()``.
        v1_url: ``base_url + "/v1"``, what ``openai.AsyncOpenAI(base_url=...)`` wants.
        url: alias of ``v1_url``.
        counts: snapshot ``dict`` of fault kind -> times injected, plus ``"passed"``
            (eligible, forwarded untouched) and ``"upstream_error"`` (upstream failed;
            client got 502). Every key of ``ALL_FAULTS`` is present.
        history: snapshot list of the fault drawn for each eligible request, in arrival
            order (``None`` = no fault), regardless of whether it could be applied.

    A content fault (``invalid_json_content`` / ``finish_length``) needs a 200 JSON
    completion from the upstream; otherwise the upstream reply is forwarded unchanged and
    counted as ``"passed"`` (``counts`` reflects what actually went on the wire).
    """

    def __init__(
        self,
        upstream: str,
        fault_rate: float = 0.2,
        faults: Sequence[str] = ALL_FAULTS,
        seed: int = 0,
        hang_seconds: float = 30.0,
        only_paths: Sequence[str] = ("/v1/chat/completions", "/v1/completions"),
        *,
        script: Sequence[str | None] | None = None,
        upstream_timeout: float = 600.0,
    ) -> None:
        if not 0.0 <= fault_rate <= 1.0:
            raise ValueError(f"fault_rate must be in [0, 1], got {fault_rate}")
        for kind in [*faults, *(k for k in (script or ()) if k is not None)]:
            if kind not in ALL_FAULTS:
                raise ValueError(f"unknown fault kind {kind!r}; expected one of {ALL_FAULTS}")
        if fault_rate > 0 and not faults:
            raise ValueError("fault_rate > 0 needs at least one fault kind")

        upstream = upstream.rstrip("/")
        if upstream.endswith("/v1"):
            upstream = upstream[: -len("/v1")]
        self.upstream = upstream
        self.fault_rate = fault_rate
        self.faults: tuple[str, ...] = tuple(faults)
        self.seed = seed
        self.hang_seconds = hang_seconds
        self.only_paths = frozenset(only_paths)
        self.upstream_timeout = upstream_timeout

        self._rng = random.Random(seed)
        self._script: collections.deque[str | None] = collections.deque(script or ())
        # `counts`/`history` are written on the proxy loop and read from test threads.
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys((*ALL_FAULTS, PASSED, UPSTREAM_ERROR), 0)
        self._history: list[str | None] = []

        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._upstream: httpx.AsyncClient | None = None  # created on the proxy loop
        # Live connection handlers, cancelled on stop() so hung requests don't block it.
        self._handlers: set[asyncio.Task[None]] = set()

    # --- public API ----------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FaultProxy is not started")
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def v1_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def url(self) -> str:
        return self.v1_url

    @property
    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    @property
    def history(self) -> list[str | None]:
        with self._lock:
            return list(self._history)

    def start(self) -> FaultProxy:
        """Start the proxy thread; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("FaultProxy already started")
        self._thread = threading.Thread(target=self._thread_main, name="FaultProxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout=10):
            raise RuntimeError("FaultProxy did not start within 10 s")
        if self._startup_error is not None:
            raise RuntimeError("FaultProxy failed to start") from self._startup_error
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, abort open connections (hung ones included) and join the thread.

        Idempotent. Normally returns well under a second.
        """
        thread, loop, stop_requested = self._thread, self._loop, self._stop_requested
        if thread is None:
            return
        if loop is not None and stop_requested is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(stop_requested.set)
            except RuntimeError:  # loop closed between the check and the call
                pass
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"FaultProxy thread did not stop within {timeout} s")

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- event loop / server -------------------------------------------------------------
    def _thread_main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            if self._ready.is_set():  # crashed while serving: nobody is waiting to be told
                _log.exception("FaultProxy event loop crashed")
            else:  # failed to bind/start: start() re-raises it
                self._startup_error = exc
                self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        self._upstream = httpx.AsyncClient(
            base_url=self.upstream,
            timeout=httpx.Timeout(self.upstream_timeout, connect=30.0),
            # No env proxies: the upstream is local in tests, and HTTP(S)_PROXY must not
            # silently reroute it.
            trust_env=False,
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        # A deep backlog: an overflowing accept queue makes the kernel drop connections the
        # client thinks are open, i.e. spurious connection errors that were never injected.
        server = await asyncio.start_server(self._on_connection, host="127.0.0.1", port=0, backlog=1024)
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop_requested.wait()
        finally:
            server.close()
            # Cancel connection handlers *before* wait_closed(): on Python >= 3.12 it
            # waits for open connections, which a `hang` would hold for hang_seconds.
            for task in list(self._handlers):
                task.cancel()
            if self._handlers:
                await asyncio.wait(list(self._handlers), timeout=2.0)
            try:
                await asyncio.wait_for(server.wait_closed(), timeout=2.0)
            except asyncio.TimeoutError:  # never block shutdown on a stuck socket
                pass
            await self._upstream.aclose()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._handle_connection(reader, writer)
        except (asyncio.CancelledError, ConnectionError):
            # Proxy stopping, or the client went away: drop the socket without ceremony.
            writer.transport.abort()
        except Exception:  # a proxy bug must not kill the loop; keep it visible in logs
            _log.exception("FaultProxy: error while handling a connection")
            writer.transport.abort()
        finally:
            self._handlers.discard(task)
            if not writer.transport.is_closing():
                writer.transport.abort()

    # --- HTTP handling -------------------------------------------------------------------
    async def _handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve the (keep-alive) requests of one client connection, one at a time."""
        conn = h11.Connection(h11.SERVER)
        while True:
            try:
                request, body = await _read_request(conn, reader, writer)
            except h11.RemoteProtocolError as exc:
                await _send_plain(conn, writer, exc.error_status_hint, f"bad request: {exc}")
                writer.close()
                return
            if request is None:  # client closed the connection between requests
                writer.close()
                return

            keep_open = await self._handle_request(conn, writer, request, body)
            if not keep_open or conn.our_state is h11.MUST_CLOSE:
                writer.close()
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:  # e.g. client had not finished its request
                writer.close()
                return

    def _draw_fault(self, path: str) -> str | None:
        """Pick the fault for one request (arrival order; runs on the loop thread only)."""
        if path not in self.only_paths:
            return None
        if self._script:
            fault = self._script.popleft()
        elif self.fault_rate > 0 and self._rng.random() < self.fault_rate:
            fault = self._rng.choice(self.faults)
        else:
            fault = None
        with self._lock:
            self._history.append(fault)
        return fault

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    async def _handle_request(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request, body: bytes
    ) -> bool:
        """Answer one request, injecting its fault. Returns False if the socket is gone."""
        target = request.target.decode("latin-1")
        path = target.split("?", 1)[0]
        eligible = path in self.only_paths
        fault = self._draw_fault(path)

        if fault in _STATUS_FAULTS:
            status = _STATUS_FAULTS[fault]
            self._count(fault)
            extra = [(b"retry-after", b"1")] if status == 429 else []
            await _send(conn, writer, status, _error_body(status, fault), extra)
            return True

        if fault == CONNECTION_RESET:
            self._count(fault)
            _reset(writer)
            return False

        if fault == HANG:
            self._count(fault)
            # Stay silent; the client must give up via its own timeout. stop() cancels this.
            await asyncio.sleep(self.hang_seconds)
            _reset(writer)
            return False

        # Everything else needs the real upstream answer.
        assert self._upstream is not None
        try:
            upstream = await self._upstream.request(
                request.method.decode("ascii"),
                target,
                headers=[
                    (k.decode("latin-1"), v.decode("latin-1"))
                    for k, v in request.headers
                    if k.decode("latin-1").lower() not in _HOP_BY_HOP
                ],
                content=body,
            )
        except httpx.HTTPError as exc:
            self._count(UPSTREAM_ERROR)
            await _send(conn, writer, 502, _error_body(502, f"upstream error: {exc!r}"))
            return True

        status, resp_body = upstream.status_code, upstream.content
        headers = [
            (k.encode("latin-1"), v.encode("latin-1"))
            for k, v in upstream.headers.multi_items()
            if k.lower() not in _HOP_BY_HOP
        ]

        if fault == TRUNCATED_BODY:
            self._count(fault)
            # Announce the full length, deliver half, then close cleanly (FIN, not RST) so
            # the partial bytes do arrive: the client sees a short read, not a reset.
            head = _response_head(conn, status, headers, len(resp_body))
            writer.write(head + resp_body[: len(resp_body) // 2])
            await writer.drain()
            writer.close()
            return False

        if fault in _CONTENT_FAULTS:
            mutated = _mutate_completion(resp_body, fault) if status == 200 else None
            if mutated is not None:
                self._count(fault)
                await _send(conn, writer, status, mutated, headers)
                return True
            # Not a JSON completion: nothing to corrupt, forward as is (see class docstring).

        if eligible:
            self._count(PASSED)
        await _send(conn, writer, status, resp_body, headers)
        return True


# --- helpers -------------------------------------------------------------------------------
async def _read_request(
    conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[h11.Request | None, bytes]:
    """Read one full request (head + body). Returns (None, b"") on a clean EOF before it."""
    request: h11.Request | None = None
    chunks: list[bytes] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            if conn.they_are_waiting_for_100_continue:
                writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            data = await reader.read(_READ_CHUNK)
            conn.receive_data(data)  # b"" marks EOF; h11 raises if it is mid-request
            continue
        if isinstance(event, h11.ConnectionClosed):
            return None, b""
        if isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            chunks.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, b"".join(chunks)
        elif event is h11.PAUSED:  # pragma: no cover - cannot happen before EndOfMessage
            raise h11.RemoteProtocolError("unexpected pipelined data")


def _response_head(
    conn: h11.Connection, status: int, headers: list[tuple[bytes, bytes]], content_length: int
) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b""
    return conn.send(
        h11.Response(
            status_code=status,
            headers=[*headers, (b"content-length", str(content_length).encode())],
            reason=reason,
        )
    )


async def _send(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    if headers is None or not any(k.lower() == b"content-type" for k, _ in headers):
        headers = [*(headers or []), (b"content-type", b"application/json")]
    out = _response_head(conn, status, headers, len(body))
    out += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
    writer.write(out)
    await writer.drain()


async def _send_plain(conn: h11.Connection, writer: asyncio.StreamWriter, status: int, text: str) -> None:
    try:
        await _send(conn, writer, status, text.encode(), [(b"content-type", b"text/plain")])
    except h11.LocalProtocolError:  # the connection state no longer allows a response
        pass


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST: SO_LINGER(on, 0) makes close() discard state and send RST."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


def _error_body(status: int, message: str) -> bytes:
    """An OpenAI-style error payload, so clients parse it like a real server error."""
    return json.dumps(
        {
            "error": {
                "message": f"injected fault: {message}",
                "type": "fault_proxy",
                "param": None,
                "code": status,
            }
        }
    ).encode()


def _mutate_completion(body: bytes, fault: str) -> bytes | None:
    """Apply a content fault to a (chat) completion body; None if it is not one."""
    try:
        data: Any = json.loads(body)
        choices = data["choices"]
        if not isinstance(choices, list) or not choices:
            return None
    except (ValueError, KeyError, TypeError):
        return None

    touched = False
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        # Chat completions carry message.content; legacy completions carry text.
        holder: dict[str, Any] | None = None
        key = "content"
        if isinstance(choice.get("message"), dict):
            holder = choice["message"]
        elif "text" in choice:
            holder, key = choice, "text"
        if holder is None:
            continue
        content = holder.get(key) or ""
        half = content[: len(content) // 2]
        if fault == INVALID_JSON_CONTENT:
            # Preamble + truncated object: never valid JSON, whatever the original was.
            holder[key] = _GARBAGE_PREFIX + half
        else:  # FINISH_LENGTH
            holder[key] = half
            choice["finish_reason"] = "length"
        touched = True
    return json.dumps(data).encode() if touched else None
