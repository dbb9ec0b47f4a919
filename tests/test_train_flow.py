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
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flows.train_alpaca import train_alpaca
    from pipeline.tiny import make_tiny_model
    from pipeline.train import TrainConfig

    model_dir = make_tiny_model(tmp_path / "tiny-llama", arch="llama")
    run_dir = tmp_path / "outputs" / "flowtrain"
    run_dir.mkdir(parents=True)
    records = [{"instruction": f"Say number {i}.", "input": "" if i % 2 else "digits", "output": f"{i}"}
               for i in range(12)]
    (run_dir / "alpaca_data.json").write_text(json.dumps(records), encoding="utf-8")
    # 2 records held out for samples, 2 for the held-out loss, 8 trained on. lr 3e-3 takes the held-out loss
    # from 6.24 to 5.15 in 6 steps and the curve from 6.32 to 5.09, so a drop of 0.5 nat is far beyond noise.
    config = TrainConfig(base_model=str(model_dir), dataset=str(run_dir), max_steps=6, learning_rate=3e-3,
                         lr_scheduler_type="constant", warmup_ratio=0.0, per_device_train_batch_size=2,
                         gradient_accumulation_steps=1, report_every=2, num_sample_prompts=2, val_size=2,
                         sample_max_new_tokens=4, gradient_checkpointing=False)

    state = train_alpaca(config, return_state=True)
    assert state.is_completed(), state
    result = state.result()
    # output_dir defaults to a directory next to the data it was trained on.
    out = run_dir / "train-lora-alpaca"
    assert result["output_dir"] == str(out)
    assert result["adapter_file"] == str(out / "adapter_model.safetensors")
    assert os.path.getsize(result["adapter_file"]) > 0
    for name, file_name in [("config_file", "train_config.json"), ("metrics_file", "metrics.json"),
                            ("loss_file", "loss.jsonl"), ("samples_file", "samples.json")]:
        assert result[name] == str(out / file_name) and (out / file_name).is_file(), name
    assert result["merged_dir"] is None  # merge was not asked for

    # The flow returns the headline figures of metrics.json, and they show the loss fell.
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("global_step", "train_loss", "first_loss", "final_loss", "eval_loss_before", "eval_loss"):
        assert result[key] == metrics[key], key
    assert metrics["global_step"] == 6 and metrics["method"] == "lora"
    assert (metrics["train_examples"], metrics["validation_examples"], metrics["sample_prompts"]) == (8, 2, 2)
    assert result["final_loss"] < result["first_loss"] - 0.5, result
    assert result["eval_loss"] < result["eval_loss_before"] - 0.5, result

    # The adapter and tokenizer load with PeftModel.from_pretrained, hold trained weights and change the model.
    tensors = load_file(out / "adapter_model.safetensors")
    lora_b = [value for key, value in tensors.items() if "lora_B" in key]
    assert len(lora_b) == 14 and all(value.abs().max() > 1e-4 for value in lora_b)  # B starts at zero
    tokenizer = AutoTokenizer.from_pretrained(out)
    input_ids = torch.tensor([tokenizer("### Instruction:\nSay number 3.")["input_ids"]])
    with torch.no_grad():
        base_logits = AutoModelForCausalLM.from_pretrained(model_dir).eval()(input_ids=input_ids).logits
        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(out)).eval()
        assert (adapted(input_ids=input_ids).logits - base_logits).abs().max() > 1e-2

    # samples.json: each held-out instruction answered before and after training, beside its reference.
    samples = json.loads((out / "samples.json").read_text())
    by_instruction = {record["instruction"]: record for record in records}
    assert len(samples) == 2
    for row in samples:
        assert set(row) == {"instruction", "input", "reference", "before", "after"}
        assert row["reference"] == by_instruction[row["instruction"]]["output"]
        assert isinstance(row["before"], str) and isinstance(row["after"], str)
    assert any(row["before"] != row["after"] for row in samples), samples  # training changed the answers

    flow_run = asyncio.run(_flow_run(state.state_details.flow_run_id))
    assert flow_run.name and flow_run.flow_id
    artifacts = {a.key: a for a in asyncio.run(_artifacts("train-%-train-lora-alpaca", flow_run.id))}
    assert set(artifacts) == {"train-loss-train-lora-alpaca", "train-samples-train-lora-alpaca",
                              "train-report-train-lora-alpaca", "train-progress-train-lora-alpaca"}
    # The loss table is loss.jsonl (every logged step), the samples table is samples.json.
    loss_rows = json.loads(artifacts["train-loss-train-lora-alpaca"].data)
    assert loss_rows == [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert [row["step"] for row in loss_rows] == [1, 2, 4, 6]
    assert all(row["loss"] > 0 for row in loss_rows)
    assert (loss_rows[0]["loss"], loss_rows[-1]["loss"]) == (result["first_loss"], result["final_loss"])
    assert json.loads(artifacts["train-samples-train-lora-alpaca"].data) == samples
    # The report names the run, its figures, and how to load and serve the adapter.
    report_text = artifacts["train-report-train-lora-alpaca"].data
    assert f"# Fine-tuning report: `{out}`" in report_text and "**LORA**" in report_text
    assert "8 training examples, 6 steps" in report_text
    for key in ("first_loss", "final_loss", "eval_loss_before", "eval_loss"):
        assert f"| {key} | {metrics[key]} |" in report_text, key
    assert f"PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({str(model_dir)!r}), {str(out)!r})" \
        in report_text
    assert f"vllm serve {model_dir} --enable-lora --max-lora-rank 16 --lora-modules train-lora-alpaca={out.resolve()}" \
        in report_text
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
