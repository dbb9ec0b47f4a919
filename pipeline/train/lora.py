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
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pipeline import report
from pipeline.store import read_jsonl, write_json_atomic
from pipeline.train.config import TrainConfig
from pipeline.train.data import (
    DatasetError,
    ListDataset,
    Record,
    count_real_tokens,
    ensure_pad_token,
    load_records,
    pad_to_longest_collator,
    padding_free_collator,
    split_records,
    tokenize_records,
)
from pipeline.train.packed_attention import register_packed_attention
from pipeline.train.templates import PromptTemplate, load_template

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


@dataclass
class TrainResult:
    """Paths and headline metrics of a finished job."""

    output_dir: Path
    adapter_file: Path
    config_file: Path
    metrics_file: Path
    loss_file: Path
    samples_file: Path
    merged_dir: Path | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    #: The trained ``PeftModel`` still in memory (None on non-main processes); not part of :meth:`summary`.
    model: Any = field(default=None, repr=False, compare=False)

    def summary(self) -> dict[str, Any]:
        """A small JSON-ready dict (what the Prefect flow returns)."""
        keys = ("global_step", "train_loss", "first_loss", "final_loss", "eval_loss_before", "eval_loss",
                "train_tokens_per_second", "train_runtime_s", "peak_gpu_memory_gib")
        paths = {name: (str(getattr(self, name)) if getattr(self, name) is not None else None)
                 for name in ("output_dir", "adapter_file", "config_file", "metrics_file", "loss_file",
                              "samples_file", "merged_dir")}
        return {**paths, **{key: self.metrics.get(key) for key in keys}}


# --------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------


def resolve_precision(requested: str) -> str:
    """``auto`` → ``bf16`` on CUDA GPUs with bf16 support, else ``fp32``; explicit values pass through."""
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def _torch_dtype(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def resolve_optimizer(config: TrainConfig) -> str:
    """``auto`` → paged_adamw_32bit (QLoRA on CUDA), adamw_torch_fused (CUDA), adamw_torch (CPU)."""
    import torch

    if config.optim != "auto":
        return config.optim
    if not torch.cuda.is_available():
        return "adamw_torch"
    return "paged_adamw_32bit" if config.method == "qlora" else "adamw_torch_fused"


def _device_map() -> dict[str, Any] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        return None  # FSDP shards the model itself after loading on CPU
    from accelerate import PartialState

    return {"": PartialState().local_process_index}


def load_base_model(config: TrainConfig, precision: str):
    """The base causal LM: bf16/fp32 weights for ``lora``, NF4 + double quant for ``qlora``.

    The returned model has ``use_cache`` off (required by padding-free batches) and gradient checkpointing
    enabled when configured; for ``qlora`` it has been through ``prepare_model_for_kbit_training``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    dtype = _torch_dtype(precision)
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


def resolve_attention(config: TrainConfig) -> str:
    """The attention implementation to load: ``sdpa_packed`` for padding-free sdpa training, else as configured."""
    if config.padding_free and config.attn_implementation == "sdpa":
        return register_packed_attention()
    return config.attn_implementation


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


# --------------------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------------------


def generate_samples(
    model: Any, tokenizer: Any, template: PromptTemplate, records: Sequence[Record], max_new_tokens: int
) -> list[str]:
    """Greedy answers of ``model`` to each record's prompt, one prompt at a time (no padding involved)."""
    import torch

    if not records:
        return []
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    answers = []
    try:
        for record in records:
            encoded = tokenizer(template.record_prompt(record), return_tensors="pt").to(device)
            with torch.no_grad():
                generated = model.generate(
                    **encoded,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    use_cache=True,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new_tokens = generated[0, encoded["input_ids"].shape[1]:]
            answers.append(tokenizer.decode(new_tokens, skip_special_tokens=True).strip())
    finally:
        model.train(was_training)
    return answers


# --------------------------------------------------------------------------------------------------------
# Trainer plumbing
# --------------------------------------------------------------------------------------------------------


def _make_trainer_class():
    from transformers import Trainer

    class TokenCountingTrainer(Trainer):
        """A ``Trainer`` that counts the real (non-padding) tokens it trains on, for tokens/s."""

        real_tokens_seen: int = 0

        def training_step(self, model, inputs, *args, **kwargs):
            self.real_tokens_seen += count_real_tokens(inputs)
            return super().training_step(model, inputs, *args, **kwargs)

    return TokenCountingTrainer


def _make_logging_callback(loss_file: Path | None, progress_key: str, is_main: bool, world_size: int):
    from transformers import TrainerCallback

    class LossLogger(TrainerCallback):
        """Writes loss.jsonl, logs progress locally (rich on a terminal) and updates a Prefect progress bar."""

        def __init__(self) -> None:
            self.trainer: Any = None
            self.progress = report.Progress(progress_key, description="fine-tuning progress")
            self._start_time = 0.0
            self._last_time = 0.0
            self._last_tokens = 0
            self._bar: Any = None
            self._task: Any = None

        def on_train_begin(self, args, state, control, **kwargs):
            self._start_time = self._last_time = time.perf_counter()
            self._last_tokens = self.trainer.real_tokens_seen if self.trainer else 0
            if is_main and sys.stderr.isatty():
                from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

                self._bar = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                     TextColumn("{task.fields[status]}"), TimeRemainingColumn(), transient=True)
                self._task = self._bar.add_task("train", total=state.max_steps, completed=state.global_step,
                                                status="")
                self._bar.start()

        def on_step_end(self, args, state, control, **kwargs):
            if self._bar is not None:
                self._bar.update(self._task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            now = time.perf_counter()
            tokens = self.trainer.real_tokens_seen if self.trainer else 0
            elapsed = max(now - self._last_time, 1e-9)
            # Each process counts its own tokens; the global figures assume balanced shards.
            rate = (tokens - self._last_tokens) * world_size / elapsed
            self._last_time, self._last_tokens = now, tokens
            row = {
                "step": state.global_step,
                "epoch": round(float(logs.get("epoch", state.epoch or 0.0)), 4),
                "loss": float(logs["loss"]),
                "learning_rate": float(logs.get("learning_rate", 0.0)),
                "grad_norm": float(logs["grad_norm"]) if logs.get("grad_norm") is not None else None,
                "tokens_seen": tokens * world_size,
                "tokens_per_second": round(rate, 2),
                "elapsed_s": round(now - self._start_time, 4),
            }
            if not is_main:
                return
            if loss_file is not None:
                with loss_file.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
            status = f"loss {row['loss']:.4f}  {row['tokens_per_second']:.0f} tok/s"
            if self._bar is not None:
                self._bar.update(self._task, completed=state.global_step, status=status)
            else:
                log.info("step %d/%d  %s", state.global_step, state.max_steps, status)
            if state.max_steps and _reporting_to_prefect():
                self.progress.update(100.0 * state.global_step / state.max_steps)

        def on_train_end(self, args, state, control, **kwargs):
            if self._bar is not None:
                self._bar.stop()
                self._bar = None
            if is_main and _reporting_to_prefect():
                self.progress.update(100.0)

    return LossLogger()


def build_trainer(
    model: Any,
    tokenizer: Any,
    config: TrainConfig,
    precision: str,
    train_examples: Sequence[dict[str, list[int]]],
    eval_examples: Sequence[dict[str, list[int]]] = (),
    data_collator: Any = None,
    loss_file: Path | None = None,
    progress_key: str = "train-progress",
    training_args: Any = None,
):
    """A token-counting ``Trainer`` that logs loss and tokens/s (``loss_file``, progress, Prefect).

    ``data_collator`` defaults to the padding-free or pad-to-longest collator that ``config`` asks for;
    benchmarks pass another one to compare batching strategies on otherwise identical training.
    """
    from transformers import PrinterCallback

    if training_args is None:
        training_args = build_training_arguments(config, precision)
    if data_collator is None:
        data_collator = padding_free_collator() if config.padding_free else pad_to_longest_collator(tokenizer)
    logger_callback = _make_logging_callback(loss_file, progress_key, training_args.process_index == 0,
                                             training_args.world_size)
    trainer = _make_trainer_class()(
        model=model,
        args=training_args,
        train_dataset=ListDataset(train_examples),
        eval_dataset=ListDataset(eval_examples) if eval_examples else None,
        data_collator=data_collator,
        processing_class=tokenizer,
        callbacks=[logger_callback],
    )
    trainer.remove_callback(PrinterCallback)  # the logger reports instead of printing raw dicts
    logger_callback.trainer = trainer
    return trainer


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


def resolve_resume(resume: str, output_dir: Path) -> str | None:
    """Checkpoint to resume from: newest ``checkpoint-*`` for ``auto``, none for ``never``, else the path."""
    from transformers.trainer_utils import get_last_checkpoint

    if resume == "never":
        return None
    if resume == "auto":
        return get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{path}: not a Trainer checkpoint (no trainer_state.json)")
    return str(path)


# --------------------------------------------------------------------------------------------------------
# The job
# --------------------------------------------------------------------------------------------------------


def train(config: TrainConfig) -> TrainResult:
    """Fine-tune ``config.base_model`` with LoRA or QLoRA on ``config.dataset`` and write all outputs.

    Raises :class:`~pipeline.train.data.DatasetError` for unusable data and :class:`AdapterError` if the saved
    adapter does not hold LoRA weights.
    """
    import torch
    from accelerate import PartialState
    from transformers import AutoTokenizer, set_seed

    config = config.resolved()
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    precision = resolve_precision(config.precision)
    # Creating the arguments sets up the distributed state (gloo on CPUs) under torchrun / accelerate launch,
    # so ranks are only known after this line.
    training_args = build_training_arguments(config, precision)
    state = PartialState()
    is_main = training_args.process_index == 0
    if precision == "fp16":
        log.warning("fp16 training was requested explicitly; it can overflow, bf16 or fp32 are safer")
    if config.method == "qlora" and not torch.cuda.is_available():
        log.warning("QLoRA without a GPU runs on bitsandbytes' CPU kernels: correct but slow")
    set_seed(config.seed)
    run_name = output_dir.resolve().name
    paths = TrainResult(
        output_dir=output_dir,
        adapter_file=output_dir / ADAPTER_FILE,
        config_file=output_dir / "train_config.json",
        metrics_file=output_dir / "metrics.json",
        loss_file=output_dir / "loss.jsonl",
        samples_file=output_dir / "samples.json",
    )

    # --- data -----------------------------------------------------------------------------------------
    tokenizer = AutoTokenizer.from_pretrained(config.base_model, trust_remote_code=config.trust_remote_code)
    ensure_pad_token(tokenizer)
    template = load_template(config.template)
    records = load_records(config.dataset, config.max_samples)
    split = split_records(records, config.num_sample_prompts, config.val_size, config.seed)
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

    # --- model ----------------------------------------------------------------------------------------
    model = load_base_model(config, precision)
    samples_before = (
        generate_samples(model, tokenizer, template, split.samples, config.sample_max_new_tokens) if is_main else []
    )
    model = attach_lora(model, config)
    trainable, total = model.get_nb_trainable_parameters()
    log.info("LoRA: %d trainable of %d parameters (%.3f %%)", trainable, total, 100.0 * trainable / total)

    # --- training -------------------------------------------------------------------------------------
    resume_from = resolve_resume(config.resume, output_dir)
    if is_main:
        # A fresh run starts a new curve; a resumed one drops rows logged after its checkpoint.
        _truncate_loss_file(paths.loss_file, _checkpoint_step(resume_from) if resume_from else 0)
    trainer = build_trainer(model, tokenizer, config, precision, train_examples, eval_examples,
                            loss_file=paths.loss_file, progress_key=f"train-progress-{run_name}",
                            training_args=training_args)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    # Held-out loss of the untrained model (LoRA B is zero, so this is the base model's loss) on the same
    # examples as eval_loss after training; a resumed run has trained already, so it has no "before".
    eval_loss_before = trainer.evaluate()["eval_loss"] if eval_examples and not resume_from else None
    if resume_from:
        log.info("resuming from %s", resume_from)
    train_output = trainer.train(resume_from_checkpoint=resume_from)
    real_tokens = _sum_over_processes(trainer, trainer.real_tokens_seen)
    eval_loss = trainer.evaluate()["eval_loss"] if eval_examples else None

    # --- outputs --------------------------------------------------------------------------------------
    trainer.save_model(str(output_dir))  # the adapter only (PeftModel); the Trainer saves on the main process
    state.wait_for_everyone()
    if not is_main:
        return paths
    adapter_info = verify_adapter(output_dir)
    tokenizer.save_pretrained(output_dir)
    samples_after = generate_samples(model, tokenizer, template, split.samples, config.sample_max_new_tokens)
    samples = [
        {"instruction": record["instruction"], "input": record["input"], "reference": record["output"],
         "before": before, "after": after}
        for record, before, after in zip(split.samples, samples_before, samples_after)
    ]
    if config.merge:
        paths.merged_dir = merge_adapter(config, output_dir, output_dir / "merged", precision)

    runtime = float(train_output.metrics.get("train_runtime", 0.0))
    rows = list(read_jsonl(paths.loss_file))  # the whole curve, also across resumed sessions
    metrics: dict[str, Any] = {
        "method": config.method,
        "template": config.template,
        "base_model": config.base_model,
        "precision": precision,
        "optimizer": resolve_optimizer(config),
        "padding_free": config.padding_free,
        "world_size": training_args.world_size,
        "train_examples": len(train_examples),
        "validation_examples": len(eval_examples),
        "sample_prompts": len(split.samples),
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
    paths.metrics = metrics
    paths.model = model
    resolved = {**config.to_json_dict(), "learning_rate": config.resolved_learning_rate,
                "optim": resolve_optimizer(config), "precision": precision,
                "target_modules": resolve_target_modules(model.get_base_model(), config.target_modules)}
    write_json_atomic(paths.config_file, resolved)
    write_json_atomic(paths.metrics_file, metrics)
    write_json_atomic(paths.samples_file, samples)
    _publish(run_name, config, paths, rows, samples)
    return paths


def merge_adapter(config: TrainConfig, adapter_dir: Path, merged_dir: Path, precision: str) -> Path:
    """Write base + adapter as plain weights to ``merged_dir``.

    The base is reloaded unquantised even for QLoRA: merging into 4-bit weights would round the adapter away.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(
        config.base_model, dtype=_torch_dtype("bf16" if precision == "bf16" else "fp32"),
        trust_remote_code=config.trust_remote_code,
    )
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.config.use_cache = True
    merged.save_pretrained(merged_dir)
    AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(merged_dir)
    return merged_dir


def _sum_over_processes(trainer: Any, value: int) -> int:
    import torch

    if trainer.accelerator.num_processes == 1:
        return int(value)
    total = trainer.accelerator.reduce(torch.tensor(value, device=trainer.accelerator.device), reduction="sum")
    return int(total.item())


def _checkpoint_step(checkpoint: str) -> int:
    state_file = Path(checkpoint) / "trainer_state.json"
    try:
        return int(json.loads(state_file.read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError):
        return 0


def _truncate_loss_file(path: Path, last_step: int) -> None:
    if not path.exists():
        return
    kept = [row for row in read_jsonl(path) if row.get("step", 0) <= last_step]
    path.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")


def _publish(run_name: str, config: TrainConfig, paths: TrainResult, rows: list[dict[str, Any]],
             samples: list[dict[str, str]]) -> None:
    """Prefect artifacts (no-ops outside a flow run); a reporting failure never loses a trained adapter."""
    metrics = paths.metrics
    log.info("trained %s: loss %s -> %s, held-out loss %s -> %s, %.0f tokens/s; adapter in %s", run_name,
             metrics.get("first_loss"), metrics.get("final_loss"), metrics.get("eval_loss_before"),
             metrics.get("eval_loss"), metrics.get("train_tokens_per_second") or 0.0, paths.output_dir)
    if not _reporting_to_prefect():
        return
    try:
        every = max(1, math.ceil(len(rows) / 200))  # keep the table readable on long runs
        loss_rows = rows[::every]
        if rows and loss_rows[-1] is not rows[-1]:
            loss_rows.append(rows[-1])
        report.table(f"train-loss-{run_name}", loss_rows, description=f"training loss of {run_name}")
        report.table(f"train-samples-{run_name}", samples,
                     description="greedy answers to held-out instructions before and after training")
        report.markdown(f"train-report-{run_name}", render_report(config, paths), description="fine-tuning report")
    except Exception as exc:  # noqa: BLE001 - artifacts are a convenience
        log.warning("could not publish Prefect artifacts: %s", exc)


def _reporting_to_prefect() -> bool:
    """Inside a Prefect run; checked without importing Prefect, which takes seconds, when it is not loaded."""
    return "prefect" in sys.modules and report.in_prefect_run()


def render_report(config: TrainConfig, paths: TrainResult) -> str:
    """Markdown summary of a finished job, with how to load and serve the adapter."""
    metrics = paths.metrics
    lines = [
        f"# Fine-tuning report: `{paths.output_dir}`",
        "",
        f"**{config.method.upper()}** on `{config.base_model}` with the `{config.template}` template, "
        f"{metrics['train_examples']} training examples, {metrics['global_step']} steps, precision "
        f"{metrics['precision']}.",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]
    for key in ("first_loss", "final_loss", "train_loss", "eval_loss_before", "eval_loss", "train_tokens_per_second",
                "train_runtime_s", "train_tokens", "trainable_parameters", "adapter_bytes", "peak_gpu_memory_gib"):
        if metrics.get(key) is not None:
            lines.append(f"| {key} | {metrics[key]} |")
    lines += [
        "",
        "## Use the adapter",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        f"model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({config.base_model!r}), "
        f"{str(paths.output_dir)!r})",
        "```",
        "",
        "```bash",
        f"vllm serve {config.base_model} --enable-lora --max-lora-rank {_vllm_lora_rank(config.lora_r)} "
        f"--lora-modules {paths.output_dir.resolve().name}={paths.output_dir.resolve()}",
        "```",
    ]
    if paths.merged_dir:
        lines += ["", f"Merged weights: `{paths.merged_dir}`"]
    return "\n".join(lines) + "\n"


def _vllm_lora_rank(rank: int) -> int:
    """Smallest power of two >= ``rank`` and >= 16 (vLLM's default ``--max-lora-rank``)."""
    return max(16, 1 << (rank - 1).bit_length())
