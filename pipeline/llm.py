"""Async access to one or more OpenAI-compatible endpoints (vLLM or any other).

- Least-outstanding-requests balancing over ``base_urls``; an endpoint that keeps failing is taken out of
  rotation for a cool-down and then probed again.
- Retries with exponential backoff and full jitter on 429 (honouring ``Retry-After``), 5xx, connection
  errors, timeouts and unreadable responses. Anything else (401, 404, ...) is a configuration problem and
  fails the run at once with the server's message.
- Every request carries the sampling seed of its request index, so a deterministic server gives the same
  completion on a retry or a resumed run.
- While a managed server restarts, :meth:`LLMClient.pause` holds new attempts without spending retries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai

from pipeline.config import LLMConfig

log = logging.getLogger(__name__)

#: Status codes that say "try again later" rather than "your request is wrong".
RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class LLMUnavailableError(RuntimeError):
    """A request failed after all retries, or the endpoint refused the configuration (bad key, unknown model)."""


class RequestRejectedError(RuntimeError):
    """The server refused this one request (e.g. HTTP 400, prompt too long); other requests may still work."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(f"HTTP {status}: {message}")


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    attempts: int


@dataclass
class Endpoint:
    url: str
    client: openai.AsyncOpenAI
    outstanding: int = 0
    consecutive_failures: int = 0
    down_until: float = 0.0
    requests: int = 0
    failures: int = 0

    def healthy(self, now: float) -> bool:
        return self.down_until <= now


@dataclass
class Usage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, completion: Completion) -> None:
        self.requests += 1
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens


@dataclass
class ClientStats:
    usage: Usage = field(default_factory=Usage)
    faults: Counter = field(default_factory=Counter)
    retries: int = 0


class LLMClient:
    """Sends chat-completion requests to a pool of endpoints with retries and balancing."""

    def __init__(self, config: LLMConfig, base_urls: list[str] | None = None, rng_seed: int = 0):
        urls = base_urls if base_urls is not None else config.base_urls
        if not urls:
            raise ValueError("LLMClient needs at least one base URL")
        self.config = config
        timeout = openai.Timeout(config.request_timeout_s, connect=min(10.0, config.request_timeout_s))
        self.endpoints = [
            Endpoint(
                url=url,
                client=openai.AsyncOpenAI(
                    base_url=url,
                    api_key=config.api_key.get_secret_value(),
                    max_retries=0,  # retries are ours: backoff, jitter and endpoint rotation
                    timeout=timeout,
                    http_client=_http_client(config, timeout),
                ),
            )
            for url in urls
        ]
        self.stats = ClientStats()
        self._rng = random.Random(rng_seed)  # jitter only; never affects outputs
        self._available = asyncio.Event()
        self._available.set()
        self._fatal: BaseException | None = None

    # ---- availability (managed server restarts) ------------------------------------------------------------
    def pause(self) -> None:
        """Hold new attempts (e.g. while the managed server restarts)."""
        self._available.clear()

    def resume(self) -> None:
        self._available.set()

    def fail(self, error: BaseException) -> None:
        """Make every pending and future request raise ``error`` (e.g. the server could not be restarted)."""
        self._fatal = error
        self._available.set()

    async def _wait_available(self) -> None:
        await self._available.wait()
        if self._fatal is not None:
            raise self._fatal

    # ---- requests ----------------------------------------------------------------------------------------------------
    def _pick_endpoint(self, index: int, attempt: int) -> Endpoint:
        now = time.monotonic()
        healthy = [e for e in self.endpoints if e.healthy(now)]
        if not healthy:
            # Every endpoint is cooling down: probe the one that has waited longest rather than stall.
            chosen = min(self.endpoints, key=lambda e: e.down_until)
        else:
            chosen = min(healthy, key=lambda e: (e.outstanding, e.requests))
        if log.isEnabledFor(logging.DEBUG):
            # The state the choice was made in, as data: a test (or a user chasing a failover) can check every pick.
            pick = {"index": index, "attempt": attempt, "url": chosen.url, "healthy": [e.url for e in healthy],
                    "cooling_down": [e.url for e in self.endpoints if not e.healthy(now)]}
            log.debug("request %d attempt %d -> %s (cooling down: %s)", index, attempt, chosen.url,
                      ", ".join(pick["cooling_down"]) or "none", extra={"endpoint_pick": pick})
        return chosen

    def _mark_failure(self, endpoint: Endpoint) -> None:
        endpoint.failures += 1
        endpoint.consecutive_failures += 1
        if len(self.endpoints) > 1 and endpoint.consecutive_failures >= self.config.endpoint_failure_threshold:
            if endpoint.healthy(time.monotonic()):
                log.warning(
                    "endpoint %s failed %d times in a row; out of rotation for %.0f s",
                    endpoint.url, endpoint.consecutive_failures, self.config.endpoint_cooldown_s,
                )
            endpoint.down_until = time.monotonic() + self.config.endpoint_cooldown_s

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(self.config.backoff_max_s, max(0.0, retry_after))
        ceiling = min(self.config.backoff_max_s, self.config.backoff_initial_s * (2**attempt))
        return self._rng.uniform(0, ceiling)

    async def complete(
        self,
        index: int,
        prompt: str,
        sampling_seed: int | None,
        response_format: dict[str, Any] | None = None,
    ) -> Completion:
        """One chat completion with retries. Raises :class:`LLMUnavailableError` when retries run out."""
        cfg = self.config
        last_error = "no attempt made"
        for attempt in range(cfg.max_retries + 1):
            await self._wait_available()
            endpoint = self._pick_endpoint(index, attempt)
            endpoint.outstanding += 1
            endpoint.requests += 1
            retry_after: float | None = None
            try:
                body: dict[str, Any] = {
                    "model": cfg.model,
                    "messages": [{"role": "user", "content": prompt}],
                    "temperature": cfg.temperature,
                    "top_p": cfg.top_p,
                    "max_tokens": cfg.max_tokens,
                    "n": 1,
                }
                if sampling_seed is not None:
                    body["seed"] = sampling_seed
                if response_format is not None:
                    body["response_format"] = response_format
                body.update(cfg.extra_body)
                # The openai client's own request path (status errors, timeouts, headers) without its per-request
                # walk of the parameters' type hints and its response model: together, about a third of the client's
                # CPU per request at these sizes. The body is what chat.completions.create would send.
                raw = await endpoint.client.post("/chat/completions", body=body, cast_to=bytes)
                completion = _completion(json.loads(raw), attempt + 1)
                endpoint.consecutive_failures = 0
                endpoint.down_until = 0.0
                self.stats.usage.add(completion)
                return completion
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status not in RETRYABLE_STATUS:
                    message = _server_message(exc)
                    if status in (401, 403, 404):
                        raise LLMUnavailableError(
                            f"{endpoint.url} refused the request: HTTP {status}: {message} "
                            "(check llm.model and llm.api_key)"
                        ) from None
                    raise RequestRejectedError(status, message) from None
                kind = f"http_{status}"
                retry_after = _retry_after(exc.response)
                last_error = f"HTTP {status} from {endpoint.url}"
                self._mark_failure(endpoint)
            except openai.APITimeoutError as exc:
                if _lost_connection(exc):
                    kind = "connection_error"
                    last_error = f"cannot connect to {endpoint.url}: {_root_cause(exc)}"
                else:
                    kind = "timeout"
                    last_error = f"timed out after {cfg.request_timeout_s:.0f} s at {endpoint.url}"
                self._mark_failure(endpoint)
            except openai.APIConnectionError as exc:
                kind = "connection_error"
                last_error = f"cannot connect to {endpoint.url}: {_root_cause(exc)}"
                self._mark_failure(endpoint)
            except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
                # A truncated or malformed HTTP body: the server's answer is lost, so ask again.
                kind = "bad_response"
                last_error = f"unreadable response from {endpoint.url}: {type(exc).__name__}: {exc}"
                self._mark_failure(endpoint)
            finally:
                endpoint.outstanding -= 1
            self.stats.faults[kind] += 1
            if attempt < cfg.max_retries:
                self.stats.retries += 1
                delay = self._backoff(attempt, retry_after)
                log.info("request %d: %s; retry %d/%d in %.1f s", index, last_error, attempt + 1, cfg.max_retries, delay)
                await asyncio.sleep(delay)
        raise LLMUnavailableError(f"request {index} failed after {cfg.max_retries} retries: {last_error}")

    async def aclose(self) -> None:
        for endpoint in self.endpoints:
            await endpoint.client.close()

    def endpoint_summary(self) -> list[dict[str, Any]]:
        return [{"url": e.url, "requests": e.requests, "failures": e.failures} for e in self.endpoints]


def _http_client(config: LLMConfig, timeout: openai.Timeout):
    """The transport under one endpoint's openai client: openai's own defaults, but idle connections dropped before
    the server drops them (``keepalive_expiry_s``)."""
    defaults = openai.DEFAULT_CONNECTION_LIMITS
    limits = type(defaults)(  # the Limits class of the httpx that this openai release uses
        max_connections=defaults.max_connections,
        max_keepalive_connections=defaults.max_keepalive_connections,
        keepalive_expiry=config.keepalive_expiry_s,
    )
    factory = openai.DefaultAioHttpClient if config.http_backend == "aiohttp" else openai.DefaultAsyncHttpxClient
    return factory(timeout=timeout, limits=limits)


def _completion(data: Any, attempts: int) -> Completion:
    """A chat completion's first choice; a body without one raises (the caller retries it as ``bad_response``)."""
    choice = data["choices"][0]
    text = choice["message"]["content"] or ""
    if not isinstance(text, str):
        raise TypeError(f"message content is {type(text).__name__}, not a string")
    usage = data.get("usage") or {}
    return Completion(
        text=text,
        finish_reason=choice.get("finish_reason") or "stop",
        prompt_tokens=usage.get("prompt_tokens") or 0,
        completion_tokens=usage.get("completion_tokens") or 0,
        attempts=attempts,
    )


def _lost_connection(exc: BaseException) -> bool:
    """True for a "timeout" that is really a dropped connection: openai's aiohttp transport maps every aiohttp
    connection error (a reset, a server that closed the connection) to a connect timeout."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
        if isinstance(exc, TimeoutError):
            return False
        if type(exc).__module__.startswith("aiohttp"):
            return True
    return False


def _retry_after(response: httpx.Response | None) -> float | None:
    if response is None:
        return None
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _server_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else body.get("message")
        if message:
            return str(message)[:500]
    return str(exc.message)[:500]


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
