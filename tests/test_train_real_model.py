"""LoRA and QLoRA on a real instruct model (SmolLM2-135M-Instruct) on CPU, trained on the project's seed tasks.

The seed file (Self-Instruct format) is the dataset as it is; 12 tasks are held out for the validation loss,
measured before the first step and after the last, and 2 more are answered greedily before and after training.
LoRA runs through the ``selfinstruct train`` command line, QLoRA (bitsandbytes NF4 on CPU) through ``train()``,
the function the ``train-alpaca`` flow runs.
"""

from __future__ import annotations

import json
import os
import time

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from pipeline import PROJECT_ROOT  # noqa: E402
from pipeline.train import TrainConfig, train  # noqa: E402
from pipeline.train.cli import main as train_cli  # noqa: E402
from pipeline.train.data import load_records, split_records  # noqa: E402

pytestmark = pytest.mark.slow

SEEDS = PROJECT_ROOT / "seeds" / "seed_tasks.jsonl"
#: Short enough for about a minute per job on 2 CPU cores; lr 1e-3 (constant) makes 20 steps of 2 examples count.
SETTINGS = dict(
    template="alpaca", max_steps=20, learning_rate=1e-3, warmup_ratio=0.0, lr_scheduler_type="constant",
    per_device_train_batch_size=2, gradient_accumulation_steps=1, max_seq_length=256, gradient_checkpointing=False,
    val_size=12, num_sample_prompts=2, sample_max_new_tokens=16, report_every=5, save_steps=1000, resume="never",
    seed=0,
)
#: Held-out loss must fall by at least this much (nats). Measured with exactly these settings (the runs are seeded, so
#: only CPU summation order varies; two LoRA runs gave the same losses to 4 decimals): LoRA 2.411 -> 2.062 (-0.349),
#: QLoRA 2.601 -> 2.225 (-0.376). Before bitsandbytes' CPU inference repacking was turned off (see
#: model_loading._keep_cpu_4bit_weights_trainable), QLoRA moved only 2.600 -> 2.563: the samples generated before
#: training had repacked the 4-bit weights, and backprop then ran through a kernel without autograd. Each margin is
#: well under half the measured drop, and far above what that bug allowed.
MIN_DROP = {"lora": 0.15, "qlora": 0.15}


def _cli_args(settings: dict) -> list[str]:
    args = []
    for name, value in settings.items():
        option = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(option if value else "--no-" + name.replace("_", "-"))
        else:
            args += [option, str(value)]
    return args


@pytest.fixture(scope="module", params=["lora", "qlora"])
def job(request, smollm2, tmp_path_factory):
    method = request.param
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    output_dir = tmp_path_factory.mktemp(f"real-{method}") / "out"
    settings = {**SETTINGS, "base_model": str(smollm2), "dataset": str(SEEDS), "output_dir": str(output_dir),
                "method": method}
    started = time.perf_counter()
    if method == "lora":
        assert train_cli(_cli_args(settings)) == 0  # `selfinstruct train` runs this same entry point
    else:
        train(TrainConfig(**settings))
    elapsed = time.perf_counter() - started
    metrics = json.loads((output_dir / "metrics.json").read_text())
    samples = json.loads((output_dir / "samples.json").read_text())
    print(f"{method}: held-out loss {metrics['eval_loss_before']:.3f} -> {metrics['eval_loss']:.3f}, "
          f"{elapsed:.0f} s ({metrics['train_runtime_s']:.0f} s training)")
    return method, settings, metrics, samples, elapsed


def test_held_out_loss_falls(job):
    method, _, metrics, _, _ = job
    assert metrics["method"] == method and metrics["global_step"] == SETTINGS["max_steps"]
    assert metrics["validation_examples"] == SETTINGS["val_size"]
    before, after = metrics["eval_loss_before"], metrics["eval_loss"]
    assert 0.5 < before < 6.0, metrics  # a real model on real text: neither trained already nor random
    assert after < before - MIN_DROP[method], metrics


def test_samples_are_held_out_instructions_answered_before_and_after(job):
    _, settings, _, samples, _ = job
    records = load_records(SEEDS)
    split = split_records(records, settings["num_sample_prompts"], settings["val_size"], settings["seed"])
    trained_on = {record["instruction"] for record in split.train}
    assert [sample["instruction"] for sample in samples] == [record["instruction"] for record in split.samples]
    for sample in samples:
        assert sample["instruction"] not in trained_on
        for key in ("before", "after"):
            text = sample[key]
            # Real text: mostly letters and spaces, with at least one word of two letters or more.
            assert text.strip() and sum(char.isalpha() or char.isspace() for char in text) >= 0.6 * len(text), sample
            assert any(len(word) >= 2 and word.isalpha() for word in text.replace(".", " ").split()), sample
    assert any(sample["before"] != sample["after"] for sample in samples), samples
