"""``TrainConfig`` → ``transformers.TrainingArguments``, with the optimizer chosen for the hardware."""

from __future__ import annotations

from pipeline.train.config import TrainConfig


def resolve_optimizer(config: TrainConfig) -> str:
    """``auto`` → paged_adamw_32bit (QLoRA on CUDA), adamw_torch_fused (CUDA), adamw_torch (CPU)."""
    import torch

    if config.optim != "auto":
        return config.optim
    if not torch.cuda.is_available():
        return "adamw_torch"
    return "paged_adamw_32bit" if config.method == "qlora" else "adamw_torch_fused"


def build_training_arguments(config: TrainConfig, precision: str):
    """``transformers.TrainingArguments`` for ``config`` (no reporting integrations, our own progress)."""
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(config.output_dir),
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.resolved_learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        # transformers 5 reads a float below 1 as a fraction of the total steps.
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        optim=resolve_optimizer(config),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),
        logging_steps=config.report_every,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=config.dataloader_num_workers,
        # Activation checkpointing is enabled on the model itself in load_base_model (before peft wrapping).
        ddp_find_unused_parameters=False,
        label_names=["labels"],
    )
