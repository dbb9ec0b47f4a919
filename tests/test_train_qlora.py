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
from pipeline.train.adapters import verify_adapter  # noqa: E402
from pipeline.train.model_loading import load_base_model  # noqa: E402


@pytest.fixture(scope="module")
def tiny_neox(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "neox", arch="gpt-neox")


def qlora_config(model_dir, tmp_path, **overrides) -> TrainConfig:
    records = [{"instruction": f"질문 {i}", "input": "맥락" if i % 2 else "", "output": f"답변 {i}"} for i in range(8)]
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


def test_qlora_trains_a_few_steps_on_cpu(tiny_neox, tmp_path):
    result = train(qlora_config(tiny_neox, tmp_path))
    assert result.metrics["global_step"] == 4
    rows = [json.loads(line) for line in result.loss_file.read_text().splitlines()]
    assert len(rows) == 4 and all(row["loss"] > 0 for row in rows)
    assert verify_adapter(result.output_dir)["adapted_modules"] == 8
    assert any(isinstance(module, bnb.nn.Linear4bit) for module in result.model.modules())
    saved = json.loads(result.config_file.read_text())
    assert saved["method"] == "qlora" and saved["optim"] == ("paged_adamw_32bit" if torch.cuda.is_available()
                                                             else "adamw_torch")
