"""Benchmark: how close does the pipeline's client come to the bare openai client on a server that answers at once?

A stand-in OpenAI-compatible server (``benchmarks/standin_server.py``, its own process, pinned to its own core where
the machine has two or more) answers every chat completion at once with 10 structured tasks built from real
instruction-like sentences (``../shared/bench/instructions_55k.json``), deterministically in the request's seed, with
a rejection rate that grows with the kept set (repeats and near-copies of earlier texts). With the server out of the
way, what is measured is the client: the full pipeline's per-request and per-candidate cost against the floor of any
client, the bare ``openai.AsyncOpenAI``.

For each target (accepted records; default 5,200 and 52,000) and each concurrency (default 64 and 256):

* **ours**: ``pipeline.lifecycle.run_generation()`` (the CLI's generate path without the export) with the default
  curation chain and the run store in a temporary directory, in a fresh subprocess, so that its peak RSS is its own;
* **bare**: ``openai.AsyncOpenAI`` as it comes (httpx transport, ``chat.completions.create``) firing the same requests
  (the same number as ours sent, the same prompts, seeds, response_format and sampling parameters, as
  ``pipeline.llm.LLMClient`` sends them) with the same number in flight (a semaphore), nothing else; also a fresh
  subprocess. ``ours_over_bare`` is measured against it;
* **bare (aiohttp)**: the same with openai's ``DefaultAioHttpClient``, the transport ours uses by default
  (``llm.http_backend``): ``ours_over_bare_aiohttp`` says what the pipeline costs beyond a bare client on the same
  transport;
* **resume** (first concurrency, each target): a fresh process re-opens the finished run
  (``GenerationRun(config).open()``: lock, recover, fingerprint check, rebuild of every curation step's state), the
  point from which it could send its next request; the ROUGE-L index rebuild (``pipeline.chain._rouge``) is timed
  on its own.

Figures: requests/s and candidates/s of both, ``ours_over_bare`` (request rates, same run), seconds per request at the
largest target over the smallest (``spr_ratio``), ours' peak RSS, its loop timings (``summary.loop``) and per-step
curation seconds (``counts.steps``), and the resume times. Progress goes to stdout; the last line is one JSON object.

Usage::

    .venv/bin/python benchmarks/client_ceiling.py                       # 5.2K and 52K, concurrency 64 and 256
    .venv/bin/python benchmarks/client_ceiling.py --targets 520,5200 --concurrency 64     # a quick run (~1 min)
    .venv/bin/python benchmarks/client_ceiling.py --bench-dir DIR --workdir DIR --no-pin

The subprocess modes (``ours``, ``bare``, ``resume``) can be run alone, e.g. under a profiler::

    py-spy record -o ours.svg -- .venv/bin/python benchmarks/client_ceiling.py ours --base-url URL --target 5200 \\
        --concurrency 64 --workdir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BENCH_DIR = REPO_ROOT.parent / "shared" / "bench"
sys.path.insert(0, str(REPO_ROOT))
TASKS_PER_REQUEST = 10
RUN_SEED = 42


def say(message: str) -> None:
    print(f"[client-ceiling {time.strftime('%H:%M:%S')}] {message}", flush=True)


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ---- the subprocess modes ------------------------------------------------------------------------------------------
def make_config(base_url: str, target: int, concurrency: int, workdir: Path, run_name: str):
    from pipeline.config import ExportConfig, GenerationConfig, LLMConfig

    llm = LLMConfig(base_urls=[base_url], model="standin", max_concurrency=concurrency, request_timeout_s=120)
    return GenerationConfig(run_name=run_name, output_dir=str(workdir), target=target, seed=RUN_SEED,
                            tasks_per_request=TASKS_PER_REQUEST, llm=llm, export=ExportConfig(hf_dataset=False, charts=False))


def mode_ours(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.lifecycle import run_generation

    config = make_config(args.base_url, args.target, args.concurrency, Path(args.workdir), args.run_name)
    cpu = time.process_time()
    started = time.perf_counter()
    summary = run_generation(config, export=None)
    seconds = time.perf_counter() - started
    counts = summary.meta["counts"]
    return {
        "seconds": round(seconds, 3), "requests": summary.requests, "accepted": summary.accepted,
        "candidates": counts["candidates"], "rejected": counts["rejected"],
        "requests_per_s": round(summary.requests / seconds, 1), "candidates_per_s": round(counts["candidates"] / seconds, 1),
        "cpu_s": round(time.process_time() - cpu, 2), "peak_rss_mib": peak_rss_mib(),
        "loop_consume_s": round(summary.loop.consume_s, 3), "loop_commit_s": round(summary.loop.commit_s, 3),
        "commits": summary.loop.commits, "step_seconds": {k: v["seconds"] for k, v in counts["steps"].items()},
        "run_dir": str(config.run_dir),
    }


async def _fire(base_url: str, requests: list[dict[str, Any]], concurrency: int, transport: str) -> int:
    import openai

    http_client = openai.DefaultAioHttpClient() if transport == "aiohttp" else None  # None: openai's default, httpx
    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=120, http_client=http_client)
    semaphore = asyncio.Semaphore(concurrency)

    async def one(kwargs) -> int:
        async with semaphore:
            response = await client.chat.completions.create(**kwargs)
        return len(response.choices[0].message.content or "")

    try:
        return sum(await asyncio.gather(*(one(kwargs) for kwargs in requests)))
    finally:
        await client.close()


def mode_bare(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.generate import GenerationRun

    config = make_config(args.base_url, args.target, args.concurrency, Path(args.workdir), "bare")
    run = GenerationRun(config)  # prompts and response_format as ours builds them; opens nothing
    from generation_throughput import request_kwargs  # what LLMClient sends, shared with that benchmark

    requests = [request_kwargs(config, run.builder.render(i), run.response_format) for i in range(args.requests)]
    cpu = time.process_time()
    started = time.perf_counter()
    chars = asyncio.run(_fire(args.base_url, requests, args.concurrency, args.transport))
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 3), "requests": args.requests, "requests_per_s": round(args.requests / seconds, 1),
            "content_chars": chars, "cpu_s": round(time.process_time() - cpu, 2), "peak_rss_mib": peak_rss_mib()}


def mode_resume(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    import pipeline.chain as chain
    from pipeline.generate import GenerationRun

    imports = time.perf_counter() - started
    rouge_s = 0.0
    original = chain._rouge

    def timed_rouge(*a, **k):
        nonlocal rouge_s
        begun = time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            rouge_s += time.perf_counter() - begun

    chain._rouge = timed_rouge
    config = make_config(args.base_url, args.target, args.concurrency, Path(args.workdir), args.run_name)
    begun = time.perf_counter()
    run = GenerationRun(config).open()
    open_s = time.perf_counter() - begun
    next_index, accepted = run.next_index, run.counts.accepted
    run.close()
    return {"open_s": round(open_s, 3), "rouge_index_s": round(rouge_s, 3), "other_s": round(open_s - rouge_s, 3),
            "imports_s": round(imports, 3), "next_request_index": next_index, "accepted": accepted,
            "peak_rss_mib": peak_rss_mib()}


# ---- the driver ----------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def standin_server(bench_dir: Path, cpus: set[int] | None) -> Iterator[str]:
    command = [sys.executable, str(REPO_ROOT / "benchmarks" / "standin_server.py"),
               "--corpus", str(bench_dir / "instructions_55k.json")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        if cpus:
            os.sched_setaffinity(process.pid, cpus)
        line = process.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"the stand-in server did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}/v1"
    finally:
        process.terminate()
        process.wait(timeout=10)


def child(mode: str, cpus: set[int] | None, **options: Any) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), mode]
    for key, value in options.items():
        command += [f"--{key.replace('_', '-')}", str(value)]
    preexec = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, preexec_fn=preexec)
    if result.returncode != 0:
        raise RuntimeError(f"{mode} failed (exit {result.returncode}): {result.stdout[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def drive(args: argparse.Namespace) -> dict[str, Any]:
    bench_dir = args.bench_dir
    if not (bench_dir / "instructions_55k.json").is_file():
        message = f"skipped: {bench_dir / 'instructions_55k.json'} not found (../shared/bench is the benchmark data)"
        say(message)
        return {"benchmark": "client_ceiling", "skipped": message}
    targets = [int(t) for t in args.targets.split(",")]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    all_cpus = sorted(os.sched_getaffinity(0))
    server_cpus = client_cpus = None
    if args.pin and len(all_cpus) >= 2:
        server_cpus, client_cpus = {all_cpus[-1]}, set(all_cpus[:-1])
        say(f"server pinned to CPU {all_cpus[-1]}, clients to CPUs {sorted(client_cpus)}")
    runs: list[dict[str, Any]] = []
    resumes: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        workdir = Path(args.workdir) if args.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ceiling-")))
        workdir.mkdir(parents=True, exist_ok=True)
        base_url = stack.enter_context(standin_server(bench_dir, server_cpus))
        say(f"stand-in server at {base_url}")
        for target in targets:
            for concurrency in concurrencies:
                name = f"t{target}-c{concurrency}"
                say(f"{name}: ours ...")
                ours = child("ours", client_cpus, base_url=base_url, target=target, concurrency=concurrency,
                             workdir=workdir, run_name=name)
                say(f"{name}: ours {json.dumps(ours)}")
                bare = child("bare", client_cpus, base_url=base_url, target=target, concurrency=concurrency,
                             workdir=workdir, requests=ours["requests"])
                say(f"{name}: bare {json.dumps(bare)}")
                bare_aiohttp = child("bare", client_cpus, base_url=base_url, target=target, concurrency=concurrency,
                                     workdir=workdir, requests=ours["requests"], transport="aiohttp")
                say(f"{name}: bare (aiohttp) {json.dumps(bare_aiohttp)}")
                entry = {
                    "target": target, "concurrency": concurrency, "requests": ours["requests"],
                    "candidates": ours["candidates"], "accepted": ours["accepted"],
                    "ours_s": ours["seconds"], "bare_s": bare["seconds"],
                    "ours_requests_per_s": ours["requests_per_s"], "bare_requests_per_s": bare["requests_per_s"],
                    "ours_candidates_per_s": ours["candidates_per_s"],
                    "bare_candidates_per_s": round(ours["candidates"] / bare["seconds"], 1),
                    "ours_over_bare": round(bare["seconds"] / ours["seconds"], 3),
                    "bare_aiohttp_s": bare_aiohttp["seconds"], "bare_aiohttp_requests_per_s": bare_aiohttp["requests_per_s"],
                    "ours_over_bare_aiohttp": round(bare_aiohttp["seconds"] / ours["seconds"], 3),
                    "ours_seconds_per_request": round(ours["seconds"] / ours["requests"], 6),
                    "ours_peak_rss_mib": ours["peak_rss_mib"], "ours_cpu_s": ours["cpu_s"], "bare_cpu_s": bare["cpu_s"],
                    "loop_consume_s": ours["loop_consume_s"], "loop_commit_s": ours["loop_commit_s"],
                    "commits": ours["commits"], "step_seconds": ours["step_seconds"], "rejected": ours["rejected"],
                }
                runs.append(entry)
                if concurrency == concurrencies[0]:
                    resume = child("resume", client_cpus, base_url=base_url, target=target, concurrency=concurrency,
                                   workdir=workdir, run_name=name)
                    say(f"{name}: resume {json.dumps(resume)}")
                    resumes[str(target)] = resume
    summary: dict[str, Any] = {"benchmark": "client_ceiling", "server": "standin (benchmarks/standin_server.py)",
                               "tasks_per_request": TASKS_PER_REQUEST, "targets": targets, "concurrency": concurrencies,
                               "pinned": server_cpus is not None}
    for entry in runs:
        key = f"t{entry['target']}_c{entry['concurrency']}"
        summary[f"{key}_ours_over_bare"] = entry["ours_over_bare"]
        summary[f"{key}_ours_rps"] = entry["ours_requests_per_s"]
        summary[f"{key}_bare_rps"] = entry["bare_requests_per_s"]
        summary[f"{key}_ours_over_bare_aiohttp"] = entry["ours_over_bare_aiohttp"]
        summary[f"{key}_ours_cps"] = entry["ours_candidates_per_s"]
        summary[f"{key}_peak_rss_mib"] = entry["ours_peak_rss_mib"]
    if len(targets) > 1:
        for concurrency in concurrencies:
            small = next(e for e in runs if e["target"] == min(targets) and e["concurrency"] == concurrency)
            large = next(e for e in runs if e["target"] == max(targets) and e["concurrency"] == concurrency)
            summary[f"c{concurrency}_spr_ratio"] = round(large["ours_seconds_per_request"] / small["ours_seconds_per_request"], 3)
    for target, resume in resumes.items():
        summary[f"t{target}_resume_open_s"] = resume["open_s"]
        summary[f"t{target}_resume_rouge_index_s"] = resume["rouge_index_s"]
        summary[f"t{target}_resume_other_s"] = resume["other_s"]
    summary["runs"] = runs
    summary["resume"] = resumes
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode")
    for mode in ("ours", "bare", "resume"):
        p = sub.add_parser(mode)
        p.add_argument("--base-url", required=True)
        p.add_argument("--target", type=int, required=True)
        p.add_argument("--concurrency", type=int, required=True)
        p.add_argument("--workdir", required=True)
        p.add_argument("--run-name", default="ours")
        p.add_argument("--requests", type=int, default=0)
        p.add_argument("--transport", choices=("httpx", "aiohttp"), default="httpx", help="bare: the openai client's HTTP transport")
    parser.add_argument("--bench-dir", type=Path, default=DEFAULT_BENCH_DIR)
    parser.add_argument("--targets", default="5200,52000", help="accepted-record targets, comma-separated")
    parser.add_argument("--concurrency", default="64,256", help="requests in flight, comma-separated")
    parser.add_argument("--workdir", help="default: a temporary directory")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not pin the server and the clients to separate CPUs")
    args = parser.parse_args(argv)
    if args.mode:
        result = {"ours": mode_ours, "bare": mode_bare, "resume": mode_resume}[args.mode](args)
    else:
        result = drive(args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
