"""Files: crash-safe writes, and the one reader of JSON and JSON-lines data that every stage uses.

Writes go to a temporary sibling, are fsynced and renamed over the target, so a crash leaves the old file or
the new one, never half of either.

:func:`read_json_values` reads seeds, generated records, training data and dedup inputs alike. JSON lines are
split on ``\\n`` only: a JSON string may hold a raw U+2028, U+2029, U+0085 or form feed, which ``str.splitlines()``
would treat as line breaks (the run store writes UTF-8 JSON, so a model's U+2028 stays raw). Every problem is a
:class:`Problem`, printed ``FILE:LINE: field: message`` so that a user can jump straight to it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TextIO


# ---- writing ---------------------------------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: What open() would give a new file: 0666 less the process umask (read once, at import: os.umask can only be read by
#: setting it).
_NEW_FILE_MODE = 0o666 & ~_umask()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_text_file(path: Path) -> Iterator[TextIO]:
    """A text file written next to ``path``, fsynced, then renamed over it: a crash leaves the old file or the new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, _NEW_FILE_MODE)  # mkstemp's 0600 would make datasets private to their writer
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented UTF-8 JSON with :func:`atomic_text_file`."""
    with atomic_text_file(path) as f:
        json.dump(data, f, ensure_ascii=False, indent=2)
        f.write("\n")


#: ``json.dumps(value, ensure_ascii=False)`` without building an encoder per call (the same output).
_encode = json.JSONEncoder(ensure_ascii=False).encode


def jsonl_bytes(records: Iterable[dict[str, Any]]) -> bytes:
    """Records as UTF-8 JSON lines (non-ASCII kept as is, so Hangul stays readable)."""
    return "".join([_encode(r) + "\n" for r in records]).encode("utf-8")


def write_jsonl_atomic(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Write ``records`` as JSON lines with :func:`atomic_text_file`, creating the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_text_file(path) as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


# ---- reading ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file. Line 0 means the file as a whole."""

    path: Path
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


class InputFileError(ValueError):
    """An input file that cannot be used. ``problems`` lists each one; ``str()`` has one per line."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


@dataclass(frozen=True)
class Located:
    """A JSON value read from a file, and where: its line, and its position among the file's values."""

    path: Path
    line: int
    index: int
    value: Any
    in_array: bool = False

    def problem(self, field: str, message: str) -> Problem:
        """A problem with ``field`` of this value; array elements are named ``[index].field``."""
        if self.in_array:
            field = f"[{self.index}]" + ("" if field.startswith("[") or not field else ".") + field
        return Problem(self.path, self.line, field or "(root)", message)

    def error(self, field: str, message: str) -> InputFileError:
        return InputFileError([self.problem(field, message)])


OnProblem = Callable[[Problem], None]


def read_json_values(path: str | Path, on_problem: OnProblem | None = None, max_line_bytes: int | None = None) -> Iterator[Located]:
    """The values of a JSON-lines file (one per non-blank line) or of a JSON array file, in order.

    A file whose first non-blank character is ``[`` is a JSON array unless it is named ``*.jsonl``; anything else
    is JSON lines. A bad line is passed to ``on_problem`` (reading goes on, so all problems of a file can be
    reported at once) or, without it, raised as :class:`InputFileError`.
    """
    path = Path(path)
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise InputFileError([Problem(path, 0, "file", "not found")]) from None
    except IsADirectoryError:
        raise InputFileError([Problem(path, 0, "file", "is a directory, not a file")]) from None
    except OSError as exc:
        raise InputFileError([Problem(path, 0, "file", f"cannot read: {exc.strerror}")]) from None
    with handle:
        head = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
        handle.seek(0)
        if head.startswith(b"[") and path.suffix.lower() != ".jsonl":
            yield from _array_values(path, handle.read())
        else:
            yield from _line_values(path, handle, on_problem or _raise, max_line_bytes)


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The objects of a JSON-lines file the project wrote (nothing if it does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return
    for item in read_json_values(path):
        if not isinstance(item.value, dict):
            raise item.error("(root)", f"expected a JSON object, got {type(item.value).__name__}")
        yield item.value


def _raise(problem: Problem) -> None:
    raise InputFileError([problem])


def _line_values(path: Path, handle, on_problem: OnProblem, max_line_bytes: int | None) -> Iterator[Located]:
    offset = 0
    index = 0
    # A binary file iterates on b"\n" alone, whatever Unicode line separators its strings hold.
    for number, raw in enumerate(handle, start=1):
        start, offset = offset, offset + len(raw)
        if not raw.strip():
            continue
        if max_line_bytes is not None and len(raw) > max_line_bytes:
            on_problem(Problem(path, number, "line", f"longer than {max_line_bytes} bytes"))
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            on_problem(Problem(path, number, "encoding", f"not valid UTF-8 (byte {start + exc.start})"))
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            on_problem(Problem(path, number, "json", f"invalid JSON: {exc.msg} (column {exc.colno})"))
            continue
        yield Located(path, number, index, value)
        index += 1


def _array_values(path: Path, raw: bytes) -> Iterator[Located]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputFileError([Problem(path, line, "encoding", f"not valid UTF-8 (byte {exc.start})")]) from None
    # Decoded element by element rather than with json.loads, to tell which line each element starts on.
    decoder = json.JSONDecoder()
    position = _skip_whitespace(text, text.index("[") + 1)
    index = 0
    try:
        while position < len(text) and text[position] != "]":
            value, end = decoder.raw_decode(text, position)
            yield Located(path, text.count("\n", 0, position) + 1, index, value, in_array=True)
            index += 1
            position = _skip_whitespace(text, end)
            if position < len(text) and text[position] == ",":
                position = _skip_whitespace(text, position + 1)
            elif position < len(text) and text[position] != "]":
                raise json.JSONDecodeError("expected ',' or ']'", text, position)
        if position >= len(text):
            raise json.JSONDecodeError("unterminated array", text, position)
        if text[position + 1 :].strip():
            raise json.JSONDecodeError("extra data after the array", text, _skip_whitespace(text, position + 1))
    except json.JSONDecodeError as exc:
        raise InputFileError([Problem(path, exc.lineno, "json", f"invalid JSON: {exc.msg} (column {exc.colno})")]) from None


def _skip_whitespace(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position
