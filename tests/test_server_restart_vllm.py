"""A managed vLLM server that dies mid-run is restarted, and the restarted server outlives the round that restarted it.
Once ``server.max_restarts`` is used up the run fails with a clear message, keeps its work, and resumes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time

import pytest

from pipeline.generate import GenerationRun
from pipeline.lifecycle import llm_endpoints, run_rounds
from pipeline.server import ServerError
from tests.conftest import _require_vllm, tiny_llm_config, tiny_server_config
from tests.test_generate_vllm import make_config, read_lines

pytestmark = pytest.mark.vllm


def _kill(server) -> int:
    pid = server.process.pid
    os.killpg(os.getpgid(pid), signal.SIGKILL)
    server.process.wait(timeout=60)  # SIGKILL is asynchronous: dead before the run goes on
    return pid


def test_killed_managed_server_is_restarted_then_fails_clearly_and_resumes(tiny_llama, tmp_path):
    _require_vllm()
    # Managed mode (no base_urls): the run starts its own server. Retries are spread out enough that the
    # watchdog (it polls the process every 0.25 s) pauses the client before any request runs out of them.
    llm = tiny_llm_config([], str(tiny_llama), max_concurrency=4, max_retries=8, backoff_initial_s=0.5)
    config = make_config(tmp_path, [], str(tiny_llama), run_name="restart", target=1000, tasks_per_request=2,
                         llm=llm, server=tiny_server_config(max_restarts=1))
    killed: dict[str, int] = {}

    with llm_endpoints(config) as (base_urls, server):
        assert server is not None and base_urls == [server.base_url]

        def kill_server_once(counts) -> None:
            if killed or counts.requests < 2:
                return
            killed["pid"] = _kill(server)

        run = GenerationRun(config, on_progress=kill_server_once).open()
        try:
            first = run_rounds(run, base_urls, server, max_requests=6)
            assert killed and first.next_request_index == 6
            assert server.restarts == 1 and server.process.pid != killed["pid"]
            restarted_pid = server.process.pid
            # The restart ran in a worker thread of the round's event loop, which is gone now. A server whose
            # parent-death signal was tied to that thread would have been SIGTERMed by now ...
            time.sleep(5)
            assert server.is_alive()
            # ... and the next round would find it dead, restart it again and fail (max_restarts=1).
            second = run_rounds(run, base_urls, server, max_requests=4)
            assert second.next_request_index == 10
            assert server.restarts == 1 and server.process.pid == restarted_pid and server.is_alive()

            # Round 3: the server dies again with its one restart used up. The round fails, naming the setting.
            def kill_again(counts) -> None:
                if server.is_alive():
                    _kill(server)

            run.on_progress = kill_again
            with pytest.raises(ServerError, match=r"max_restarts.*resume"):
                run_rounds(run, base_urls, server, max_requests=6)
            assert server.restarts == 1
        finally:
            run.close()

    meta = json.loads((config.run_dir / "run.json").read_text())
    failed_at = meta["progress"]["next_request_index"]
    assert 11 <= failed_at <= 16 and meta["counts"]["requests"] == failed_at
    assert "request_error" not in meta["counts"]["rejected"]
    assert meta["faults"].get("connection_error", 0) + meta["faults"].get("bad_response", 0) >= 1
    assert meta["endpoints"][0]["requests"] >= failed_at  # totals add up across the three rounds

    # The work is kept: the same run resumes on a new server where it stopped, sending nothing twice.
    with llm_endpoints(config) as (base_urls, server), contextlib.closing(GenerationRun(config).open()) as resumed:
        assert resumed.next_index == failed_at
        result = run_rounds(resumed, base_urls, server, max_requests=2)
    assert result.next_request_index == failed_at + 2
    accepted = read_lines(config.run_dir / "accepted.jsonl")
    rows = accepted + read_lines(config.run_dir / "rejected.jsonl")
    assert {r["request_index"] for r in rows} == set(range(failed_at + 2))
    keys = [(r["request_index"], r["candidate_index"]) for r in accepted]
    assert keys == sorted(keys) and len(keys) == len(set(keys))
