"""The `self-instruct` Prefect flow under the Prefect test harness, against the real vLLM CPU server."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.test_generate_vllm import make_config, read_lines

pytestmark = [pytest.mark.vllm, pytest.mark.prefect]

SECRET = "sk-test-SECRET"


async def _logs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async with get_client() as client:
        return await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))


async def _artifacts(prefix: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async with get_client() as client:
        return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_=prefix)))


async def _task_run_names(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return [r.name for r in runs]


def test_self_instruct_flow_writes_dataset_and_artifacts_and_resumes(vllm_server, tiny_llama, tmp_path, prefect_harness):
    from flows.self_instruct import self_instruct

    config = make_config(tmp_path, [vllm_server.base_url], str(tiny_llama), run_name="flowrun", target=20)
    config.llm.api_key = SECRET  # vLLM runs without --api-key, so any key is accepted; it must leak nowhere
    state = self_instruct(config, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    run_dir = config.run_dir
    accepted = read_lines(run_dir / "accepted.jsonl")
    assert result["records"] == len(accepted) >= 20
    assert len(json.loads((run_dir / "alpaca_data.json").read_text())) == len(accepted)
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["status"] == "completed"

    # Coarse tasks: one per round of requests plus the export, never one per record.
    names = asyncio.run(_task_run_names(state.state_details.flow_run_id))
    rounds = [n for n in names if n.startswith("generate-round")]
    assert len(rounds) == -(-meta["counts"]["requests"] // config.round_size)
    assert len(names) < len(accepted)
    assert any(n.startswith("export-dataset") for n in names)

    artifacts = {a.key: a for a in asyncio.run(_artifacts("flowrun-%"))}
    for key in ("flowrun-summary", "flowrun-report", "flowrun-funnel", "flowrun-figures", "flowrun-verbs", "flowrun-samples",
                "flowrun-rejected", "flowrun-rejection-reasons", "flowrun-lengths", "flowrun-dataset", "flowrun-progress"):
        assert key in artifacts, f"missing artifact {key}; have {sorted(artifacts)}"
    # The quality report: its figures, the funnel as a table, and every chart inside the markdown as a PNG data URI.
    report = json.loads((run_dir / "quality.json").read_text(encoding="utf-8"))
    markdown = artifacts["flowrun-report"].data
    assert f"| accepted records | {len(accepted):,} |" in markdown and "| tasks parsed |" in markdown
    charts = sorted(p.stem for p in (run_dir / "charts").glob("*.png"))
    assert len(charts) >= 4 and markdown.count("](data:image/png;base64,") == len(charts)
    funnel = artifacts["flowrun-funnel"].data
    funnel = json.loads(funnel) if isinstance(funnel, str) else funnel
    assert funnel == report["funnel"] and funnel[-1] == {"stage": "accepted", "count": len(accepted)}
    assert float(artifacts["flowrun-progress"].data) == 100.0
    summary = artifacts["flowrun-summary"].data
    assert f"| accepted records | {len(accepted)} |" in summary
    assert "completion tokens/s" in summary
    samples = artifacts["flowrun-samples"].data
    samples = json.loads(samples) if isinstance(samples, str) else samples
    assert samples and {"instruction", "input", "output"} <= set(samples[0])
    assert {s["instruction"] for s in samples} <= {r["instruction"] for r in accepted}
    # Rejections show the step that made them and its evidence; the summary shows every step's counts.
    rejected_rows = artifacts["flowrun-rejected"].data
    rejected_rows = json.loads(rejected_rows) if isinstance(rejected_rows, str) else rejected_rows
    rejected = read_lines(run_dir / "rejected.jsonl")
    assert len(rejected_rows) == min(config.export.sample_rows, len(rejected))
    assert all({"reason", "step", "detail", "evidence", "instruction"} <= set(r) for r in rejected_rows)
    for row in rejected_rows:
        if row["reason"] == "rouge_similar":
            assert row["step"] == "rouge" and '"similar_to"' in row["evidence"] and '"score"' in row["evidence"]
    assert "## Curation steps" in summary and "| rouge |" in summary

    # Running the flow again resumes: the run is complete, nothing is duplicated.
    before = (run_dir / "accepted.jsonl").read_bytes()
    again = self_instruct(config, return_state=True)
    assert again.is_completed()
    assert (run_dir / "accepted.jsonl").read_bytes() == before
    assert again.result()["records"] == len(accepted)

    # No secret in any output file, Prefect log or artifact.
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    logs = asyncio.run(_logs(state.state_details.flow_run_id))
    assert logs and not any(SECRET in log.message for log in logs)
    # Only the project's own messages: no bytecode listing (dill's disassembly while `datasets` fingerprints).
    bytecode = [log.message for log in logs if any(op in log.message for op in ("RESUME", "RETURN_VALUE", "LOAD_FAST"))]
    assert not bytecode, bytecode[:3]
    for artifact in asyncio.run(_artifacts("flowrun-%")):
        assert SECRET not in json.dumps(artifact.data, default=str)

    # The train-alpaca flow trains on the dataset this flow produced.
    from flows.train_alpaca import train_alpaca
    from pipeline.train import TrainConfig

    train_config = TrainConfig(base_model=str(tiny_llama), dataset=str(run_dir), max_steps=2, per_device_train_batch_size=2,
                               gradient_accumulation_steps=1, num_sample_prompts=1, sample_max_new_tokens=4,
                               gradient_checkpointing=False)
    trained = train_alpaca(train_config, return_state=True)
    assert trained.is_completed(), trained.message
    adapter = run_dir / "train-lora-alpaca" / "adapter_model.safetensors"
    assert adapter.stat().st_size > 1000
