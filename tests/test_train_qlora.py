"""QLoRA: a really 4-bit NF4 base with double quantisation, trained for a few steps on CPU (bitsandbytes)."""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")

from pipeline.tiny import make_tiny_model  # noqa: E402
from pipeline.train import TrainConfig, train  # noqa: E402
from pipeline.train.adapters import attach_lora, verify_adapter  # noqa: E402
from pipeline.train.model_loading import load_base_model, resolve_precision  # noqa: E402


@pytest.fixture(scope="module")
def tiny_neox(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "neox", arch="gpt-neox")


def qlora_config(model_dir, tmp_path, **overrides) -> TrainConfig:
    records = [{"instruction": f"질문 {i}", "input": "맥락" if i % 2 else "", "output": f"답변 {i}"}
               for i in range(10)]
    dataset = tmp_path / "alpaca_data.json"
    dataset.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    settings = dict(base_model=str(model_dir), dataset=str(dataset), output_dir=str(tmp_path / "out"),
                    method="qlora", template="koalpaca", max_steps=4, per_device_train_batch_size=2,
                    gradient_accumulation_steps=2, learning_rate=1e-3, num_sample_prompts=1,
                    sample_max_new_tokens=4, report_every=1, seed=0)
    settings.update(overrides)
    return TrainConfig(**settings)


def test_qlora_base_is_nf4_with_double_quant_and_prepared_for_training(tiny_neox, tmp_path):
    model = load_base_model(qlora_config(tiny_neox, tmp_path), precision="fp32")
    linear4 = {name: module for name, module in model.named_modules() if isinstance(module, bnb.nn.Linear4bit)}
    # Every projection of both layers is 4-bit; the output head stays unquantised as in QLoRA.
    assert len(linear4) == 8 and not any("embed_out" in name for name in linear4)
    for module in linear4.values():
        assert module.weight.dtype == torch.uint8
        assert module.weight.quant_state.quant_type == "nf4"
        assert module.weight.quant_state.nested  # double quantisation of the absmax constants
    assert getattr(model, "is_loaded_in_4bit", False)
    # prepare_model_for_kbit_training froze the base and upcast the non-quantised parameters.
    assert not any(param.requires_grad for param in model.parameters())
    assert all(param.dtype == torch.float32 for name, param in model.named_parameters() if "layernorm" in name)
    assert model.config.use_cache is False


def _lora_state(tensors) -> dict:
    return {key: value.detach().float().cpu() for key, value in tensors.items()}


def test_qlora_training_changes_the_adapter_and_lowers_the_loss(tiny_neox, tmp_path):
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    # 2 records held out for the loss before/after, 1 for samples, 7 trained on. lr 3e-3 takes the held-out loss
    # from 6.28 (about log 512, the vocabulary) to 5.21 in 4 steps (lr 1e-3: 5.85): a drop of 0.5 nat is no noise.
    config = qlora_config(tiny_neox, tmp_path, learning_rate=3e-3, val_size=2)
    result = train(config)
    metrics = result.metrics
    assert metrics["global_step"] == 4 and metrics["validation_examples"] == 2
    rows = [json.loads(line) for line in result.loss_file.read_text().splitlines()]
    assert len(rows) == 4 and all(row["loss"] > 0 for row in rows)
    assert metrics["eval_loss"] < metrics["eval_loss_before"] - 0.5, metrics
    assert metrics["final_loss"] < metrics["first_loss"] - 0.5, metrics
    assert verify_adapter(result.output_dir)["adapted_modules"] == 8
    assert any(isinstance(module, bnb.nn.Linear4bit) for module in result.model.modules())
    saved = json.loads(result.config_file.read_text())
    assert saved["method"] == "qlora" and saved["optim"] == ("paged_adamw_32bit" if torch.cuda.is_available()
                                                             else "adamw_torch")

    # The adapter as attached before training: peft starts every LoRA B at zero (so the model starts as the base).
    initial = _lora_state(get_peft_model_state_dict(attach_lora(load_base_model(config, "fp32"), config)))
    trained = _lora_state(load_file(result.adapter_file))
    assert set(trained) == set(initial) and len(trained) == 16  # A and B of 8 modules
    lora_b = [key for key in initial if "lora_B" in key]
    assert len(lora_b) == 8 and all(not initial[key].any() for key in lora_b)
    # Training moved every B away from zero: the saved adapter is not the untrained one.
    assert all(trained[key].abs().max() > 1e-4 for key in lora_b), {key: trained[key].abs().max() for key in lora_b}
    # The file holds exactly the weights of the trained model in memory.
    in_memory = _lora_state(get_peft_model_state_dict(result.model))
    for key, value in trained.items():
        torch.testing.assert_close(value, in_memory[key], rtol=0, atol=0)


def test_precision_choice_is_bf16_where_supported_and_fp32_otherwise(monkeypatch):
    """``auto`` precision (resolve_precision looks up torch.cuda.is_available / is_bf16_supported at call time)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_precision("auto") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert resolve_precision("auto") == "fp32"  # never fp16 unless asked for
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_precision("auto") == "fp32"
    assert resolve_precision("fp16") == "fp16" and resolve_precision("bf16") == "bf16"


def _compute_dtypes(model) -> tuple:
    """The 4-bit compute dtype of the model's quantization config and of every Linear4bit layer."""
    layers = {module.compute_dtype for module in model.modules() if isinstance(module, bnb.nn.Linear4bit)}
    return model.config.quantization_config.bnb_4bit_compute_dtype, layers


def test_qlora_compute_dtype_is_bf16_with_fp32_fallback(tiny_neox, tmp_path):
    config = qlora_config(tiny_neox, tmp_path)
    # The README's "bf16 compute", where the precision is bf16 (what `auto` picks on GPUs with bf16).
    assert _compute_dtypes(load_base_model(config, "bf16")) == (torch.bfloat16, {torch.bfloat16})
    # What `auto` gives on this machine: bf16 on a CUDA GPU with bf16 support, else the fp32 fallback.
    supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    expected = torch.bfloat16 if supported else torch.float32
    precision = resolve_precision(config.precision)
    assert precision == ("bf16" if supported else "fp32")
    assert _compute_dtypes(load_base_model(config, precision)) == (expected, {expected})
