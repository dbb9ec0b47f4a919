"""The tokenizer and the base model, loaded at a precision: plain weights for LoRA, NF4 for QLoRA."""

from __future__ import annotations

import os
from typing import Any

from pipeline.train.config import TrainConfig
from pipeline.train.data import ensure_pad_token
from pipeline.train.packed_attention import register_packed_attention


def resolve_precision(requested: str) -> str:
    """``auto`` → ``bf16`` on CUDA GPUs with bf16 support, else ``fp32``; explicit values pass through."""
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def torch_dtype(precision: str):
    """The torch dtype of a resolved precision (``fp32`` for anything that is not bf16/fp16)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def resolve_attention(config: TrainConfig) -> str:
    """The attention implementation to load: ``sdpa_packed`` for padding-free sdpa training, else as configured."""
    if config.padding_free and config.attn_implementation == "sdpa":
        return register_packed_attention()
    return config.attn_implementation


def load_tokenizer(config: TrainConfig):
    """The base model's tokenizer, with a pad token and right padding for training."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.base_model, trust_remote_code=config.trust_remote_code)
    ensure_pad_token(tokenizer)
    return tokenizer


def load_base_model(config: TrainConfig, precision: str):
    """The base causal LM: bf16/fp32 weights for ``lora``, NF4 + double quant for ``qlora``.

    The returned model has ``use_cache`` off (required by padding-free batches) and gradient checkpointing
    enabled when configured; for ``qlora`` it has been through ``prepare_model_for_kbit_training``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch_dtype(precision)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": resolve_attention(config),
        "trust_remote_code": config.trust_remote_code,
    }
    device_map = _device_map()
    if config.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        device_map = device_map or {"": "cpu"}
    if device_map is not None:
        kwargs["device_map"] = device_map
    model = AutoModelForCausalLM.from_pretrained(config.base_model, **kwargs)
    if config.method == "qlora" and not torch.cuda.is_available():
        _keep_cpu_4bit_weights_trainable(model)
    # With a KV cache, transformers ignores restarting position ids and packed examples attend to each other.
    model.config.use_cache = False
    checkpointing_kwargs = {"use_reentrant": False}
    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs=checkpointing_kwargs,
        )
    elif config.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # the newer name; 5.17 only has the old one
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpointing_kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing_kwargs)
    return model


def _device_map() -> dict[str, Any] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        return None  # FSDP shards the model itself after loading on CPU
    from accelerate import PartialState

    return {"": PartialState().local_process_index}


def _keep_cpu_4bit_weights_trainable(model: Any) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference.

    On CPUs with AVX512-BF16, a ``Linear4bit`` that runs in eval mode without grad (the samples and the held-out
    loss before training) repacks its weight for an inference kernel and never unpacks it. Training afterwards
    backpropagates through that kernel, which has no autograd: gradients through the frozen base are lost (the
    real-model QLoRA loss barely moved) or the step fails with an in-place error on a leaf view.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
