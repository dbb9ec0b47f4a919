"""A stand-in OpenAI-compatible server that answers at once: the client's ceiling, not a model's.

``POST /v1/chat/completions`` returns ``--tasks`` structured tasks (``{"tasks": [{"instruction", "input", "output"}]}``,
the format ``pipeline.prompts.response_schema`` asks for) drawn from a corpus of real instruction-like sentences
(``../shared/bench/instructions_55k.json``); ``GET /v1/models`` lists one model. Everything a completion holds is a
function of the request's ``seed`` alone, so the same request gets the same answer in any order, on a retry or after
a resume.

How rejections grow with the kept set, without server state: each task's instruction is one of ``--pool`` fixed
"base" texts (three corpus sentences joined), drawn uniformly, so the chance that a draw repeats a base text already
served (and kept) grows with the number served, as a real run's yield falls as its kept set grows. A share of the
draws (``--near-copy``) is a near-copy of its base text (a word dropped), which the exact-duplicate filter misses and
ROUGE-L catches. Inputs (40% of tasks, Alpaca's share) and outputs are other corpus sentences.

It is a plain asyncio protocol (HTTP/1.1 keep-alive, Content-Length bodies, nothing else), so that one core serves
several thousand requests a second: the client under test is the bottleneck, never this server.

Usage::

    .venv/bin/python benchmarks/standin_server.py [--port 0] [--corpus ../shared/bench/instructions_55k.json]

It prints ``PORT <n>`` once it listens, then serves until killed (SIGTERM/SIGINT).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import signal
import sys
from pathlib import Path

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "bench" / "instructions_55k.json"
MODEL = "standin"
_SEED_RE = re.compile(rb'"seed"\s*:\s*(-?\d+)')
_MODELS = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "standin"}]}).encode()


class TaskMaker:
    """The completion for a seed: ``tasks`` tasks, deterministic in the seed."""

    def __init__(self, sentences: list[str], tasks: int, pool: int, near_copy: float, input_share: float = 0.4):
        self.sentences = sentences
        self.tasks = tasks
        self.pool = pool
        self.near_copy = near_copy
        self.input_share = input_share
        n = len(sentences)
        # Base text k: sentence k joined with a sentence far from it (a fixed permutation), the same for every request.
        order = list(range(n))
        random.Random(12345).shuffle(order)
        self._pair = order

    def base(self, k: int) -> str:
        # Three sentences, so that two base texts sharing one sentence (unavoidable with more base texts than
        # sentences) stay well under ROUGE-L 0.7 of each other: distinct base texts are distinct tasks.
        n, s, pair = len(self.sentences), self.sentences, self._pair
        lap = k // n  # base texts past the n-th reuse a first sentence, never the other two with it
        return (f"{s[k % n].strip()} {s[pair[(k * 7 + lap * 101 + 3) % n]].strip()} "
                f"{s[pair[(k * 13 + lap * 211 + 5) % n]].strip()}")

    def content(self, seed: int) -> str:
        rng = random.Random(seed)
        sentences = self.sentences
        n = len(sentences)
        tasks = []
        for _ in range(self.tasks):
            text = self.base(rng.randrange(self.pool))
            if rng.random() < self.near_copy:
                words = text.split()
                if len(words) > 6:
                    del words[rng.randrange(1, len(words))]
                    text = " ".join(words)
            source = sentences[rng.randrange(n)] if rng.random() < self.input_share else ""
            output = f"{sentences[rng.randrange(n)]} {sentences[rng.randrange(n)]}"
            tasks.append({"instruction": text, "input": source, "output": output})
        return json.dumps({"tasks": tasks}, ensure_ascii=False)

    def body(self, seed: int) -> bytes:
        content = self.content(seed)
        return json.dumps({
            "id": f"chatcmpl-{seed}", "object": "chat.completion", "created": 0, "model": MODEL,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 600, "completion_tokens": len(content) // 4, "total_tokens": 600 + len(content) // 4},
        }, ensure_ascii=False).encode()


class Http(asyncio.Protocol):
    maker: TaskMaker

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length = 0
            lines = head.split(b"\r\n")
            for line in lines[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            parts = lines[0].split(b" ")
            method, path = parts[0], parts[1] if len(parts) > 1 else b"/"
            self.respond(method, path, body)

    def respond(self, method: bytes, path: bytes, body: bytes) -> None:
        status = b"200 OK"
        if path.endswith(b"/chat/completions") and method == b"POST":
            match = _SEED_RE.search(body)
            payload = self.maker.body(int(match.group(1)) if match else 0)
        elif path.endswith(b"/models"):
            payload = _MODELS
        else:
            status, payload = b"404 Not Found", b'{"error": {"message": "not found"}}'
        self.transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
                             + str(len(payload)).encode() + b"\r\n\r\n" + payload)


async def serve(host: str, port: int, maker: TaskMaker) -> None:
    Http.maker = maker
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Http, host, port, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--tasks", type=int, default=10, help="tasks per completion")
    parser.add_argument("--pool", type=int, default=75_000, help="base texts that instructions are drawn from")
    parser.add_argument("--near-copy", type=float, default=0.25, help="share of instructions that are near-copies")
    args = parser.parse_args(argv)
    sentences = json.loads(args.corpus.read_text(encoding="utf-8"))
    maker = TaskMaker(sentences, args.tasks, args.pool, args.near_copy)
    try:
        asyncio.run(serve(args.host, args.port, maker))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
