"""Seed tasks: loading and validation of Self-Instruct format JSONL.

Each line is ``{"id", "name", "instruction", "instances": [{"input", "output"}], "is_classification"}``.
Files are read with :func:`pipeline.files.read_json_values`; every problem is reported as
``FILE:LINE: field: message``, and all problems of a file at once rather than one per run.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.files import InputFileError, Problem, read_json_values

#: Lines longer than this are refused before JSON parsing: a seed task is a few hundred bytes, and a
#: runaway line (a whole dataset pasted on one line) should fail fast with a clear message.
MAX_LINE_BYTES = 1_000_000


class SeedInstance(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input: str = Field("", description="Task input; empty when the instruction stands alone.")
    output: str = Field(..., description="Expected output.")

    @field_validator("output")
    @classmethod
    def _output_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


class SeedTask(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str = Field(..., description="Unique id within the file.")
    name: str = Field("", description="Short name.")
    instruction: str = Field(..., description="The task instruction.")
    instances: list[SeedInstance] = Field(..., min_length=1, description="At least one input/output example.")
    is_classification: bool = Field(False, description="Whether the output is a label from a small set.")

    @field_validator("id", "instruction")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


class SeedError(InputFileError):
    """Invalid seed file. ``problems`` lists every problem found; ``str()`` has one per line."""


def load_seeds(path: str | Path) -> list[SeedTask]:
    """Load and validate a seed file; raise :class:`SeedError` naming each bad file:line:field."""
    path = Path(path)
    problems: list[Problem] = []
    tasks: list[SeedTask] = []
    first_line_of_id: dict[str, int] = {}
    try:
        for item in read_json_values(path, on_problem=problems.append, max_line_bytes=MAX_LINE_BYTES):
            if not isinstance(item.value, dict):
                problems.append(item.problem("json", "each line must be a JSON object"))
                continue
            try:
                task = SeedTask.model_validate(item.value)
            except ValidationError as exc:
                for err in exc.errors():
                    field = ".".join(str(p) for p in err["loc"]) or "(root)"
                    problems.append(item.problem(field, "missing" if err["type"] == "missing" else err["msg"]))
                continue
            if task.id in first_line_of_id:
                problems.append(item.problem("id", f"duplicate id {task.id!r} (first on line {first_line_of_id[task.id]})"))
                continue
            first_line_of_id[task.id] = item.line
            tasks.append(task)
    except InputFileError as exc:
        problems.extend(exc.problems)
    if not tasks and not problems:
        problems.append(Problem(path, 0, "file", "no seed tasks (the file is empty)"))
    if problems:
        raise SeedError(problems)
    return tasks
