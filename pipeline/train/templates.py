"""Prompt templates for supervised fine-tuning: Stanford Alpaca and KoAlpaca.

The template text lives in ``prompts/train_<name>.json`` (alpaca-lora's template format: ``prompt_input``,
``prompt_no_input``, ``response_split``) so that the exact strings can be reviewed and reused for serving.
We add one key, ``response_prefix``: text glued in front of the output before tokenising (KoAlpaca puts one
space after ``### 답변:``, but a prompt ending in a space tokenises badly, so the space belongs to the answer).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, Mapping, get_args

from pipeline.resources import prompt_path

#: The training prompt formats; each has a ``prompts/train_<name>.json`` file.
TemplateName = Literal["alpaca", "koalpaca"]
TEMPLATE_NAMES: tuple[str, ...] = get_args(TemplateName)
_REQUIRED_KEYS = ("prompt_input", "prompt_no_input", "response_split")


@dataclass(frozen=True)
class PromptTemplate:
    """An instruction prompt format with and without an input section."""

    name: str
    prompt_input: str
    prompt_no_input: str
    response_split: str
    response_prefix: str = ""
    description: str = ""

    def prompt(self, instruction: str, input: str = "") -> str:
        """The text the model sees before its answer; the input section only when ``input`` is not blank."""
        if input and input.strip():
            return self.prompt_input.format_map({"instruction": instruction, "input": input})
        return self.prompt_no_input.format_map({"instruction": instruction})

    def response(self, output: str) -> str:
        """The text the model learns to produce after the prompt (EOS is added as a token, not as text)."""
        return self.response_prefix + output

    def record_prompt(self, record: Mapping[str, str]) -> str:
        """:meth:`prompt` for an Alpaca record ``{instruction, input, output}``."""
        return self.prompt(record["instruction"], record.get("input") or "")

    def split_response(self, generated: str) -> str:
        """The answer part of a full decoded generation (text after the last response marker)."""
        return generated.split(self.response_split)[-1].strip()


def template_path(name: str) -> Path:
    return prompt_path(f"train_{name}.json")


@lru_cache(maxsize=None)
def load_template(name: str) -> PromptTemplate:
    """Load ``prompts/train_<name>.json``; ``name`` is ``alpaca`` or ``koalpaca``."""
    if name not in TEMPLATE_NAMES:
        raise ValueError(f"unknown template {name!r}: expected one of {', '.join(TEMPLATE_NAMES)}")
    path = template_path(name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: prompt template file is missing (neither in the checkout nor in the installed package)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    missing = [key for key in _REQUIRED_KEYS if not isinstance(data.get(key), str)]
    if missing:
        raise ValueError(f"{path}: template needs string keys {', '.join(missing)}")
    if "{instruction}" not in data["prompt_input"] or "{input}" not in data["prompt_input"]:
        raise ValueError(f"{path}: prompt_input must contain {{instruction}} and {{input}}")
    if "{instruction}" not in data["prompt_no_input"]:
        raise ValueError(f"{path}: prompt_no_input must contain {{instruction}}")
    return PromptTemplate(
        name=name,
        prompt_input=data["prompt_input"],
        prompt_no_input=data["prompt_no_input"],
        response_split=data["response_split"],
        response_prefix=data.get("response_prefix", ""),
        description=data.get("description", ""),
    )
