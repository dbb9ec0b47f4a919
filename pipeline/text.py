"""Text: the tokenizers that ROUGE-L and the reports count in, and script detection.

``"rouge"`` is rouge-score's default (lowercase ``[a-z0-9]+`` runs, the Alpaca setting); ``"ko"`` is Kiwi morphemes,
for Korean; ``"unicode"`` is NFKC, lowercased ``\\w+`` runs (any script, whole words); ``"auto"`` is ``ko`` for
mostly-Hangul text and ``rouge`` otherwise, decided per text. Kiwi takes seconds to load, so one instance is shared.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from typing import Any, Callable, Literal, get_args

TokenizerName = Literal["rouge", "ko", "unicode", "auto"]
TOKENIZERS: tuple[str, ...] = get_args(TokenizerName)

Tokenizer = Callable[[str], list[str]]


# rouge-score lowercases, replaces every run of non-[a-z0-9] characters with a space, splits on whitespace and drops
# empty tokens: what is left is exactly the maximal [a-z0-9]+ runs of the lowercased text, found here in one C pass.
_ROUGE_TOKEN_RE = re.compile(r"[a-z0-9]+")
_WORD_RE = re.compile(r"\w+")
_HAS_WORD_CHAR_RE = re.compile(r"\w")
HANGUL_RE = re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7a3]")

_kiwi: Any = None
_kiwi_lock = threading.Lock()


def tokenize_rouge(text: str) -> list[str]:
    """rouge-score's ``DefaultTokenizer(use_stemmer=False)``, the tokenizer Alpaca's filter uses."""
    return _ROUGE_TOKEN_RE.findall(text.lower())


def tokenize_unicode(text: str) -> list[str]:
    """Lowercased ``\\w+`` runs of the NFKC form: keeps Hangul, CJK and every other script, one token per word."""
    return _WORD_RE.findall(unicodedata.normalize("NFKC", text).lower())


def tokenize_korean(text: str) -> list[str]:
    """Kiwi morphemes (Latin lowercased), without punctuation, so a changed particle only changes one token."""
    return [token.form.lower() for token in get_kiwi().tokenize(text) if _HAS_WORD_CHAR_RE.search(token.form)]


def tokenize_auto(text: str) -> list[str]:
    """:func:`tokenize_korean` for mostly-Hangul text, :func:`tokenize_rouge` otherwise."""
    return tokenize_korean(text) if is_mostly_hangul(text) else tokenize_rouge(text)


def is_mostly_hangul(text: str) -> bool:
    """True when more than half of the letters of ``text`` are Hangul."""
    if not HANGUL_RE.search(text):
        return False
    hangul = len(HANGUL_RE.findall(text))
    letters = sum(1 for char in text if char.isalpha())
    return 2 * hangul > letters


def get_tokenizer(name: str) -> Tokenizer:
    """The tokenizer function called ``name`` (one of :data:`TOKENIZERS`)."""
    tokenizers: dict[str, Tokenizer] = {
        "rouge": tokenize_rouge,
        "ko": tokenize_korean,
        "unicode": tokenize_unicode,
        "auto": tokenize_auto,
    }
    if name not in tokenizers:
        raise ValueError(f"unknown tokenizer {name!r}; expected one of {', '.join(TOKENIZERS)}")
    return tokenizers[name]


def get_kiwi() -> Any:
    # Kiwi takes seconds to load its model, so it is built once, on first use, and shared.
    global _kiwi
    if _kiwi is None:
        with _kiwi_lock:
            if _kiwi is None:
                from kiwipiepy import Kiwi

                _kiwi = Kiwi()
    return _kiwi


