"""Two-process data-parallel LoRA training on CPU (torchrun, gloo backend)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from pipeline import PROJECT_ROOT  # noqa: E402

pytestmark = [pytest.mark.slow]

RUNNER = "import sys\nfrom pipeline.train import TrainConfig, train\ntrain(TrainConfig.model_validate_json(open(sys.argv[1]).read()))\n"


def test_two_process_ddp_training_shares_the_data_and_saves_one_adapter(tmp_path):
    from pipeline.tiny import make_tiny_model
    from pipeline.train import TrainConfig
    from pipeline.train.adapters import verify_adapter

    model_dir = make_tiny_model(tmp_path / "tiny", arch="llama")
    records = [{"instruction": f"Say {i}.", "input": "", "output": f"{i} {i}"} for i in range(12)]
    (tmp_path / "alpaca_data.json").write_text(json.dumps(records), encoding="utf-8")
    config = TrainConfig(base_model=str(model_dir), dataset=str(tmp_path / "alpaca_data.json"),
                         output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=2,
                         gradient_accumulation_steps=1, num_sample_prompts=0, report_every=1,
                         gradient_checkpointing=False, lora_r=4)
    (tmp_path / "config.json").write_text(config.model_dump_json(), encoding="utf-8")
    (tmp_path / "run.py").write_text(RUNNER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(tmp_path / "run.py"), str(tmp_path / "config.json")]
    proc = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_step"] == 3
    rows = [json.loads(line) for line in (tmp_path / "out" / "loss.jsonl").read_text().splitlines()]
    # 3 steps x 2 processes x 2 examples = all 12 examples once; one process alone would be at epoch 0.5.
    assert rows[-1]["step"] == 3 and rows[-1]["epoch"] == pytest.approx(1.0)
    assert len(rows) == 3  # only the main process writes the curve
    assert verify_adapter(tmp_path / "out")["adapted_modules"] == 14
