"""LoRA / QLoRA fine-tuning on Alpaca-format data (the ``train-alpaca`` flow and ``selfinstruct train``).

Importing this package is cheap; torch, transformers and peft load when :func:`train` runs.
"""

from pipeline.train.config import TrainConfig
from pipeline.train.lora import train
from pipeline.train.outputs import TrainResult

__all__ = ["TrainConfig", "TrainResult", "train"]
