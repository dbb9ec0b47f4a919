"""The run lifecycle (``pipeline.lifecycle.run_generation``) and the Prefect flow built on it, against the fake
OpenAI-compatible server of ``tests/test_stream_order.py`` (no vLLM).

- Status: ``completed``; ``incomplete`` with the reason; ``failed`` with ``Type: message``.
- The export hook runs while the run directory is still locked, after the status is written.
- Totals in run.json add up over rounds, each of which has its own client.
- The Prefect flow does the same: an incomplete run's reason is in run.json, and the export runs under the lock.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest

from pipeline.config import DedupConfig, ExportConfig, GenerationConfig, LLMConfig
from pipeline.generate import GenerationRun
from pipeline.lifecycle import generate, run_generation, run_rounds
from pipeline.store import RunLockedError, RunStore
from tests.test_stream_order import TASKS, FakeOpenAI

#: The fake server's usage per request.
PROMPT_TOKENS, COMPLETION_TOKENS = 100, 50


def make_config(tmp_path: Path, base_url: str = "http://unused/v1", **overrides) -> GenerationConfig:
    llm = LLMConfig(base_urls=[base_url], model="fake", max_concurrency=4, request_timeout_s=20, max_retries=3,
                    backoff_initial_s=0.1, backoff_max_s=0.2, max_tokens=64)
    values = dict(run_name="life", output_dir=str(tmp_path), target=1000, tasks_per_request=TASKS, max_requests=10,
                  round_size=4, llm=llm, dedup=DedupConfig(), export=ExportConfig(hf_dataset=False, charts=False))
    values.update(overrides)
    return GenerationConfig(**values)


def fake_server(config: GenerationConfig) -> FakeOpenAI:
    """The fake server for this config's prompts; no request hangs."""
    builder = GenerationRun(config).builder
    return FakeOpenAI({builder.render(i).sampling_seed: i for i in range(config.resolved_max_requests)}, hang_index=-1)


def with_url(config: GenerationConfig, url: str) -> GenerationConfig:
    return config.model_copy(update={"llm": config.llm.model_copy(update={"base_urls": [url]})})


def lock_state(run_dir: Path) -> dict:
    """Whether another RunStore can open the run directory now, and who the lock file names."""
    state = {"lock_file": (run_dir / ".lock").read_text()}
    store = RunStore(run_dir)
    try:
        store.open()
    except RunLockedError:
        state["locked"] = True
    else:
        state["locked"] = False
        store.close()
    return state


def read_meta(config: GenerationConfig) -> dict:
    return json.loads((config.run_dir / "run.json").read_text())


def test_rounds_that_stop_short_are_incomplete_with_the_reason_exported_under_the_lock(tmp_path):
    probe = make_config(tmp_path)
    rounds: list[int] = []
    seen_by_export: dict = {}

    def round_of_four(run, base_urls, server):
        rounds.append(run.next_index)
        return run_rounds(run, base_urls, server, max_requests=4)

    def export(config):
        seen_by_export.update(lock_state(config.run_dir), meta=read_meta(config))
        return "exported"

    with fake_server(probe) as fake:
        config = with_url(probe, fake.base_url)
        summary = run_generation(config, run_round=round_of_four, export=export)

    assert rounds == [0, 4, 8]
    assert summary.reason == "max_requests reached" and summary.requests == 10 and summary.export == "exported"
    meta = read_meta(config)
    assert meta["status"] == "incomplete" and meta["error"] == "max_requests reached"
    assert (summary.meta["status"], summary.meta["error"], summary.meta["usage"]) == (meta["status"], meta["error"], meta["usage"])
    # The export ran with the run still locked by this process, after the status was written.
    assert seen_by_export["locked"] is True
    assert f"pid={os.getpid()} " in seen_by_export["lock_file"]
    assert seen_by_export["meta"]["status"] == "incomplete"
    # ... and the lock is released once the lifecycle returns.
    assert lock_state(config.run_dir)["locked"] is False
    # Every round had its own client; run.json adds them all up (not just the last round's).
    assert meta["usage"]["requests"] == 10
    assert meta["usage"]["prompt_tokens"] == 10 * PROMPT_TOKENS
    assert meta["usage"]["completion_tokens"] == 10 * COMPLETION_TOKENS
    assert sum(e["requests"] for e in meta["endpoints"]) == 10
    # The loop's own timings, public on the summary: one consume per request, at least one commit per round.
    assert summary.loop.consumes == 10 and summary.loop.commits >= 3
    assert summary.loop.consume_s > 0 and summary.loop.commit_s > 0


def test_target_reached_is_completed_and_a_finished_run_sends_nothing(tmp_path):
    probe = make_config(tmp_path, target=6)
    with fake_server(probe) as fake:
        config = with_url(probe, fake.base_url)
        summary = generate(config)
        received = len(fake.events)
        again = generate(config)
        assert len(fake.events) == received  # the finished run sent nothing
    assert summary.reason == "target reached" and summary.accepted == 6
    assert summary.export is not None and summary.export.stats.records == 6
    assert again.reason == "already complete" and again.accepted == 6
    meta = read_meta(config)
    assert meta["status"] == "completed" and meta["error"] is None


def test_a_failing_round_marks_the_run_failed_and_releases_it(tmp_path):
    config = make_config(tmp_path)
    exports: list = []

    def failing_round(run, base_urls, server):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_generation(config, run_round=failing_round, export=exports.append)
    meta = read_meta(config)
    assert meta["status"] == "failed" and meta["error"] == "RuntimeError: boom"
    assert exports == []
    assert lock_state(config.run_dir)["locked"] is False


# ---- the Prefect flow -------------------------------------------------------------------------------------------
@pytest.mark.prefect
def test_flow_marks_incomplete_with_the_reason_and_exports_under_the_lock(tmp_path, prefect_harness, monkeypatch):
    """Two bugs of the flow's own copy of the lifecycle: ``incomplete`` without a reason, and the export after the
    run lock was released. The export is observed where it reads the accepted records."""
    from flows.self_instruct import self_instruct
    from pipeline import export

    seen_by_export: dict = {}

    def observed(original, run_dir, *args, **kwargs):
        seen_by_export.update(lock_state(Path(run_dir)))
        return original(run_dir, *args, **kwargs)

    monkeypatch.setattr(export, "alpaca_records", functools.partial(observed, export.alpaca_records))
    probe = make_config(tmp_path, run_name="flow-short", max_requests=6)
    with fake_server(probe) as fake:
        config = with_url(probe, fake.base_url)
        state = self_instruct(config, return_state=True)
    assert state.is_completed(), state.message
    meta = read_meta(config)
    assert meta["counts"]["requests"] == 6
    assert meta["status"] == "incomplete"
    assert meta["error"] == "max_requests reached"
    assert seen_by_export.get("locked") is True, seen_by_export
    assert f"pid={os.getpid()} " in seen_by_export["lock_file"]
    assert state.result()["records"] == meta["counts"]["accepted"]
