"""Verb–object analysis (pipeline.verbs): hand-checked pairs in English and Korean, and the chart's arithmetic."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pipeline import verbs
from pipeline.verbs import VerbNounSummary, summarize_verb_objects, verb_object, verb_objects

BENCH_INSTRUCTIONS = Path(__file__).resolve().parents[1].parent / "shared" / "bench" / "instructions_55k.json"

ENGLISH_CASES = [
    ("Write a poem about the sea.", ("write", "poem")),
    ("Can you write a short story about a dragon?", ("write", "story")),
    # A pronoun object is no noun object.
    ("Given a list of numbers, sort it in ascending order.", ("sort", None)),
    ("Please explain the theory of relativity.", ("explain", "theory")),
    # "me" is the dative, "joke" the direct object.
    ("Tell me a joke.", ("tell", "joke")),
    # A question built on "be" has no verb, as in Self-Instruct.
    ("What is the capital of France?", (None, None)),
    ("Is there anything I can eat for breakfast that doesn't include eggs?", (None, None)),
    # Tagged as nouns by the small model; verbs because they have a direct object. Lemmas: benefits → benefit.
    ("List three benefits of regular exercise.", ("list", "benefit")),
    ("Brainstorm ideas for a birthday party.", ("brainstorm", "idea")),
    # The verb closest to a non-verb root, and a catenative verb's complement.
    ("Your task is to classify the sentence.", ("classify", "sentence")),
    ("You need to write a creative opening scene for a horror movie.", ("write", "scene")),
    ("Try to guess the word.", ("guess", "word")),
    # Clausal objects are no noun objects; a wh-complement does not replace the verb.
    ("Explain why the sky is blue.", ("explain", None)),
    ("Given the name of an exercise, explain how to do it.", ("explain", None)),
    # Only the part before a colon that ends the instruction, and only the first sentence.
    ("Answer the following question: What is the boiling point of water?", ("answer", "question")),
    ("I want to learn Python. Recommend some books.", ("learn", "python")),
    # Inflected forms give lemmas; a proper noun is lowercased.
    ("Summarizes the articles.", ("summarize", "article")),
    ("Translate the following sentences into French.", ("translate", "sentence")),
    ("Describe Paris in three sentences.", ("describe", "paris")),
    ("", (None, None)),
]

KOREAN_CASES = [
    # NNG + XSV: 번역/NNG 하/XSV → 번역하다, in the polite forms -세요, -십시오, -시오.
    ("다음 문장을 영어로 번역하세요.", ("번역하다", "문장")),
    ("다음 글을 요약하십시오.", ("요약하다", "글")),
    ("다음 단어들을 알파벳 순서로 정렬하시오.", ("정렬하다", "단어")),
    # -어 주세요: the auxiliary 주다 (VX) is not the verb; 짓다 is irregular (VV-I).
    ("시를 한 편 써 주세요.", ("쓰다", "시")),
    ("고양이 이름을 지어 주세요.", ("짓다", "이름")),
    ("이 코드를 고쳐 주시겠어요?", ("고치다", "코드")),
    ("이메일을 작성해 줘.", ("작성하다", "이메일")),
    # "-ㄹ 수 있다" is looked through to the verb it is about.
    ("대학교 등산 동아리 이름 후보를 몇 가지 지어 줄 수 있을까요?", ("짓다", "후보")),
    # No object: none at all, a clause's object, a pronoun.
    ("좋아하는 음식에 대해 이야기해 보세요.", ("이야기하다", None)),
    ("문장을 읽고 질문에 답하세요.", ("답하다", None)),
    ("이것을 설명해 주세요.", ("설명하다", None)),
    # A relative clause with its own argument does not take the object of the main verb.
    ("아래 메시지를 회사 공지사항에 어울리는 문체로 바꿔 주세요.", ("바꾸다", "메시지")),
    # Compounds written as one word stay whole, in the verb and in the object; Latin script is lowercased.
    ("투명 페트병은 어떻게 분리배출해야 하나요?", ("분리배출하다", None)),
    ("회사 송년회에서 쓸 만한 짧은 건배사를 추천해 주세요.", ("추천하다", "건배사")),
    ("SQL을 작성해 줘.", ("작성하다", "sql")),
    # Questions on the copula or an adjective have no verb; only the first sentence counts.
    ("한국의 수도는 어디인가요?", (None, None)),
    ("이 상품 리뷰는 긍정적인가요? 한 단어로 답해 주세요.", (None, None)),
]


@pytest.mark.parametrize(("instruction", "expected"), ENGLISH_CASES)
def test_english_verb_object(instruction: str, expected: tuple[str | None, str | None]) -> None:
    assert verb_object(instruction, "en") == expected


@pytest.mark.parametrize(("instruction", "expected"), KOREAN_CASES)
def test_korean_verb_object(instruction: str, expected: tuple[str | None, str | None]) -> None:
    assert verb_object(instruction, "ko") == expected


def test_batch_keeps_order_and_duplicates() -> None:
    instructions = [case for case, _ in ENGLISH_CASES] * 2
    assert verb_objects(instructions, "en") == [pair for _, pair in ENGLISH_CASES] * 2


def test_other_language_values_pick_the_analyser_by_script() -> None:
    texts = ["Write a poem about the sea.", "시를 한 편 써 주세요.", "写一首关于大海的诗。"]
    assert verb_objects(texts, "auto") == [("write", "poem"), ("쓰다", "시"), (None, None)]


def test_parallel_parse_matches_the_serial_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # Small chunks, so that a few texts go through the worker processes.
    monkeypatch.setattr(verbs, "_PARALLEL_CHUNK", 4)
    instructions = [case for case, _ in ENGLISH_CASES]
    assert verb_objects(instructions, "en", n_process=2) == [pair for _, pair in ENGLISH_CASES]


def test_token_annotator_agrees_with_the_full_pipeline() -> None:
    # The parse runs without the attribute ruler and the lemmatizer, whose rules are applied to the tokens read;
    # every token must come out as the full pipeline annotates it.
    import spacy

    sentences = [case for case, _ in ENGLISH_CASES if case] + [
        "There is a cat that has been sleeping, isn't there?",
        "I'd have done it if he'd asked; we're gonna try, y'all.",
        "Did you have anything to eat? Nothing, but something's cooking.",
    ]
    full = spacy.load(verbs.ENGLISH_MODEL, exclude=["ner"])
    nlp = verbs.get_english_nlp()
    annotator = verbs._TokenAnnotator(nlp)
    for expected_doc, doc in zip(full.pipe(sentences), nlp.pipe(sentences)):
        for expected, token in zip(expected_doc, doc):
            assert (annotator.pos(token), annotator.lemma(token), str(token.morph)) == (
                expected.pos_,
                expected.lemma_.lower(),
                str(expected.morph),
            ), token.text


@pytest.mark.skipif(not BENCH_INSTRUCTIONS.is_file(), reason=f"{BENCH_INSTRUCTIONS} is absent (../shared is not here)")
def test_most_real_instructions_get_a_verb() -> None:
    # The first 200 are Self-Instruct's seed and user-oriented instructions: 185 get a verb (questions and
    # statements do not), 142 a noun object.
    instructions = json.loads(BENCH_INSTRUCTIONS.read_text())[:200]
    summary = summarize_verb_objects(verb_objects(instructions, "en"))
    assert summary.parsed_share >= 0.85
    assert summary.verbs[0]["verb"] == "write"


# 20 instructions, 4 without a verb. Verb counts: write 7, give 4, explain 2, sort 2, classify 1.
PAIRS = (
    [("write", "poem")] * 3
    + [("write", "story")] * 2
    + [("write", "letter"), ("write", None)]
    + [("give", "tip")] * 2
    + [("give", "example")] * 2
    + [("explain", "theory"), ("explain", None)]
    + [("sort", None)] * 2
    + [("classify", "sentence")]
    + [(None, None)] * 4
)


def test_summary_top_verbs_objects_and_coverage() -> None:
    summary = summarize_verb_objects(PAIRS, top_verbs=3, top_objects=2)
    # explain and sort tie at 2: explain comes first. give's objects tie at 2: example before tip.
    assert summary.verbs == [
        {"verb": "write", "count": 7, "objects": ["poem", "story"], "object_counts": [3, 2]},
        {"verb": "give", "count": 4, "objects": ["example", "tip"], "object_counts": [2, 2]},
        {"verb": "explain", "count": 2, "objects": ["theory"], "object_counts": [1]},
    ]
    # Covered: write+poem 3, write+story 2, give+example 2, give+tip 2, explain+theory 1 = 10 of all 20.
    assert summary.coverage == pytest.approx(10 / 20)
    # 16 of 20 have a verb.
    assert summary.parsed_share == pytest.approx(16 / 20)
    assert summary.total == 20


def test_summary_defaults_cover_every_verb_here() -> None:
    summary = summarize_verb_objects(PAIRS)
    assert [entry["verb"] for entry in summary.verbs] == ["write", "give", "explain", "sort", "classify"]
    assert summary.verbs[3] == {"verb": "sort", "count": 2, "objects": [], "object_counts": []}
    # write 3+2+1, give 2+2, explain 1, sort 0, classify 1 = 12 of 20.
    assert summary.coverage == pytest.approx(12 / 20)


def test_summary_does_not_depend_on_the_order_of_the_pairs() -> None:
    shuffled = list(PAIRS)
    for seed in range(5):
        random.Random(seed).shuffle(shuffled)
        assert summarize_verb_objects(shuffled, top_verbs=3, top_objects=2) == summarize_verb_objects(
            PAIRS, top_verbs=3, top_objects=2
        )


def test_summary_of_nothing() -> None:
    assert summarize_verb_objects([]) == VerbNounSummary(verbs=[], coverage=0.0, parsed_share=0.0, total=0)
