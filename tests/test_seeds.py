"""Seed files: the repository's seeds load, and every kind of bad line is reported as FILE:LINE: field: message."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipeline import PROJECT_ROOT
from pipeline.seeds import MAX_LINE_BYTES, SeedError, load_seeds

HANGUL = re.compile(r"[\uac00-\ud7a3]")


def task(id_: str = "t1", **changes) -> dict:
    data = {
        "id": id_,
        "name": "n",
        "instruction": "Summarise the paragraph in one sentence.",
        "instances": [{"input": "Some paragraph.", "output": "A summary."}],
        "is_classification": False,
    }
    data.update(changes)
    return data


def line(data) -> str:
    return json.dumps(data, ensure_ascii=False)


def write(tmp_path: Path, *lines: str, name: str = "seeds.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(l + "\n" for l in lines), encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(SeedError) as info:
        load_seeds(path)
    lines = str(info.value).splitlines()
    assert [str(p) for p in info.value.problems] == lines
    return lines


# ---- the repository's seed files ---------------------------------------------------------------------------------
def test_english_seeds_load():
    tasks = load_seeds(PROJECT_ROOT / "seeds" / "seed_tasks.jsonl")
    assert len(tasks) >= 120
    assert len({t.id for t in tasks}) == len(tasks)
    assert all(t.instruction.strip() and t.instances[0].output.strip() for t in tasks)


def test_korean_seeds_load_and_are_korean():
    tasks = load_seeds(PROJECT_ROOT / "seeds" / "seed_tasks_ko.jsonl")
    assert len(tasks) >= 60
    assert len({t.id for t in tasks}) == len(tasks)
    not_korean = [t.id for t in tasks if not HANGUL.search(t.instruction)]
    assert not_korean == []


def test_valid_file_loads_fields(tmp_path):
    path = write(tmp_path, line(task("a")), "", line(task("b", instances=[{"output": "x"}], is_classification=True)))
    tasks = load_seeds(path)
    assert [t.id for t in tasks] == ["a", "b"]
    assert tasks[1].instances[0].input == ""  # input defaults to empty
    assert tasks[1].is_classification is True


def test_crlf_line_endings_are_accepted(tmp_path):
    path = tmp_path / "crlf.jsonl"
    path.write_bytes((line(task("a")) + "\r\n" + line(task("b")) + "\r\n").encode())
    assert [t.id for t in load_seeds(path)] == ["a", "b"]


def test_unicode_line_separator_inside_a_string_is_not_a_line_break(tmp_path):
    # JSON allows raw U+2028 / U+0085 / form feed inside strings; they must not split the line.
    path = write(tmp_path, line(task("a", instruction="Say hi\u2028politely\x0cand\u0085briefly.")), "{bad")
    lines = problems(path)
    assert lines == [f"{path}:2: json: invalid JSON: Expecting property name enclosed in double quotes (column 2)"]


# ---- errors -----------------------------------------------------------------------------------------------------
def test_invalid_json_names_line_k(tmp_path):
    path = write(tmp_path, line(task("a")), line(task("b")), '{"id": "c", "instruction": ', line(task("d")))
    (only,) = problems(path)
    assert only.startswith(f"{path}:3: json: invalid JSON")


@pytest.mark.parametrize("missing", ["instances", "instruction", "id"])
def test_missing_field(tmp_path, missing):
    data = task("a")
    del data[missing]
    path = write(tmp_path, line(task("z")), line(data))
    assert problems(path) == [f"{path}:2: {missing}: missing"]


def test_missing_output_in_instance(tmp_path):
    path = write(tmp_path, line(task("a", instances=[{"input": "x"}])))
    assert problems(path) == [f"{path}:1: instances.0.output: missing"]


def test_empty_instruction(tmp_path):
    path = write(tmp_path, line(task("a", instruction="   ")))
    (only,) = problems(path)
    assert only.startswith(f"{path}:1: instruction: ") and "must not be empty" in only


def test_empty_output(tmp_path):
    path = write(tmp_path, line(task("a")), line(task("b", instances=[{"input": "x", "output": " \n"}])))
    (only,) = problems(path)
    assert only.startswith(f"{path}:2: instances.0.output: ") and "must not be empty" in only


def test_empty_instances_list(tmp_path):
    path = write(tmp_path, line(task("a", instances=[])))
    (only,) = problems(path)
    assert only.startswith(f"{path}:1: instances: ")


def test_duplicate_ids_name_both_lines(tmp_path):
    path = write(tmp_path, line(task("a")), line(task("dup")), line(task("b")), line(task("dup")))
    (only,) = problems(path)
    assert only.startswith(f"{path}:4: id: duplicate id 'dup'")
    assert "line 2" in only


def test_not_utf8_names_line_of_bad_byte(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = (line(task("a")) + "\n").encode()
    bad = line(task("b", instruction="Caf\u00e9 menu: list the prices.")).encode("latin-1") + b"\n"
    path.write_bytes(good + good.replace(b'"a"', b'"a2"') + bad)
    (only,) = problems(path)
    assert only.startswith(f"{path}:3: encoding: not valid UTF-8")


def test_ten_megabyte_line_is_refused_fast(tmp_path):
    huge = line(task("big", instruction="word " * (10_000_000 // 5)))
    assert len(huge) > 10 * MAX_LINE_BYTES
    path = write(tmp_path, line(task("a")), huge, line(task("c")))
    assert problems(path) == [f"{path}:2: line: longer than {MAX_LINE_BYTES} bytes"]


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    (only,) = problems(path)
    assert only.startswith(f"{path}:0: file: ") and "empty" in only


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    assert problems(path) == [f"{path}:0: file: not found"]


@pytest.mark.parametrize("value", ["[1, 2]", '"text"', "42", "null"])
def test_non_object_line(tmp_path, value):
    path = write(tmp_path, line(task("a")), value)
    assert problems(path) == [f"{path}:2: json: each line must be a JSON object"]


def test_wrong_types(tmp_path):
    path = write(tmp_path, line(task("a", instances="not a list")), line(task("b", is_classification="maybe")))
    lines = problems(path)
    assert lines[0].startswith(f"{path}:1: instances: ")
    assert lines[1].startswith(f"{path}:2: is_classification: ")


def test_several_problems_reported_at_once(tmp_path):
    no_instances = task("c")
    del no_instances["instances"]
    path = write(
        tmp_path,
        line(task("a")),
        "not json",
        line(no_instances),
        line(task("d", instruction="")),
        line(task("a")),
        "[]",
        line(task("e", instances=[{"input": "", "output": ""}])),
    )
    lines = problems(path)
    assert [l.split(": ")[0] for l in lines] == [f"{path}:{n}" for n in (2, 3, 4, 5, 6, 7)]
    fields = [l.split(": ")[1] for l in lines]
    assert fields == ["json", "instances", "instruction", "id", "json", "instances.0.output"]
    for l in lines:
        assert re.match(r"^.+:\d+: [\w.()]+: .+$", l), l
