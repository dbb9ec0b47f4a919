"""The transformers ``Trainer`` we train with: it counts real tokens, and a callback logs loss and tokens/s."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from pipeline import report
from pipeline.train.arguments import build_training_arguments
from pipeline.train.config import TrainConfig
from pipeline.train.data import ListDataset, count_real_tokens, pad_to_longest_collator, padding_free_collator
from pipeline.train.reporting import reporting_to_prefect

log = logging.getLogger(__name__)


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


def sum_over_processes(trainer: Any, value: int) -> int:
    """``value`` summed over all data-parallel processes; every process must call it (it is a collective)."""
    import torch

    if trainer.accelerator.num_processes == 1:
        return int(value)
    total = trainer.accelerator.reduce(torch.tensor(value, device=trainer.accelerator.device), reduction="sum")
    return int(total.item())


# transformers is imported only when a Trainer is built, so the classes are made on first use.


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
            if state.max_steps and reporting_to_prefect():
                self.progress.update(100.0 * state.global_step / state.max_steps)

        def on_train_end(self, args, state, control, **kwargs):
            if self._bar is not None:
                self._bar.stop()
                self._bar = None
            if is_main and reporting_to_prefect():
                self.progress.update(100.0)

    return LossLogger()
