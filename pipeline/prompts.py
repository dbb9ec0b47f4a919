"""Prompt rendering and the structured-output schema.

The prompt for request ``i`` depends on (run seed, i) alone: which seed tasks it shows is drawn from an RNG
seeded by :func:`derive_seed`. That makes a resumed run, or a replay, send byte-identical prompts.
"""

from __future__ import annotations

import copy
import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import jinja2
from pydantic import BaseModel, ConfigDict, Field

from pipeline.settings import ConfigError
from pipeline.resources import prompts_dir
from pipeline.seeds import SeedTask


class GeneratedTask(BaseModel):
    """One task as the model must return it in structured mode."""

    model_config = ConfigDict(extra="forbid")

    instruction: str
    input: str
    output: str


class GeneratedTasks(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tasks: list[GeneratedTask] = Field(default_factory=list)


class TemplateError(ValueError):
    """Unknown or broken prompt template."""


def derive_seed(run_seed: int, index: int, purpose: str) -> int:
    """A stable 31-bit seed for (run seed, request index, purpose); independent of Python's hash salt."""
    digest = hashlib.blake2b(f"{run_seed}:{index}:{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF


def resolve_template(name_or_path: str | None, language: str, kind: str = "generate", field: str = "prompt_template") -> Path:
    """A template name in ``prompts/`` (the checkout's, or the installed package's) or a path; raises
    :class:`TemplateError` naming ``field`` and what was looked for. ``kind`` is the family: ``generate`` or
    ``judge``, whose defaults are ``{kind}_{language}.jinja``."""
    name = name_or_path or f"{kind}_{language}.jinja"
    templates = prompts_dir()
    candidates = [Path(name), templates / name, templates / f"{name}.jinja"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    available = ", ".join(sorted(p.name for p in templates.glob(f"{kind}_*.jinja")))
    raise TemplateError(f"{field}: unknown template {name!r} (available in {templates}: {available})")


def response_schema(num_tasks: int, string_pattern: str | None = None) -> dict[str, Any]:
    """JSON schema for ``response_format``: exactly ``num_tasks`` tasks, optional regex on every string."""
    schema = GeneratedTasks.model_json_schema()
    schema = copy.deepcopy(schema)
    tasks = schema["properties"]["tasks"]
    tasks["minItems"] = num_tasks
    tasks["maxItems"] = num_tasks
    task_schema = schema["$defs"]["GeneratedTask"]
    task_schema["required"] = ["instruction", "input", "output"]
    schema["required"] = ["tasks"]
    tasks.pop("default", None)
    if string_pattern:
        for field in task_schema["properties"].values():
            field["pattern"] = string_pattern
    return schema


@dataclass(frozen=True)
class RenderedPrompt:
    index: int
    text: str
    seed_ids: tuple[str, ...]
    sampling_seed: int


class PromptBuilder:
    """Renders the generation prompt for any request index, deterministically."""

    def __init__(
        self,
        template_path: Path,
        seeds: Sequence[SeedTask],
        run_seed: int,
        num_examples: int,
        num_tasks: int,
        response_mode: str,
    ):
        if num_examples > len(seeds):
            raise ConfigError(f"num_seed_examples: {num_examples} but the seed file has only {len(seeds)} tasks")
        self.template_path = template_path
        self.template_text = template_path.read_text(encoding="utf-8")
        env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
        try:
            self._template = env.from_string(self.template_text)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"{template_path}:{exc.lineno}: template syntax error: {exc.message}") from exc
        self.seeds = list(seeds)
        self.run_seed = run_seed
        self.num_examples = num_examples
        self.num_tasks = num_tasks
        self.response_mode = response_mode
        try:  # fail now, not mid-run after the run directory exists: e.g. {{ undefined_name }} under StrictUndefined
            self.render(0)
        except jinja2.TemplateError as exc:
            raise TemplateError(f"{template_path}: template cannot be rendered: {exc}") from exc

    def render(self, index: int) -> RenderedPrompt:
        rng = random.Random(derive_seed(self.run_seed, index, "examples"))
        chosen = rng.sample(self.seeds, self.num_examples)
        examples = [
            {"instruction": s.instruction.strip(), "input": s.instances[0].input.strip(), "output": s.instances[0].output.strip()}
            for s in chosen
        ]
        text = self._template.render(examples=examples, num_tasks=self.num_tasks, response_mode=self.response_mode)
        return RenderedPrompt(
            index=index,
            text=text.strip() + "\n",
            seed_ids=tuple(s.id for s in chosen),
            sampling_seed=derive_seed(self.run_seed, index, "sampling"),
        )

    def fingerprint(self) -> str:
        """Hash of everything that shapes the prompts, to refuse resuming a run with different prompts."""
        h = hashlib.sha256(self.template_text.encode())
        for s in self.seeds:
            h.update(s.model_dump_json().encode())
        return h.hexdigest()[:16]
