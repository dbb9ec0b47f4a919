"""The `train-alpaca` Prefect flow under the Prefect test harness, with a tiny model on CPU."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest.importorskip("torch")
pytest.importorskip("peft")

pytestmark = [pytest.mark.prefect]


async def _artifacts(prefix: str, flow_run_id):
    """This run's artifacts only: other tests in the session train into directories of the same name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    async with get_client() as client:
        return await client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(like_=prefix), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


async def _flow_run(flow_run_id):
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.read_flow_run(flow_run_id)


def test_train_alpaca_flow_trains_and_publishes_artifacts(tmp_path, prefect_harness):
    from flows.train_alpaca import train_alpaca
    from pipeline.tiny import make_tiny_model
    from pipeline.train import TrainConfig

    model_dir = make_tiny_model(tmp_path / "tiny-llama", arch="llama")
    run_dir = tmp_path / "outputs" / "flowtrain"
    run_dir.mkdir(parents=True)
    records = [{"instruction": f"Say number {i}.", "input": "" if i % 2 else "digits", "output": f"{i}"}
               for i in range(10)]
    (run_dir / "alpaca_data.json").write_text(json.dumps(records), encoding="utf-8")
    config = TrainConfig(base_model=str(model_dir), dataset=str(run_dir), max_steps=6, learning_rate=1e-3,
                         per_device_train_batch_size=2, gradient_accumulation_steps=1, report_every=2,
                         num_sample_prompts=2, sample_max_new_tokens=4, gradient_checkpointing=False)

    state = train_alpaca(config, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    # output_dir defaults to a directory next to the data it was trained on.
    assert result["output_dir"] == str(run_dir / "train-lora-alpaca")
    assert os.path.getsize(result["adapter_file"]) > 0
    assert result["global_step"] == 6 and result["final_loss"] is not None

    flow_run = asyncio.run(_flow_run(state.state_details.flow_run_id))
    assert flow_run.name and flow_run.flow_id
    artifacts = {a.key: a for a in asyncio.run(_artifacts("train-%-train-lora-alpaca", flow_run.id))}
    assert set(artifacts) == {"train-loss-train-lora-alpaca", "train-samples-train-lora-alpaca",
                              "train-report-train-lora-alpaca", "train-progress-train-lora-alpaca"}
    loss_rows = json.loads(artifacts["train-loss-train-lora-alpaca"].data)
    assert [row["step"] for row in loss_rows] == [1, 2, 4, 6]
    assert all(row["loss"] > 0 for row in loss_rows)
    samples = json.loads(artifacts["train-samples-train-lora-alpaca"].data)
    assert len(samples) == 2 and {"before", "after", "instruction"} <= set(samples[0])
    report_text = artifacts["train-report-train-lora-alpaca"].data
    assert "PeftModel.from_pretrained" in report_text and "--enable-lora" in report_text
    assert artifacts["train-progress-train-lora-alpaca"].data == 100.0


def test_deployment_defaults_fill_fields_the_caller_left_out():
    """run_deployment(..., {"config": {"dataset": ...}}) keeps the deployment's base model and template."""
    from flows.train_alpaca import with_deployment_defaults
    from pipeline.train import TrainConfig

    deployment_config = {"base_model": "EleutherAI/polyglot-ko-5.8b", "template": "koalpaca", "method": "qlora",
                         "dataset": "outputs/koalpaca", "lora_r": 32}
    merged = with_deployment_defaults(TrainConfig.model_validate({"dataset": "outputs/ko-run-2", "lora_r": 8}),
                                      deployment_config)
    assert merged.dataset == "outputs/ko-run-2" and merged.lora_r == 8  # the caller's values win
    assert (merged.base_model, merged.template, merged.method) == ("EleutherAI/polyglot-ko-5.8b", "koalpaca", "qlora")
    alone = TrainConfig(dataset="d")
    assert with_deployment_defaults(alone, {}) is alone


def test_deployment_config_defaults_are_read_from_the_api(prefect_harness):
    from prefect.client.orchestration import get_client

    from flows.train_alpaca import deployment_config_defaults

    parameters = {"config": {"template": "koalpaca", "dataset": "outputs/koalpaca"}}
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("train-alpaca")
        deployment_id = client.create_deployment(flow_id=flow_id, name="koalpaca-test", parameters=parameters)
    assert deployment_config_defaults(str(deployment_id)) == parameters["config"]
    assert deployment_config_defaults() == {}  # not inside a deployment's flow run
