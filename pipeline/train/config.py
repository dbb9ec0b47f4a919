"""The one configuration object of a fine-tuning job.

:class:`TrainConfig` is a pydantic model so that the same object is a Prefect flow parameter (rendered as a
form), a YAML/JSON file for the CLI, and the ``train_config.json`` written next to the adapter. Defaults follow
the published recipes; each field's description says where its default comes from:

* Stanford Alpaca (tatsu-lab/stanford_alpaca ``train.py``): 3 epochs, cosine schedule, warmup 3 %, weight decay
  0, 512 tokens, loss on the response only.
* alpaca-lora (tloen/alpaca-lora ``finetune.py``): LoRA r=8, alpha=16, dropout 0.05, lr 3e-4, micro batch 4,
  cutoff 256 tokens.
* QLoRA (Dettmers et al. 2023, artidoro/qlora): NF4 + double quantisation + bf16 compute, LoRA on every linear
  layer, lr 2e-4 for 7B/13B, batch 16, max grad norm 0.3, paged AdamW.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipeline.train.templates import TemplateName

Method = Literal["lora", "qlora"]
Precision = Literal["auto", "bf16", "fp32", "fp16"]

#: Base model used when ``base_model`` is left unset, per template (the models the recipes were made for).
DEFAULT_BASE_MODEL: dict[str, str] = {"alpaca": "huggyllama/llama-7b", "koalpaca": "EleutherAI/polyglot-ko-5.8b"}
#: Learning rate used when ``learning_rate`` is left unset, per method.
DEFAULT_LEARNING_RATE: dict[str, float] = {"lora": 3e-4, "qlora": 2e-4}


class TrainConfig(BaseModel):
    """Settings of one LoRA/QLoRA supervised fine-tuning job on Alpaca-format data."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # --- what to train ---------------------------------------------------------------------------------
    base_model: str | None = Field(
        None,
        description="Base causal LM: a local directory or a Hugging Face hub id. None: the template's original base, "
        "huggyllama/llama-7b (LLaMA-7B, as Stanford Alpaca / alpaca-lora) for 'alpaca' and "
        "EleutherAI/polyglot-ko-5.8b (as KoAlpaca-Polyglot-5.8B) for 'koalpaca'.",
        min_length=1,
    )
    dataset: str = Field(
        description="Training data: a self-instruct run directory (outputs/<run>/ with alpaca_data.json or "
        "accepted.jsonl), a datasets.save_to_disk directory, an alpaca_data.json / .jsonl file of "
        "{instruction, input, output} records, or a Self-Instruct task file such as seeds/seed_tasks.jsonl "
        "({instruction, instances: [{input, output}]}, one record per instance).",
        min_length=1,
    )
    output_dir: str | None = Field(
        None,
        description="Where the adapter, tokenizer, checkpoints, metrics and samples are written. None: "
        "<dataset directory>/train-<method>-<template> (next to the data it was trained on).",
        min_length=1,
    )
    method: Method = Field(
        "lora",
        description="'lora': adapters on a bf16 (fp32 without bf16 support) base model. 'qlora': base quantised to "
        "4-bit NF4 with double quantisation and bf16 compute, prepared with peft's prepare_model_for_kbit_training "
        "(QLoRA paper).",
    )
    template: TemplateName = Field(
        "alpaca",
        description="Prompt format: 'alpaca' (Stanford Alpaca / alpaca-lora, for LLaMA-family models) or "
        "'koalpaca' ('### 질문: … ### 맥락: … ### 답변:', for Polyglot-ko). Files: prompts/train_<template>.json.",
    )
    max_samples: int | None = Field(
        None, ge=1, description="Use only the first N records of the dataset (quick experiments); None = all."
    )

    # --- LoRA ------------------------------------------------------------------------------------------
    lora_r: int = Field(
        16,
        ge=1,
        le=1024,
        description="LoRA rank. alpaca-lora used 8 on q/v only, QLoRA 64 on every linear layer; 16 on every linear "
        "layer is the usual middle ground and keeps a 7B adapter near 40M parameters.",
    )
    lora_alpha: int = Field(
        32,
        ge=1,
        le=4096,
        description="LoRA scaling numerator (scale = alpha / r). 2*r keeps alpaca-lora's scale of 2 (r=8, alpha=16).",
    )
    lora_dropout: float = Field(
        0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input. 0.05 as alpaca-lora and QLoRA for large models."
    )
    target_modules: Literal["auto", "all-linear"] | list[str] = Field(
        "auto",
        description="Modules that get adapters. 'auto': every attention and MLP projection of the architecture "
        "(LLaMA: q/k/v/o/gate/up/down_proj; GPT-NeoX: query_key_value, dense, dense_h_to_4h, dense_4h_to_h), as "
        "QLoRA found adapting all linear layers necessary to match full fine-tuning. 'all-linear': peft's "
        "detection of every linear layer but the output head. Or an explicit list of module names.",
    )

    # --- optimisation ----------------------------------------------------------------------------------
    learning_rate: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Peak learning rate. None: 3e-4 for lora (alpaca-lora) and 2e-4 for qlora (QLoRA, 7B/13B).",
    )
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warmup; cosine as Stanford Alpaca."
    )
    warmup_ratio: float = Field(
        0.03, ge=0.0, lt=1.0, description="Fraction of steps with linear warmup; 0.03 as Stanford Alpaca and QLoRA."
    )
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="AdamW weight decay; 0 as Stanford Alpaca and QLoRA.")
    max_grad_norm: float = Field(0.3, gt=0.0, description="Gradient clipping norm; 0.3 as QLoRA.")
    optim: str = Field(
        "auto",
        description="transformers optimizer name. 'auto': paged_adamw_32bit for qlora on CUDA (QLoRA's paged "
        "optimizer survives memory spikes), adamw_torch_fused on CUDA otherwise, adamw_torch on CPU.",
    )
    num_train_epochs: float = Field(
        3.0, gt=0.0, le=1000.0, description="Passes over the data when max_steps is not set; 3 as Stanford Alpaca."
    )
    max_steps: int = Field(
        -1, ge=-1, description="Stop after this many optimizer steps (overrides num_train_epochs); -1 = use epochs."
    )
    per_device_train_batch_size: int = Field(
        4, ge=1, le=4096, description="Examples per micro-batch and device; 4 as alpaca-lora's micro batch."
    )
    gradient_accumulation_steps: int = Field(
        4,
        ge=1,
        le=4096,
        description="Micro-batches per optimizer step. 4 x 4 = 16 examples per step on one device, QLoRA's batch "
        "size (alpaca-lora's 128 gives too few steps on a few thousand generated examples).",
    )
    max_seq_length: int = Field(
        512,
        ge=16,
        le=131072,
        description="Longest tokenised example (prompt + response + EOS). 512 as Stanford Alpaca; alpaca-lora's "
        "256 cut the end off several percent of Alpaca answers. Longer responses are truncated (no EOS then); "
        "examples whose prompt alone does not fit are dropped.",
    )
    padding_free: bool = Field(
        True,
        description="Concatenate each micro-batch into one row with per-example position_ids, so no compute is spent "
        "on padding and attention stays within each example (transformers builds a block-diagonal mask from the "
        "position_ids). False: pad to the longest example of the batch (rounded up to a multiple of 8).",
    )
    gradient_checkpointing: bool = Field(
        True, description="Recompute activations in the backward pass to save memory (QLoRA); costs ~30 % speed."
    )
    train_on_inputs: bool = Field(
        False,
        description="Also learn the prompt tokens. False (Stanford Alpaca): loss only on the response and its EOS.",
    )
    precision: Precision = Field(
        "auto",
        description="'auto': bf16 on GPUs that support it, else fp32 (never fp16 by default: fp16 overflowed in the "
        "old scripts). 'fp16' only on explicit request, for GPUs without bf16.",
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flex_attention"] = Field(
        "sdpa", description="transformers attention kernel. sdpa works everywhere, also with padding_free."
    )
    seed: int = Field(42, ge=0, description="Seed for the data split, the shuffling and the LoRA initialisation.")

    # --- evaluation, samples, outputs ------------------------------------------------------------------
    val_size: int = Field(
        0, ge=0, description="Examples held out for a validation loss at the end (alpaca-lora held out 2000); 0 = none."
    )
    num_sample_prompts: int = Field(
        4,
        ge=0,
        le=64,
        description="Instructions held out from training and answered greedily before and after training "
        "(samples.json and a Prefect table).",
    )
    sample_max_new_tokens: int = Field(128, ge=1, le=4096, description="Generation length of each sample answer.")
    report_every: int = Field(
        10, ge=1, description="Log loss and tokens/s every N optimizer steps (loss.jsonl, progress, Prefect)."
    )
    save_steps: int = Field(200, ge=1, description="Write a resumable checkpoint every N optimizer steps.")
    save_total_limit: int = Field(2, ge=1, description="Keep only the newest N checkpoints.")
    resume: str = Field(
        "auto",
        description="'auto': continue from the newest output_dir/checkpoint-* if there is one (model, optimizer, "
        "scheduler and RNG state); 'never': start over; or the path of a checkpoint directory.",
        min_length=1,
    )
    merge: bool = Field(
        False,
        description="Also write base + adapter merged into plain weights in output_dir/merged (for servers without "
        "LoRA support). For qlora the merge uses the unquantised base, not the 4-bit one.",
    )
    trust_remote_code: bool = Field(False, description="Allow custom model code from the hub (security risk).")
    dataloader_num_workers: int = Field(0, ge=0, le=64, description="Data loader worker processes.")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _split_module_list(cls, value: Any) -> Any:
        # The CLI and Prefect forms deliver "q_proj,v_proj"; keep "auto"/"all-linear" as the keywords they are.
        if isinstance(value, str) and value not in ("auto", "all-linear"):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("target_modules")
    @classmethod
    def _non_empty_modules(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("needs at least one module name, or 'auto' / 'all-linear'")
        return value

    # --- derived values -------------------------------------------------------------------------------
    def resolved(self) -> "TrainConfig":
        """A copy with ``base_model`` and ``output_dir`` filled in when they were left unset."""
        updates: dict[str, Any] = {}
        if self.base_model is None:
            updates["base_model"] = DEFAULT_BASE_MODEL[self.template]
        if self.output_dir is None:
            dataset = Path(self.dataset)
            parent = dataset if dataset.is_dir() else dataset.parent
            updates["output_dir"] = str(parent / f"train-{self.method}-{self.template}")
        return self.model_copy(update=updates) if updates else self

    @property
    def resolved_learning_rate(self) -> float:
        """``learning_rate`` or the method's published default."""
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LEARNING_RATE[self.method]

    def to_json_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (for train_config.json and Prefect)."""
        return self.model_dump(mode="json")
