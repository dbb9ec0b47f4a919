"""Turn one completion into candidate tasks.

Two response modes:
- ``structured``: the server enforced a JSON schema; the text is ``{"tasks": [...]}``.
- ``text``: numbered ``N. Instruction: / N. Input: / N. Output:`` blocks separated by ``###``, as Stanford
  Alpaca asks for. Parsed leniently: numbering, spacing, case and a missing ``###`` do not matter.

A completion cut off by the token limit (``finish_reason == "length"``) loses its last, incomplete task;
what cannot be parsed at all is reported as a :class:`ParseFailure`, which the run records as rejected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import ValidationError

from pipeline.prompts import GeneratedTasks
from pipeline.records import Candidate

NO_INPUT_MARKERS = {"<noinput>", "<no input>", "noinput", "none", "n/a", "<none>", "없음", "<입력 없음>"}


@dataclass(frozen=True)
class ParseFailure:
    reason: str  # "parse_error" | "truncated"
    detail: str


@dataclass(frozen=True)
class ParseResult:
    candidates: list[Candidate]
    failures: list[ParseFailure]


def _clean_input(text: str) -> str:
    text = text.strip()
    return "" if text.lower() in NO_INPUT_MARKERS else text


def parse_structured(text: str, finish_reason: str) -> ParseResult:
    try:
        data = GeneratedTasks.model_validate_json(text)
    except ValidationError as exc:
        reason = "truncated" if finish_reason == "length" else "parse_error"
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        return ParseResult([], [ParseFailure(reason, f"{where}: {first['msg']}")])
    candidates = [
        Candidate(t.instruction.strip(), _clean_input(t.input), t.output.strip()) for t in data.tasks
    ]
    return ParseResult(candidates, [])


_FIELD_RE = re.compile(
    # The trailing [ \t]* must not run into the next line: after an empty "Input:", an indented "Output:" label
    # on the next line would no longer start at ^ and be swallowed into the input.
    r"^\s*(?:\d+\s*[.)]\s*)?(instruction|input|output)\s*:[ \t]*", re.IGNORECASE | re.MULTILINE
)


def parse_text(text: str, finish_reason: str) -> ParseResult:
    """Parse numbered Instruction/Input/Output blocks."""
    # A block ends at a ### line and, where a separator is missing, at the next "Instruction:" label. (Splitting
    # each ###-chunk rather than falling back to the raw text keeps a lone task's trailing "###" out of its output.)
    blocks = [
        b
        for chunk in re.split(r"^\s*#{3,}\s*$", text, flags=re.MULTILINE)
        for b in re.split(r"(?=^\s*(?:\d+\s*[.)]\s*)?instruction\s*:)", chunk, flags=re.IGNORECASE | re.MULTILINE)
        if b.strip()
    ]
    candidates: list[Candidate] = []
    failures: list[ParseFailure] = []
    for position, block in enumerate(blocks):
        fields = _split_fields(block)
        is_last = position == len(blocks) - 1
        if is_last and finish_reason == "length":
            failures.append(ParseFailure("truncated", "last task cut off by the token limit"))
            continue
        if not fields:
            continue  # chatter without any label ("Here are 10 tasks:", "Hope this helps!") holds no task
        if "instruction" not in fields or "output" not in fields:
            failures.append(ParseFailure("parse_error", f"block {position + 1}: missing instruction or output"))
            continue
        candidates.append(Candidate(fields["instruction"], _clean_input(fields.get("input", "")), fields["output"]))
    if not candidates and not failures:
        failures.append(ParseFailure("parse_error", "no Instruction/Output blocks found"))
    return ParseResult(candidates, failures)


def _split_fields(block: str) -> dict[str, str]:
    matches = list(_FIELD_RE.finditer(block))
    fields: dict[str, str] = {}
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(block)
        name = match.group(1).lower()
        if name not in fields:
            fields[name] = block[match.end():end].strip()
    return fields


def parse_completion(text: str, finish_reason: str, mode: str) -> ParseResult:
    if mode == "structured":
        return parse_structured(text, finish_reason)
    return parse_text(text, finish_reason)

