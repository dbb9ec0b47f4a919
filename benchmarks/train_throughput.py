"""Training throughput: our LoRA/QLoRA trainer against an alpaca-lora-style baseline.

Both sides train the same randomly initialised model with the same LoRA settings on the same examples in
the same order for the same number of optimizer steps; the only difference is how micro-batches are built:

* ours: :func:`pipeline.train.train` as shipped: padding-free rows with per-example attention (sdpa_packed);
* baseline: transformers ``Trainer`` + ``DataCollatorForSeq2Seq`` padding each micro-batch to its longest
  example (multiple of 8), plain ``sdpa``, no packing, as tloen/alpaca-lora's ``finetune.py``.

Throughput counts only real (non-padding) tokens and is measured in the steady state (after ``--warmup``
steps) from the per-step log, so model loading, the first-step allocations and the final checkpoint are
excluded. The last line printed is JSON with the figures.

    python benchmarks/train_throughput.py                      # CPU: small LLaMA (hidden 256, 4 layers)
    python benchmarks/train_throughput.py --shape llama2-7b --method qlora   # GPU (see gpu_train.sh)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: Model shapes: the CPU benchmark's small LLaMA, a tiny one for smoke tests, a 0.5B one and LLaMA-2-7B.
SHAPES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2),
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4),
    "mid": dict(hidden_size=2048, intermediate_size=5504, num_hidden_layers=8, num_attention_heads=16,
                vocab_size=32000),
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      vocab_size=32000),
}

WORDS = (
    "the a model data answer question write explain list describe story poem code function value table city "
    "river music history science language people time world water light small large quick simple important "
    "because however therefore example first second finally also many each other new good best way"
).split()


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_records(count: int, seed: int) -> list[dict[str, str]]:
    """Alpaca-like records: short instructions, optional inputs, log-normal answer lengths (long tail).

    Alpaca's answers have a median of a few dozen words and a tail of several hundred; padding a batch to
    its longest member wastes most of the compute on such data.
    """
    rng = random.Random(seed)

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(max(1, n)))

    records = []
    for _ in range(count):
        records.append({
            "instruction": words(rng.randint(4, 20)).capitalize() + ".",
            "input": words(int(rng.lognormvariate(2.5, 0.8))) if rng.random() < 0.4 else "",
            "output": words(min(400, int(rng.lognormvariate(3.6, 0.9)))),
        })
    return records


def make_model(directory: Path, shape: str, device: str) -> Path:
    """Write a random LLaMA of ``shape`` (weights in bf16 on GPUs) and the tiny BPE tokenizer to ``directory``."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from pipeline.tiny import build_tokenizer

    tokenizer = build_tokenizer("llama")
    dims = dict(SHAPES[shape])
    vocab = max(dims.pop("vocab_size", 0), len(tokenizer))
    config = LlamaConfig(vocab_size=vocab, num_key_value_heads=dims["num_attention_heads"],
                         max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=None, tie_word_embeddings=False, **dims)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    started = time.perf_counter()
    torch.manual_seed(0)
    # Initialise on the device straight into the target dtype (a 7B model in fp32 would be 28 GB).
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    log(f"random {shape} model ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params) written to "
        f"{directory} in {time.perf_counter() - started:.0f}s")
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return directory


def steady_state(rows: list[dict[str, Any]], warmup: int) -> dict[str, float]:
    """Real tokens per second between the end of step ``warmup`` and the last step, from per-step log rows."""
    after = [row for row in rows if row["step"] >= warmup]
    if len(after) < 2:
        raise RuntimeError(f"need at least {warmup + 2} logged steps, got {[row['step'] for row in rows]}")
    first, last = after[0], after[-1]
    tokens = last["tokens_seen"] - first["tokens_seen"]
    seconds = last["elapsed_s"] - first["elapsed_s"]
    return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_second": round(tokens / seconds, 1),
            "final_loss": last["loss"], "per_step_tokens_per_second": [round(row["tokens_per_second"]) for row in rows]}


def run_ours(config: Any, warmup: int) -> dict[str, Any]:
    from pipeline.train import train

    result = train(config)
    rows = [json.loads(line) for line in result.loss_file.read_text().splitlines()]
    figures = steady_state(rows, warmup)
    figures["peak_gpu_memory_gib"] = result.metrics.get("peak_gpu_memory_gib")
    figures["total_tokens"] = result.metrics["train_tokens"]
    del result
    return figures


def run_baseline(config: Any, warmup: int) -> dict[str, Any]:
    """alpaca-lora's recipe on the same model, examples and LoRA settings: pad to longest, no packing."""
    import torch
    from transformers import DataCollatorForSeq2Seq, set_seed

    from pipeline.train.adapters import attach_lora
    from pipeline.train.data import load_records, split_records, tokenize_records
    from pipeline.train.model_loading import load_base_model, load_tokenizer, resolve_precision
    from pipeline.train.templates import load_template
    from pipeline.train.trainer import build_trainer

    config = config.model_copy(update={"padding_free": False})  # plain sdpa attention, padded batches
    set_seed(config.seed)
    precision = resolve_precision(config.precision)
    tokenizer = load_tokenizer(config)
    split = split_records(load_records(config.dataset), 0, 0, config.seed)  # the same order as train()
    examples, _ = tokenize_records(tokenizer, load_template(config.template), split.train, config.max_seq_length)
    model = attach_lora(load_base_model(config, precision), config)
    collator = CountingCollator(DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=8, return_tensors="pt",
                                                       padding=True))
    loss_file = Path(config.output_dir) / "loss.jsonl"
    loss_file.parent.mkdir(parents=True, exist_ok=True)
    loss_file.unlink(missing_ok=True)
    trainer = build_trainer(model, tokenizer, config, precision, examples, data_collator=collator,
                            loss_file=loss_file)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    rows = [json.loads(line) for line in loss_file.read_text().splitlines()]
    figures = steady_state(rows, warmup)
    figures["peak_gpu_memory_gib"] = (round(torch.cuda.max_memory_allocated() / 2**30, 3)
                                      if torch.cuda.is_available() else None)
    figures["total_tokens"] = trainer.real_tokens_seen
    figures["padding_fraction"] = round(1 - collator.real / collator.slots, 3)
    del trainer, model
    return figures


class CountingCollator:
    """Wraps a collator and counts batch slots and real tokens, to report the share spent on padding."""

    def __init__(self, collator: Any):
        self.collator = collator
        self.slots = 0
        self.real = 0

    def __call__(self, features: Any) -> Any:
        batch = self.collator(features)
        self.slots += batch["input_ids"].numel()
        self.real += int(batch["attention_mask"].sum())
        return batch


def warm_up(workdir: Path, method: str, device: str) -> None:
    """Run both trainers for a few steps on a tiny model first.

    The first training in a process pays one-time costs (lazy imports of torch._dynamo, peft and prefect
    internals, CUDA context and kernel loading) that land in whichever side runs first; measured here on a
    model nobody compares, both sides then start warm.
    """
    from pipeline.train import TrainConfig

    tiny = workdir / "warmup-model"
    if not (tiny / "config.json").is_file():
        make_model(tiny, "tiny", device)
    data = workdir / "warmup.json"
    data.write_text(json.dumps(make_records(32, seed=1)), encoding="utf-8")
    for name, runner in (("ours", run_ours), ("baseline", run_baseline)):
        config = TrainConfig(base_model=str(tiny), dataset=str(data), output_dir=str(workdir / f"warmup-{name}"),
                             method=method, max_steps=4, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                             num_sample_prompts=0, report_every=1, save_steps=10**6, resume="never")
        runner(config, warmup=1)
    free_memory()


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default=os.environ.get("GPU_TRAIN_SHAPE", "small"))
    parser.add_argument("--method", choices=["lora", "qlora"], default="lora")
    parser.add_argument("--steps", type=int, default=16, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the throughput")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per micro-batch (no accumulation)")
    parser.add_argument("--records", type=int, default=600)
    parser.add_argument("--max-seq-length", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=1, help="alternate ours/baseline this often; best kept")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--model-dir", help="reuse a model written by an earlier run (--shape must match)")
    parser.add_argument("--workdir", help="directory for data and outputs (default: a temporary one)")
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from pipeline.train import TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="train-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model_dir) if args.model_dir else make_model(workdir / f"model-{args.shape}", args.shape,
                                                                       device)
    dataset = workdir / "alpaca_data.json"
    dataset.write_text(json.dumps(make_records(args.records, seed=0)), encoding="utf-8")

    def config_for(name: str) -> TrainConfig:
        return TrainConfig(
            base_model=str(model_dir), dataset=str(dataset), output_dir=str(workdir / f"{args.method}-{name}"),
            method=args.method, template="alpaca", max_steps=args.steps, per_device_train_batch_size=args.batch_size,
            gradient_accumulation_steps=1, max_seq_length=args.max_seq_length, num_sample_prompts=0,
            report_every=1, save_steps=10**6, resume="never", learning_rate=1e-4,
        )

    log(f"warm-up on a tiny model ({args.method})")
    warm_up(workdir, args.method, device)
    results: dict[str, list[dict[str, Any]]] = {"ours": [], "baseline": []}
    for round_index in range(args.rounds):
        for name, runner in (("ours", run_ours), ("baseline", run_baseline)):
            if name == "baseline" and args.skip_baseline:
                continue
            log(f"round {round_index + 1}: {name} {args.method} on {args.shape} ({device})")
            figures = runner(config_for(name), args.warmup)
            log(f"{name}: { {k: v for k, v in figures.items() if not k.startswith('per_step')} }")
            log(f"{name} per-step tokens/s: {figures['per_step_tokens_per_second']}")
            results[name].append(figures)
            free_memory()

    def best(name: str) -> dict[str, Any] | None:
        return max(results[name], key=lambda f: f["tokens_per_second"]) if results[name] else None

    ours, baseline = best("ours"), best("baseline")
    summary: dict[str, Any] = {
        "benchmark": "train_throughput",
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        "shape": args.shape,
        "method": args.method,
        "steps": args.steps,
        "warmup_steps": args.warmup,
        "batch_size": args.batch_size,
        "ours_tokens_per_s": ours["tokens_per_second"],
        "ours_peak_gpu_memory_gib": ours["peak_gpu_memory_gib"],
        "ours_runs_tokens_per_s": [f["tokens_per_second"] for f in results["ours"]],
        "ours_per_step_tokens_per_s": ours["per_step_tokens_per_second"],
    }
    if baseline:
        if baseline["total_tokens"] != ours["total_tokens"]:
            raise RuntimeError(f"runs saw different data: {baseline['total_tokens']} vs {ours['total_tokens']} tokens")
        summary.update({
            "baseline_tokens_per_s": baseline["tokens_per_second"],
            "baseline_peak_gpu_memory_gib": baseline["peak_gpu_memory_gib"],
            "baseline_padding_fraction": baseline["padding_fraction"],
            "baseline_runs_tokens_per_s": [f["tokens_per_second"] for f in results["baseline"]],
            "baseline_per_step_tokens_per_s": baseline["per_step_tokens_per_second"],
            "real_tokens_per_run": ours["total_tokens"],
            "ratio": round(ours["tokens_per_second"] / baseline["tokens_per_second"], 2),
        })
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
