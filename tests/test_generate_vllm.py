"""The pipeline end to end against a real vLLM CPU server with the tiny model (no Prefect)."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import psutil
import pytest

from pipeline.config import DedupConfig, GenerationConfig
from pipeline.generate import GenerationRun
from pipeline.lifecycle import generate, run_rounds
from tests.conftest import PROJECT_ROOT, tiny_llm_config, tiny_server_config

pytestmark = pytest.mark.vllm


def make_config(tmp_path: Path, base_urls: list[str], model: str, run_name: str = "e2e", target: int = 24, **overrides) -> GenerationConfig:
    values = dict(
        run_name=run_name, output_dir=str(tmp_path / "outputs"), target=target, tasks_per_request=4, round_size=8,
        llm=tiny_llm_config(base_urls, model), dedup=DedupConfig(top_k_similar=3),
    )
    values.update(overrides)
    return GenerationConfig(**values)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_generate_writes_dataset_counts_and_resumes_without_duplicates(vllm_server, tiny_llama, tmp_path):
    config = make_config(tmp_path, [vllm_server.base_url], str(tiny_llama))
    summary = generate(config)
    run_dir = config.run_dir

    accepted = read_lines(run_dir / "accepted.jsonl")
    rejected = read_lines(run_dir / "rejected.jsonl")
    meta = json.loads((run_dir / "run.json").read_text())
    assert summary.accepted == len(accepted) >= config.target
    assert len(accepted) < config.target + config.tasks_per_request  # bounded overshoot
    assert meta["status"] == "completed"
    assert meta["counts"]["accepted"] == len(accepted)
    assert meta["counts"]["rejected"] == dict(Counter(r["reason"] for r in rejected))
    assert meta["usage"]["completion_tokens"] > 0 and meta["usage"]["prompt_tokens"] > 0
    assert meta["config"]["llm"]["api_key"] == "**********"
    indices = [(r["request_index"], r["candidate_index"]) for r in accepted]
    assert indices == sorted(indices), "records must be in request order"
    assert all(r["rouge_max"] <= config.dedup.threshold for r in accepted)

    alpaca = json.loads((run_dir / "alpaca_data.json").read_text())
    assert len(alpaca) == len(accepted)
    assert all(set(r) == {"instruction", "input", "output"} for r in alpaca)
    from datasets import load_from_disk

    dataset = load_from_disk(str(run_dir / "dataset"))
    assert dataset.num_rows == len(accepted)
    assert dataset[0]["instruction"] == alpaca[0]["instruction"]
    card = (run_dir / "README.md").read_text()
    assert f"| accepted records | {len(accepted)} |" in card
    assert (run_dir / "charts" / "lengths.png").stat().st_size > 1000

    # Same config again: the run is complete, so nothing is sent and nothing is written twice.
    before = (run_dir / "accepted.jsonl").read_bytes()
    again = generate(config)
    assert again.accepted == len(accepted)
    assert (run_dir / "accepted.jsonl").read_bytes() == before
    assert json.loads((run_dir / "run.json").read_text())["usage"]["requests"] == meta["usage"]["requests"]

    # A higher target extends the same run: old records stay first, no record appears twice.
    extended = config.model_copy(update={"target": config.target + 12})
    generate(extended)
    grown = read_lines(run_dir / "accepted.jsonl")
    assert len(grown) >= extended.target
    assert grown[: len(accepted)] == accepted
    keys = [(r["request_index"], r["candidate_index"]) for r in grown]
    assert len(keys) == len(set(keys))
    assert len({r["instruction"] for r in grown}) == len(grown)


def test_interrupted_run_resumes_identical_to_uninterrupted(vllm_server, tiny_llama, tmp_path):
    straight = make_config(tmp_path, [vllm_server.base_url], str(tiny_llama), run_name="straight", target=20)
    generate(straight, export=False)

    interrupted = straight.model_copy(update={"run_name": "interrupted"})
    run = GenerationRun(interrupted).open()
    run_rounds(run, [vllm_server.base_url], None, max_requests=2)
    run.close()
    # What a crash mid-write leaves behind: records past the commit point and a torn last line.
    with open(interrupted.run_dir / "accepted.jsonl", "a", encoding="utf-8") as f:
        f.write('{"request_index": 999, "instruction": "half a rec')
    generate(interrupted, export=False)

    assert (interrupted.run_dir / "accepted.jsonl").read_bytes() == (straight.run_dir / "accepted.jsonl").read_bytes()
    assert (interrupted.run_dir / "rejected.jsonl").read_bytes() == (straight.run_dir / "rejected.jsonl").read_bytes()


def _vllm_processes(model_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if any("vllm" in part for part in cmdline) and str(model_dir) in cmdline:
            found.append(proc)
    return found


@pytest.mark.slow
def test_cli_managed_mode_starts_vllm_and_always_stops_it(tiny_llama, tmp_path):
    """`selfinstruct generate` with no base URL starts its own vLLM server, and stops it at the end."""
    model = tmp_path / "model"
    import shutil

    shutil.copytree(tiny_llama, model)  # a private path, so only this test's server matches
    config = {
        "run_name": "managed", "output_dir": str(tmp_path / "outputs"), "target": 12, "tasks_per_request": 4,
        "llm": tiny_llm_config([], str(model)).model_dump(mode="json") | {"api_key": "sk-test-SECRET"},
        "server": tiny_server_config().model_dump(mode="json"),
    }
    config_path = tmp_path / "managed.yaml"
    import yaml

    config_path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [str(PROJECT_ROOT / ".venv" / "bin" / "selfinstruct"), "generate", "--config", str(config_path)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "managed"
    assert len(json.loads((run_dir / "alpaca_data.json").read_text())) >= 12
    server_log = (run_dir / "server.log").read_text()
    assert "--host 127.0.0.1" in server_log
    assert not _vllm_processes(model), "the managed vLLM server outlived the run"
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert b"sk-test-SECRET" not in path.read_bytes(), f"API key leaked into {path}"
    assert "sk-test-SECRET" not in proc.stdout + proc.stderr
