"""Two-process data-parallel LoRA training on CPU (torchrun, gloo backend)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from pipeline import PROJECT_ROOT  # noqa: E402

pytestmark = [pytest.mark.slow]

#: Each rank trains through the real entry point and dumps its LoRA weights as attached (before the first step)
#: and after training to ``<dump dir>/rank<N>-{initial,final}.safetensors``; only rank 0 writes the outputs.
RUNNER = """\
import os
import sys

from peft import get_peft_model_state_dict
from safetensors.torch import save_file

import pipeline.train.lora as lora
from pipeline.train import TrainConfig, train

rank, dump_dir = os.environ["RANK"], sys.argv[2]
attached = []


def lora_state(model):
    return {key: value.detach().cpu().contiguous().clone() for key, value in get_peft_model_state_dict(model).items()}


def attach_and_record(model, config):
    model = original_attach(model, config)
    attached.append(model)
    save_file(lora_state(model), os.path.join(dump_dir, f"rank{rank}-initial.safetensors"))
    return model


original_attach, lora.attach_lora = lora.attach_lora, attach_and_record
train(TrainConfig.model_validate_json(open(sys.argv[1]).read()))
save_file(lora_state(attached[0]), os.path.join(dump_dir, f"rank{rank}-final.safetensors"))
"""

COLOURS = ["red", "blue", "green", "black"]


@pytest.mark.parametrize("val_size", [0, 2], ids=["no-validation", "held-out-loss"])
def test_two_process_ddp_training_shares_the_data_and_saves_one_adapter(tmp_path, val_size):
    """With ``val_size`` the held-out loss is evaluated before the first step, which must not undo the DDP wrap."""
    from safetensors.torch import load_file

    from pipeline.tiny import make_tiny_model
    from pipeline.train import TrainConfig
    from pipeline.train.adapters import verify_adapter

    model_dir = make_tiny_model(tmp_path / "tiny", arch="llama")
    # 12 records to train on, plus the held-out ones.
    records = [{"instruction": f"Name colour {i}.", "input": "", "output": f"{COLOURS[i % 4]} {COLOURS[i * 3 % 4]}"}
               for i in range(12 + val_size)]
    (tmp_path / "alpaca_data.json").write_text(json.dumps(records), encoding="utf-8")
    config = TrainConfig(base_model=str(model_dir), dataset=str(tmp_path / "alpaca_data.json"),
                         output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=2,
                         gradient_accumulation_steps=1, num_sample_prompts=0, val_size=val_size, report_every=1,
                         gradient_checkpointing=False, lora_r=4, lora_dropout=0.0, learning_rate=3e-3,
                         lr_scheduler_type="constant", warmup_ratio=0.0)
    (tmp_path / "config.json").write_text(config.model_dump_json(), encoding="utf-8")
    (tmp_path / "run.py").write_text(RUNNER, encoding="utf-8")
    dumps = tmp_path / "ranks"
    dumps.mkdir()
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(tmp_path / "run.py"), str(tmp_path / "config.json"), str(dumps)]
    proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_step"] == 6 and metrics["train_examples"] == 12
    assert metrics["validation_examples"] == val_size
    rows = [json.loads(line) for line in (tmp_path / "out" / "loss.jsonl").read_text().splitlines()]
    # 6 steps x 2 processes x 2 examples = all 12 examples twice; one process alone would be at epoch 1.0.
    assert rows[-1]["step"] == 6 and rows[-1]["epoch"] == pytest.approx(2.0)
    assert len(rows) == 6  # only the main process writes the curve
    assert verify_adapter(tmp_path / "out")["adapted_modules"] == 14
    # The loss fell: about 6.3 -> 5.0 on the curve at lr 3e-3, and 6.28 -> 5.34 on the held-out records.
    assert metrics["final_loss"] < metrics["first_loss"] - 0.5, metrics
    if val_size:
        assert metrics["eval_loss"] < metrics["eval_loss_before"] - 0.5, metrics

    initial = {rank: load_file(dumps / f"rank{rank}-initial.safetensors") for rank in (0, 1)}
    final = {rank: load_file(dumps / f"rank{rank}-final.safetensors") for rank in (0, 1)}
    assert len(final[0]) == 28 and set(final[0]) == set(final[1]) == set(initial[0])  # A and B of 14 modules
    lora_b = [key for key in initial[0] if "lora_B" in key]
    # Training moved the weights: every B started at zero and is not zero any more.
    assert all(not initial[rank][key].any() for rank in (0, 1) for key in lora_b)
    assert all(final[0][key].abs().max() > 1e-4 for key in lora_b)
    # Gradients were averaged across the ranks, so both end with bit-identical adapters (ranks that each trained
    # on their own half of the data without DDP differ by more than training moved them)...
    different = {key: (final[0][key] - final[1][key]).abs().max().item() for key in final[0]
                 if not torch.equal(final[0][key], final[1][key])}
    assert not different, f"the ranks' adapters differ (max abs difference per tensor): {different}"
    # ...and that adapter is the one saved.
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert set(saved) == set(final[0]) and all(torch.equal(saved[key], final[0][key]) for key in saved)
