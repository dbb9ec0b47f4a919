"""The end-of-job report: a log line, and Prefect artifacts (loss table, samples, Markdown) inside a flow run."""

from __future__ import annotations

import logging
import math
import sys
from typing import TYPE_CHECKING, Any

from pipeline import report
from pipeline.train.config import TrainConfig

if TYPE_CHECKING:
    from pipeline.train.outputs import TrainResult

log = logging.getLogger(__name__)


def publish(run_name: str, config: TrainConfig, result: TrainResult, rows: list[dict[str, Any]],
            samples: list[dict[str, str]]) -> None:
    """Prefect artifacts (no-ops outside a flow run); a reporting failure never loses a trained adapter."""
    metrics = result.metrics
    log.info("trained %s: loss %s -> %s, held-out loss %s -> %s, %.0f tokens/s; adapter in %s", run_name,
             metrics.get("first_loss"), metrics.get("final_loss"), metrics.get("eval_loss_before"),
             metrics.get("eval_loss"), metrics.get("train_tokens_per_second") or 0.0, result.output_dir)
    if not reporting_to_prefect():
        return
    try:
        every = max(1, math.ceil(len(rows) / 200))  # keep the table readable on long runs
        loss_rows = rows[::every]
        if rows and loss_rows[-1] is not rows[-1]:
            loss_rows.append(rows[-1])
        report.table(f"train-loss-{run_name}", loss_rows, description=f"training loss of {run_name}")
        report.table(f"train-samples-{run_name}", samples,
                     description="greedy answers to held-out instructions before and after training")
        report.markdown(f"train-report-{run_name}", render_report(config, result), description="fine-tuning report")
    except Exception as exc:  # noqa: BLE001 - artifacts are a convenience
        log.warning("could not publish Prefect artifacts: %s", exc)


def reporting_to_prefect() -> bool:
    """Inside a Prefect run; checked without importing Prefect, which takes seconds, when it is not loaded."""
    return "prefect" in sys.modules and report.in_prefect_run()


def render_report(config: TrainConfig, result: TrainResult) -> str:
    """Markdown summary of a finished job, with how to load and serve the adapter."""
    metrics = result.metrics
    lines = [
        f"# Fine-tuning report: `{result.output_dir}`",
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
        f"{str(result.output_dir)!r})",
        "```",
        "",
        "```bash",
        f"vllm serve {config.base_model} --enable-lora --max-lora-rank {vllm_lora_rank(config.lora_r)} "
        f"--lora-modules {result.output_dir.resolve().name}={result.output_dir.resolve()}",
        "```",
    ]
    if result.merged_dir:
        lines += ["", f"Merged weights: `{result.merged_dir}`"]
    return "\n".join(lines) + "\n"


def vllm_lora_rank(rank: int) -> int:
    """Smallest power of two >= ``rank`` and >= 16 (vLLM's default ``--max-lora-rank``)."""
    return max(16, 1 << (rank - 1).bit_length())
