"""LoRA adapters: which modules to adapt, wrapping the base model, and checking the saved adapter file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.train.config import TrainConfig

log = logging.getLogger(__name__)

#: Every attention and MLP projection, per ``config.model_type`` (QLoRA: adapt all linear layers).
TARGET_MODULES_BY_MODEL_TYPE: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}
for _llama_like in ("mistral", "qwen2", "qwen3", "gemma", "gemma2"):
    TARGET_MODULES_BY_MODEL_TYPE[_llama_like] = TARGET_MODULES_BY_MODEL_TYPE["llama"]

ADAPTER_FILE = "adapter_model.safetensors"


class AdapterError(RuntimeError):
    """The saved adapter is missing, empty or holds no LoRA weights."""


def resolve_target_modules(model: Any, requested: str | list[str]) -> str | list[str]:
    """Module names to adapt: the architecture's projections for ``auto``, else as requested."""
    if requested != "auto":
        return requested
    model_type = getattr(model.config, "model_type", "")
    names = TARGET_MODULES_BY_MODEL_TYPE.get(model_type)
    if names is None:
        log.info("no target module list for model type %r; adapting all linear layers", model_type)
        return "all-linear"
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    return [name for name in names if name in present]


def attach_lora(model: Any, config: TrainConfig):
    """Wrap ``model`` with fresh LoRA adapters per ``config`` (a ``peft.PeftModel``)."""
    from peft import LoraConfig, get_peft_model

    lora_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=resolve_target_modules(model, config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora_config)


def verify_adapter(adapter_dir: Path) -> dict[str, int]:
    """Check that ``adapter_dir`` holds a non-empty safetensors adapter with LoRA A and B matrices.

    Guards against the old scripts' empty ``adapter_model.bin`` (a ``state_dict`` override that peft no longer
    honoured). Returns tensor and byte counts.
    """
    from safetensors import safe_open

    path = Path(adapter_dir) / ADAPTER_FILE
    if not path.is_file() or path.stat().st_size == 0:
        raise AdapterError(f"{path}: adapter file missing or empty")
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
    lora_a = [key for key in keys if "lora_A" in key]
    lora_b = [key for key in keys if "lora_B" in key]
    if not lora_a or len(lora_a) != len(lora_b):
        raise AdapterError(f"{path}: expected matching lora_A/lora_B tensors, found {len(lora_a)}/{len(lora_b)}")
    return {"adapter_tensors": len(keys), "adapter_bytes": path.stat().st_size, "adapted_modules": len(lora_a)}
