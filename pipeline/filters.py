"""Quality filters for generated candidates, in the style of datatrove's ``BaseFilter``.

Each filter is a small class with a ``name`` whose :meth:`Filter.check` returns ``True`` to keep a candidate
or a :class:`Drop` with a reason. Nothing is silently discarded: :class:`FilterChain` counts keeps and
drops per filter, and the run writes every dropped candidate to ``rejected.jsonl`` with its reason.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

from pipeline.config import GenerationConfig
from pipeline.parse import Candidate
from pipeline.text import HANGUL_RE


@dataclass(frozen=True)
class Drop:
    reason: str
    detail: str = ""


class Filter:
    """Base class: ``check`` returns True to keep, or a :class:`Drop`."""

    name = "filter"

    def check(self, candidate: Candidate) -> bool | Drop:  # pragma: no cover - abstract
        raise NotImplementedError

    def accepted(self, candidate: Candidate) -> None:
        """Called when a candidate passed every step, for filters that remember what was kept."""


def word_count(text: str) -> int:
    return len(text.split())


class WordCountFilter(Filter):
    name = "word_count"

    def __init__(self, min_words: int, max_words: int):
        self.min_words, self.max_words = min_words, max_words

    def check(self, candidate: Candidate) -> bool | Drop:
        n = word_count(candidate.instruction)
        if n < self.min_words:
            return Drop("too_short", f"{n} words < {self.min_words}")
        if n > self.max_words:
            return Drop("too_long", f"{n} words > {self.max_words}")
        return True


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

    def check(self, candidate: Candidate) -> bool | Drop:
        for word, pattern in self.patterns:
            if pattern.search(candidate.instruction):
                return Drop("blacklist", word)
        return True


class ProgramOpeningFilter(Filter):
    """Alpaca drops 'Write a program ...': such tasks tend to have outputs the model cannot check."""

    name = "program_opening"

    def check(self, candidate: Candidate) -> bool | Drop:
        if candidate.instruction.lower().startswith("write a program"):
            return Drop("program_opening", candidate.instruction[:40])
        return True


class PunctuationStartFilter(Filter):
    name = "punctuation_start"

    def check(self, candidate: Candidate) -> bool | Drop:
        first = candidate.instruction[:1]
        if first and (first in string.punctuation or unicodedata.category(first).startswith("P")):
            return Drop("punctuation_start", first)
        return True


class LanguageFilter(Filter):
    """English instructions start with an ASCII character; Korean ones contain Hangul."""

    name = "language"

    def __init__(self, language: str):
        self.language = language

    def check(self, candidate: Candidate) -> bool | Drop:
        text = candidate.instruction
        if self.language == "ko":
            return True if HANGUL_RE.search(text) else Drop("not_korean", "no Hangul in the instruction")
        if text and not text[0].isascii():
            return Drop("not_english", f"starts with {text[0]!r}")
        return True


class EmptyOutputFilter(Filter):
    name = "empty_output"

    def check(self, candidate: Candidate) -> bool | Drop:
        return True if candidate.output.strip() else Drop("empty_output")


class EmptyInstructionFilter(Filter):
    name = "empty_instruction"

    def check(self, candidate: Candidate) -> bool | Drop:
        return True if candidate.instruction.strip() else Drop("empty_instruction")


class InputEqualsOutputFilter(Filter):
    name = "input_equals_output"

    def check(self, candidate: Candidate) -> bool | Drop:
        if candidate.input.strip() and normalize(candidate.input) == normalize(candidate.output):
            return Drop("input_equals_output")
        return True


def normalize(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


class ExactDuplicateFilter(Filter):
    """Drops a candidate whose normalised instruction+input equals a seed's or an accepted record's."""

    name = "exact_duplicate"

    def __init__(self, existing: Iterable[tuple[str, str]] = ()):
        self.seen: set[tuple[str, str]] = {(normalize(i), normalize(x)) for i, x in existing}

    def check(self, candidate: Candidate) -> bool | Drop:
        if (normalize(candidate.instruction), normalize(candidate.input)) in self.seen:
            return Drop("exact_duplicate")
        return True

    def accepted(self, candidate: Candidate) -> None:
        self.seen.add((normalize(candidate.instruction), normalize(candidate.input)))


class FilterChain:
    """Runs filters in order; the first drop wins. Counts kept/dropped per filter."""

    def __init__(self, filters: Sequence[Filter]):
        self.filters = list(filters)
        self.stats: Counter[str] = Counter()

    def check(self, candidate: Candidate) -> Drop | None:
        for f in self.filters:
            verdict = f.check(candidate)
            if verdict is not True:
                self.stats[f"{f.name}.dropped"] += 1
                return verdict
            self.stats[f"{f.name}.kept"] += 1
        return None

    def accepted(self, candidate: Candidate) -> None:
        for f in self.filters:
            f.accepted(candidate)


def build_filters(config: GenerationConfig, existing: Iterable[tuple[str, str]] = ()) -> FilterChain:
    """The filter chain for a run; ``existing`` are (instruction, input) pairs already kept (seeds, accepted)."""
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
    return FilterChain(filters)
