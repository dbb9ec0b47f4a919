"""Exact ROUGE-L near-duplicate filtering in near-linear time.

Stanford Alpaca keeps a generated instruction only if its ROUGE-L F-measure against every instruction kept so far
(seeds included) is at most ``threshold``; it scores every pair with ``rouge_score.rouge_scorer._score_lcs``, which is
quadratic in the number of kept items. :class:`RougeDedup` makes the same keep/reject decisions, bit for bit, but
only runs the LCS on pairs that can possibly exceed the threshold:

* **length filter**: an LCS never exceeds the shorter sequence, so only lengths ``m`` where ``F(min(m, n), m, n)`` can
  exceed the threshold are looked at;
* **prefix filter** (AllPairs/PPJoin): ``LCS <= multiset overlap``, so a match must share at least ``k`` token
  occurrences with the ``n - alpha + k`` rarest of the new item, ``alpha`` being the least LCS that exceeds the
  threshold for the candidate's length (``k = 2`` here); an inverted index by token and length finds those items;
* **verification**: the surviving pairs get their LCS from rapidfuzz (C++, bit-parallel), and the final score is
  rouge-score's own float formula, so ties at exactly the threshold fall the same way.

Scoring is :mod:`pipeline.rouge`, tokenizers are :mod:`pipeline.text`; inputs and outputs of ``selfinstruct dedup``
are read and written with :mod:`pipeline.files`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain, repeat
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

from pipeline.curation import Step
from pipeline.files import read_json_values, write_jsonl_atomic
from pipeline.records import Drop, Record
from pipeline.rouge import ALPACA_THRESHOLD, LengthPlan, length_plan, rouge_l_fmeasure, rouge_l_fmeasure_array
from pipeline.text import get_tokenizer, is_mostly_hangul

log = logging.getLogger(__name__)


# Token ids become code points so that a token sequence is a str: rapidfuzz compares strs far faster than lists.
_SURROGATES_START, _SURROGATES_SIZE = 0xD800, 0x800
_MAX_VOCAB_SIZE = 0x110000 - _SURROGATES_SIZE

_EXHAUSTIVE_CHUNK = 128
_PARALLEL_LCS_PAIRS = 200_000
_SHARED_PREFIX_OCCURRENCES = 2


@dataclass(frozen=True, slots=True)
class Decision:
    """Outcome of :meth:`RougeDedup.add` for one text.

    ``kept``: no indexed item scores above the threshold. ``score``: see :class:`RougeDedup` for when it is exact.
    ``similar_to``: for a rejected text, the position in :attr:`RougeDedup.texts` (seeds first, then kept texts, in
    order of addition) of an item scoring above the threshold. ``most_similar``: ``(position, score)`` pairs, best
    first, when ``top_k > 0``.
    """

    kept: bool
    score: float
    similar_to: int | None = None
    most_similar: list[tuple[int, float]] = field(default_factory=list)


class RougeDedup:
    """Online ROUGE-L near-duplicate filter with Alpaca's semantics, in near-linear time.

    Each :meth:`add` compares the text with every indexed item (seeds and kept texts) and rejects it iff some item
    scores strictly above ``threshold``, exactly as Alpaca's loop over ``rouge_scorer._score_lcs(new, old).fmeasure``;
    a kept text is indexed. With ``tokenizer="rouge"`` decisions are identical to Alpaca's, float ties included.

    Scores: a rejected text's ``score`` is the exact score of ``similar_to``, an item it truly exceeds the threshold
    against (the best of the items verified before the search stopped, not necessarily the best overall). With
    ``top_k == 0`` a kept text's ``score`` is the best score among the pairs the filters let through, a *lower bound*
    on its true best score (which is at most ``threshold`` anyway). With ``top_k > 0`` every indexed item is scored (quadratic, but in C++ and batched by
    :meth:`add_many`): ``score`` is then the exact maximum, ``similar_to`` its item, and ``most_similar`` the exact
    ``top_k`` (index, score) pairs, best first, ties broken by the lower index, like Alpaca's
    ``most_similar_instructions``.
    """

    def __init__(self, threshold: float = ALPACA_THRESHOLD, tokenizer: str = "rouge", top_k: int = 0) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k!r}")
        self.threshold = float(threshold)
        self.tokenizer = tokenizer
        self.top_k = top_k
        self._tokenize = get_tokenizer(tokenizer)
        self._warned_hangul = tokenizer != "rouge"
        self._vocab: dict[str, int] = {}
        self._doc_freq: list[int] = []  # by token id: how many indexed items contain the token
        self._postings: dict[int, dict[int, list[int]]] = {}  # token id -> item length -> indices of items
        self._texts: list[str] = []
        self._codes: list[str] = []  # token ids as code points, per indexed item
        self._lengths: list[int] = []
        self._plans: dict[int, LengthPlan] = {}
        self._checked: tuple[str, str, list[int]] | None = None  # the last text check() encoded

    def __len__(self) -> int:
        return len(self._texts)

    @property
    def texts(self) -> Sequence[str]:
        """Indexed texts (seeds first, then kept texts), positioned as :attr:`Decision.similar_to` counts them."""
        return self._texts

    def add_seeds(self, texts: Iterable[str]) -> None:
        """Index ``texts`` unconditionally: seeds are always kept, even when they resemble each other."""
        for text in texts:
            self._index(text, *self._encode(text))

    def add(self, text: str) -> Decision:
        """Decide whether ``text`` is a near-duplicate of an indexed item; index it if it is not."""
        if self.top_k:
            return self._add_chunk_exhaustively([text])[0]
        code, ids = self._encode(text)
        similar_to, score = self._find_match(code, ids)
        if similar_to is not None:
            return Decision(kept=False, score=score, similar_to=similar_to)
        self._index(text, code, ids)
        return Decision(kept=True, score=score)

    def check(self, text: str) -> Decision:
        """What :meth:`add` would decide for ``text``, without indexing it (see :meth:`add_kept`).

        A curation chain asks first and indexes only what every later step kept as well.
        """
        code, ids = self._encode(text)
        self._checked = (text, code, ids)
        if self.top_k:
            lcs = lcs_matrix([code], self._codes)[0] if self._codes else np.zeros(0, dtype=np.int32)
            return self._decide(rouge_l_fmeasure_array(lcs, len(ids), np.asarray(self._lengths, dtype=np.int64)))
        similar_to, score = self._find_match(code, ids)
        return Decision(kept=similar_to is None, score=score, similar_to=similar_to)

    def add_kept(self, text: str) -> None:
        """Index ``text`` unconditionally, typically one that :meth:`check` kept (its encoding is reused)."""
        checked = self._checked
        if checked is not None and checked[0] == text:
            self._index(*checked)
        else:
            self._index(text, *self._encode(text))
        self._checked = None

    def add_many(self, texts: Iterable[str]) -> list[Decision]:
        """:meth:`add` each text in order (later texts are compared with the earlier kept ones)."""
        if not self.top_k:
            return [self.add(text) for text in texts]
        texts = list(texts)
        decisions: list[Decision] = []
        for start in range(0, len(texts), _EXHAUSTIVE_CHUNK):
            decisions.extend(self._add_chunk_exhaustively(texts[start : start + _EXHAUSTIVE_CHUNK]))
        return decisions

    # -- encoding and indexing ---------------------------------------------------------------------------------------

    def _encode(self, text: str) -> tuple[str, list[int]]:
        if not self._warned_hangul and is_mostly_hangul(text):
            self._warned_hangul = True
            log.warning(
                "tokenizer='rouge' drops every non-[a-z0-9] character, so Hangul text scores 0.0 against anything and "
                "is never filtered; use tokenizer='ko' (or 'auto') for Korean. Text: %.60r",
                text,
            )
        tokens = self._tokenize(text)
        ids = list(map(self._vocab.get, tokens))
        if None in ids:
            vocab = self._vocab
            ids = [vocab.setdefault(token, len(vocab)) for token in tokens]
            self._doc_freq.extend([0] * (len(vocab) - len(self._doc_freq)))
        return ids_to_code(ids, len(self._vocab)), ids

    def _index(self, text: str, code: str, ids: list[int]) -> None:
        index, length = len(self._texts), len(ids)
        self._texts.append(text)
        self._codes.append(code)
        self._lengths.append(length)
        for token in set(ids):
            self._doc_freq[token] += 1
            by_length = self._postings.setdefault(token, {})
            bucket = by_length.get(length)
            if bucket is None:
                by_length[length] = [index]
            else:
                bucket.append(index)

    # -- the pruned search (top_k == 0) ------------------------------------------------------------------------------

    def _find_match(self, code: str, ids: list[int]) -> tuple[int | None, float]:
        """An indexed item scoring above the threshold against ``ids`` (or None), and the best score verified.

        Why no match is missed. Suppose item ``y`` of length ``m`` has ``F > threshold``; then ``m`` is in the plan
        and the LCS is at least ``a = min_lcs(m)``, hence so is the multiset overlap of ``x`` and ``y`` (an LCS is a
        common sub-multiset). Lay the ``n`` token occurrences of ``x`` out in the probe order (distinct tokens by
        current document frequency, a token's occurrences together; *any* order would do). The last ``a - k``
        occurrences can contribute at most ``a - k`` to the overlap, so the first ``n - a + k`` contribute at least
        ``k``: summing ``count_x(t)`` over the tokens ``t`` of ``y`` that start there gives at least ``k``.
        :meth:`_prefix_postings` visits token ``t`` in bucket ``m`` exactly when it starts there, and ``y`` is in
        that bucket because every distinct token of every indexed item is posted under the item's length. So
        ``y`` collects ``hits >= k`` and is verified. Probing only the new item's prefix against complete posting
        lists is what keeps this exact although the frequency order changes as items arrive.
        """
        n = len(ids)
        plan = self._plan(n)
        if not plan.lengths:
            return None, 0.0
        shared = min(_SHARED_PREFIX_OCCURRENCES, plan.min_lcs[0])
        prefix_postings = self._prefix_postings(ids, n, plan, shared)
        rarest = next(prefix_postings, None)
        if rarest is None:
            return None, 0.0
        # Fast path, not needed for exactness: a near-duplicate nearly always contains the rarest indexed token of
        # the new text, so verifying that token's items first rejects most duplicates after a handful of LCS calls,
        # before the posting lists of the other prefix tokens are even looked up.
        verified = set().union(*rarest)
        similar_to, best = self._best_of(code, n, list(verified))
        if best > self.threshold:
            return similar_to, best
        hits = Counter(chain.from_iterable(rarest))
        for buckets in prefix_postings:
            hits.update(chain.from_iterable(buckets))
        candidates = [index for index, count in hits.items() if count >= shared and index not in verified]
        other, other_best = self._best_of(code, n, candidates)
        if other_best > best:
            similar_to, best = other, other_best
        return (similar_to, best) if best > self.threshold else (None, best)

    def _prefix_postings(self, ids: list[int], n: int, plan: LengthPlan, shared: int) -> Iterator[list[list[int]]]:
        """Per prefix token, rarest first, its posting lists for the lengths whose prefix it is in.

        A token occurring ``w`` times in the new text has its lists repeated ``w`` times, so that counting an item's
        appearances counts the shared prefix occurrences the proof in :meth:`_find_match` needs.
        """
        counts = Counter(ids)
        smallest_min_lcs, lengths, min_lcs = plan.min_lcs[0], plan.lengths, plan.min_lcs
        before = 0
        for token in sorted(counts, key=self._doc_freq.__getitem__):
            budget = n - before + shared - 1  # bucket m is probed iff before < n - min_lcs(m) + shared
            if budget < smallest_min_lcs:
                return
            before += counts[token]
            by_length = self._postings.get(token)
            if by_length is not None:
                buckets = _buckets_in_range(by_length, lengths, bisect_right(min_lcs, budget))
                if buckets:
                    yield buckets * counts[token]

    def _best_of(self, code: str, n: int, batch: list[int]) -> tuple[int | None, float]:
        """The most similar item of ``batch`` and its score (None and 0.0 when empty); the loops run in C."""
        if not batch:
            return None, 0.0
        commons = map(LCSseq.similarity, repeat(code), map(self._codes.__getitem__, batch))
        scores = list(map(rouge_l_fmeasure, commons, repeat(n), map(self._lengths.__getitem__, batch)))
        best = max(scores)
        return batch[scores.index(best)], best

    def _plan(self, n: int) -> LengthPlan:
        plan = self._plans.get(n)
        if plan is None:
            plan = self._plans[n] = length_plan(n, self.threshold)
        return plan

    # -- exhaustive scoring (top_k > 0) ------------------------------------------------------------------------------

    def _add_chunk_exhaustively(self, texts: list[str]) -> list[Decision]:
        """Score each text against every indexed item, with the LCS matrices of the chunk computed in two C++ calls."""
        encoded = [self._encode(text) for text in texts]
        codes = [code for code, _ in encoded]
        old_lengths = np.asarray(self._lengths, dtype=np.int64)
        vs_indexed = lcs_matrix(codes, self._codes)
        vs_chunk = lcs_matrix(codes, codes)
        kept_in_chunk: list[int] = []
        decisions = []
        for i, (text, (code, ids)) in enumerate(zip(texts, encoded)):
            lcs = np.concatenate([vs_indexed[i], vs_chunk[i, kept_in_chunk]])
            lengths = np.concatenate([old_lengths, np.asarray([len(encoded[j][1]) for j in kept_in_chunk], np.int64)])
            decision = self._decide(rouge_l_fmeasure_array(lcs, len(ids), lengths))
            if decision.kept:
                self._index(text, code, ids)
                kept_in_chunk.append(i)
            decisions.append(decision)
        return decisions

    def _decide(self, scores: np.ndarray) -> Decision:
        if scores.size == 0:
            return Decision(kept=True, score=0.0)
        best_index = int(np.argmax(scores))  # first maximum
        best = float(scores[best_index])
        most_similar = _top_k(scores, self.top_k)
        if best > self.threshold:
            return Decision(kept=False, score=best, similar_to=best_index, most_similar=most_similar)
        return Decision(kept=True, score=best, most_similar=most_similar)


def _buckets_in_range(by_length: dict[int, list[int]], lengths: tuple[int, ...], count: int) -> list[list[int]]:
    """The non-empty posting lists of ``by_length`` for ``lengths[:count]``."""
    if len(by_length) < count:
        # Rare tokens have few distinct lengths: scanning them beats looking every length up. Plan lengths are
        # consecutive, so the range test selects the same lists (and were they not, it would only add candidates).
        shortest, longest = lengths[0], lengths[count - 1]
        return [items for length, items in by_length.items() if shortest <= length <= longest]
    return list(filter(None, map(by_length.get, lengths[:count])))


def ids_to_code(ids: list[int], vocab_size: int) -> str:
    if vocab_size <= _SURROGATES_START:
        return "".join(map(chr, ids))
    if vocab_size > _MAX_VOCAB_SIZE:
        raise OverflowError(f"more than {_MAX_VOCAB_SIZE} distinct tokens; split the corpus")
    return "".join(chr(i if i < _SURROGATES_START else i + _SURROGATES_SIZE) for i in ids)


def lcs_matrix(queries: list[str], choices: list[str]) -> np.ndarray:
    if not queries or not choices:
        return np.zeros((len(queries), len(choices)), dtype=np.int32)
    # Threads only pay off on big matrices; starting them for every small chunk costs more than it saves.
    workers = -1 if len(queries) * len(choices) >= _PARALLEL_LCS_PAIRS else 1
    return process.cdist(queries, choices, scorer=LCSseq.similarity, dtype=np.int32, workers=workers)


def _top_k(scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    if scores.size > k:
        kth = np.partition(scores, scores.size - k)[scores.size - k]
        candidates = np.flatnonzero(scores >= kth)
    else:
        candidates = np.arange(scores.size)
    order = candidates[np.lexsort((candidates, -scores[candidates]))][:k]
    return [(int(i), float(scores[i])) for i in order]



class RougeStep(Step):
    """Alpaca's ROUGE-L rule as a curation step: drop an instruction too similar to a seed or an accepted one.

    Only records that every step of the chain kept enter the index (:meth:`accepted`), so a record that a
    later step drops never makes a later near-copy of it look like a duplicate.
    """

    name = "rouge"
    reads = ("instruction",)
    writes = ("rouge_max", "most_similar")

    def __init__(self, dedup: RougeDedup):
        self.dedup = dedup

    def check(self, record: Record) -> Drop | None:
        decision = self.dedup.check(record.instruction)
        if not decision.kept:
            return Drop("rouge_similar", f"ROUGE-L {decision.score:.3f}",
                        {"score": decision.score, "similar_to": self.dedup.texts[decision.similar_to]})
        record.annotations["rouge_max"] = round(decision.score, 4)
        if decision.most_similar:
            record.annotations["most_similar"] = {self.dedup.texts[i]: round(score, 4) for i, score in decision.most_similar}
        return None

    def accepted(self, record: Record) -> None:
        self.dedup.add_kept(record.instruction)


def load_instructions(path: str | Path) -> list[str]:
    """Instructions from a JSON array of strings, or from JSON lines (or an array) of objects with an ``instruction``.

    Raises :class:`pipeline.files.InputFileError` naming the file, line and field of the first bad entry.
    """
    instructions = []
    for item in read_json_values(path):
        value = item.value
        if isinstance(value, str) and item.in_array:
            instructions.append(value)
        elif isinstance(value, dict) and isinstance(value.get("instruction"), str):
            instructions.append(value["instruction"])
        else:
            raise item.error("instruction", f"expected a string or an object with a string 'instruction', got {type(value).__name__}")
    return instructions


def dedup_file(
    input_path: str | Path,
    output_path: str | Path | None,
    threshold: float = ALPACA_THRESHOLD,
    tokenizer: str = "rouge",
    seeds_path: str | Path | None = None,
) -> dict[str, Any]:
    """Filter the instructions of ``input_path`` (see :func:`load_instructions`) against each other and the seeds.

    Writes ``output_path`` (unless None; ``"-"`` is standard output) as JSONL, one object per input instruction, in order:
    ``{"index", "kept", "score", "similar_to"}``, where ``similar_to`` counts the seeds first, then the kept input
    instructions (as :attr:`RougeDedup.texts`). Returns summary counts.
    """
    started = time.perf_counter()
    seeds = load_instructions(seeds_path) if seeds_path is not None else []
    instructions = load_instructions(input_path)
    dedup = RougeDedup(threshold=threshold, tokenizer=tokenizer)
    dedup.add_seeds(seeds)
    decisions = dedup.add_many(instructions)
    if output_path == "-":
        sys.stdout.writelines(json.dumps(record) + "\n" for record in _decision_records(decisions))
    elif output_path is not None:
        write_jsonl_atomic(Path(output_path), _decision_records(decisions))
    kept = sum(decision.kept for decision in decisions)
    return {
        "input": str(input_path),
        "output": None if output_path is None else str(output_path),
        "seeds": len(seeds),
        "total": len(decisions),
        "kept": kept,
        "rejected": len(decisions) - kept,
        "threshold": threshold,
        "tokenizer": tokenizer,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _decision_records(decisions: list[Decision]) -> Iterator[dict[str, Any]]:
    for index, decision in enumerate(decisions):
        yield {"index": index, "kept": decision.kept, "score": decision.score, "similar_to": decision.similar_to}
