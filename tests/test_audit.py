"""The human audit sheet: sampling, spreadsheet-safe CSV, counting against hand-computed shares, every sheet error, the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pipeline.audit import (
    ANSWER_COLUMNS, AUDIT_JSON, AUDIT_SHEET, SHEET_COLUMNS, AuditSheetError, load_audit_summary, record_id,
    summarize_audit, write_audit_sheet,
)
from pipeline.cli import EXIT_BAD_INPUT, EXIT_OK, main
from pipeline.files import write_json_atomic, write_jsonl_atomic
from pipeline.store import ACCEPTED

RECORDS = [
    {"request_index": 0, "candidate_index": 0, "instruction": "Summarize the paragraph in one sentence.",
     "input": "The cat sat on the mat all day.", "output": "A cat spent the day on a mat."},
    {"request_index": 0, "candidate_index": 1, "instruction": "Name three primary colors.", "input": "",
     "output": "Red, yellow and blue."},
    {"request_index": 1, "candidate_index": 2, "instruction": "다음 문장을 영어로 번역하세요.",
     "input": "안녕하세요, 만나서 반갑습니다.", "output": "Hello, nice to meet you."},
    # A bullet list: a spreadsheet would read "- ..." as a formula.
    {"request_index": 2, "candidate_index": 3, "instruction": "- List two fruits.", "input": "",
     "output": "- apple\n- pear"},
    {"request_index": 12, "candidate_index": 5, "instruction": "Write a haiku about rain.", "input": "",
     "output": "Soft rain on the roof\nwhispers to the sleeping town\npuddles hold the sky"},
]


def make_run(tmp_path: Path, records: list[dict] = RECORDS) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_json_atomic(run_dir / "run.json", {"run_name": "t", "config": {}})
    write_jsonl_atomic(run_dir / ACCEPTED, records)
    return run_dir


def read_sheet(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def save_sheet(path: Path, rows: list[dict[str, str]], encoding: str = "utf-8-sig", delimiter: str = ",",
               columns: tuple[str, ...] = SHEET_COLUMNS) -> Path:
    with open(path, "w", encoding=encoding, newline="") as f:
        writer = csv.DictWriter(f, columns, delimiter=delimiter, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def filled(run_dir: Path, answers: dict[str, str], path: Path | None = None, **save) -> Path:
    """The run's sheet with ``answers`` ("valid_instruction appropriate_input correct_output all_valid", blanks as -)."""
    sheet = write_audit_sheet(run_dir, overwrite=True)
    rows = read_sheet(sheet)
    for row in rows:
        for column, answer in zip(ANSWER_COLUMNS, answers.get(row["record"], "- - - -").split()):
            row[column] = "" if answer == "-" else answer
    return save_sheet(path or sheet, rows, **save)


# ---- the sheet -----------------------------------------------------------------------------------------------------
def test_sheet_has_every_record_when_fewer_than_n_with_a_bom_and_empty_answers(tmp_path):
    run_dir = make_run(tmp_path)
    sheet = write_audit_sheet(run_dir)
    assert sheet == run_dir / AUDIT_SHEET
    raw = sheet.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfrecord,instruction,input,output,")  # Excel needs the BOM for Hangul
    with open(sheet, encoding="utf-8-sig", newline="") as f:
        header, *rows = list(csv.reader(f))
    assert tuple(header) == SHEET_COLUMNS
    by_id = {row[0]: dict(zip(header, row)) for row in rows}
    assert sorted(by_id) == sorted(["r0-c0", "r0-c1", "r1-c2", "r2-c3", "r12-c5"])
    assert all(by_id[r][c] == "" for r in by_id for c in (*ANSWER_COLUMNS, "notes"))
    korean = by_id["r1-c2"]
    assert (korean["instruction"], korean["input"]) == ("다음 문장을 영어로 번역하세요.", "안녕하세요, 만나서 반갑습니다.")
    assert by_id["r12-c5"]["output"] == RECORDS[4]["output"]  # line breaks inside a cell survive
    assert by_id["r0-c1"]["input"] == ""
    # Cells a spreadsheet would evaluate as formulas are guarded.
    assert by_id["r2-c3"]["instruction"] == "'- List two fruits." and by_id["r2-c3"]["output"] == "'- apple\n- pear"


def test_sample_has_n_distinct_records_and_depends_only_on_the_seed(tmp_path):
    records = [{"request_index": i // 3, "candidate_index": i, "instruction": f"Task number {i}.", "input": "",
                "output": str(i)} for i in range(40)]
    run_dir = make_run(tmp_path, records)
    ids = lambda path: [row["record"] for row in read_sheet(path)]  # noqa: E731
    first = ids(write_audit_sheet(run_dir, tmp_path / "a.csv", n=10, seed=7))
    again = ids(write_audit_sheet(run_dir, tmp_path / "b.csv", n=10, seed=7))
    other = ids(write_audit_sheet(run_dir, tmp_path / "c.csv", n=10, seed=8))
    assert len(first) == len(set(first)) == 10
    assert set(first) <= {record_id(r) for r in records}
    assert first == again
    assert first != other
    assert len(read_sheet(write_audit_sheet(run_dir, tmp_path / "all.csv", n=40))) == 40


def test_an_existing_sheet_is_kept_unless_overwritten(tmp_path):
    run_dir = make_run(tmp_path)
    sheet = filled(run_dir, {"r0-c0": "yes yes yes yes"})
    before = sheet.read_bytes()
    with pytest.raises(FileExistsError):
        write_audit_sheet(run_dir)
    assert sheet.read_bytes() == before
    write_audit_sheet(run_dir, overwrite=True)
    assert sheet.read_bytes() != before
    with pytest.raises(ValueError, match="at least 1"):
        write_audit_sheet(run_dir, tmp_path / "none.csv", n=0)


# ---- counting ------------------------------------------------------------------------------------------------------
def test_shares_match_hand_counts_and_are_saved(tmp_path):
    run_dir = make_run(tmp_path)
    sheet = filled(run_dir, {
        "r0-c0": "yes yes yes yes",
        "r0-c1": "y - n n",          # empty input left blank: not judged
        "r1-c2": "예 네 아니오 아니요",
        "r2-c3": "no 1 ✓ 0",
        "r12-c5": "TRUE - - -",      # all_valid not derivable: two blanks
    })
    summary = summarize_audit(run_dir, sheet)
    # valid_instruction 4 yes / 5; appropriate_input 3/3; correct_output 2/4; all_valid 1/4.
    assert summary.rows == 5
    assert summary.to_rows() == [
        {"question": "valid instruction", "yes": 4, "judged": 5, "share": 0.8, "self_instruct": 0.92},
        {"question": "appropriate input", "yes": 3, "judged": 3, "share": 1.0, "self_instruct": 0.79},
        {"question": "correct output", "yes": 2, "judged": 4, "share": 0.5, "self_instruct": 0.58},
        {"question": "all valid", "yes": 1, "judged": 4, "share": 0.25, "self_instruct": 0.54},
    ]
    saved = json.loads((run_dir / AUDIT_JSON).read_text(encoding="utf-8"))
    assert saved["questions"]["correct_output"] == {
        "question": "Is the output a correct and acceptable response to the instruction and input?",
        "yes": 2, "judged": 4, "share": 0.5, "self_instruct": 0.58}
    assert saved["rows"] == 5 and saved["sheet"] == str(sheet.resolve()) and saved["written_at"].endswith("+00:00")
    assert load_audit_summary(run_dir) == summary
    assert "| correct output | 2 | 4 | 50.0% | 58.0% |" in summary.to_markdown()


def test_blank_all_valid_is_derived_from_the_other_three(tmp_path):
    run_dir = make_run(tmp_path)
    sheet = filled(run_dir, {
        "r0-c0": "yes yes yes -",    # derived yes
        "r0-c1": "yes no yes -",     # derived no
        "r1-c2": "no - - -",         # derived no: one field is already invalid
        "r2-c3": "yes - yes -",      # not derivable
        "r12-c5": "- - - -",         # not judged at all
    })
    summary = summarize_audit(run_dir, sheet)
    assert (summary.questions["all_valid"].yes, summary.questions["all_valid"].judged) == (1, 3)
    assert summary.questions["appropriate_input"].judged == 2


def test_nothing_judged_gives_no_share(tmp_path):
    run_dir = make_run(tmp_path)
    summary = summarize_audit(run_dir, write_audit_sheet(run_dir))
    assert summary.rows == 5
    assert all(row["judged"] == 0 and row["share"] is None for row in summary.to_rows())
    assert "| valid instruction | 0 | 0 | – | 92.0% |" in summary.to_markdown()


@pytest.mark.parametrize("yes, no", [("yes", "no"), ("Y", "N"), ("True", "FALSE"), ("1", "0"), ("✓", "✗"),
                                     ("예", "아니오"), ("네", "아니요"), (" YES ", " No ")])
def test_every_spelling_of_an_answer(tmp_path, yes, no):
    run_dir = make_run(tmp_path)
    rows = read_sheet(write_audit_sheet(run_dir))
    rows[0]["valid_instruction"], rows[1]["valid_instruction"] = yes, no
    summary = summarize_audit(run_dir, save_sheet(run_dir / AUDIT_SHEET, rows))
    assert (summary.questions["valid_instruction"].yes, summary.questions["valid_instruction"].judged) == (1, 2)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-8"])
@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_sheet_with_or_without_bom_and_any_usual_separator(tmp_path, encoding, delimiter):
    run_dir = make_run(tmp_path)
    sheet = filled(run_dir, {"r1-c2": "예 예 예 -", "r0-c0": "no yes yes -"}, path=tmp_path / "saved.csv",
                   encoding=encoding, delimiter=delimiter)
    assert sheet.read_bytes().startswith(b"\xef\xbb\xbf") == (encoding == "utf-8-sig")
    summary = summarize_audit(run_dir, sheet)
    assert (summary.questions["all_valid"].yes, summary.questions["all_valid"].judged) == (1, 2)


def test_a_sheet_without_the_formula_guard_or_with_a_bare_record_id_still_matches(tmp_path):
    """A spreadsheet may drop the ' guard on save; a hand-typed id may lack the r/c letters."""
    run_dir = make_run(tmp_path)
    rows = read_sheet(write_audit_sheet(run_dir))
    for row in rows:
        row["instruction"] = row["instruction"].removeprefix("'")
        row["record"] = row["record"].replace("r", "").replace("c", "")
        row["valid_instruction"] = "yes"
    summary = summarize_audit(run_dir, save_sheet(run_dir / AUDIT_SHEET, rows))
    assert summary.questions["valid_instruction"].judged == 5


# ---- errors ----------------------------------------------------------------------------------------------------------
def test_every_bad_cell_is_reported_with_file_line_and_column_and_nothing_is_saved(tmp_path):
    run_dir = make_run(tmp_path)
    good = {r["record"]: r for r in read_sheet(write_audit_sheet(run_dir))}
    rows = [
        {**good["r12-c5"], "valid_instruction": "yes"},                       # line 2; its output spans three file lines
        {**good["r0-c0"], "correct_output": "maybe", "all_valid": "sort of"},  # line 3: two bad answers
        {**good["r0-c1"], "instruction": "Name four primary colors."},        # line 4: edited instruction
        {**good["r1-c2"], "record": "r9-c9"},                                 # line 5: not in the run
        {},                                                                    # line 6: blank row, skipped
        {**good["r0-c0"]},                                                    # line 7: record twice
        {**good["r2-c3"], "valid_instruction": "no", "appropriate_input": "yes",
         "correct_output": "yes", "all_valid": "yes"},                        # line 8: all valid despite a no
        {**good["r1-c2"], "record": "", "valid_instruction": "yes"},          # line 9: no record id
    ]
    sheet = save_sheet(tmp_path / "sheet.csv", rows)
    with pytest.raises(AuditSheetError) as caught:
        summarize_audit(run_dir, sheet)
    answers = "(yes/no/y/n/true/false/1/0/✓/✗/예/아니오/네/아니요, or blank for not judged)"
    assert [str(p) for p in caught.value.problems] == [
        f"{sheet}:3: correct_output: 'maybe' is not an answer {answers}",
        f"{sheet}:3: all_valid: 'sort of' is not an answer {answers}",
        f"{sheet}:4: instruction: differs from the run's record r0-c1: the sheet was edited, or is from another version of the run",
        f"{sheet}:5: record: 'r9-c9' is not a record of {run_dir} (accepted.jsonl); is the sheet from another run?",
        f"{sheet}:7: record: 'r0-c0' is already on line 3; a record counts once",
        f"{sheet}:8: all_valid: yes, but valid_instruction says no; all fields are valid only when all three are",
        f"{sheet}:9: record: empty; every row needs the record id it was written with",
    ]
    assert isinstance(caught.value, ValueError) and str(caught.value).count("\n") == 6
    assert not (run_dir / AUDIT_JSON).exists()


def test_all_valid_no_when_every_field_says_yes_is_an_error(tmp_path):
    run_dir = make_run(tmp_path)
    sheet = filled(run_dir, {"r0-c0": "yes yes yes no"})
    line = 2 + [r["record"] for r in read_sheet(sheet)].index("r0-c0")
    with pytest.raises(AuditSheetError, match=rf"{line}: all_valid: no, but valid_instruction, appropriate_input"):
        summarize_audit(run_dir, sheet)


def test_a_sheet_of_another_run_is_refused_row_by_row(tmp_path):
    run_dir = make_run(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    write_jsonl_atomic(other / ACCEPTED, [{**r, "request_index": r["request_index"] + 100} for r in RECORDS])
    with pytest.raises(AuditSheetError) as caught:
        summarize_audit(run_dir, write_audit_sheet(other))
    assert len(caught.value.problems) == 5
    assert all(p.field == "record" and "is the sheet from another run?" in p.message for p in caught.value.problems)


def test_missing_columns_unreadable_encoding_and_missing_file(tmp_path):
    run_dir = make_run(tmp_path)
    rows = read_sheet(write_audit_sheet(run_dir))
    no_answers = save_sheet(tmp_path / "cut.csv", rows, columns=("record", "instruction", "valid_instruction"))
    with pytest.raises(AuditSheetError, match=r"cut.csv:1: header: missing column\(s\) appropriate_input, correct_output, all_valid"):
        summarize_audit(run_dir, no_answers)
    # Excel's plain "CSV" on a Korean Windows is cp949.
    cp949 = save_sheet(tmp_path / "cp949.csv", rows, encoding="cp949")
    korean_line = 1 + [line[:5] for line in cp949.read_bytes().split(b"\n")].index(b"r1-c2")
    with pytest.raises(AuditSheetError, match=rf"cp949.csv:{korean_line}: encoding: not UTF-8 .*save the sheet as 'CSV UTF-8'"):
        summarize_audit(run_dir, cp949)
    with pytest.raises(AuditSheetError, match="nowhere.csv:0: file: not found"):
        summarize_audit(run_dir, tmp_path / "nowhere.csv")
    assert not (run_dir / AUDIT_JSON).exists()


# ---- command line ----------------------------------------------------------------------------------------------------
def test_cli_writes_a_sheet_then_counts_it(tmp_path, capsys):
    run_dir = make_run(tmp_path)
    assert main(["audit", str(run_dir), "--write", "--n", "3", "--seed", "1"]) == EXIT_OK
    sheet = Path(capsys.readouterr().out.strip())
    assert sheet == run_dir / AUDIT_SHEET and len(read_sheet(sheet)) == 3
    assert main(["audit", str(run_dir), "--write"]) == EXIT_BAD_INPUT  # would overwrite the answers
    assert "--force" in capsys.readouterr().err
    assert main(["audit", str(run_dir), "--write", "--force", "-o", str(tmp_path / "mine.csv")]) == EXIT_OK
    assert capsys.readouterr().out.strip() == str(tmp_path / "mine.csv")

    rows = read_sheet(tmp_path / "mine.csv")
    for row, answers in zip(rows, ["yes yes yes", "yes no yes", "no yes no", "yes yes no", "yes yes yes"]):
        row.update(zip(ANSWER_COLUMNS, answers.split()))
    save_sheet(tmp_path / "mine.csv", rows)
    assert main(["audit", str(run_dir), str(tmp_path / "mine.csv")]) == EXIT_OK
    out = capsys.readouterr().out
    # valid instruction 4/5, appropriate input 4/5, correct output 3/5, all valid (derived) 2/5.
    lines = {line.split()[1]: line.split() for line in out.splitlines() if line.split()[:1] == ["│"] and len(line.split()) > 8}
    assert lines["valid"][3:] == ["│", "4", "│", "5", "│", "80.0%", "│", "92.0%", "│"]
    assert lines["appropriate"][3:] == ["│", "4", "│", "5", "│", "80.0%", "│", "79.0%", "│"]
    assert lines["correct"][3:] == ["│", "3", "│", "5", "│", "60.0%", "│", "58.0%", "│"]
    assert lines["all"][3:] == ["│", "2", "│", "5", "│", "40.0%", "│", "54.0%", "│"]
    assert "Self-Instruct" in out and f"saved {run_dir / AUDIT_JSON}" in out
    assert json.loads((run_dir / AUDIT_JSON).read_text(encoding="utf-8"))["questions"]["all_valid"]["share"] == 0.4


def test_cli_counts_the_default_sheet(tmp_path, capsys):
    run_dir = make_run(tmp_path)
    filled(run_dir, {"r0-c0": "yes yes yes -"})
    assert main(["audit", str(run_dir)]) == EXIT_OK
    assert "100.0%" in capsys.readouterr().out


def test_cli_bad_sheet_exits_2_with_every_problem_on_stderr(tmp_path, capsys):
    run_dir = make_run(tmp_path)
    sheet = filled(run_dir, {"r0-c0": "maybe yes yes -", "r1-c2": "yes 아마 yes -"})
    assert main(["audit", str(run_dir), str(sheet)]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    ids = [r["record"] for r in read_sheet(sheet)]
    assert f"{sheet}:{2 + ids.index('r0-c0')}: valid_instruction: 'maybe' is not an answer" in captured.err
    assert f"{sheet}:{2 + ids.index('r1-c2')}: appropriate_input: '아마' is not an answer" in captured.err
    assert "2 problem(s); nothing was counted" in captured.err and captured.out == ""
    assert not (run_dir / AUDIT_JSON).exists()


def test_cli_refuses_what_is_not_a_run_or_mixes_the_two_modes(tmp_path, capsys):
    run_dir = make_run(tmp_path)
    assert main(["audit", str(tmp_path), "--write"]) == EXIT_BAD_INPUT
    assert f"{tmp_path}: not a run directory (no run.json)" in capsys.readouterr().err
    assert main(["audit", str(run_dir), "--n", "5"]) == EXIT_BAD_INPUT
    assert "--n only go with --write" in capsys.readouterr().err
    assert main(["audit", str(run_dir), "--seed", "0"]) == EXIT_BAD_INPUT
    assert main(["audit", str(run_dir), "other.csv", "--write"]) == EXIT_BAD_INPUT
    assert main(["audit", str(run_dir), "--write", "--n", "0"]) == EXIT_BAD_INPUT
    assert "at least 1" in capsys.readouterr().err
    assert main(["audit", str(run_dir)]) == EXIT_BAD_INPUT  # no sheet written yet
    assert "audit_sheet.csv:0: file: not found" in capsys.readouterr().err
