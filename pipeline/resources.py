"""Data files the package needs at run time: prompt templates (``prompts/``) and the default seed tasks (``seeds/``).

The repository keeps both folders at its root. ``pyproject.toml`` maps them onto the data-only packages
``pipeline._data.prompts`` and ``pipeline._data.seeds``, so a wheel installs them as
``site-packages/pipeline/_data/{prompts,seeds}/``; :mod:`importlib.resources` finds them there. In a checkout
(an editable install, or ``PYTHONPATH`` pointing at the checkout) ``pipeline/_data/`` does not exist, and the
folders are read at the repository root instead. Either way the functions return real :class:`~pathlib.Path`
objects (a wheel installs as plain files), because callers read, glob and name these paths in messages.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

_CHECKOUT_ROOT = Path(__file__).resolve().parent.parent


def _data_dir(kind: str) -> Path:
    packaged = files("pipeline") / "_data" / kind
    if packaged.is_dir():
        if not isinstance(packaged, Path):  # e.g. a zip import; wheels install unpacked, so this is not expected
            raise RuntimeError(f"pipeline data folder {kind!r} is not on the file system: {packaged}")
        return packaged
    return _CHECKOUT_ROOT / kind


def prompts_dir() -> Path:
    """The folder of prompt templates: generation (``generate_*.jinja``) and training (``train_*.json``)."""
    return _data_dir("prompts")


def seeds_dir() -> Path:
    """The folder of the bundled seed task files (``seed_tasks.jsonl``, ``seed_tasks_ko.jsonl``)."""
    return _data_dir("seeds")


def prompt_path(name: str) -> Path:
    """``prompts/<name>``, e.g. ``prompt_path("generate_en.jinja")``; the file may not exist."""
    return prompts_dir() / name


def seeds_path(name: str) -> Path:
    """``seeds/<name>``, e.g. ``seeds_path("seed_tasks.jsonl")``; the file may not exist."""
    return seeds_dir() / name
