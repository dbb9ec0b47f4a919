"""Parsing completions into candidates: structured JSON and Alpaca-style numbered text blocks."""

from __future__ import annotations

import json

import pytest

from pipeline.parse import parse_completion, parse_structured, parse_text
from pipeline.records import Candidate


def structured(*tasks: tuple[str, str, str]) -> str:
    return json.dumps({"tasks": [{"instruction": i, "input": x, "output": o} for i, x, o in tasks]})


# ---- structured ---------------------------------------------------------------------------------------------------
def test_structured_ok_strips_whitespace():
    text = structured(("  Name three primary colours. ", "", " Red, blue, yellow.\n"), ("Sort the list.", "3, 1, 2", "1, 2, 3"))
    result = parse_structured(text, "stop")
    assert result.failures == []
    assert result.candidates == [
        Candidate("Name three primary colours.", "", "Red, blue, yellow."),
        Candidate("Sort the list.", "3, 1, 2", "1, 2, 3"),
    ]


def test_structured_via_parse_completion():
    result = parse_completion(structured(("Say hi to me.", "", "Hi!")), "stop", "structured")
    assert result.candidates == [Candidate("Say hi to me.", "", "Hi!")]


@pytest.mark.parametrize(
    "marker", ["<noinput>", "<NoInput>", " <noinput> ", "<no input>", "noinput", "None", "N/A", "<none>", "없음", "<입력 없음>"]
)
def test_no_input_markers_become_empty(marker):
    result = parse_structured(structured(("Tell me a joke please.", marker, "Why did...")), "stop")
    assert result.candidates[0].input == ""


def test_real_input_is_kept():
    result = parse_structured(structured(("Fix the grammar.", "He go home.", "He goes home.")), "stop")
    assert result.candidates[0].input == "He go home."


@pytest.mark.parametrize(
    "text",
    [
        '{"tasks": [{"instruction": "a", "input": "", "output": "b"}',  # unterminated
        "Sure! Here are the tasks: {\"tasks\": []}",  # chatter before JSON
        '{"tasks": [{"instruction": "a", "output": "b"}]}',  # missing field
        '{"tasks": [{"instruction": "a", "input": "", "output": "b", "extra": 1}]}',  # schema forbids extra
        "",
    ],
)
def test_structured_invalid_is_parse_error(text):
    result = parse_structured(text, "stop")
    assert result.candidates == []
    assert [f.reason for f in result.failures] == ["parse_error"]
    assert result.failures[0].detail


def test_structured_invalid_with_length_is_truncated():
    text = structured(("Name three colours.", "", "Red, blue, yellow."))[:-20]
    result = parse_structured(text, "length")
    assert result.candidates == []
    assert [f.reason for f in result.failures] == ["truncated"]


def test_structured_complete_json_with_length_is_still_ok():
    result = parse_structured(structured(("Say hi to me.", "", "Hi!")), "length")
    assert result.failures == [] and len(result.candidates) == 1


# ---- text -------------------------------------------------------------------------------------------------------
ALPACA = """\
1. Instruction: Give three tips for staying healthy.
1. Input:
<noinput>
1. Output:
Eat well, exercise and sleep enough.
###
2. Instruction: Translate the sentence into French.
2. Input:
Good morning.
2. Output:
Bonjour.
###
3. Instruction: Classify the sentiment of the review.
3. Input:
I loved every minute of it!
3. Output:
Positive
"""


def test_text_alpaca_blocks():
    result = parse_text(ALPACA, "stop")
    assert result.failures == []
    assert result.candidates == [
        Candidate("Give three tips for staying healthy.", "", "Eat well, exercise and sleep enough."),
        Candidate("Translate the sentence into French.", "Good morning.", "Bonjour."),
        Candidate("Classify the sentiment of the review.", "I loved every minute of it!", "Positive"),
    ]
    assert parse_completion(ALPACA, "stop", "text") == result


def test_text_leading_separator_and_multiline_output():
    text = "###\n1. Instruction: List two fruits.\n1. Input:\n<noinput>\n1. Output:\n- apple\n- pear\n###\n"
    result = parse_text(text, "stop")
    assert result.candidates == [Candidate("List two fruits.", "", "- apple\n- pear")]
    assert result.failures == []


def test_text_without_separators():
    text = ALPACA.replace("###\n", "")
    result = parse_text(text, "stop")
    assert [c.instruction for c in result.candidates] == [
        "Give three tips for staying healthy.",
        "Translate the sentence into French.",
        "Classify the sentiment of the review.",
    ]
    assert result.candidates[1].input == "Good morning."
    assert result.failures == []


def test_text_varying_case_spacing_and_numbering():
    text = (
        "1)  INSTRUCTION :  Name a prime number.\n   1) input:   \n 1)OUTPUT:  7\n"
        "  ####  \n"
        "instruction: Reverse the word.\nInput: abc\noutput: cba\n"
        "###\n"
        "12 .Instruction:Count the vowels.\n12 . Input : banana\n12 . Output :3\n"
    )
    result = parse_text(text, "stop")
    assert result.failures == []
    assert result.candidates == [
        Candidate("Name a prime number.", "", "7"),
        Candidate("Reverse the word.", "abc", "cba"),
        Candidate("Count the vowels.", "banana", "3"),
    ]


def test_text_preamble_is_not_a_failure():
    text = "Here are three new tasks:\n###\n" + ALPACA + "###\nI hope these help!\n"
    result = parse_text(text, "stop")
    assert len(result.candidates) == 3
    assert result.failures == []


def test_text_truncated_last_block_dropped():
    text = ALPACA + "###\n4. Instruction: Write a haiku about autumn.\n4. Input:\n<noinput>\n4. Output:\nLeaves fall and"
    result = parse_text(text, "length")
    assert len(result.candidates) == 3
    assert [f.reason for f in result.failures] == ["truncated"]
    # With finish_reason "stop" the same last block is complete and kept.
    assert len(parse_text(text, "stop").candidates) == 4


def test_text_truncated_without_separators():
    text = ALPACA.replace("###\n", "") + "4. Instruction: Write a haiku.\n4. Inp"
    result = parse_text(text, "length")
    assert len(result.candidates) == 3
    assert [f.reason for f in result.failures] == ["truncated"]


def test_text_block_missing_output_is_parse_error():
    text = "1. Instruction: Name a colour.\n1. Input:\n<noinput>\n###\n2. Instruction: Name a fruit.\n2. Input:\n\n2. Output:\nApple\n"
    result = parse_text(text, "stop")
    assert result.candidates == [Candidate("Name a fruit.", "", "Apple")]
    assert [f.reason for f in result.failures] == ["parse_error"]
    assert "block 1" in result.failures[0].detail


@pytest.mark.parametrize("garbage", ["", "   \n", "lorem ipsum dolor sit amet", "{\"tasks\": []}", "###\n###\n"])
def test_text_garbage_is_parse_error(garbage):
    result = parse_text(garbage, "stop")
    assert result.candidates == []
    assert [f.reason for f in result.failures] == ["parse_error"]


def test_text_separator_missing_between_some_blocks():
    text = ALPACA.replace("###\n3.", "3.", 1)  # blocks 1|2 separated, 2 and 3 run together
    result = parse_text(text, "stop")
    assert result.failures == []
    assert [c.output for c in result.candidates] == ["Eat well, exercise and sleep enough.", "Bonjour.", "Positive"]


def test_text_preamble_without_separators_is_not_a_failure():
    text = "Sure! Here are the new tasks.\n\n" + ALPACA.replace("###\n", "")
    result = parse_text(text, "stop")
    assert len(result.candidates) == 3 and result.failures == []
