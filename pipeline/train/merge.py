"""Merging a trained adapter into its base model, for servers and tools that do not load LoRA adapters."""

from __future__ import annotations

from pathlib import Path

from pipeline.train.config import TrainConfig
from pipeline.train.model_loading import torch_dtype


def merge_adapter(config: TrainConfig, adapter_dir: Path, merged_dir: Path, precision: str) -> Path:
    """Write base + adapter as plain weights to ``merged_dir``.

    The base is reloaded unquantised even for QLoRA: merging into 4-bit weights would round the adapter away.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(
        config.base_model, dtype=torch_dtype("bf16" if precision == "bf16" else "fp32"),
        trust_remote_code=config.trust_remote_code,
    )
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.config.use_cache = True
    merged.save_pretrained(merged_dir)
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(merged_dir)
    return merged_dir
