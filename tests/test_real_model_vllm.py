"""The pipeline on a real instruct model: SmolLM2-135M-Instruct served by vLLM's CPU build, through managed mode's
own server settings (chunked prefill off on CPU).

What a random tiny model never does, this one does: ~650-token prompts, a real chat template, and outputs that loop
until the token limit. With chunked prefill on, vLLM CPU 0.32 crashed on exactly this load ("CPU Generator does not
use offset", every in-flight request HTTP 500, engine dead).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import GenerationConfig, JudgeConfig, LLMConfig
from pipeline.lifecycle import generate
from tests.conftest import PROJECT_ROOT

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

#: Server-side failures that must never appear: the seeded chunked-prefill crash and what it caused.
CRASH_MARKERS = ("CPU Generator does not use offset", "Traceback", "EngineDeadError", "500 Internal Server Error")


def real_config(output_dir: Path, base_url: str, model: Path, run_name: str) -> GenerationConfig:
    return GenerationConfig(
        run_name=run_name, output_dir=str(output_dir), target=12, tasks_per_request=4, round_size=64,
        llm=LLMConfig(base_urls=[base_url], model=str(model), max_concurrency=16, max_tokens=400, temperature=0.7,
                      request_timeout_s=600, max_retries=2, backoff_initial_s=0.5),
    )


@pytest.fixture(scope="module")
def first_run(real_vllm_server, smollm2, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("real-runs")
    log_start = real_vllm_server.log_path.stat().st_size
    config = real_config(output_dir, real_vllm_server.base_url, smollm2, "first")
    generate(config, export=False)
    server_log = real_vllm_server.log_path.read_bytes()[log_start:].decode(errors="replace")
    return config, server_log


def test_concurrent_long_seeded_prompts_complete_without_a_server_error(first_run, real_vllm_server):
    config, server_log = first_run
    meta = json.loads((config.run_dir / "run.json").read_text())
    assert meta["status"] == "completed" and meta["counts"]["accepted"] >= config.target
    # Every request was answered by the server: the only faults are the model's own (loops cut at max_tokens).
    assert set(meta["faults"]) <= {"truncated", "parse_error"}, meta["faults"]
    assert "request_error" not in meta["counts"]["rejected"]
    assert meta["usage"].get("retries", 0) == 0
    assert meta["faults"].get("truncated", 0) >= 1, "no request reached the token limit: the test lost its point"
    assert meta["usage"]["requests"] >= config.llm.max_concurrency  # a full batch was in flight at once
    assert meta["usage"]["prompt_tokens"] / meta["usage"]["requests"] > 500  # long prompts, prefilled together
    assert real_vllm_server.is_alive()
    assert "--no-enable-chunked-prefill" in real_vllm_server.log_path.read_text()
    for marker in CRASH_MARKERS:
        assert marker not in server_log, f"the server log has {marker!r}"
    accepted = [json.loads(line) for line in (config.run_dir / "accepted.jsonl").read_text().splitlines()]
    assert all(r["instruction"].strip() and r["output"].strip() for r in accepted)


def _crash_run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.crash_runner", *args], capture_output=True, text=True,
                          timeout=900, cwd=cwd, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})


def test_same_config_twice_and_a_killed_then_resumed_run_are_byte_identical(first_run, real_vllm_server, smollm2):
    """Measured with float32 on this CPU: byte-identical, though batch composition and prefix-cache hits differ
    between the runs (the second finds the first's prompts cached). README "Reliability" states this finding."""
    config, _ = first_run
    files = ("accepted.jsonl", "rejected.jsonl")
    again = config.model_copy(update={"run_name": "again"})
    generate(again, export=False)
    for name in files:
        assert (again.run_dir / name).read_bytes() == (config.run_dir / name).read_bytes(), f"{name} differs on a rerun"

    # SIGKILL `selfinstruct generate` after the 5th completion arrives, with 11 more in flight, then resume.
    config_path = Path(config.output_dir) / "killed.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json") | {"run_name": "killed"}))
    crashed = _crash_run(["request", "5", "generate", "--config", str(config_path)], Path(config.output_dir))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    resumed = _crash_run(["none", "1", "generate", "--config", str(config_path)], Path(config.output_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    killed_dir = Path(config.output_dir) / "killed"
    for name in files:
        assert (killed_dir / name).read_bytes() == (config.run_dir / name).read_bytes(), f"{name} differs after kill+resume"
    meta = json.loads((killed_dir / "run.json").read_text())
    assert meta["sessions"] == 2 and meta["status"] == "completed"


def test_default_dedup_path_makes_alpacas_decisions_on_a_real_run(first_run):
    """The run used the default dedup (prefix filter, ``top_k_similar=0``), the path users get: replaying every
    candidate that reached dedup through Alpaca's rouge-score filter gives the same keep/reject decisions."""
    from pipeline.seeds import load_seeds
    from tests.test_dedup import alpaca_reference

    config, _ = first_run
    assert config.dedup.top_k_similar == 0 and config.resolved_dedup_tokenizer == "rouge"
    run_dir = config.run_dir
    accepted = [json.loads(line) for line in (run_dir / "accepted.jsonl").read_text().splitlines()]
    rejected = [json.loads(line) for line in (run_dir / "rejected.jsonl").read_text().splitlines()]
    similar = [r for r in rejected if r["reason"] == "rouge_similar"]
    assert similar, "no candidate was a near-duplicate: the replay would not test a rejection"
    reached_dedup = sorted([(r["request_index"], r["candidate_index"], True, r) for r in accepted]
                           + [(r["request_index"], r["candidate_index"], False, r) for r in similar])
    seeds = [task.instruction for task in load_seeds(config.resolved_seeds_path)]
    reference = alpaca_reference([r["instruction"] for *_, r in reached_dedup], config.dedup.threshold, seeds)
    assert [kept for _, _, kept, _ in reached_dedup] == [keep for keep, _ in reference]
    for (_, _, kept, record), (_, scores) in zip(reached_dedup, reference):
        if not kept:  # the recorded score is the exact ROUGE-L against a kept item above the threshold
            assert record["score"] > config.dedup.threshold and record["score"] in scores


def test_real_model_judges_scores_and_rejects_below_threshold(real_vllm_server, smollm2, tmp_path):
    """SmolLM2 judges its own candidates through the judge prompt and schema, while it generates.

    A 135M model is a poor judge, but a real one: it must produce schema-valid judgments whose scores land on the
    records and in the dataset, and the threshold must reject what it scores low, each with its rationale.
    """
    config = real_config(tmp_path, real_vllm_server.base_url, smollm2, "judged")
    config.judge = JudgeConfig(enabled=True, threshold=4, max_tokens=160)
    generate(config, export=True)
    accepted = [json.loads(line) for line in (config.run_dir / "accepted.jsonl").read_text().splitlines()]
    rejected = [json.loads(line) for line in (config.run_dir / "rejected.jsonl").read_text().splitlines()]
    meta = json.loads((config.run_dir / "run.json").read_text())
    assert meta["status"] in ("completed", "incomplete"), meta.get("error")
    # Every accepted record was scored at or above the threshold, with the model's own words as the rationale.
    assert accepted, meta["counts"]
    assert all(r["judge_score"] >= 4 and r["judge_rationale"].strip() for r in accepted)
    low = [r for r in rejected if r["reason"] == "low_score"]
    assert low, meta["counts"]["rejected"]
    assert all(r["step"] == "judge" and r["judge_score"] < 4 and r["judge_rationale"].strip() for r in low)
    # The scores are in the dataset, and what judging cost is in run.json and the card.
    import pyarrow.parquet as pq

    assert pq.read_table(config.run_dir / "alpaca_data.parquet").column("judge_score").to_pylist() == [r["judge_score"] for r in accepted]
    judge = meta["judge"]
    assert judge["requests"] >= len(accepted) + len(low) and judge["completion_tokens"] > 0
    assert f"| judge tokens per accepted record | {judge['tokens_per_accepted']} |" in (config.run_dir / "README.md").read_text()
    assert meta["faults"].keys() <= {"truncated", "parse_error"}, meta["faults"]
