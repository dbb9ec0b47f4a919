"""A human audit of a run's records, as in Self-Instruct's quality review (Wang et al. 2022, Table 2).

Self-Instruct had an expert judge 200 random generated instances with four questions:

- ``valid_instruction``: "Does the instruction describe a valid task?" (Self-Instruct: 92%)
- ``appropriate_input``: "Is the input appropriate for the instruction?" (79%)
- ``correct_output``: "Is the output a correct and acceptable response to the instruction and input?" (58%)
- ``all_valid``: "All fields are valid", i.e. the three answers above are all yes (54%)

:func:`write_audit_sheet` samples records of ``accepted.jsonl`` into a CSV sheet, one row per record, with the
four answer columns empty; people fill them in a spreadsheet; :func:`summarize_audit` checks the filled sheet
against the run, counts the answers and saves ``audit.json`` beside the run, so that the run's own figures can be
put next to Self-Instruct's.

The sheet, for spreadsheets:

- UTF-8 with a byte-order mark: without it Excel reads a CSV in the local code page and Korean text comes out
  garbled; LibreOffice and Google Sheets read it either way. The reader takes UTF-8 with or without the mark
  (Google Sheets downloads have none), and a ``;`` or tab separator (Excel's in some locales). Excel's plain
  "CSV" format (the local code page, cp949 in Korea) is refused with a hint to save as "CSV UTF-8".
- One header row, so that the sheet sorts and filters. Columns: ``record``, ``instruction``, ``input``,
  ``output``, the four answer columns, ``notes``. Extra columns are ignored, so an auditor may add some.
- ``record`` is ``r{request_index}-c{candidate_index}``, the record's stable key in the run. Not a bare
  ``12-3``: Excel and Google Sheets turn that into a date (3 December) and save the date back.
- A text cell that a spreadsheet would take for a formula (one starting with ``=``, ``+``, ``-`` or ``@``, as a
  model's bullet list does) is written with a leading ``'``, the usual guard against formula injection; the
  reader takes the text with or without it.
- Rows are in sampling order, not run order: an audit stopped half way is still a random sample.

Answers, case-insensitive: yes/no, y/n, true/false, 1/0, ✓/✗, 예/아니오, 네/아니요; a blank cell is "not judged"
and counts in no share. A blank ``all_valid`` is derived when it follows from the other three (yes when all three
say yes, no when one says no); an ``all_valid`` that contradicts them is an error. ``appropriate_input`` of a
record without an input: Self-Instruct counted such inputs as appropriate; here a blank stays "not judged" (answer
yes to count it as Self-Instruct did). Each share is yes / judged.

A sheet that does not belong to the run is refused as a whole, every bad cell listed as
``SHEET:LINE: column: message`` (LINE as a spreadsheet numbers its rows: the header is line 1): an answer that
is not one, a record id that the run does not have, a record listed twice, an instruction that differs from the
run's (an edited sheet, or one from another version of the run).

``audit.json`` (written atomically, only from a sheet without errors)::

    {
      "questions": {
        "valid_instruction": {"question": "Does the instruction ...", "yes": 180, "judged": 200, "share": 0.9,
                              "self_instruct": 0.92},
        "appropriate_input": {...}, "correct_output": {...}, "all_valid": {...}
      },
      "sheet": "/abs/path/audit_sheet.csv",
      "rows": 200,
      "written_at": "2025-01-31T12:00:00+00:00"
    }

``share`` is null when nothing was judged; ``rows`` counts the sheet's non-blank rows, judged or not.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from pipeline.files import InputFileError, Problem, atomic_text_file, read_jsonl, write_json_atomic
from pipeline.store import ACCEPTED
from pipeline.tables import markdown_table

AUDIT_SHEET = "audit_sheet.csv"
AUDIT_JSON = "audit.json"


@dataclass(frozen=True)
class Question:
    column: str
    label: str
    text: str
    self_instruct: float


#: Self-Instruct's four questions and its figures (Table 2, 200 instances), in the paper's order.
QUESTIONS: tuple[Question, ...] = (
    Question("valid_instruction", "valid instruction", "Does the instruction describe a valid task?", 0.92),
    Question("appropriate_input", "appropriate input", "Is the input appropriate for the instruction?", 0.79),
    Question("correct_output", "correct output",
             "Is the output a correct and acceptable response to the instruction and input?", 0.58),
    Question("all_valid", "all valid", "All fields are valid", 0.54),
)
ANSWER_COLUMNS = tuple(q.column for q in QUESTIONS)
FIELD_QUESTIONS = ANSWER_COLUMNS[:3]  # the three that ``all_valid`` sums up
SHEET_COLUMNS = ("record", "instruction", "input", "output", *ANSWER_COLUMNS, "notes")
REQUIRED_COLUMNS = ("record", "instruction", *ANSWER_COLUMNS)

_YES = ("yes", "y", "true", "1", "✓", "✔", "예", "네")
_NO = ("no", "n", "false", "0", "✗", "✘", "아니오", "아니요")
ANSWERS: dict[str, bool] = {**{word: True for word in _YES}, **{word: False for word in _NO}}
_ANSWER_HINT = "/".join(w for pair in zip(_YES, _NO) for w in pair if w not in ("✔", "✘"))

_FORMULA_STARTS = ("=", "+", "-", "@")
_RECORD_ID = re.compile(r"r?(\d+)-c?(\d+)")


class AuditSheetError(InputFileError):
    """A filled sheet that cannot be counted; ``problems`` lists every bad cell, ``str()`` one per line."""


# ---- the sheet ---------------------------------------------------------------------------------------------------
def record_id(record: Mapping[str, Any]) -> str:
    """The record's key in the sheet: ``r{request_index}-c{candidate_index}``."""
    return f"r{record['request_index']}-c{record['candidate_index']}"


def write_audit_sheet(run_dir: Path, path: Path | None = None, n: int = 200, seed: int = 0, *,
                      overwrite: bool = False) -> Path:
    """Write ``n`` random accepted records of ``run_dir`` (all, if it has fewer) as a sheet to fill in.

    The sample depends only on ``seed`` and the run's records. ``path`` defaults to ``run_dir/audit_sheet.csv``.
    An existing file is kept (:class:`FileExistsError`) unless ``overwrite``: it may hold hours of answers.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    run_dir = Path(run_dir)
    path = Path(path) if path is not None else run_dir / AUDIT_SHEET
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (it may hold answers); choose another path or overwrite it")
    records = list(read_jsonl(run_dir / ACCEPTED))
    sample = random.Random(seed).sample(records, min(n, len(records)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_text_file(path) as out:
        out.write("\ufeff")  # the byte-order mark that makes Excel read UTF-8 (see the module docstring)
        writer = csv.writer(out)
        writer.writerow(SHEET_COLUMNS)
        for record in sample:
            texts = [_guard_formula(str(record.get(key) or "")) for key in ("instruction", "input", "output")]
            writer.writerow([record_id(record), *texts, *([""] * len(ANSWER_COLUMNS)), ""])
    return path


def _guard_formula(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _unguard_formula(text: str) -> str:
    return text[1:] if text.startswith("'") and text[1:].startswith(_FORMULA_STARTS) else text


# ---- counting ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AnswerCount:
    yes: int = 0
    judged: int = 0

    @property
    def share(self) -> float | None:
        """yes / judged; None when nothing was judged."""
        return self.yes / self.judged if self.judged else None


@dataclass(frozen=True)
class AuditSummary:
    """The counted answers of one filled sheet: per answer column, how many were judged and how many said yes."""

    questions: dict[str, AnswerCount]
    rows: int
    sheet: Path
    written_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_rows(self) -> list[dict[str, Any]]:
        """One row per question, with Self-Instruct's figure: question, yes, judged, share, self_instruct."""
        return [
            {"question": q.label, "yes": self.questions[q.column].yes, "judged": self.questions[q.column].judged,
             "share": self.questions[q.column].share, "self_instruct": q.self_instruct}
            for q in QUESTIONS
        ]

    def to_markdown(self) -> str:
        return markdown_table(
            ("question", "yes", "judged", "share", "Self-Instruct"),
            ((r["question"], r["yes"], r["judged"], format_share(r["share"]), format_share(r["self_instruct"]))
             for r in self.to_rows()),
        )

    def to_json(self) -> dict[str, Any]:
        """The content of ``audit.json`` (shape in the module docstring)."""
        return {
            "questions": {
                q.column: {"question": q.text, "yes": self.questions[q.column].yes,
                           "judged": self.questions[q.column].judged, "share": self.questions[q.column].share,
                           "self_instruct": q.self_instruct}
                for q in QUESTIONS
            },
            "sheet": str(self.sheet),
            "rows": self.rows,
            "written_at": self.written_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AuditSummary:
        questions = {column: AnswerCount(int(data["questions"][column]["yes"]), int(data["questions"][column]["judged"]))
                     for column in ANSWER_COLUMNS}
        return cls(questions, int(data["rows"]), Path(data["sheet"]), str(data["written_at"]))


def format_share(share: float | None) -> str:
    return "–" if share is None else f"{share:.1%}"


def load_audit_summary(run_dir: Path) -> AuditSummary | None:
    """The run's saved ``audit.json``, or None if it has not been audited."""
    path = Path(run_dir) / AUDIT_JSON
    if not path.exists():
        return None
    return AuditSummary.from_json(json.loads(path.read_text(encoding="utf-8")))


def summarize_audit(run_dir: Path, sheet: Path) -> AuditSummary:
    """Count the answers of a filled ``sheet`` of ``run_dir`` and save them as ``run_dir/audit.json``.

    Raises :class:`AuditSheetError` listing every problem of the sheet; nothing is written then.
    """
    run_dir, sheet = Path(run_dir), Path(sheet)
    instructions = {record_id(r): str(r.get("instruction") or "") for r in read_jsonl(run_dir / ACCEPTED)}
    problems: list[Problem] = []
    counts = {column: [0, 0] for column in ANSWER_COLUMNS}  # column -> [yes, judged]
    seen_on: dict[str, int] = {}
    rows = 0
    for line, cells in _sheet_rows(sheet):
        rows += 1

        def bad(column: str, message: str) -> None:
            problems.append(Problem(sheet, line, column, message))

        record = _canonical_record_id(cells["record"])
        if not cells["record"]:
            bad("record", "empty; every row needs the record id it was written with")
        elif record not in instructions:
            bad("record", f"{cells['record']!r} is not a record of {run_dir} ({ACCEPTED}); is the sheet from another run?")
        elif record in seen_on:
            bad("record", f"{cells['record']!r} is already on line {seen_on[record]}; a record counts once")
        else:
            seen_on[record] = line
            if _comparable(cells["instruction"]) != _comparable(instructions[record]):
                bad("instruction", f"differs from the run's record {record}: the sheet was edited, or is from another version of the run")

        answers: dict[str, bool | None] = {}
        for column in ANSWER_COLUMNS:
            text = cells[column].strip()
            if text and text.casefold() not in ANSWERS:
                bad(column, f"{cells[column]!r} is not an answer ({_ANSWER_HINT}, or blank for not judged)")
                answers[column] = None
            else:
                answers[column] = ANSWERS[text.casefold()] if text else None

        fields = [answers[c] for c in FIELD_QUESTIONS]
        if answers["all_valid"] is True and False in fields:
            saying_no = ", ".join(c for c in FIELD_QUESTIONS if answers[c] is False)
            bad("all_valid", f"yes, but {saying_no} says no; all fields are valid only when all three are")
        elif answers["all_valid"] is False and fields == [True, True, True]:
            bad("all_valid", "no, but valid_instruction, appropriate_input and correct_output all say yes")
        elif answers["all_valid"] is None and not cells["all_valid"].strip():
            if False in fields:
                answers["all_valid"] = False
            elif None not in fields:
                answers["all_valid"] = True

        for column, answer in answers.items():
            if answer is not None:
                counts[column][0] += answer
                counts[column][1] += 1
    if problems:
        raise AuditSheetError(problems)
    summary = AuditSummary({c: AnswerCount(yes, judged) for c, (yes, judged) in counts.items()}, rows, sheet.resolve())
    write_json_atomic(run_dir / AUDIT_JSON, summary.to_json())
    return summary


def _canonical_record_id(text: str) -> str:
    """``r12-c3`` for ``r12-c3``, and for a bare ``12-3`` typed by hand."""
    match = _RECORD_ID.fullmatch(text.strip())
    return f"r{int(match[1])}-c{int(match[2])}" if match else text.strip()


def _comparable(text: str) -> str:
    """Instruction text as a spreadsheet may give it back: with other line ends or outer blanks, the ' guard added or dropped."""
    return _unguard_formula(text.strip()).replace("\r\n", "\n").replace("\r", "\n").strip()


def _sheet_rows(sheet: Path) -> Iterator[tuple[int, dict[str, str]]]:
    """(line, cells by column) for each non-blank data row; line 1 is the header, as a spreadsheet numbers rows."""
    try:
        raw = sheet.read_bytes()
    except FileNotFoundError:
        raise AuditSheetError([Problem(sheet, 0, "file", "not found")]) from None
    except IsADirectoryError:
        raise AuditSheetError([Problem(sheet, 0, "file", "is a directory, not a file")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise AuditSheetError([Problem(sheet, line, "encoding", f"not UTF-8 (byte {exc.start}); save the sheet as 'CSV UTF-8'")]) from None
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text))
    header = [name.strip().lower() for name in next(reader, [])]
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        raise AuditSheetError([Problem(sheet, 1, "header", f"missing column(s) {', '.join(missing)}; "
                                                           f"expected {', '.join(SHEET_COLUMNS)}")])
    position = {name: header.index(name) for name in SHEET_COLUMNS if name in header}
    # Row numbers, not reader.line_num: a cell with line breaks spans several lines of the file but one row.
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        yield line, {name: row[position[name]] if name in position and position[name] < len(row) else ""
                     for name in SHEET_COLUMNS}


def _delimiter(text: str) -> str:
    """``,``, or the ``;`` or tab that some locales' Excel saves with: whichever splits the header into columns."""
    header = text.split("\n", 1)[0]
    for delimiter in (",", ";", "\t"):
        if "record" in (cell.strip().lower() for cell in next(csv.reader([header], delimiter=delimiter), [])):
            return delimiter
    return ","
