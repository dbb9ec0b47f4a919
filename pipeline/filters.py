"""Alpaca's heuristic quality filters, as curation steps (:mod:`pipeline.curation`).

Each filter is a small :class:`~pipeline.curation.Step` whose ``check`` returns ``None`` to keep a record or a
:class:`~pipeline.records.Drop` with a reason. The chain counts keeps and drops per step, and the run writes every
dropped record to ``rejected.jsonl`` with its reason.
"""

from __future__ import annotations

import re
import string
import unicodedata
from typing import Iterable

from pipeline.config import GenerationConfig
from pipeline.curation import Step
from pipeline.records import Drop, Record
from pipeline.text import HANGUL_RE, tokenize_rouge


class Filter(Step):
    """A heuristic filter: looks at the instruction unless it says otherwise, and at nothing kept before."""

    order_independent = True


def word_count(text: str) -> int:
    return len(text.split())


class WordCountFilter(Filter):
    name = "word_count"

    def __init__(self, min_words: int, max_words: int):
        self.min_words, self.max_words = min_words, max_words

    def check(self, record: Record) -> Drop | None:
        n = word_count(record.instruction)
        if n < self.min_words:
            return Drop("too_short", f"{n} words < {self.min_words}")
        if n > self.max_words:
            return Drop("too_long", f"{n} words > {self.max_words}")
        return None


class BlacklistFilter(Filter):
    """Drops instructions mentioning things a text-only model cannot do (images, audio, ...).

    Latin-script words match where no Latin letter or digit touches them; other scripts (Korean attaches particles to nouns) match as substrings.
    """

    name = "blacklist"

    def __init__(self, words: Iterable[str]):
        self.patterns: list[tuple[str, re.Pattern[str]]] = []
        for word in words:
            if not word.strip():
                continue
            if word.isascii():
                # Latin letters around the word, not \b: "image를" (Korean particle attached) must match too.
                body = r"\s+".join(map(re.escape, word.split()))
                pattern = re.compile(rf"(?<![A-Za-z0-9]){body}(?![A-Za-z0-9])", re.IGNORECASE)
            else:
                pattern = re.compile(re.escape(word))
            self.patterns.append((word, pattern))
        # Gates before the regexes (most instructions hold none of the words). In an ASCII text a Latin word can only
        # match where its first token is a whole [a-z0-9] run of the lowercased text, i.e. one of its ROUGE tokens
        # (the pattern's lookarounds forbid a letter or digit on either side), so one set intersection rules out most
        # words at once; a non-Latin word cannot occur in an ASCII text at all. Other texts take the substring gate
        # for non-Latin words. Whatever passes a gate is searched word by word in list order, so the reported word is
        # the first listed one that matches. By pattern: True for a Latin word, and its first token where that is
        # one [a-z0-9] run (a word such as "e-mail" has none and is always searched).
        self._latin = [word.isascii() for word, _ in self.patterns]
        self._firsts = [_single_run(word.lower().split()[0]) if latin else None
                        for (word, _), latin in zip(self.patterns, self._latin)]
        self._run_gated = {first for first in self._firsts if first is not None}
        self._run_gates_all = all(first is not None or not latin for first, latin in zip(self._firsts, self._latin))

    def check(self, record: Record) -> Drop | None:
        text = record.instruction
        if text.isascii():
            runs = self._run_gated.intersection(tokenize_rouge(text))
            if not runs and self._run_gates_all:
                return None
            for (word, pattern), latin, first in zip(self.patterns, self._latin, self._firsts):
                if not latin or (first is not None and first not in runs):
                    continue
                if pattern.search(text):
                    return Drop("blacklist", word)
            return None
        for (word, pattern), latin in zip(self.patterns, self._latin):
            if not latin:
                if word in text:
                    return Drop("blacklist", word)
            elif pattern.search(text):
                return Drop("blacklist", word)
        return None


def _single_run(token: str) -> str | None:
    """``token`` if it is one whole [a-z0-9] run (its own only ROUGE token), else None."""
    return token if tokenize_rouge(token) == [token] else None


class ProgramOpeningFilter(Filter):
    """Alpaca drops 'Write a program ...': such tasks tend to have outputs the model cannot check."""

    name = "program_opening"

    def check(self, record: Record) -> Drop | None:
        if record.instruction.lower().startswith("write a program"):
            return Drop("program_opening", record.instruction[:40])
        return None


class PunctuationStartFilter(Filter):
    name = "punctuation_start"

    def check(self, record: Record) -> Drop | None:
        first = record.instruction[:1]
        if first and (first in string.punctuation or unicodedata.category(first).startswith("P")):
            return Drop("punctuation_start", first)
        return None


class LanguageFilter(Filter):
    """English instructions start with an ASCII character; Korean ones contain Hangul."""

    name = "language"

    def __init__(self, language: str):
        self.language = language

    def check(self, record: Record) -> Drop | None:
        text = record.instruction
        if self.language == "ko":
            return None if HANGUL_RE.search(text) else Drop("not_korean", "no Hangul in the instruction")
        if text and not text[0].isascii():
            return Drop("not_english", f"starts with {text[0]!r}")
        return None


class EmptyOutputFilter(Filter):
    name = "empty_output"
    reads = ("output",)

    def check(self, record: Record) -> Drop | None:
        return None if record.output.strip() else Drop("empty_output")


class EmptyInstructionFilter(Filter):
    name = "empty_instruction"

    def check(self, record: Record) -> Drop | None:
        return None if record.instruction.strip() else Drop("empty_instruction")


class InputEqualsOutputFilter(Filter):
    name = "input_equals_output"
    reads = ("input", "output")

    def check(self, record: Record) -> Drop | None:
        if record.input.strip() and normalize(record.input) == normalize(record.output):
            return Drop("input_equals_output")
        return None


def normalize(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


class ExactDuplicateFilter(Filter):
    """Drops a candidate whose normalised instruction+input equals a seed's or an accepted record's."""

    name = "exact_duplicate"
    order_independent = False
    reads = ("instruction", "input")

    def __init__(self, existing: Iterable[tuple[str, str]] = ()):
        self.seen: set[tuple[str, str]] = {(normalize(i), normalize(x)) for i, x in existing}

    def check(self, record: Record) -> Drop | None:
        if (normalize(record.instruction), normalize(record.input)) in self.seen:
            return Drop("exact_duplicate")
        return None

    def accepted(self, record: Record) -> None:
        self.seen.add((normalize(record.instruction), normalize(record.input)))


def build_filters(config: GenerationConfig, existing: Iterable[tuple[str, str]] = ()) -> list[Filter]:
    """The run's heuristic filters in order; ``existing`` are (instruction, input) pairs already kept (seeds, accepted)."""
    fc = config.filters
    filters: list[Filter] = [EmptyInstructionFilter(), WordCountFilter(fc.min_instruction_words, fc.max_instruction_words)]
    blacklist = config.resolved_blacklist
    if blacklist:
        filters.append(BlacklistFilter(blacklist))
    if fc.drop_program_openings:
        filters.append(ProgramOpeningFilter())
    if fc.drop_punctuation_start:
        filters.append(PunctuationStartFilter())
    if fc.check_language:
        filters.append(LanguageFilter(config.language))
    if fc.drop_empty_output:
        filters.append(EmptyOutputFilter())
    if fc.drop_input_equals_output:
        filters.append(InputEqualsOutputFilter())
    if fc.drop_exact_duplicates:
        filters.append(ExactDuplicateFilter(existing))
    return filters
