"""LoRA / QLoRA supervised fine-tuning with the transformers ``Trainer``.

:func:`train` runs one job described by a :class:`~pipeline.train.config.TrainConfig` and writes, in
``output_dir``:

* ``adapter_model.safetensors`` + ``adapter_config.json`` (checked to hold non-empty LoRA A/B tensors), loadable
  with ``PeftModel.from_pretrained`` and servable with ``vllm serve BASE --enable-lora --lora-modules name=DIR``;
* the tokenizer, ``train_config.json`` (resolved settings), ``metrics.json``, ``loss.jsonl`` (loss and tokens/s
  per logged step), ``samples.json`` (greedy answers to held-out instructions before and after training);
* ``checkpoint-*`` directories with optimizer/scheduler/RNG state for resuming, and ``merged/`` on request.

Efficiency: micro-batches are padding-free (one row, position ids restarting per example) and the
``sdpa_packed`` attention (:mod:`pipeline.train.packed_attention`) runs each example on its own, so compute goes
only to real tokens and examples never attend to each other; gradient checkpointing and paged AdamW keep QLoRA
of a 7B model near 8 GiB of GPU memory. Data parallelism works through ``accelerate launch`` / ``torchrun``;
only the main process writes files and Prefect artifacts.

The steps live in their own modules: :mod:`~pipeline.train.model_loading`, :mod:`~pipeline.train.adapters`,
:mod:`~pipeline.train.samples`, :mod:`~pipeline.train.arguments`, :mod:`~pipeline.train.trainer`,
:mod:`~pipeline.train.outputs`, :mod:`~pipeline.train.merge` and :mod:`~pipeline.train.reporting`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pipeline.files import read_jsonl, write_json_atomic
from pipeline.train.adapters import attach_lora, resolve_target_modules, verify_adapter
from pipeline.train.arguments import build_training_arguments, resolve_optimizer
from pipeline.train.config import TrainConfig
from pipeline.train.data import DataSplit, DatasetError, TokenizeStats, load_records, split_records, tokenize_records
from pipeline.train.merge import merge_adapter
from pipeline.train.model_loading import load_base_model, load_tokenizer, resolve_precision
from pipeline.train.outputs import TrainResult, resolve_resume, restart_loss_curve
from pipeline.train.reporting import publish
from pipeline.train.samples import compare_samples, generate_samples
from pipeline.train.templates import PromptTemplate, load_template
from pipeline.train.trainer import build_trainer, sum_over_processes

log = logging.getLogger(__name__)


def train(config: TrainConfig) -> TrainResult:
    """Fine-tune ``config.base_model`` with LoRA or QLoRA on ``config.dataset`` and write all outputs.

    Raises :class:`~pipeline.train.data.DatasetError` for unusable data and
    :class:`~pipeline.train.adapters.AdapterError` if the saved adapter does not hold LoRA weights.
    """
    import torch
    from accelerate import PartialState
    from transformers import set_seed

    config = config.resolved()
    result = TrainResult.in_directory(Path(config.output_dir))
    output_dir = result.output_dir
    output_dir.mkdir(parents=True, exist_ok=True)
    run_name = output_dir.resolve().name
    precision = resolve_precision(config.precision)
    # Creating the arguments sets up the distributed state (gloo on CPUs) under torchrun / accelerate launch,
    # so ranks are only known after this line.
    training_args = build_training_arguments(config, precision)
    state = PartialState()
    is_main = training_args.process_index == 0
    _warn_about_risky_settings(config, precision)
    set_seed(config.seed)

    # Data: records, held out for samples and validation, tokenised with response-only labels.
    tokenizer = load_tokenizer(config)
    template = load_template(config.template)
    records = load_records(config.dataset, config.max_samples)
    split = split_records(records, config.num_sample_prompts, config.val_size, config.seed)
    train_examples, eval_examples, token_stats = _tokenize(tokenizer, template, split, config)

    # Model: the base at the chosen precision, its answers before training, then fresh LoRA adapters.
    model = load_base_model(config, precision)
    samples_before = (
        generate_samples(model, tokenizer, template, split.samples, config.sample_max_new_tokens) if is_main else []
    )
    model = attach_lora(model, config)
    trainable, total = model.get_nb_trainable_parameters()
    log.info("LoRA: %d trainable of %d parameters (%.3f %%)", trainable, total, 100.0 * trainable / total)

    # Training, with the held-out loss before and after.
    resume_from = resolve_resume(config.resume, output_dir)
    if is_main:
        restart_loss_curve(result.loss_file, resume_from)
    trainer = build_trainer(model, tokenizer, config, precision, train_examples, eval_examples,
                            loss_file=result.loss_file, progress_key=f"train-progress-{run_name}",
                            training_args=training_args)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    # Held-out loss of the untrained model (LoRA B is zero, so this is the base model's loss) on the same
    # examples as eval_loss after training; a resumed run has trained already, so it has no "before".
    # Evaluated inside train(), after the model is wrapped for DDP (a Trainer.evaluate() before train() leaves it
    # marked as prepared, so train() would skip the DDP wrap and each rank would train on its own).
    trainer.args.eval_on_start = bool(eval_examples) and not resume_from
    if resume_from:
        log.info("resuming from %s", resume_from)
    train_output = trainer.train(resume_from_checkpoint=resume_from)
    eval_loss_before = next((entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry),
                            None) if trainer.args.eval_on_start else None
    real_tokens = sum_over_processes(trainer, trainer.real_tokens_seen)
    eval_loss = trainer.evaluate()["eval_loss"] if eval_examples else None

    # Outputs: the adapter (checked), answers after training, merged weights, metrics and the report.
    trainer.save_model(str(output_dir))  # the adapter only (PeftModel); the Trainer saves on the main process
    state.wait_for_everyone()
    if not is_main:
        return result
    adapter_info = verify_adapter(output_dir)
    tokenizer.save_pretrained(output_dir)
    samples_after = generate_samples(model, tokenizer, template, split.samples, config.sample_max_new_tokens)
    samples = compare_samples(split.samples, samples_before, samples_after)
    if config.merge:
        result.merged_dir = merge_adapter(config, output_dir, output_dir / "merged", precision)
    rows = list(read_jsonl(result.loss_file))  # the whole curve, also across resumed sessions
    result.metrics = _metrics(
        config, precision, trainer, train_output, rows,
        examples=(len(train_examples), len(eval_examples), len(split.samples)), token_stats=token_stats,
        eval_losses=(eval_loss_before, eval_loss), real_tokens=real_tokens, parameters=(trainable, total),
        resume_from=resume_from, adapter_info=adapter_info,
    )
    result.model = model
    write_json_atomic(result.config_file, _resolved_settings(config, precision, model))
    write_json_atomic(result.metrics_file, result.metrics)
    write_json_atomic(result.samples_file, samples)
    publish(run_name, config, result, rows, samples)
    return result


def _warn_about_risky_settings(config: TrainConfig, precision: str) -> None:
    import torch

    if precision == "fp16":
        log.warning("fp16 training was requested explicitly; it can overflow, bf16 or fp32 are safer")
    if config.method == "qlora" and not torch.cuda.is_available():
        log.warning("QLoRA without a GPU runs on bitsandbytes' CPU kernels: correct but slow")


def _tokenize(tokenizer: Any, template: PromptTemplate, split: DataSplit, config: TrainConfig):
    """Training and validation examples, and the training side's tokenisation counts."""
    train_examples, token_stats = tokenize_records(
        tokenizer, template, split.train, config.max_seq_length, config.train_on_inputs
    )
    if not train_examples:
        raise DatasetError(f"{config.dataset}: no example fits max_seq_length={config.max_seq_length}")
    eval_examples, _ = tokenize_records(
        tokenizer, template, split.validation, config.max_seq_length, config.train_on_inputs
    )
    if token_stats.truncated or token_stats.dropped_too_long:
        log.warning("%d examples truncated and %d dropped at max_seq_length=%d", token_stats.truncated,
                    token_stats.dropped_too_long, config.max_seq_length)
    return train_examples, eval_examples, token_stats


def _metrics(config: TrainConfig, precision: str, trainer: Any, train_output: Any, rows: list[dict[str, Any]], *,
             examples: tuple[int, int, int], token_stats: TokenizeStats, eval_losses: tuple[float | None, float | None],
             real_tokens: int, parameters: tuple[int, int], resume_from: str | None,
             adapter_info: dict[str, int]) -> dict[str, Any]:
    """``metrics.json``: the settings that shaped the run, its data, its losses and its speed.

    ``examples`` counts training, validation and sample records; ``eval_losses`` is the held-out loss before and
    after training; ``parameters`` is (trainable, total).
    """
    import torch

    runtime = float(train_output.metrics.get("train_runtime", 0.0))
    train_examples, validation_examples, sample_prompts = examples
    eval_loss_before, eval_loss = eval_losses
    trainable, total = parameters
    return {
        "method": config.method,
        "template": config.template,
        "base_model": config.base_model,
        "precision": precision,
        "optimizer": resolve_optimizer(config),
        "padding_free": config.padding_free,
        "world_size": trainer.args.world_size,
        "train_examples": train_examples,
        "validation_examples": validation_examples,
        "sample_prompts": sample_prompts,
        "tokenization": token_stats.as_dict(),
        "global_step": trainer.state.global_step,
        "train_loss": float(train_output.training_loss),
        "first_loss": rows[0]["loss"] if rows else None,
        "final_loss": rows[-1]["loss"] if rows else None,
        "eval_loss_before": eval_loss_before,
        "eval_loss": eval_loss,
        "train_runtime_s": round(runtime, 3),
        "train_tokens": real_tokens,
        "train_tokens_per_second": round(real_tokens / runtime, 2) if runtime > 0 else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "peak_gpu_memory_gib": (round(torch.cuda.max_memory_allocated() / 2**30, 3)
                                if torch.cuda.is_available() else None),
        "resumed_from": resume_from,
        **adapter_info,
    }


def _resolved_settings(config: TrainConfig, precision: str, model: Any) -> dict[str, Any]:
    """``train_config.json``: the config with every ``auto`` replaced by what was actually used."""
    return {**config.to_json_dict(), "learning_rate": config.resolved_learning_rate,
            "optim": resolve_optimizer(config), "precision": precision,
            "target_modules": resolve_target_modules(model.get_base_model(), config.target_modules)}
