"""ROUGE-L dedup on Korean: rouge-score's tokenizer drops Hangul; the ``ko`` (Kiwi morphemes) tokenizer does not."""

from __future__ import annotations

import logging

import pytest

from pipeline.dedup import RougeDedup
from pipeline.text import (
    get_kiwi,
    is_mostly_hangul,
    tokenize_auto,
    tokenize_korean,
    tokenize_rouge,
    tokenize_unicode,
)

ORIGINALS = [
    "주어진 영화 리뷰가 긍정적인지 부정적인지 판단하고 그 이유를 간단히 설명하세요.",
    "다음 문장을 읽고 글쓴이가 전달하려는 핵심 메시지를 한 문장으로 요약해 주세요.",
    "파이썬으로 주어진 리스트에서 중복된 값을 제거하고 원래 순서를 유지하는 함수를 작성하세요.",
    "이메일의 어조를 더 정중하고 전문적으로 바꾸어 고객에게 보낼 수 있도록 다시 써 주세요.",
    "건강한 아침 식사를 위해 준비 시간이 10분 이내인 메뉴를 세 가지 추천해 주세요.",
    "초등학생도 이해할 수 있도록 광합성의 원리를 쉬운 말로 설명해 주세요.",
    "서울에서 부산까지 기차로 여행할 때 들르면 좋은 도시를 추천해 주세요.",
]

# (original index, near-copy, what changed)
NEAR_COPIES = [
    (0, "주어진 영화 리뷰는 긍정적인지 부정적인지 판단하고 그 이유를 간단히 설명하세요.", "particle 가 -> 는"),
    (1, "다음 문장을 읽고 글쓴이는 전달하려는 핵심 메시지를 한 문장으로 요약해 주세요.", "particle 가 -> 는"),
    (5, "초등학생도 이해할 수 있도록 광합성의 원리는 쉬운 말로 설명해 주세요.", "particle 를 -> 는"),
    (4, "건강한 아침 식사를 위해 준비 시간은 10분 이내인 메뉴를 세 가지 추천해 주세요.", "particle 이 -> 은"),
    (2, "파이썬으로 주어진 리스트에서 중복된 값을 제거하고 순서를 유지하는 함수를 작성하세요.", "word dropped"),
    (3, "이메일의 어조를 더 정중하고 전문적으로 바꾸어 고객에게 보낼 수 있도록 써 주세요.", "word dropped"),
    (0, "주어진 영화 리뷰가 긍정적인지 부정적인지 판단하고 간단히 그 이유를 설명하세요.", "adjacent words swapped"),
    (6, "부산에서 서울까지 기차로 여행할 때 들르면 좋은 도시를 추천해 주세요.", "adjacent words swapped"),
]

# Three particles changed in an eight-word sentence: a third of the words differ, but few morphemes do.
PARTICLE_HEAVY_ORIGINAL = "고객의 불만 사항을 읽고 정중한 답장을 작성해 주세요."
PARTICLE_HEAVY_COPY = "고객이 불만 사항은 읽고 정중한 답장이 작성해 주세요."


@pytest.fixture(scope="module", autouse=True)
def warm_kiwi() -> None:
    get_kiwi()  # load the model once, outside the timed tests


def test_kiwi_is_a_lazy_singleton() -> None:
    assert get_kiwi() is get_kiwi()


@pytest.mark.parametrize("tokenizer", ["ko", "unicode", "auto"])
def test_exact_copies_are_rejected(tokenizer: str) -> None:
    dedup = RougeDedup(tokenizer=tokenizer)
    dedup.add_seeds(ORIGINALS)
    for index, text in enumerate(ORIGINALS):
        decision = dedup.add(text)
        assert not decision.kept and decision.score == 1.0 and decision.similar_to == index


@pytest.mark.parametrize("tokenizer", ["ko", "unicode", "auto"])
@pytest.mark.parametrize(("original", "copy", "change"), NEAR_COPIES, ids=[change for *_, change in NEAR_COPIES])
def test_near_copies_are_rejected(tokenizer: str, original: int, copy: str, change: str) -> None:
    # One changed word in ~10: both the morpheme and the whole-word tokenizer stay well above 0.7.
    dedup = RougeDedup(tokenizer=tokenizer)
    dedup.add_seeds(ORIGINALS)
    decision = dedup.add(copy)
    assert not decision.kept, change
    assert dedup.texts[decision.similar_to] == ORIGINALS[original]


def test_particle_changes_need_morphemes() -> None:
    """Whole-word tokens see three of eight words changed (F 0.625); morphemes see three particles (F > 0.8)."""
    assert not RougeDedup(tokenizer="ko").add_many([PARTICLE_HEAVY_ORIGINAL, PARTICLE_HEAVY_COPY])[1].kept
    assert RougeDedup(tokenizer="unicode").add_many([PARTICLE_HEAVY_ORIGINAL, PARTICLE_HEAVY_COPY])[1].kept


@pytest.mark.parametrize("tokenizer", ["ko", "unicode"])
def test_unrelated_sentences_are_kept(tokenizer: str) -> None:
    decisions = RougeDedup(tokenizer=tokenizer).add_many(ORIGINALS)
    assert all(decision.kept for decision in decisions)
    assert max(decision.score for decision in decisions) < 0.5


def test_rouge_tokenizer_on_hangul_warns_once_and_filters_nothing(caplog: pytest.LogCaptureFixture) -> None:
    dedup = RougeDedup(tokenizer="rouge")
    with caplog.at_level(logging.WARNING, logger="pipeline.dedup"):
        decisions = dedup.add_many([ORIGINALS[0], ORIGINALS[0], ORIGINALS[1]])
    assert all(decision.kept for decision in decisions)  # every Hangul character is dropped: no tokens, score 0
    warnings = [record for record in caplog.records if record.name == "pipeline.dedup"]
    assert len(warnings) == 1 and "tokenizer='ko'" in warnings[0].getMessage()


def test_no_warning_for_english_or_for_korean_tokenizers(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.dedup"):
        RougeDedup(tokenizer="rouge").add_many(["Summarize the text.", "Translate '안녕하세요' into English."])
        RougeDedup(tokenizer="ko").add(ORIGINALS[0])
        RougeDedup(tokenizer="auto").add(ORIGINALS[0])
    assert not [record for record in caplog.records if record.name == "pipeline.dedup"]


def test_korean_tokenizer_keeps_morphemes_and_lowercases_latin() -> None:
    tokens = tokenize_korean("Python 3.11에서 JSON 파일을 읽는 방법을 설명해 주세요!")
    assert tokens[:3] == ["python", "3.11", "에서"]
    assert "json" in tokens and "파일" in tokens and "을" in tokens
    assert "!" not in tokens


def test_unicode_tokenizer_keeps_every_script() -> None:
    assert tokenize_unicode("Ｐｙｔｈｏｎ으로 函数를 작성하세요!") == ["python으로", "函数를", "작성하세요"]


def test_auto_picks_by_script() -> None:
    assert is_mostly_hangul(ORIGINALS[0]) and not is_mostly_hangul("Translate '안녕' into English.")
    assert tokenize_auto(ORIGINALS[0]) == tokenize_korean(ORIGINALS[0])
    assert tokenize_auto("Don't panic!") == tokenize_rouge("Don't panic!") == ["don", "t", "panic"]
