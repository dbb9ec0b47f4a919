"""SIGKILL `selfinstruct generate` at seven points (and three at the default commit interval); each resumed run ends identical to an uninterrupted one.

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

# (point, count, commit interval): 0.05 s commits put most records on disk uncommitted when the kill comes; the
# default interval (0.5 s) is what users run.
CRASH_POINTS = [
    ("request", 5, "fast"), ("write", 3, "fast"), ("dedup", 20, "fast"), ("commit", 3, "fast"), ("export", 1, "fast"),
    ("finished", 1, "fast"), ("none", 1, "fast"),
    ("request", 9, "default"), ("write", 5, "default"), ("commit", 2, "default"),
    # With the judge on: mid-judging (judgments of later requests in flight), and inside a commit.
    ("judge", 12, "judge"), ("request", 6, "judge"), ("commit", 3, "judge"),
]


def _run(args: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.crash_runner", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env={**__import__("os").environ, "PYTHONPATH": str(PROJECT_ROOT)})


@pytest.fixture(scope="module")
def kill_config(vllm_server, tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    config = {
        "output_dir": str(root / "outputs"), "target": 24, "tasks_per_request": 4, "commit_interval_s": 0.05,
        "llm": tiny_llm_config([vllm_server.base_url], str(tiny_llama)).model_dump(mode="json") | {"api_key": "EMPTY"},
        # The default dedup path (prefix filter, top_k_similar 0): the "dedup" kill point lands inside it.
    }
    paths = {"fast": root / "config.yaml", "default": root / "config-default-interval.yaml", "judge": root / "config-judge.yaml"}
    paths["fast"].write_text(yaml.safe_dump(config))
    paths["default"].write_text(yaml.safe_dump({k: v for k, v in config.items() if k != "commit_interval_s"}))
    # The tiny random model's judgments are noise, but seeded noise: scores (or unrateable answers) are stored.
    paths["judge"].write_text(yaml.safe_dump(config | {"judge": {"enabled": True, "max_tokens": 48}}))
    # The records do not depend on when commits happen, so one reference serves both intervals.
    references = {}
    for kind, path in (("fast", paths["fast"]), ("judge", paths["judge"])):
        name = "reference" if kind == "fast" else "reference-judge"
        reference = _run(["none", "1", "generate", "--config", str(path), "--run-name", name], root)
        assert reference.returncode == 0, reference.stderr[-3000:]
        references[kind] = root / "outputs" / name
    references["default"] = references["fast"]
    return root, paths, references


@pytest.mark.parametrize("point,count,interval", CRASH_POINTS, ids=[f"{p}-{n}-{i}" for p, n, i in CRASH_POINTS])
def test_sigkill_then_resume_equals_uninterrupted(kill_config, point, count, interval):
    root, config_paths, references = kill_config
    config_path = config_paths[interval]
    name = f"killed-{point}-{count}-{interval}"
    crashed = _run([point, str(count), "generate", "--config", str(config_path), "--run-name", name], root)
    if point == "none":
        assert crashed.returncode == 0, crashed.stderr[-3000:]
    else:
        assert crashed.returncode == -signal.SIGKILL, f"expected SIGKILL at {point}: rc={crashed.returncode}\n{crashed.stderr[-2000:]}"
    run_dir = root / "outputs" / name
    before_resume = json.loads((run_dir / "run.json").read_text())
    if point == "commit":
        assert list(run_dir.glob(".run.json.*")), "the kill should leave the uncommitted run.json under its temporary name"
    resumed = _run(["none", "1", "generate", "--config", str(config_path), "--run-name", name], root)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = json.loads((run_dir / "run.json").read_text())
    if point == "finished":
        # Nothing is redone after a kill that came when the run was complete.
        assert before_resume["status"] == "completed"
        assert after["usage"] == before_resume["usage"] and "already complete" in resumed.stdout
    assert not list(run_dir.glob(".run.json.*")), "a temporary run.json left by a kill is cleaned up on resume"

    reference = references[interval]
    for name_ in ("accepted.jsonl", "rejected.jsonl", "alpaca_data.json"):
        assert (run_dir / name_).read_bytes() == (reference / name_).read_bytes(), f"{name_} differs after a kill at {point}"
    lines = (run_dir / "accepted.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # no torn line survives
    keys = [(r["request_index"], r["candidate_index"]) for r in records]
    assert len(keys) == len(set(keys))
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "completed" and meta["counts"]["accepted"] == len(records)
    if interval == "judge":
        assert all("judge_score" in r for r in records) and meta["judge"]["requests"] > 0
    from datasets import load_from_disk

    assert load_from_disk(str(run_dir / "dataset")).num_rows == len(records)
