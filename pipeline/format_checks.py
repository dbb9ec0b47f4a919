"""Format checks: curation steps for what a weak model leaks into a task or loops on, in English and Korean.

A real run with SmolLM2-135M showed what the older filters let through: the prompt's own scaffolding copied into
the fields (11 of 60 accepted records carried "7. Instruction: ..."-style labels), instructions that were
statements or labelled questions ("Question: How can I ..."), and outputs that just echoed the input. Each check
below is one :class:`~pipeline.curation.Step` with its own drop reason, so ``rejected.jsonl`` says which:

- ``leaked_label`` (:class:`LeakedLabelCheck`): the generation prompt's numbering and field labels
  ("3. Instruction:", "Output:", a "###" separator line, "### Response:") or their Korean forms ("지시문:", "입력:")
  inside a field. A training example carrying them teaches the model to emit prompt scaffolding.
- ``label_prefix`` (:class:`LabelPrefixCheck`): an instruction that opens with a label ("Question:", "Task 3:",
  "질문:"). Users do not write labels, so an assistant trained on them learns an artificial register.
- ``echoed_output`` (:class:`EchoedOutputCheck`): an output that repeats the instruction, or repeats the input
  give or take its final punctuation or a couple of words: a task answered by copying teaches nothing, and the
  exact-equality filter that runs earlier misses "same text plus a full stop".
- ``repetition_loop`` (:class:`RepetitionLoopCheck`): an output whose word n-grams repeat beyond a share, the mark
  of a generation stuck in a loop ("... is the most expensive ingredient in the recipe is the most ...").
- ``placeholder_input`` (:class:`PlaceholderInputCheck`): an input that is a placeholder ("[text]", "<input>",
  "...", "[글]") or holds a slot for its material ("Summarise: [insert text here]"): the output then answers
  material that does not exist.

Every check works on both languages without being told which: the patterns list English and Korean forms side by
side, and words are whitespace words (Korean 어절). What a genuine task may contain is kept on purpose: a coding
example's "Input: 5" line, a recipe's "Instructions:" heading, a markdown "### Step 1" heading, ``arr[i]``,
markdown links and HTML tags (``tests/test_format_checks.py`` holds these cases next to the real-model failures).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import ClassVar

from pipeline.config import FormatChecksConfig
from pipeline.curation import Step
from pipeline.filters import normalize
from pipeline.records import Drop, Record
from pipeline.text import HANGUL_RE

FIELDS = ("instruction", "input", "output")


def _nfkc(text: str) -> str:
    # Full-width colons and digits ("３．Instruction："), which Korean keyboards produce, match the ASCII patterns.
    return unicodedata.normalize("NFKC", text)


def _clip(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---- leaked labels -------------------------------------------------------------------------------------------------
_NUM = r"\d{1,3}[ \t]*[.)][ \t]*"
# A label may come as a markdown header or bold ("### 3. Instruction:", "**Output:**").
_HASHES = r"(?:[#*]+[ \t]*)?"
_COLON = r"\**[ \t]*:"
_LABEL_EN = r"(?:instructions?|input|output)"
_LABEL_KO = r"(?:지시[ \t]*사항|지시문|지시|입력|출력)"


class LeakedLabelCheck(Step):
    """Drops a record with the prompt's numbering or field labels in any field.

    Where a label sits decides whether it can be genuine. Numbered labels ("3. Instruction:") and a lone "###" line
    are the prompt's own scaffolding wherever they occur. An unnumbered "Input:" or "Output:" can open a line of a
    genuine coding example ("Input: 5\\nOutput: 25") or a recipe ("Instructions:"), so unnumbered labels count only
    at the very start of a field, or, in the instruction (which holds no examples), at any line start. The text-mode
    parser already cuts fields at line-start English labels, so what reaches this step is mostly the structured
    mode's leaks and the forms the parser does not know: "3. Instructions for ..." without a colon, Korean labels.
    """

    order_independent = True

    name: ClassVar[str] = "leaked_label"
    reads: ClassVar[tuple[str, ...]] = FIELDS

    # (pattern, fields it applies to); the first match wins.
    RULES: ClassVar[tuple[tuple[re.Pattern[str], tuple[str, ...]], ...]] = (
        # "3. Instruction:", "### 4. 입력:" at any line start.
        (re.compile(rf"^[ \t]*{_HASHES}{_NUM}(?:{_LABEL_EN}|{_LABEL_KO}){_COLON}", re.I | re.M), FIELDS),
        # ... and the prompt's numbered "Instruction:" anywhere: the next task run into the same line ("Paris.
        # 7. Instruction: ..."). Not the plural: "Section 2. Instructions:" heads a manual's part.
        (re.compile(rf"(?<![\w.]){_NUM}(?:instruction|지시문){_COLON}", re.I), FIELDS),
        # A field that opens with a numbered "Instruction(s)" without a colon: SmolLM2 wrote inputs and outputs
        # like "1. Instruction" and "3. Instructions for a new hire". (Input/Output only when nothing follows on
        # the line: "1. Input the numbers ..." opens a genuine list of steps.)
        (re.compile(rf"\A\s*{_HASHES}{_NUM}(?:instructions?(?![a-z])|지시문(?![^\s:])"
                    rf"|(?:input|output|입력|출력)[ \t]*(?:\n|\Z))", re.I), FIELDS),
        # A field that opens with a label: "Instructions: explain inflation ..." (a real input), "Output: 25".
        (re.compile(rf"\A\s*{_HASHES}(?:instructions?|output|response|지시[ \t]*사항|지시문|지시|출력|응답){_COLON}", re.I),
         FIELDS),
        # An output may open with "Input: 5" when the task asks for an example; the other fields may not.
        (re.compile(rf"\A\s*{_HASHES}(?:input|입력){_COLON}", re.I), ("instruction", "input")),
        # "Instruction:" (singular) and "지시문:" never head a genuine line; "Instructions:" heads recipes.
        (re.compile(rf"^[ \t]*{_HASHES}(?:instruction|지시문|지시[ \t]*사항|지시){_COLON}", re.I | re.M), FIELDS),
        # Alpaca's "### Instruction:" / "### Response:" headers; a markdown heading rarely ends in a colon.
        (re.compile(rf"^[ \t]*\#{{2,}}[ \t]*(?:{_LABEL_EN}|response|{_LABEL_KO}|응답){_COLON}", re.I | re.M), FIELDS),
        # The "###" separator between tasks: a line of only hashes, or hashes ending a field.
        (re.compile(r"^[ \t]*\#{3,}[ \t]*$|(?<!\S)\#{3,}\s*\Z", re.M), FIELDS),
        # An instruction holds no examples, so an "Input:" line in it is the next field run in.
        (re.compile(rf"^[ \t]*{_HASHES}(?:{_LABEL_EN}|{_LABEL_KO}){_COLON}", re.I | re.M), ("instruction",)),
    )

    def check(self, record: Record) -> Drop | None:
        for field in FIELDS:
            text = _nfkc(getattr(record, field))
            for pattern, fields in self.RULES:
                if field not in fields:
                    continue
                match = pattern.search(text)
                if match:
                    found = _clip(match.group(0).strip() or match.group(0))
                    return Drop(self.name, f"{field}: {found!r}", {"field": field, "match": found})
        return None


# ---- label prefix --------------------------------------------------------------------------------------------------
class LabelPrefixCheck(Step):
    """Drops an instruction that opens with a label: "Question:", "Task 3:", "Q:", "Prompt:", "질문:", "문제:"."""

    order_independent = True

    name: ClassVar[str] = "label_prefix"
    reads: ClassVar[tuple[str, ...]] = ("instruction",)

    # The label must be the whole first word ("Questionnaire:" and "문제점:" are content, not labels), optionally
    # numbered ("Question 2:", "Q1:").
    PATTERN: ClassVar[re.Pattern[str]] = re.compile(
        r"\A\s*(?:question|task|q|prompt|instruction|problem|exercise|query|request|command"
        r"|질문|과제|문제|지시문|지시|요청|명령)[ \t]*\d{0,3}[ \t]*:",
        re.I,
    )

    def check(self, record: Record) -> Drop | None:
        match = self.PATTERN.search(_nfkc(record.instruction))
        if match:
            found = match.group(0).strip()
            return Drop(self.name, repr(found), {"field": "instruction", "match": found})
        return None


# ---- echoed output -------------------------------------------------------------------------------------------------
_QUOTES = " \"'“”‘’`"
_EDGE = _QUOTES + ".!?。…,;:"
# A sentence that is already finished: only then is "the input plus a word or two" an echo rather than a
# completion ("Actions speak louder" -> "Actions speak louder than words." is a genuine task).
_FINISHED_RE = re.compile(r"[.!?。][\"'”’)\]]*\s*\Z")


def _core(text: str, *, keep_case: bool = False) -> str:
    # Spacing, quotes and the final punctuation do not make an output differ from what it repeats: the 135M
    # model's echoes were the input with a full stop added or removed. Only quotes go at the start: leading dots
    # are a fill-in blank ("..... are better at math." -> "Girls are better at math.", a Self-Instruct seed).
    text = " ".join(_nfkc(text).split()) if keep_case else normalize(text)
    return text.lstrip(_QUOTES).rstrip(_EDGE)


class EchoedOutputCheck(Step):
    """Drops an output that repeats the instruction, or the input, adding at most ``max_extra_words`` words.

    The earlier ``input_equals_output`` filter drops an output equal to the input after case and spacing
    normalisation; this step also drops the near copies it lets through: the same text with its final punctuation
    changed, the input inside a word or two of padding, or the instruction repeated back. Against the input, case
    counts: changing it is a genuine rewriting task (the seed "Convert the following title to title case").
    """

    order_independent = True

    name: ClassVar[str] = "echoed_output"
    reads: ClassVar[tuple[str, ...]] = FIELDS

    #: Below this many words, "text plus a word or two" is too often a genuine short answer to call an echo.
    MIN_WORDS_FOR_TAIL = 4

    def __init__(self, max_extra_words: int = 2):
        self.max_extra_words = max_extra_words

    def check(self, record: Record) -> Drop | None:
        for source in ("instruction", "input"):
            raw = getattr(record, source)
            keep_case = source == "input"
            text, output = _core(raw, keep_case=keep_case), _core(record.output, keep_case=keep_case)
            if not text or not output:
                continue
            finished = source == "instruction" or bool(_FINISHED_RE.search(raw.strip()))
            extra = self._extra_words(text, output, allow_tail=finished)
            if extra is not None:
                what = "repeats" if extra == 0 else f"repeats, adding {extra} word{'s' if extra > 1 else ''} to,"
                return Drop(self.name, f"the output {what} the {source}", {"echoes": source, "extra_words": extra})
        return None

    def _extra_words(self, text: str, output: str, allow_tail: bool) -> int | None:
        """How many words ``output`` adds to ``text`` if it is ``text`` plus a trivial tail, else None."""
        if output == text:
            return 0
        if not allow_tail or len(text.split()) < self.MIN_WORDS_FOR_TAIL:
            return None
        if not re.search(rf"(?<!\w){re.escape(text)}(?!\w)", output):
            return None
        extra = len(output.split()) - len(text.split())
        return extra if extra <= self.max_extra_words else None


# ---- repetition loop -----------------------------------------------------------------------------------------------
_WORD_EDGE_RE = re.compile(r"^\W+|\W+$")


class RepetitionLoopCheck(Step):
    """Drops an output whose word n-grams repeat more than ``max_share``: share = (total − distinct) / total.

    Words are whitespace words (a Korean 어절 is one), lowercased and stripped of the punctuation around them, so
    "Aerofloats," repeats "Aerofloats". Not ``\\w+`` runs: they split a regex or music notation into digits and
    letters that repeat by nature (Self-Instruct's IP-address regex and ABC-notation answers scored 0.57 and 0.35).
    Outputs with fewer than ``min_ngrams`` n-grams are not judged: a short answer has too few for a share to mean
    anything.
    """

    order_independent = True

    name: ClassVar[str] = "repetition_loop"
    reads: ClassVar[tuple[str, ...]] = ("output",)

    def __init__(self, max_share: float, n: int = 3, min_ngrams: int = 10):
        self.max_share, self.n, self.min_ngrams = max_share, n, min_ngrams

    def check(self, record: Record) -> Drop | None:
        words = [w for w in (_WORD_EDGE_RE.sub("", w) for w in normalize(record.output).split()) if w]
        ngrams = [tuple(words[i: i + self.n]) for i in range(len(words) - self.n + 1)]
        if len(ngrams) < self.min_ngrams:
            return None
        counts = Counter(ngrams)
        share = (len(ngrams) - len(counts)) / len(ngrams)
        if share <= self.max_share:
            return None
        top, top_count = counts.most_common(1)[0]
        ngram = " ".join(top)
        return Drop(self.name, f"{share:.2f} of {self.n}-grams repeated; {ngram!r} x{top_count}",
                    {"repeated_share": round(share, 3), "top_ngram": ngram, "top_ngram_count": top_count})


# ---- placeholder input ---------------------------------------------------------------------------------------------
#: The material a task works on: a slot naming one of these stands for text that is missing ("[insert text here]",
#: "[your paragraph]", "[요약할 문단]"). Slots for a detail ("Dear [name]", "[Company name]", "[date]") are not
#: enough: genuine human-written tasks carry them (4 of Self-Instruct's 427 seed and user-oriented tasks, one of
#: them "Replace the placeholders in the given text"), and the text around them is real material.
_MATERIAL = {
    "text", "input", "sentence", "sentences", "paragraph", "paragraphs", "passage", "article", "content", "story",
    "poem", "essay", "document", "review", "quote", "excerpt", "email", "letter", "message", "code", "snippet",
    "글", "텍스트", "입력", "문장", "문단", "내용", "본문", "자료", "예문", "기사", "코드",
}
#: Detail slots, which count only as a whole input ("<name>" alone is no material at all).
_DETAIL = {"name", "date", "place", "location", "city", "country", "address", "number", "company", "product", "item",
           "person", "topic", "subject", "title", "word", "words", "phrase", "answer", "question", "example",
           "이름", "날짜", "장소", "회사", "제품", "주소", "제목", "주제", "단어", "질문", "예시"}
_LETTERS = r"[^\W\d_]"
_PHRASE = rf"{_LETTERS}[\w'’ -]{{0,58}}"


def _names_material(phrase: str) -> bool:
    """Whether a bracketed phrase is a slot for the task's material: "[insert text here]", "[여기에 글을 입력]"."""
    words = phrase.lower().replace("_", " ").split()
    if words and words[-1] in {"here", "여기"}:
        words = words[:-1]
    if not words or any(ch.isdigit() for ch in phrase):
        return False
    # A Korean slot often ends in a verb that asks for the material ("[여기에 글을 입력하세요]").
    return words[-1] in _MATERIAL or any(stem in phrase for stem in ("입력", "삽입"))


class PlaceholderInputCheck(Step):
    """Drops an input that is a placeholder ("[text]", "<input>", "{text}", "...") or holds a slot for its material.

    Brackets are also code and markup, so a bracketed phrase inside a longer input counts only when it cannot be
    those: not right after a word or a closing bracket (``arr[i]``, ``features[text]``), not followed by "(" or ":"
    (markdown links), letters only (``dict["key"]``, ``[1, 2]``), and only when it names the material ("[your
    text]", "[insert article here]"). A whole-input ``<tag>`` counts only as a phrase or a slot word, not ``<div>``;
    "[국제발신]"-style tags at the head of a Korean message are content.
    """

    order_independent = True

    name: ClassVar[str] = "placeholder_input"
    reads: ClassVar[tuple[str, ...]] = ("input",)

    WHOLE_ELLIPSIS: ClassVar[re.Pattern[str]] = re.compile(r"\A[.…_*\-\s]+\Z")
    WHOLE_BRACKETED: ClassVar[re.Pattern[str]] = re.compile(
        rf"\A(?:\[\s*({_PHRASE})\s*\]|\{{\s*({_PHRASE})\s*\}}|<\s*({_PHRASE})\s*>)\Z")
    INLINE_SQUARE: ClassVar[re.Pattern[str]] = re.compile(rf"(?<![\w\])}}\"'`])\[\s*({_PHRASE})\s*\](?![(:\[])")
    # Angle and curly slots inside text need a phrase ("<insert text here>"): "<url>" in a command line and
    # "{name}" in an f-string are code.
    INLINE_PHRASE: ClassVar[re.Pattern[str]] = re.compile(
        rf"(?<![\w$])(?:<\s*({_LETTERS}+(?: {_LETTERS}+)+)\s*>|\{{\s*({_LETTERS}+(?: {_LETTERS}+)+)\s*\}})")

    def check(self, record: Record) -> Drop | None:
        text = _nfkc(record.input).strip()
        if not text:
            return None
        found = self._find(text)
        if found is None:
            return None
        return Drop(self.name, repr(found), {"field": "input", "match": found})

    def _find(self, text: str) -> str | None:
        if self.WHOLE_ELLIPSIS.match(text):
            return text
        whole = self.WHOLE_BRACKETED.match(text)
        if whole:
            square, curly, angle = whole.groups()
            if square or curly:
                return text
            # "<div>" alone can be the subject of an HTML question; "<input>", "<name>", "<your text>", "<입력>" cannot.
            word = angle.strip().lower()
            if " " in word or HANGUL_RE.search(word) or word in _MATERIAL or word in _DETAIL:
                return text
            return None
        for match in self.INLINE_SQUARE.finditer(text):
            if _names_material(match.group(1)):
                return match.group(0)
        for match in self.INLINE_PHRASE.finditer(text):
            if _names_material(match.group(1) or match.group(2)):
                return match.group(0)
        return None


def build_format_checks(config: FormatChecksConfig) -> list[Step]:
    """The enabled format checks, in chain order; none when ``config.enabled`` is off."""
    if not config.enabled:
        return []
    steps: list[Step] = []
    if config.leaked_labels:
        steps.append(LeakedLabelCheck())
    if config.label_prefix:
        steps.append(LabelPrefixCheck())
    if config.echoed_output:
        steps.append(EchoedOutputCheck())
    if config.max_repeated_ngram_share < 1:
        steps.append(RepetitionLoopCheck(config.max_repeated_ngram_share, config.repetition_ngram))
    if config.placeholder_input:
        steps.append(PlaceholderInputCheck())
    return steps
