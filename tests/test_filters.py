"""Quality filters: each keeps a good candidate and drops a bad one with its reason."""

from __future__ import annotations

import pytest

from pipeline.config import DEFAULT_BLACKLIST_EN, DEFAULT_BLACKLIST_KO, GenerationConfig
from pipeline.filters import (
    BlacklistFilter,
    EmptyInstructionFilter,
    EmptyOutputFilter,
    ExactDuplicateFilter,
    InputEqualsOutputFilter,
    LanguageFilter,
    ProgramOpeningFilter,
    PunctuationStartFilter,
    WordCountFilter,
    build_filters,
)
from pipeline.curation import CurationChain
from pipeline.records import Candidate, Drop

GOOD = Candidate("Summarise the following paragraph in one sentence.", "The meeting moved to Friday.", "It moved to Friday.")


def c(instruction: str, input: str = "", output: str = "An answer.") -> Candidate:
    return Candidate(instruction, input, output)


def reason(verdict) -> str | None:
    """The drop reason of a step's verdict, or of a chain's (step, drop) verdict; None if kept."""
    if isinstance(verdict, tuple):
        verdict = verdict[1]
    return verdict.reason if isinstance(verdict, Drop) else None


# ---- word count ---------------------------------------------------------------------------------------------------
def test_word_count_bounds_inclusive():
    f = WordCountFilter(4, 150)
    assert f.check(c("one two three four")) is None
    assert f.check(c(" ".join(["w"] * 150))) is None
    assert reason(f.check(c("one two three"))) == "too_short"
    assert reason(f.check(c(" ".join(["w"] * 151)))) == "too_long"
    assert f.check(c("one two three")).detail == "3 words < 4"


def test_word_count_counts_whitespace_separated_words():
    assert reason(WordCountFilter(4, 150).check(c("one\ttwo\n\nthree   "))) == "too_short"


# ---- blacklist -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "instruction, word",
    [
        ("Describe the image in detail for a blind reader.", "image"),
        ("Describe the IMAGES in detail for a blind reader.", "images"),
        ("Draw a cat using ASCII characters only.", "draw"),
        ("Please go to the store and buy milk.", "go to"),
        ("Please GO   TO the nearest park today.", "go to"),
        ("Explain the image-based search feature briefly.", "image"),  # hyphen is a word boundary
    ],
)
def test_blacklist_drops(instruction, word):
    verdict = BlacklistFilter(DEFAULT_BLACKLIST_EN).check(c(instruction))
    assert reason(verdict) == "blacklist" and verdict.detail == word


@pytest.mark.parametrize(
    "instruction",
    [
        "Explain the mapping between keys and values in a dictionary.",  # "map" only as a whole word
        "Give an example of imagery in a famous poem.",
        "Explain why we are going to need more time.",  # "go to" is two whole words
        "Write a profile of a famous chef.",  # "file" inside "profile"
        "Explain why it is good to rest after exercise.",  # "good to" is not "go to"
    ],
)
def test_blacklist_keeps_on_word_boundaries(instruction):
    assert BlacklistFilter(DEFAULT_BLACKLIST_EN).check(c(instruction)) is None


@pytest.mark.parametrize(
    "instruction, word",
    [("다음 이미지를 설명하세요.", "이미지"), ("이 사진에 나온 사람을 묘사해 주세요.", "사진"), ("순서도를 만들어 주세요.", "순서도")],
)
def test_korean_blacklist_matches_substrings(instruction, word):
    verdict = BlacklistFilter(DEFAULT_BLACKLIST_KO).check(c(instruction))
    assert reason(verdict) == "blacklist" and verdict.detail == word


def test_korean_blacklist_keeps_clean_instruction():
    assert BlacklistFilter(DEFAULT_BLACKLIST_KO + DEFAULT_BLACKLIST_EN).check(c("다음 문장을 존댓말로 바꿔 주세요.")) is None


def test_blacklist_ignores_blank_words():
    f = BlacklistFilter(["", "  ", "audio"])
    assert len(f.patterns) == 1
    assert f.check(c("Summarise this text for me please.")) is None


@pytest.mark.parametrize("instruction", [
    "Draw a MAP of the town.", "Plot the data, then go\tto the next file.", "GO  TO the store", "Go to\u2028bed",
    "Describe the \u212aelvin scale and its images.",  # Kelvin sign: a non-ASCII text takes the regexes
    "Name the muſic genre.", "Profile the mapping of this remap.", "Explain the graphing of goto statements.",
    "지도를 보고 길을 설명하세요.", "이 image를 설명하세요.", "다음 문장을 요약하세요.", "Summarise: no banned word here.",
    "Paint a picture-perfect scene.", "Describe diagrams", "",
    "Describe your ärger calmly.", "Describe your Ärger calmly.",  # a non-Latin word matches case-sensitively
    "Write an E-MAIL to Bob.", "Write an email to Bob.",  # a Latin word whose token is not one [a-z0-9] run
])
def test_blacklist_gates_decide_as_the_word_patterns_alone(instruction):
    """The one search for all words before the per-word regexes only skips searches that cannot match: the verdict,
    and the word it names (the list's first match), are those of searching every word's pattern in order."""
    f = BlacklistFilter(DEFAULT_BLACKLIST_KO + DEFAULT_BLACKLIST_EN + ["go to", "Ärger", "e-mail"])
    expected = next((word for word, pattern in f.patterns if pattern.search(instruction)), None)
    verdict = f.check(c(instruction))
    assert (verdict.detail if verdict else None) == expected


# ---- openings, punctuation, language -------------------------------------------------------------------------------
def test_program_opening():
    f = ProgramOpeningFilter()
    assert reason(f.check(c("Write a program that sorts a list."))) == "program_opening"
    assert reason(f.check(c("WRITE A PROGRAM to add numbers."))) == "program_opening"
    assert f.check(c("Write a Python function that sorts a list.")) is None
    assert f.check(c("Explain how to write a program.")) is None


@pytest.mark.parametrize("first", ['"', "(", "-", "*", "#", ".", "¿", "«", "「", "“", "…", "、"])
def test_punctuation_start_drops(first):
    verdict = PunctuationStartFilter().check(c(first + "Explain the water cycle to a child."))
    assert reason(verdict) == "punctuation_start" and verdict.detail == first


@pytest.mark.parametrize("instruction", ["Explain the water cycle.", "3 reasons to learn Python?", "다음 글을 요약하세요.", ""])
def test_punctuation_start_keeps(instruction):
    assert PunctuationStartFilter().check(c(instruction)) is None


def test_language_en():
    f = LanguageFilter("en")
    assert f.check(c("Translate '안녕하세요' into English.")) is None
    assert reason(f.check(c("다음 문장을 번역하세요."))) == "not_english"
    assert reason(f.check(c("Ünïcode first letter here."))) == "not_english"


def test_language_ko():
    f = LanguageFilter("ko")
    assert f.check(c("Python으로 리스트를 정렬하는 방법을 설명하세요.")) is None
    assert reason(f.check(c("Explain how to sort a list in Python."))) == "not_korean"


# ---- outputs -------------------------------------------------------------------------------------------------------
def test_empty_output_and_instruction():
    assert EmptyOutputFilter().check(GOOD) is None
    assert reason(EmptyOutputFilter().check(c("Explain gravity to a child.", "", "  \n"))) == "empty_output"
    assert EmptyInstructionFilter().check(GOOD) is None
    assert reason(EmptyInstructionFilter().check(c("   "))) == "empty_instruction"


def test_input_equals_output():
    f = InputEqualsOutputFilter()
    assert f.check(GOOD) is None
    assert reason(f.check(c("Fix the grammar of the sentence.", "He goes home.", "  he GOES   home. "))) == "input_equals_output"
    assert f.check(c("Say something nice about me.", "", "")) is None  # empty input is not "repeated"


def test_exact_duplicates_seeds_and_accepted_state():
    f = ExactDuplicateFilter([("Summarise  the following paragraph in one sentence.", "the meeting moved to friday.")])
    assert reason(f.check(GOOD)) == "exact_duplicate"  # case/space-normalised match with a seed
    new = c("Name three rivers in Europe please.")
    assert f.check(new) is None
    assert f.check(new) is None  # checking alone does not remember
    f.accepted(new)
    assert reason(f.check(c("name three rivers in europe  please."))) == "exact_duplicate"
    assert f.check(c("Name three rivers in Europe please.", "Only long ones.")) is None  # different input


# ---- chain -----------------------------------------------------------------------------------------------------------
def test_chain_first_drop_wins_and_stats():
    chain = CurationChain([WordCountFilter(4, 150), ProgramOpeningFilter(), ExactDuplicateFilter()])
    assert chain.check(GOOD) is None
    assert reason(chain.check(c("Too short."))) == "too_short"
    step, drop = chain.check(c("Write a program that prints primes."))
    assert (step.name, drop.reason) == ("program_opening", "program_opening")
    counts = {name: (s["kept"], s["dropped"]) for name, s in chain.stats().items()}
    assert counts == {"word_count": (2, 1), "program_opening": (1, 1), "exact_duplicate": (1, 0)}
    chain.accepted(GOOD)
    assert reason(chain.check(GOOD)) == "exact_duplicate"
    assert chain.stats()["exact_duplicate"]["dropped"] == 1
    # Earlier sessions' counts are added on (a resumed run reports the whole run).
    resumed = CurationChain([WordCountFilter(4, 150)], earlier={"word_count": {"kept": 5, "dropped": 2, "seconds": 0.5, "tokens": 0}})
    resumed.check(c("Too short."))
    assert {k: resumed.stats()["word_count"][k] for k in ("kept", "dropped", "tokens")} == {"kept": 5, "dropped": 3, "tokens": 0}
    assert resumed.stats()["word_count"]["seconds"] >= 0.5
    with pytest.raises(ValueError, match="distinct names"):
        CurationChain([WordCountFilter(4, 150), WordCountFilter(1, 2)])


def names(chain: CurationChain) -> list[str]:
    return chain.names


def test_build_filters_default_en():
    chain = CurationChain(build_filters(GenerationConfig()))
    assert names(chain) == [
        "empty_instruction", "word_count", "blacklist", "program_opening", "punctuation_start", "language",
        "empty_output", "input_equals_output", "exact_duplicate",
    ]
    assert reason(chain.check(c("Describe this picture of a sunset."))) == "blacklist"
    assert chain.check(GOOD) is None


def test_build_filters_switches_off():
    config = GenerationConfig.from_dict({"filters": {
        "blacklist": [], "drop_program_openings": False, "drop_punctuation_start": False, "check_language": False,
        "drop_empty_output": False, "drop_input_equals_output": False, "drop_exact_duplicates": False,
        "min_instruction_words": 1, "max_instruction_words": 5,
    }})
    chain = CurationChain(build_filters(config, [(GOOD.instruction, GOOD.input)]))
    assert names(chain) == ["empty_instruction", "word_count"]
    assert chain.check(c("Write a program: draw images.", "x", "")) is None
    assert reason(chain.check(c("one two three four five six"))) == "too_long"


def test_build_filters_existing_pairs_are_duplicates():
    chain = CurationChain(build_filters(GenerationConfig(), [(GOOD.instruction, GOOD.input)]))
    assert reason(chain.check(GOOD)) == "exact_duplicate"


def test_build_filters_korean():
    chain = CurationChain(build_filters(GenerationConfig(language="ko")))
    assert chain.check(c("다음 문장을 더 정중한 표현으로 바꿔 주세요.", "", "알겠습니다.")) is None
    assert reason(chain.check(c("다음 그림을 보고 설명을 써 주세요.", "", "x"))) == "blacklist"
    assert reason(chain.check(c("Describe the history of the printing press.", "", "x"))) == "not_korean"
    # The English list applies to Korean runs too.
    assert reason(chain.check(c("다음 audio 내용을 요약해 주세요 지금.", "", "x"))) == "blacklist"


def test_build_filters_custom_blacklist():
    chain = CurationChain(build_filters(GenerationConfig.from_dict({"filters": {"blacklist": ["weather"]}})))
    assert chain.check(c("Describe the image of a red apple.")) is None
    assert reason(chain.check(c("What will the weather be tomorrow?"))) == "blacklist"
