"""SIGKILL `selfinstruct generate` at five points; each resumed run ends identical to an uninterrupted one.

The real vLLM CPU server with fixed per-request seeds is deterministic here (checked by the reference run
being reproduced at all), so no replay layer is needed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import yaml

from tests.conftest import PROJECT_ROOT, tiny_llm_config

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

CRASH_POINTS = [("request", 5), ("write", 3), ("dedup", 20), ("export", 1), ("none", 1)]


def _run(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.crash_runner", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env={**__import__("os").environ, "PYTHONPATH": str(PROJECT_ROOT)})


@pytest.fixture(scope="module")
def kill_config(vllm_server, tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    config = {
        "output_dir": str(root / "outputs"), "target": 24, "tasks_per_request": 4, "commit_interval_s": 0.05,
        "llm": tiny_llm_config([vllm_server.base_url], str(tiny_llama)).model_dump(mode="json") | {"api_key": "EMPTY"},
        "dedup": {"top_k_similar": 2},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    reference = _run(["none", "1", "generate", "--config", str(path), "--run-name", "reference"], root)
    assert reference.returncode == 0, reference.stderr[-3000:]
    return root, path


@pytest.mark.parametrize("point,count", CRASH_POINTS, ids=[p for p, _ in CRASH_POINTS])
def test_sigkill_then_resume_equals_uninterrupted(kill_config, point, count):
    root, config_path = kill_config
    name = f"killed-{point}"
    crashed = _run([point, str(count), "generate", "--config", str(config_path), "--run-name", name], root)
    if point == "none":
        assert crashed.returncode == 0, crashed.stderr[-3000:]
    else:
        assert crashed.returncode == -signal.SIGKILL, f"expected SIGKILL at {point}: rc={crashed.returncode}\n{crashed.stderr[-2000:]}"
    resumed = _run(["none", "1", "generate", "--config", str(config_path), "--run-name", name], root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    run_dir, reference = root / "outputs" / name, root / "outputs" / "reference"
    for name_ in ("accepted.jsonl", "rejected.jsonl", "alpaca_data.json"):
        assert (run_dir / name_).read_bytes() == (reference / name_).read_bytes(), f"{name_} differs after a kill at {point}"
    lines = (run_dir / "accepted.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # no torn line survives
    keys = [(r["request_index"], r["candidate_index"]) for r in records]
    assert len(keys) == len(set(keys))
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "completed" and meta["counts"]["accepted"] == len(records)
    from datasets import load_from_disk

    assert load_from_disk(str(run_dir / "dataset")).num_rows == len(records)
