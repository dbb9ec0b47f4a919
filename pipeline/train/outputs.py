"""What a job leaves in ``output_dir`` (:class:`TrainResult`), and resuming from the checkpoints among it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.files import read_jsonl
from pipeline.train.adapters import ADAPTER_FILE


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

    @classmethod
    def in_directory(cls, output_dir: Path) -> TrainResult:
        """The file layout of a job writing to ``output_dir`` (nothing is written yet)."""
        return cls(
            output_dir=output_dir,
            adapter_file=output_dir / ADAPTER_FILE,
            config_file=output_dir / "train_config.json",
            metrics_file=output_dir / "metrics.json",
            loss_file=output_dir / "loss.jsonl",
            samples_file=output_dir / "samples.json",
        )

    def summary(self) -> dict[str, Any]:
        """A small JSON-ready dict (what the Prefect flow returns)."""
        keys = ("global_step", "train_loss", "first_loss", "final_loss", "eval_loss_before", "eval_loss",
                "train_tokens_per_second", "train_runtime_s", "peak_gpu_memory_gib")
        paths = {name: (str(getattr(self, name)) if getattr(self, name) is not None else None)
                 for name in ("output_dir", "adapter_file", "config_file", "metrics_file", "loss_file",
                              "samples_file", "merged_dir")}
        return {**paths, **{key: self.metrics.get(key) for key in keys}}


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


def restart_loss_curve(loss_file: Path, resume_from: str | None) -> None:
    """A fresh run starts a new curve; a resumed one drops rows logged after its checkpoint."""
    last_step = _checkpoint_step(resume_from) if resume_from else 0
    if not loss_file.exists():
        return
    kept = [row for row in read_jsonl(loss_file) if row.get("step", 0) <= last_step]
    loss_file.write_text("".join(json.dumps(row) + "\n" for row in kept), encoding="utf-8")


def _checkpoint_step(checkpoint: str) -> int:
    state_file = Path(checkpoint) / "trainer_state.json"
    try:
        return int(json.loads(state_file.read_text(encoding="utf-8"))["global_step"])
    except (OSError, ValueError, KeyError):
        return 0
