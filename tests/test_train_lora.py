"""LoRA fine-tuning end to end on tiny LLaMA and GPT-NeoX models (CPU)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from pipeline.tiny import make_tiny_model  # noqa: E402
from pipeline.train import TrainConfig, train  # noqa: E402
from pipeline.train.adapters import TARGET_MODULES_BY_MODEL_TYPE, verify_adapter  # noqa: E402

ARCHS = {"llama": ("llama", "alpaca"), "gpt-neox": ("gpt_neox", "koalpaca")}


def fixed_records(n: int = 16) -> list[dict[str, str]]:
    """Short, distinct records (so the tiny model can memorise them within a few dozen steps)."""
    colours = ["red", "blue", "green", "black", "white", "pink", "grey", "gold"]
    return [
        {
            "instruction": f"Name colour {i}.",
            "input": "the sky" if i % 3 == 0 else "",
            "output": f"{colours[i % len(colours)]} {colours[(i * 3) % len(colours)]}",
        }
        for i in range(n)
    ]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: make_tiny_model(root / arch, arch=arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def alpaca_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "alpaca_data.json"
    path.write_text(json.dumps(fixed_records()), encoding="utf-8")
    return path


def lora_config(model_dir, dataset, output_dir, template, **overrides) -> TrainConfig:
    settings = dict(
        base_model=str(model_dir), dataset=str(dataset), output_dir=str(output_dir), template=template,
        method="lora", max_steps=40, learning_rate=5e-3, warmup_ratio=0.0, lr_scheduler_type="constant",
        max_grad_norm=1.0, per_device_train_batch_size=4, gradient_accumulation_steps=1, lora_r=8, lora_alpha=16,
        lora_dropout=0.0, gradient_checkpointing=False, num_sample_prompts=2, sample_max_new_tokens=4,
        report_every=5, save_steps=20, merge=True, seed=0,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture(scope="module", params=list(ARCHS))
def trained(request, tiny_models, alpaca_file, tmp_path_factory):
    arch = request.param
    out = tmp_path_factory.mktemp(f"lora-{arch}")
    config = lora_config(tiny_models[arch], alpaca_file, out, ARCHS[arch][1])
    return arch, config, train(config)


def _logits(model, input_ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def _eos_log_prob(model, tokenizer, template, record) -> float:
    """Log-probability of EOS right after a training record's full answer."""
    ids = tokenizer(template.record_prompt(record))["input_ids"]
    ids += tokenizer(template.response(record["output"]), add_special_tokens=False)["input_ids"]
    logits = _logits(model, torch.tensor([ids]))
    return torch.log_softmax(logits[0, -1].float(), dim=-1)[tokenizer.eos_token_id].item()


def test_training_reduces_loss(trained):
    _, _, result = trained
    metrics = result.metrics
    assert metrics["global_step"] == 40
    # A frozen random 128-wide output head caps how confident the tiny model can get; a drop of more than
    # one nat (from about log(vocab)) is far beyond noise.
    assert metrics["final_loss"] < metrics["first_loss"] - 1.0, metrics
    assert metrics["train_tokens"] > 0 and metrics["train_tokens_per_second"] > 0
    rows = [json.loads(line) for line in result.loss_file.read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 5, 10, 15, 20, 25, 30, 35, 40]
    assert all(row["tokens_per_second"] > 0 for row in rows)


def test_eos_is_learned(trained, tiny_models):
    """With pad == eos (GPT-NeoX) the old collators masked every EOS; here the model must learn to stop."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.train.templates import load_template

    arch, config, result = trained
    tokenizer = AutoTokenizer.from_pretrained(result.output_dir)
    template = load_template(config.template)
    record = fixed_records()[5]
    before = _eos_log_prob(AutoModelForCausalLM.from_pretrained(tiny_models[arch]), tokenizer, template, record)
    after = _eos_log_prob(result.model, tokenizer, template, record)
    assert after > before + 1.5, (before, after)  # EOS became e^1.5 ≈ 4.5x more likely after the answer


def test_adapter_file_holds_trained_lora_weights(trained):
    from safetensors.torch import load_file

    arch, _, result = trained
    info = verify_adapter(result.output_dir)
    tensors = load_file(result.adapter_file)
    assert result.adapter_file.stat().st_size > 10_000
    assert info["adapted_modules"] == len(TARGET_MODULES_BY_MODEL_TYPE[ARCHS[arch][0]]) * 2  # 2 layers
    lora_b = [value for key, value in tensors.items() if "lora_B" in key]
    assert lora_b and all(value.abs().sum() > 0 for value in lora_b)  # B starts at zero: these were trained
    adapter_config = json.loads((result.output_dir / "adapter_config.json").read_text())
    assert sorted(adapter_config["target_modules"]) == sorted(TARGET_MODULES_BY_MODEL_TYPE[ARCHS[arch][0]])
    assert (result.output_dir / "tokenizer_config.json").is_file()
    saved = json.loads(result.config_file.read_text())
    assert saved["learning_rate"] == 5e-3 and saved["method"] == "lora"
    samples = json.loads(result.samples_file.read_text())
    assert len(samples) == 2 and {"instruction", "before", "after", "reference"} <= set(samples[0])


def test_reloaded_adapter_and_merged_model_match_in_memory_model(trained, tiny_models):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    arch, _, result = trained
    input_ids = torch.tensor([list(range(3, 40))])
    expected = _logits(result.model, input_ids)

    base = AutoModelForCausalLM.from_pretrained(tiny_models[arch])
    base_logits = _logits(base, input_ids)
    reloaded = PeftModel.from_pretrained(base, str(result.output_dir))
    torch.testing.assert_close(_logits(reloaded, input_ids), expected, atol=1e-5, rtol=1e-5)
    assert (expected - base_logits).abs().max() > 1e-2  # the adapter changes the model

    merged = AutoModelForCausalLM.from_pretrained(result.merged_dir)
    torch.testing.assert_close(_logits(merged, input_ids), expected, atol=1e-4, rtol=1e-4)
    assert merged.config.use_cache is True


def test_packed_batch_gives_same_loss_as_separate_examples(trained):
    """Padding-free rows must not let examples attend to each other (checked on the trained model)."""
    from transformers import AutoTokenizer

    from pipeline.train.data import pad_to_longest_collator, padding_free_collator, tokenize_records
    from pipeline.train.templates import load_template

    _, config, result = trained
    tokenizer = AutoTokenizer.from_pretrained(result.output_dir)
    examples, _ = tokenize_records(tokenizer, load_template(config.template), fixed_records()[:4], 512)
    model = result.model.eval()
    with torch.no_grad():
        packed = padding_free_collator()(examples)
        packed_logits = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits[0]
        padded = pad_to_longest_collator(tokenizer)(examples)
        padded_logits = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]).logits
    offset = 0
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        torch.testing.assert_close(packed_logits[offset : offset + n], padded_logits[row, :n], atol=1e-4, rtol=1e-4)
        offset += n


def test_resume_continues_from_last_checkpoint_with_optimizer_state(trained, tmp_path):
    _, config, result = trained
    # Resume in a copy: the module's other tests read the trained output directory, whatever order they run in.
    output_dir = tmp_path / "resumed"
    shutil.copytree(result.output_dir, output_dir)
    checkpoint = output_dir / "checkpoint-40"
    assert (checkpoint / "optimizer.pt").is_file() and (checkpoint / "scheduler.pt").is_file()
    resumed = train(config.model_copy(update={"output_dir": str(output_dir), "max_steps": 45, "merge": False,
                                              "num_sample_prompts": 0}))
    assert resumed.metrics["resumed_from"] == str(checkpoint)
    assert resumed.metrics["global_step"] == 45
    steps = [json.loads(line)["step"] for line in resumed.loss_file.read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 45 and 40 in steps


def test_cli_trains_from_yaml_file_with_overrides(tiny_models, alpaca_file, tmp_path, capsys):
    import argparse

    from pipeline.train.cli import add_train_arguments, run_train_command

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    config_file = tmp_path / "train.yaml"
    config_file.write_text(
        f"base_model: {tiny_models['gpt-neox']}\ndataset: {alpaca_file}\ntemplate: koalpaca\nlora_r: 4\n"
        "max_steps: 50\nnum_sample_prompts: 1\nsample_max_new_tokens: 2\ngradient_checkpointing: true\n",
        encoding="utf-8",
    )
    args = parser.parse_args(["--config", str(config_file), "--output", str(tmp_path / "out"), "--max-steps", "2",
                              "--target-modules", "query_key_value,dense", "--no-gradient-checkpointing"])
    assert run_train_command(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["global_step"] == 2  # the option overrode the file's 50
    saved = json.loads((tmp_path / "out" / "train_config.json").read_text())
    assert saved["target_modules"] == ["query_key_value", "dense"] and saved["lora_r"] == 4
    assert saved["gradient_checkpointing"] is False and saved["template"] == "koalpaca"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "d", "--lora-r", "0"], "lora_r (--lora-r): Input should be greater than or equal to 1"),
        (["--dataset", "d", "--method", "full"], "method (--method): Input should be 'lora' or 'qlora'"),
        (["--dataset", "d", "--learning-rate", "fast"], "learning_rate (--learning-rate)"),
        (["--base-model", "m"], "dataset (--dataset): Field required"),
    ],
)
def test_cli_rejects_bad_values_with_exit_code_2_naming_the_field(argv, message, capsys):
    import argparse

    from pipeline.train.cli import add_train_arguments, run_train_command

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    assert run_train_command(parser.parse_args(argv)) == 2
    assert message in capsys.readouterr().err


def test_cli_reports_a_bad_dataset_with_exit_code_2(tiny_models, tmp_path, capsys):
    import argparse

    from pipeline.train.cli import add_train_arguments, run_train_command

    bad = tmp_path / "alpaca_data.json"
    bad.write_text('[{"instruction": "x"}]', encoding="utf-8")
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--base-model", str(tiny_models["llama"]), "--dataset", str(bad),
                              "--output", str(tmp_path / "out")])
    assert run_train_command(args) == 2
    assert f"{bad}:1: [0].output: must be a string" in capsys.readouterr().err
