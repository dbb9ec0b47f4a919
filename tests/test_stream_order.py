"""The streaming loop against a fake OpenAI-compatible server that hangs request 0 and answers the rest out of order.

No vLLM needed: the fake server knows each request's index from its sampling seed (a pure function of the run
seed and the index), hangs the first attempt of request 0 until the client gives up, and delays the others so
that they finish in a scrambled order. It shows that

(a) while request 0 is stuck, sending stops ``max_ahead`` indices past it (``max_ahead = 0`` → 4 × concurrency);
(b) results are consumed, and written, in request order whatever order they complete in;
(c) the stuck request is abandoned after ``request_timeout_s``, retried, and the run completes.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.config import DedupConfig, GenerationConfig, LLMConfig
from pipeline.generate import GenerationRun
from pipeline.lifecycle import run_rounds

REQUESTS = 40
TASKS = 2
TIMEOUT_S = 3.0

# Plain words that no filter objects to; ten drawn at random make instructions far apart in ROUGE-L.
WORDS = (
    "river stone garden lamp bridge winter orange pencil window market ladder violin cotton harbor meadow "
    "copper candle forest puzzle rocket saddle thunder velvet wagon yellow anchor basket cactus dolphin "
    "engine feather glacier hammer island jacket kettle lemon magnet napkin oyster pepper quartz ribbon "
    "sugar tunnel umbrella valley walnut yogurt zebra bottle castle desert falcon guitar helmet insect "
    "jungle kitten lizard mirror needle orchard parrot quilt rabbit salmon tiger unicorn vessel whistle"
).split()


def completion_body(index: int, model: str, content: str) -> dict:
    """An OpenAI chat-completion response carrying ``content``, as the fake servers of the tests answer."""
    return {
        "id": f"cmpl-{index}", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
    }


class FakeOpenAI:
    """A threaded HTTP server answering /v1/chat/completions with valid structured output."""

    def __init__(self, seed_to_index: dict[int, int], hang_index: int = 0):
        self.seed_to_index = seed_to_index
        self.hang_index = hang_index
        self.lock = threading.Lock()
        self.events: list[tuple[float, str, int, int]] = []  # (time, "recv" | "sent", index, attempt)
        self.attempts: dict[int, int] = {}
        self.open = 0
        self.open_at_recv: list[tuple[float, int]] = []  # (time, requests open at the server incl. this one)
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                self._reply(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.handle(self, body)

            def _reply(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        default_handle_error = self.server.handle_error

        def handle_error(request, client_address) -> None:
            # A request the client cancelled (e.g. once the target was reached) arrives cut short: no traceback.
            if not isinstance(sys.exc_info()[1], (json.JSONDecodeError, ConnectionError)):
                default_handle_error(request, client_address)

        self.server.handle_error = handle_error
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def handle(self, handler, body: dict) -> None:
        index = self.seed_to_index[body["seed"]]
        with self.lock:
            attempt = self.attempts[index] = self.attempts.get(index, 0) + 1
            self.events.append((time.monotonic(), "recv", index, attempt))
            self.open += 1
            self.open_at_recv.append((time.monotonic(), self.open))
        try:
            if index == self.hang_index and attempt == 1:
                self.release.wait(60)  # longer than the client's timeout: it gives up and retries
                return
            # Scramble completion order: within any window of five, later indices tend to finish first.
            time.sleep(0.02 + 0.04 * (4 - index % 5))
            rng = random.Random(index)
            tasks = [
                {"instruction": "Describe " + " ".join(rng.sample(WORDS, 9)) + ".", "input": "",
                 "output": " ".join(rng.sample(WORDS, 12)) + "."}
                for _ in range(TASKS)
            ]
            content = json.dumps({"tasks": tasks})
            handler._reply(200, completion_body(index, body["model"], content))
            with self.lock:
                self.events.append((time.monotonic(), "sent", index, attempt))
        except OSError:  # the client went away
            pass
        finally:
            with self.lock:
                self.open -= 1

    def __enter__(self) -> "FakeOpenAI":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


class RecordingRun(GenerationRun):
    """GenerationRun that notes the request index of every outcome it consumes, in consumption order."""

    consumed: list[int]

    def _consume(self, outcome) -> None:
        self.consumed.append(outcome.prompt.index)
        super()._consume(outcome)


def make_config(tmp_path: Path, base_url: str, concurrency: int, max_ahead: int) -> GenerationConfig:
    llm = LLMConfig(
        base_urls=[base_url], model="fake", max_concurrency=concurrency, max_ahead=max_ahead,
        request_timeout_s=TIMEOUT_S, max_retries=2, backoff_initial_s=0.1, backoff_max_s=0.2, max_tokens=64,
    )
    return GenerationConfig(
        run_name="order", output_dir=str(tmp_path), target=REQUESTS * TASKS, tasks_per_request=TASKS,
        max_requests=REQUESTS, llm=llm, dedup=DedupConfig(),
    )


@pytest.mark.parametrize(("concurrency", "max_ahead", "window"), [(4, 8, 8), (3, 0, 12)])
def test_stuck_request_caps_send_ahead_keeps_order_and_is_retried(tmp_path, concurrency, max_ahead, window):
    probe = make_config(tmp_path, "http://unused/v1", concurrency, max_ahead)
    builder = GenerationRun(probe).builder
    seed_to_index = {builder.render(i).sampling_seed: i for i in range(REQUESTS)}
    assert len(seed_to_index) == REQUESTS

    with FakeOpenAI(seed_to_index) as fake:
        config = make_config(tmp_path, fake.base_url, concurrency, max_ahead)
        run = RecordingRun(config)
        run.consumed = []
        run.open()
        started = time.monotonic()
        try:
            result = run_rounds(run, [fake.base_url], None, max_requests=None)
        finally:
            run.close()
        elapsed = time.monotonic() - started
        events = list(fake.events)
        open_at_recv = list(fake.open_at_recv)

    # (c) request 0 was abandoned after the timeout and retried once; the run then finished.
    recv0 = [t for t, kind, index, _ in events if kind == "recv" and index == 0]
    assert len(recv0) == 2, events
    assert TIMEOUT_S * 0.9 <= recv0[1] - recv0[0] <= TIMEOUT_S + 3.0
    assert result.done and result.reason == "target reached"
    assert run.counts.accepted == REQUESTS * TASKS
    assert elapsed < 30
    meta = json.loads((config.run_dir / "run.json").read_text())
    # Every retry was for a timeout (on a loaded machine the in-process fake server can be slow enough for another
    # request to time out too, so not necessarily exactly one).
    assert meta["faults"].get("timeout", 0) >= 1
    assert meta["usage"]["retries"] == meta["faults"]["timeout"]
    assert meta["progress"]["next_request_index"] == REQUESTS

    # (a) while request 0 hung, sending stopped exactly `window` indices from it (0 .. window-1), and never
    # more than `concurrency` requests were open at the server (after the retry, the abandoned first attempt of
    # request 0 still holds a server thread, hence the + 1).
    retry_at = recv0[1]
    sent_while_stuck = {index for t, kind, index, _ in events if kind == "recv" and t < retry_at}
    assert sent_while_stuck == set(range(window))
    assert max(n for t, n in open_at_recv if t < retry_at) == concurrency
    assert max(n for t, n in open_at_recv) <= concurrency + 1
    # ... and the stall was real: everything after the window was sent only once request 0 had its answer.
    later = [t for t, kind, index, _ in events if kind == "recv" and index >= window]
    assert later and min(later) > retry_at

    # (b) completion order is scrambled, consumption order is not; the files follow request order.
    completed = [index for _, kind, index, _ in sorted(events) if kind == "sent"]
    assert sorted(completed) == list(range(REQUESTS))
    assert completed != sorted(completed)
    assert run.consumed == list(range(REQUESTS))
    accepted = [json.loads(line) for line in (config.run_dir / "accepted.jsonl").read_text().splitlines()]
    assert [(r["request_index"], r["candidate_index"]) for r in accepted] == [
        (i, k) for i in range(REQUESTS) for k in range(TASKS)
    ]


class SlowConsumerRun(RecordingRun):
    """Consumer work that blocks the event loop, as parse + filters + ROUGE-L over a large dataset can."""

    def _consume(self, outcome) -> None:
        time.sleep(0.05)
        super()._consume(outcome)
        self.consumed_at.append(time.monotonic())


def test_sending_resumes_while_a_backlog_is_consumed(tmp_path):
    """When the stuck request comes back, max_ahead results are ready at once; sending must not wait for all of them."""
    concurrency, max_ahead = 4, 16
    probe = make_config(tmp_path, "http://unused/v1", concurrency, max_ahead)
    builder = GenerationRun(probe).builder
    seed_to_index = {builder.render(i).sampling_seed: i for i in range(REQUESTS)}
    with FakeOpenAI(seed_to_index) as fake:
        config = make_config(tmp_path, fake.base_url, concurrency, max_ahead)
        run = SlowConsumerRun(config)
        run.consumed, run.consumed_at = [], []
        run.open()
        try:
            run_rounds(run, [fake.base_url], None, max_requests=None)
        finally:
            run.close()
        events = list(fake.events)
    assert run.consumed == list(range(REQUESTS))
    answered0 = max(t for t, kind, index, _ in events if kind == "sent" and index == 0)
    next_send = min(t for t, kind, index, _ in events if kind == "recv" and index == max_ahead)
    # The backlog is 16 results of consumer work; the first freed slot should be used within a consume step or
    # two, not after the whole backlog. Counted in consume steps, so a slow machine does not change the answer.
    consumed_before_send = sum(answered0 < t < next_send for t in run.consumed_at)
    assert consumed_before_send <= 2, (consumed_before_send, max_ahead)


def test_before_any_yield_is_known_sending_stops_at_what_the_target_could_use(tmp_path):
    """Target 10, 2 tasks per request, concurrency 16: until 8 requests are consumed, no more than
    ceil(10 / 2) + 16 = 21 requests may be sent. Request 0 hangs, so nothing is consumed while the others answer
    at once and free their slots; only the send budget can stop the client (max_ahead would allow 64)."""
    # Retries: 16 connections at once can overflow the fake server's listen backlog (a reset, then a retry).
    # The hung first attempt of request 0 is never answered: the client abandons it after request_timeout_s.
    llm = LLMConfig(base_urls=["http://unused/v1"], model="fake", max_concurrency=16, request_timeout_s=15,
                    max_retries=4, backoff_initial_s=0.1, backoff_max_s=0.2, max_tokens=64)
    probe = GenerationConfig(run_name="budget", output_dir=str(tmp_path), target=10, tasks_per_request=TASKS, llm=llm)
    builder = GenerationRun(probe).builder
    seed_to_index = {builder.render(i).sampling_seed: i for i in range(200)}
    with FakeOpenAI(seed_to_index) as fake:
        config = probe.model_copy(update={"llm": llm.model_copy(update={"base_urls": [fake.base_url]})})
        run = GenerationRun(config).open()
        outcome: dict = {}
        worker = threading.Thread(target=lambda: outcome.update(result=run_rounds(run, [fake.base_url], None, None)))
        worker.start()
        try:
            # Wait until the client has gone quiet: no new request for a second (counting events, not timing them).
            seen = -1
            while seen != len(fake.events):
                seen = len(fake.events)
                time.sleep(1.0)
            received = {index for _, kind, index, _ in fake.events if kind == "recv"}
        finally:
            fake.release.set()
            worker.join(60)
            run.close()
    assert received == set(range(21)), sorted(received)
    assert outcome["result"].reason == "target reached"
