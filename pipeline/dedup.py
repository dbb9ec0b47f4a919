"""Exact ROUGE-L near-duplicate filtering in near-linear time.

Stanford Alpaca keeps a generated instruction only if its ROUGE-L F-measure against every instruction kept so far
(seeds included) is at most ``threshold``; it scores every pair with ``rouge_score.rouge_scorer._score_lcs``, which is
quadratic in the number of kept items. :class:`RougeDedup` makes the same keep/reject decisions, bit for bit, but
only runs the LCS on pairs that can possibly exceed the threshold:

* **length filter**: an LCS never exceeds the shorter sequence, so only lengths ``m`` where ``F(min(m, n), m, n)`` can
  exceed the threshold are looked at;
* **prefix filter** (AllPairs/PPJoin): ``LCS <= multiset overlap``, so a match must share at least ``k`` token
  occurrences with the ``n - alpha + k`` rarest of the new item, ``alpha`` being the least LCS that exceeds the
  threshold for the candidate's length (``k = 4`` here); an inverted index by token and length
  (:mod:`pipeline.postings`, compiled with numba) finds those items;
* **verification**: the surviving pairs get their LCS from rapidfuzz (C++, bit-parallel), and the final score is
  rouge-score's own float formula, so ties at exactly the threshold fall the same way.

Scoring is :mod:`pipeline.rouge`, tokenizers are :mod:`pipeline.text`; inputs and outputs of ``selfinstruct dedup``
are read and written with :mod:`pipeline.files`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from itertools import repeat
from operator import itemgetter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import LCSseq

from pipeline.curation import Step
from pipeline.files import read_json_values, write_jsonl_atomic
from pipeline.postings import Postings, grown
from pipeline.records import Drop, Record
from pipeline.rouge import (
    ALPACA_THRESHOLD, LengthPlan, least_lcs_above, least_lcs_for_any_length, length_plan, rouge_l_best, rouge_l_fmeasure,
    rouge_l_fmeasure_array,
)
from pipeline.text import get_tokenizer, is_mostly_hangul

log = logging.getLogger(__name__)


# Token ids become code points so that a token sequence is a str: rapidfuzz compares strs far faster than lists.
_SURROGATES_START, _SURROGATES_SIZE = 0xD800, 0x800
_MAX_VOCAB_SIZE = 0x110000 - _SURROGATES_SIZE

_EXHAUSTIVE_CHUNK = 128
_PARALLEL_LCS_PAIRS = 200_000
_SHARED_PREFIX_OCCURRENCES = 4  # k: a match shares k elements of both prefixes; more prunes better, up to a point
_TIERS = 4  # a bucket is length * _TIERS + tier (three tiers used)
_NOT_CACHED = object()
_FIRST_REORDER = 1024
_VECTOR_BATCH = 24  # from this many candidates on, one cdist call beats a Python loop of LCS calls


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
        self._postings = Postings()
        self._texts: list[str] = []
        self._codes: list[str] = []  # token ids as code points, per indexed item
        self._lengths = np.zeros(1024, dtype=np.int64)  # token count per indexed item (capacity: see lengths)
        self._plans: dict[int, LengthPlan] = {}
        self._place_cache: dict[int, tuple[int, int]] = {}
        self._probe_plans: dict[int, _ProbePlan | None] = {}
        self._doc_freq: list[int] = []  # by token id: how many indexed items contain the token
        # By token id: the token's place in the global order (see _find_match), lowest first. It is fixed between
        # re-orderings, which re-post every item; tokens new since the last one go first (a late token is rare),
        # among themselves in the order of their tie-break numbers.
        self._order = np.zeros(1024, dtype=np.int64)  # capacity; the first len(self._tie_break) are tokens' places
        # By token id: a number from the token's text alone. Token ids depend on every text ever encoded (rejected
        # ones too), so the order must not: a resumed run, which encodes only what was kept, must rebuild the same.
        self._tie_break: list[int] = []
        self._next_reorder = _FIRST_REORDER
        self._checked: tuple[str, str, list[int]] | None = None  # the last text check() encoded

    def __len__(self) -> int:
        return len(self._texts)

    @property
    def texts(self) -> Sequence[str]:
        """Indexed texts (seeds first, then kept texts), positioned as :attr:`Decision.similar_to` counts them."""
        return self._texts

    @property
    def lengths(self) -> np.ndarray:
        """Token counts of the indexed texts, as :attr:`texts` orders them (a view)."""
        return self._lengths[: len(self._texts)]

    def add_seeds(self, texts: Iterable[str]) -> None:
        """Index ``texts`` unconditionally: seeds are always kept, even when they resemble each other.

        Also how a resumed run rebuilds its index. The texts are indexed one by one, as a run indexes what it
        keeps, so that the index (its token order, re-made as it doubles) is the same as it was at the same
        point of an uninterrupted run, and so are the kept records' ``score`` lower bounds.
        """
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
            return self._decide(rouge_l_fmeasure_array(lcs, len(ids), self.lengths))
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
            known = len(self._tie_break)
            new_tokens = list(vocab)[known:] if len(vocab) - known > 64 else \
                [token for token in dict.fromkeys(tokens) if vocab[token] >= known]
            self._order = grown(self._order, len(vocab))
            for token in new_tokens:
                key = _token_key(token)
                self._order[vocab[token]] = -1 - key
                self._tie_break.append(key)
        return ids_to_code(ids, len(self._vocab)), ids

    def _index(self, text: str, code: str, ids: list[int]) -> None:
        self._texts.append(text)
        self._codes.append(code)
        self._lengths = grown(self._lengths, len(self._texts))
        self._lengths[len(self._texts) - 1] = len(ids)
        doc_freq = self._doc_freq
        for token in set(ids):
            doc_freq[token] += 1
        if len(self._texts) >= self._next_reorder:
            self._reorder()
        else:
            self._post(len(self._texts) - 1, ids)

    def _reorder(self) -> None:
        """Order tokens by how many items hold them (rarest first) and post every item anew under that order.

        Re-ordering each time the index doubles keeps the order close to the true frequencies at a cost linear
        in the final size.
        """
        doc_freq, tie_break = self._doc_freq, self._tie_break
        ranked = sorted(range(len(doc_freq)), key=lambda t: (doc_freq[t], tie_break[t]))
        self._order[np.asarray(ranked, dtype=np.int64)] = np.arange(len(ranked), dtype=np.int64)
        self._postings.clear()
        for index, code in enumerate(self._codes):
            self._post(index, code_to_ids(code))
        self._postings.freeze()
        self._next_reorder = max(_FIRST_REORDER, 2 * len(self._texts))

    def _post(self, index: int, ids: list[int]) -> None:
        """Post the item under each element of its prefix, in the bucket of its length and the element's place.

        A bucket is ``length * 4 + tier``; the tiers, places ``[0, K)``, ``[K, middle)`` and ``[middle, prefix)``
        (``middle`` being what a text of the same length needs), let a probe skip places that cannot hold a match.
        """
        length = len(ids)
        middle, prefix = self._places(length)
        self._postings.post(index, ids, prefix, self._order, length * _TIERS, _SHARED_PREFIX_OCCURRENCES, middle)

    def _places(self, m: int) -> tuple[int, int]:
        """For items of ``m`` tokens: the middle tier's end and how many elements are posted (see :meth:`_post`).

        The posted prefix is long enough for the least LCS that any text length needs against length ``m``.
        """
        places = self._place_cache.get(m)
        if places is None:
            least = least_lcs_for_any_length(m, self.threshold)
            prefix = 0 if least is None else min(m, m - least + _SHARED_PREFIX_OCCURRENCES)
            same_length = least_lcs_above(self.threshold, m, m)
            middle = prefix if same_length is None else min(prefix, m - same_length + _SHARED_PREFIX_OCCURRENCES)
            places = self._place_cache[m] = (middle, prefix)
        return places

    # -- the pruned search (top_k == 0) ------------------------------------------------------------------------------

    def _find_match(self, code: str, ids: list[int]) -> tuple[int | None, float]:
        """An indexed item scoring above the threshold against ``ids`` (or None), and the best score verified.

        Why no match is missed. Token occurrences are *elements* (the j-th occurrence of a token is its own element,
        so a multiset is a set), laid out in one global order, rarest first, that changes only when every item is
        posted anew (:meth:`_reorder`). Suppose item ``y`` of length ``m`` has ``F > threshold``; then ``m`` is in
        the plan and the LCS is at least ``a = min_lcs(m)``, hence so is the overlap of the element sets of ``x``
        and ``y`` (an LCS is a common sub-multiset). Let ``c_1 < c_2 < ...`` be the common elements in the global
        order and ``k = shared <= min(K, a)``, ``K`` being ``_SHARED_PREFIX_OCCURRENCES``. The first ``n - a + k`` elements of ``x`` leave out its last
        ``a - k``, so they miss at most ``a - k`` common elements, and those are the last ones: ``c_1 .. c_k`` are in
        that prefix of ``x``. Likewise they are within the first ``m - a + k`` places of ``y``; :meth:`_post` posted
        ``m - a_any(m) + K`` places, ``a_any(m) <= a`` being the least LCS any text length needs against length
        ``m``. The probe (:class:`_ProbePlan`) looks up each element of ``x`` within its first
        ``n - min_lcs(m) + shared`` places in the tiers of length ``m`` that hold places below
        ``m - min_lcs(m) + shared``, so ``y`` collects at least ``k`` hits and is verified. Posting only prefixes
        keeps common tokens' lists short, and a fixed order is what makes that exact (AllPairs/PPJoin's prefix
        filter on both sides, with the length-aware positional bound).
        """
        n = len(ids)
        probe = self._probe_plan(n)
        if probe is None:
            return None, 0.0
        # Both ascending: which of equal scores is reported must not depend on how the index is laid out.
        find = partial(self._postings.candidates, ids, probe.places, self._order, probe.low, probe.width, probe.high,
                       probe.allowed, probe.shared)
        # The rarest posted element's items first, not needed for exactness: a near-duplicate nearly always holds
        # it, so most duplicates are rejected after a few LCS calls, without looking up the other elements.
        rarest, _ = find(rarest_only=True)
        if not rarest.size:
            return None, 0.0  # no element found anything
        similar_to, best = self._best_of(code, n, rarest)
        if best > self.threshold:
            return similar_to, best
        _, others = find()
        other, other_best = self._best_of(code, n, others)
        if other_best > best:
            similar_to, best = other, other_best
        return (similar_to, best) if best > self.threshold else (None, best)

    def _probe_plan(self, n: int) -> "_ProbePlan | None":
        probe = self._probe_plans.get(n, _NOT_CACHED)
        if probe is _NOT_CACHED:
            plan = self._plan(n)
            probe = self._probe_plans[n] = _ProbePlan.make(n, plan, self._places) if plan.lengths else None
        return probe

    def _best_of(self, code: str, n: int, batch: np.ndarray) -> tuple[int | None, float]:
        """The most similar item of ``batch`` and its score (None and 0.0 when empty); the loops run in C."""
        if not batch.size:
            return None, 0.0
        items = batch.tolist()
        if len(items) < _VECTOR_BATCH:
            commons = map(LCSseq.similarity, repeat(code), map(self._codes.__getitem__, items))
            scores = list(map(rouge_l_fmeasure, commons, repeat(n), self._lengths[batch].tolist()))
            best = max(scores)
            return items[scores.index(best)], best
        choices = itemgetter(*items)(self._codes)
        lcs = process.cdist([code], choices, scorer=LCSseq.similarity, dtype=np.int32, workers=1)[0]
        position, best = rouge_l_best(lcs, n, self._lengths[batch])  # the first maximum, as list.index finds it
        return items[position], best

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
        old_lengths = self.lengths
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


@dataclass(frozen=True, slots=True)
class _ProbePlan:
    """What a text of ``n`` tokens looks up: for its element at place ``b`` (``b < places``), the buckets
    ``low .. high[b]`` of which ``allowed[b * width + bucket - low]`` holds (see :meth:`RougeDedup._find_match`)."""

    places: int
    shared: int
    low: int
    high: np.ndarray  # int64, by place
    width: int
    allowed: np.ndarray  # bool, places x width

    @classmethod
    def make(cls, n: int, plan: LengthPlan, places_of: Callable[[int], tuple[int, int]]) -> "_ProbePlan":
        shared = min(_SHARED_PREFIX_OCCURRENCES, plan.min_lcs[0])
        places = min(n, n - plan.min_lcs[0] + shared)
        low = plan.lengths[0] * _TIERS
        width = (plan.lengths[-1] + 1) * _TIERS - low
        allowed = np.zeros((places, width), dtype=bool)
        high = np.zeros(places, dtype=np.int64)
        for before in range(places):
            budget = n - before + shared - 1  # length m is probed iff before < n - min_lcs(m) + shared
            buckets = []
            for length, least in zip(plan.lengths, plan.min_lcs):
                if least > budget:
                    break
                reach = length - least + shared  # places of an indexed item that can hold a match
                middle, _ = places_of(length)
                tiers = 1 if reach <= _SHARED_PREFIX_OCCURRENCES else 2 if reach <= middle else 3
                buckets.extend(length * _TIERS + tier for tier in range(tiers))
            allowed[before, [bucket - low for bucket in buckets]] = True
            high[before] = max(buckets)
        return cls(places, shared, low, high, width, allowed.ravel())


def _token_key(token: str) -> int:
    """A 63-bit number from the token's text (a stable hash: Python's own ``hash`` changes with each process)."""
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "big") >> 1


def code_to_ids(code: str) -> list[int]:
    """The token ids :func:`ids_to_code` made ``code`` from."""
    return [o - _SURROGATES_SIZE if o >= _SURROGATES_START + _SURROGATES_SIZE else o for o in map(ord, code)]


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
