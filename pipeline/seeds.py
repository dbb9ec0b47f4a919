"""Seed tasks: loading and validation of Self-Instruct format JSONL.

Each line is ``{"id", "name", "instruction", "instances": [{"input", "output"}], "is_classification"}``.
Every problem is reported as ``FILE:LINE: field: message`` so that a user can jump straight to it, and all
problems of a file are reported at once rather than one per run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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


@dataclass(frozen=True)
class SeedProblem:
    path: Path
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


class SeedError(ValueError):
    """Invalid seed file. ``problems`` lists every problem found; ``str()`` has one per line."""

    def __init__(self, problems: list[SeedProblem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def load_seeds(path: str | Path) -> list[SeedTask]:
    """Load and validate a seed file; raise :class:`SeedError` naming each bad file:line:field."""
    path = Path(path)
    problems: list[SeedProblem] = []
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SeedError([SeedProblem(path, 0, "file", "not found")]) from None
    except OSError as exc:
        raise SeedError([SeedProblem(path, 0, "file", f"cannot read: {exc.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SeedError([SeedProblem(path, line, "encoding", f"not valid UTF-8 (byte {exc.start})")]) from None

    tasks: list[SeedTask] = []
    first_line_of_id: dict[str, int] = {}
    # split("\n"), not splitlines(): JSON strings may hold a raw U+2028/U+0085/\x0c, which splitlines() would
    # treat as line breaks (breaking valid lines and shifting every later line number).
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if len(line.encode("utf-8")) > MAX_LINE_BYTES:
            problems.append(SeedProblem(path, number, "line", f"longer than {MAX_LINE_BYTES} bytes"))
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(SeedProblem(path, number, "json", f"invalid JSON: {exc.msg} (column {exc.colno})"))
            continue
        if not isinstance(data, dict):
            problems.append(SeedProblem(path, number, "json", "each line must be a JSON object"))
            continue
        try:
            task = SeedTask.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or "(root)"
                message = "missing" if err["type"] == "missing" else err["msg"]
                problems.append(SeedProblem(path, number, field, message))
            continue
        if task.id in first_line_of_id:
            problems.append(SeedProblem(path, number, "id", f"duplicate id {task.id!r} (first on line {first_line_of_id[task.id]})"))
            continue
        first_line_of_id[task.id] = number
        tasks.append(task)

    if not tasks and not problems:
        problems.append(SeedProblem(path, 0, "file", "no seed tasks (the file is empty)"))
    if problems:
        raise SeedError(problems)
    return tasks
