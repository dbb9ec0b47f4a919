"""How diverse a set of instructions is, measured as the papers measured it.

- **ROUGE-L to the nearest reference** (Self-Instruct, Fig. 4: each generated instruction against its most similar
  seed): exact, every pair scored, with rouge-score's F-measure and the run's own tokenizer. Token sequences become
  strings of code points, as in :mod:`pipeline.dedup`, so rapidfuzz's bit-parallel LCS scores millions of pairs a second.
- **distinct-n** (Li et al. 2016): distinct n-grams over all n-grams of the corpus, in lowercased words.
- **compression ratio** and **self-repetition** (Shaib et al. 2024, arXiv 2403.00553, and their ``diversity``
  package): the gzip ratio of the joined texts (higher = more repetitive), and the mean over texts of
  ``log(1 + occurrences in other texts of the text's distinct 4-grams)`` (higher = more repetitive). The package
  itself pins ``transformers<5``, so its two formulas are restated here, on whitespace-split words as there.

Words for distinct-n are :func:`pipeline.text.tokenize_unicode` runs: English words, and for Korean eojeol
without their punctuation.
"""

from __future__ import annotations

import gzip
import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.dedup import ids_to_code, lcs_matrix
from pipeline.text import get_tokenizer, tokenize_unicode

#: Cells of the score matrix computed at once: bounds memory (and keeps numpy's temporaries in cache) however many
#: references there are.
_CHUNK_CELLS = 1 << 21


@dataclass(frozen=True)
class Nearest:
    """For each query: the best ROUGE-L F-measure against the references, and which reference scored it."""

    scores: np.ndarray  # float64, one per query
    indices: np.ndarray  # int64, position in the references; -1 where there was none to compare with


def nearest_rouge_l(queries: Sequence[str], references: Sequence[str], tokenizer: str = "rouge",
                    exclude_same_position: bool = False) -> Nearest:
    """Exact best ROUGE-L F-measure of every query against every reference (rouge-score's formula).

    ``exclude_same_position``: the queries are ``references[:len(queries)]`` or the references themselves, and a
    text is not compared with itself (nearest *other* record). Ties go to the lower reference index.
    """
    tokenize = get_tokenizer(tokenizer)
    vocab: dict[str, int] = {}

    def encode(text: str) -> str:
        ids = [vocab.setdefault(token, len(vocab)) for token in tokenize(text)]
        return ids_to_code(ids, len(vocab))

    # An id below the surrogate range maps to the same code point at any vocabulary size, so codes made while the
    # vocabulary grows stay comparable.
    reference_codes = [encode(text) for text in references]
    query_codes = [encode(text) for text in queries]
    reference_lengths = np.fromiter(map(len, reference_codes), dtype=np.float64, count=len(reference_codes))
    scores = np.zeros(len(queries), dtype=np.float64)
    indices = np.full(len(queries), -1, dtype=np.int64)
    if not references:
        return Nearest(scores, indices)
    rows_per_chunk = max(1, _CHUNK_CELLS // len(references))
    for start in range(0, len(queries), rows_per_chunk):
        chunk = query_codes[start : start + rows_per_chunk]
        lcs = lcs_matrix(chunk, reference_codes).astype(np.float64)
        query_lengths = np.fromiter(map(len, chunk), dtype=np.float64, count=len(chunk))[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            # rouge_scorer._score_lcs(target=query, prediction=reference), then fmeasure: same ops, same order.
            precision = lcs / reference_lengths[None, :]
            recall = lcs / query_lengths
            f = 2 * precision * recall / (precision + recall)
        f = np.where((reference_lengths[None, :] > 0) & (query_lengths > 0) & (lcs > 0), f, 0.0)
        if exclude_same_position:
            rows = np.arange(len(chunk))
            own = start + rows
            inside = own < len(references)
            f[rows[inside], own[inside]] = -1.0
        best = f.argmax(axis=1)
        scores[start : start + len(chunk)] = np.maximum(f[np.arange(len(chunk)), best], 0.0)
        indices[start : start + len(chunk)] = np.where(f[np.arange(len(chunk)), best] >= 0, best, -1)
    return Nearest(scores, indices)


def nearest_other(texts: Sequence[str], tokenizer: str = "rouge", sample: int = 2000, seed: int = 0) -> tuple[np.ndarray, int]:
    """Best ROUGE-L of each text against every *other* text; on a random ``sample`` of texts when there are more.

    Every pair would be quadratic (2.7 billion pairs at 52K); a sample of 2,000 rows against all texts is exact per
    row and estimates the distribution within a couple of points. Returns the scores and the number of rows scored.
    """
    order = list(range(len(texts)))
    if len(texts) > sample:
        order = sorted(random.Random(seed).sample(order, sample))
    # Put the sampled rows first, so that "same position" is each row's own text.
    rest = sorted(set(range(len(texts))) - set(order))
    arranged = [texts[i] for i in order] + [texts[i] for i in rest]
    nearest = nearest_rouge_l(arranged[: len(order)], arranged, tokenizer, exclude_same_position=True)
    return nearest.scores, len(order)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams of the corpus, counted in lowercased words within each text; 0.0 when none."""
    total = 0
    distinct: set[tuple[str, ...]] = set()
    for text in texts:
        words = tokenize_unicode(text)
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        distinct.update(grams)
    return len(distinct) / total if total else 0.0


def compression_ratio(texts: Sequence[str]) -> float:
    """Bytes of the texts joined by spaces over bytes of their gzip (Shaib et al.'s ``compression_ratio``).

    Their package gzips twice (``GzipFile`` around ``gzip.compress``); the ~20 bytes of the second header are left
    out here, which changes the figure only for tiny corpora. 0.0 for an empty corpus.
    """
    data = " ".join(texts).encode("utf-8")
    if not data:
        return 0.0
    return len(data) / len(gzip.compress(data, mtime=0))


def self_repetition(texts: Sequence[str], n: int = 4) -> float:
    """Shaib et al.'s ``self_repetition_score``: mean over texts of log(1 + how often its distinct n-grams occur elsewhere)."""
    if not texts:
        return 0.0
    per_text = []
    for text in texts:
        words = text.split()
        per_text.append({" ".join(words[i : i + n]) for i in range(len(words) - n + 1)})
    occurrences = Counter(gram for grams in per_text for gram in grams)
    return sum(math.log(sum(occurrences[g] for g in grams) - len(grams) + 1) for grams in per_text) / len(texts)
