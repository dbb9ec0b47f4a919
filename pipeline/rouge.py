"""ROUGE-L F-measure exactly as rouge-score computes it, and the bounds that let dedup skip most pairs.

Alpaca's filter calls ``rouge_scorer._score_lcs``; these functions reproduce its float arithmetic operation by
operation, so that ``score > threshold`` falls the same way on ties, and derive from it, for a new text of ``n``
tokens, which indexed lengths can score above a threshold at all and the least LCS that does for each.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

#: Stanford Alpaca's rule: drop an instruction whose ROUGE-L F-measure against a kept one exceeds 0.7.
ALPACA_THRESHOLD = 0.7


def rouge_l_fmeasure(lcs: int, target_len: int, prediction_len: int) -> float:
    """ROUGE-L F-measure from an LCS length, with rouge-score's float arithmetic.

    Mirrors ``rouge_scorer._score_lcs(target, prediction)`` followed by ``scoring.fmeasure``; Alpaca passes the new
    instruction as ``target`` and a kept one as ``prediction``. The operations are kept in the same order because the
    reject test ``score > threshold`` must round the same way on ties.
    """
    if target_len == 0 or prediction_len == 0:
        return 0.0
    precision = lcs / prediction_len
    recall = lcs / target_len
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


_compiled_fmeasure = njit(cache=True, nogil=True, inline="always")(rouge_l_fmeasure)


@njit(cache=True, nogil=True)
def rouge_l_best(lcs: np.ndarray, target_len: int, prediction_lens: np.ndarray) -> tuple[int, float]:  # pragma: no cover - compiled
    """The position and score of the first maximum of :func:`rouge_l_fmeasure` over pairs (-1 and 0.0 for none).

    Compiled without fast-math, so each score is the same IEEE operations in the same order as rouge-score's.
    """
    best_position = -1
    best = 0.0
    for i in range(lcs.shape[0]):
        score = _compiled_fmeasure(lcs[i], target_len, prediction_lens[i])
        if best_position < 0 or score > best:
            best_position, best = i, score
    return best_position, best


def rouge_l_fmeasure_array(lcs: np.ndarray, target_len: int, prediction_lens: np.ndarray) -> np.ndarray:
    """Vectorised :func:`rouge_l_fmeasure`: numpy float64 ops are the same IEEE ops in the same order."""
    if target_len == 0:
        return np.zeros(len(lcs), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = lcs / prediction_lens
        recall = lcs / target_len
        total = precision + recall
        scores = 2 * precision * recall / total
    return np.where((prediction_lens > 0) & (total > 0), scores, 0.0)


@dataclass(frozen=True, slots=True)
class LengthPlan:
    """For a new item of ``n`` tokens: the indexed lengths that can match, and the least LCS that does for each."""

    lengths: tuple[int, ...]  # ascending
    min_lcs: tuple[int, ...]  # min_lcs[i] for lengths[i]; non-decreasing, because F falls as the length grows


def length_plan(n: int, threshold: float) -> LengthPlan:
    # F(L, m, n) ~ 2L/(m+n) <= 2n/(m+n), which is below any threshold > 0 once m > 2n/threshold.
    longest = int(2 * n / threshold) + 2
    lengths, min_lcs = [], []
    for m in range(1, longest + 1):
        least = least_lcs_above(threshold, m, n)
        if least is not None:
            lengths.append(m)
            min_lcs.append(least)
    return LengthPlan(tuple(lengths), tuple(min_lcs))


def least_lcs_above(threshold: float, m: int, n: int) -> int | None:
    """The least LCS whose rouge F-measure (float) exceeds ``threshold`` for lengths ``m`` and ``n``, if any.

    The float F-measure is increasing in the LCS (each step adds 2/(m+n), far above rounding error), so a local
    search from the real-valued estimate finds the exact boundary.
    """
    if n == 0 or m == 0:
        return None
    shortest = min(m, n)
    lcs = min(max(int(threshold * (m + n) / 2), 1), shortest)
    while lcs > 1 and rouge_l_fmeasure(lcs - 1, n, m) > threshold:
        lcs -= 1
    while lcs <= shortest and not rouge_l_fmeasure(lcs, n, m) > threshold:
        lcs += 1
    return lcs if lcs <= shortest else None


def least_lcs_for_any_length(m: int, threshold: float) -> int | None:
    """The least LCS with which an item of ``m`` tokens exceeds ``threshold`` against a text of *any* length.

    Every length that can match at all is scanned (the range of :func:`length_plan`, by symmetry), so float
    rounding at ties cannot make the answer too large.
    """
    longest = int(2 * m / threshold) + 2
    candidates = [least for n in range(1, longest + 1) if (least := least_lcs_above(threshold, m, n)) is not None]
    return min(candidates, default=None)
